//! The alert-rule and notification-channel aggregates. Knows nothing of HTTP or the
//! database.
//!
//! A rule has episodes per key: `Observe` with the condition breached opens one
//! (`AlertFired`) unless one is open or the key fired less than `cooldown` ago; `Observe`
//! with the condition cleared closes the open one (`AlertResolved`). Every other
//! observation appends nothing, so the evaluator may observe as often as it likes: one
//! notification per episode, never one per evaluation.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::commands::{AlertRuleCommand, ChannelCommand, ChannelDraft, Observation, RuleDraft};
use super::condition::{Condition, Severity};
use super::events::{
    AlertRuleEvent, ChannelDetails, ChannelEvent, ChannelKind, Firing, Resolution, RuleDetails,
};
use crate::pipeline::EventSourced;

/// Why an alerts command was refused. HTTP: `Invalid` → 422 `validation_failed` (with
/// the field), `NotFound` → 404, `AlreadyExists` → 409.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlertError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
}

impl crate::pipeline::DomainError for AlertError {
    fn rejection(&self) -> crate::pipeline::Rejection {
        use crate::pipeline::Rejection;
        match self {
            AlertError::Invalid { field, message } => Rejection::Invalid {
                field: field.clone(),
                message: message.clone(),
            },
            AlertError::NotFound(what) => Rejection::NotFound {
                what: (*what).into(),
            },
            AlertError::AlreadyExists(what) => Rejection::AlreadyExists {
                what: (*what).into(),
            },
        }
    }
}

pub(super) fn invalid(field: &str, message: impl Into<String>) -> AlertError {
    AlertError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

const MAX_TEXT: usize = 200;
const MAX_CHANNELS: usize = 20;
const MAX_COOLDOWN: u32 = 7 * 86_400;
const DEFAULT_COOLDOWN: u32 = 300;

fn check_name(name: &str) -> Result<String, AlertError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_TEXT {
        return Err(invalid(
            "name",
            "must be 1 to 200 characters, not only blanks",
        ));
    }
    Ok(name.to_owned())
}

impl RuleDetails {
    /// Checks a draft and fills defaults. The first problem found is reported. Whether
    /// the channels exist is checked by the caller (they are other aggregates).
    pub fn validate(draft: RuleDraft) -> Result<Self, AlertError> {
        let name = check_name(&draft.name)?;
        let condition = Condition::parse(&draft.rule_type, draft.condition)?;
        if draft.notify.len() > MAX_CHANNELS {
            return Err(invalid("notify", "at most 20 channels"));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(i) = draft.notify.iter().position(|c| !seen.insert(*c)) {
            return Err(invalid(&format!("notify[{i}]"), "channels must not repeat"));
        }
        let cooldown_seconds = draft.cooldown.unwrap_or(DEFAULT_COOLDOWN);
        if cooldown_seconds > MAX_COOLDOWN {
            return Err(invalid(
                "cooldown",
                "must be at most 604800 seconds (7 days)",
            ));
        }
        Ok(RuleDetails {
            name,
            condition,
            notify: draft.notify,
            severity: draft.severity.unwrap_or(Severity::Warning),
            enabled: draft.enabled.unwrap_or(true),
            cooldown_seconds,
            notify_resolved: draft.notify_resolved.unwrap_or(false),
        })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    pub details: Option<RuleDetails>,
    pub deleted: bool,
    /// Episodes fired so far (the next one is `episodes + 1`).
    pub episodes: u32,
    /// Open episodes by key.
    pub firing: BTreeMap<String, u32>,
    /// When each key last fired (the cooldown).
    pub last_fired: BTreeMap<String, DateTime<Utc>>,
}

impl AlertRule {
    fn live(&self) -> Option<&RuleDetails> {
        self.details.as_ref().filter(|_| !self.deleted)
    }

    /// Whether `key` has an open episode.
    pub fn is_firing(&self, key: &str) -> bool {
        self.firing.contains_key(key)
    }

    /// Resolutions of every open episode, for `reason`, at `at`.
    fn resolve_all(&self, d: &RuleDetails, reason: &str, at: DateTime<Utc>) -> Vec<AlertRuleEvent> {
        self.firing
            .iter()
            .map(|(key, episode)| {
                AlertRuleEvent::AlertResolved(resolution(d, key, *episode, None, reason, at))
            })
            .collect()
    }
}

fn resolution(
    d: &RuleDetails,
    key: &str,
    episode: u32,
    value: Option<rust_decimal::Decimal>,
    reason: &str,
    at: DateTime<Utc>,
) -> Resolution {
    Resolution {
        episode,
        key: key.to_owned(),
        rule_name: d.name.clone(),
        rule_type: d.condition.type_name().to_owned(),
        severity: d.severity,
        value,
        at,
        reason: reason.to_owned(),
        notify: if d.notify_resolved {
            d.notify.clone()
        } else {
            Vec::new()
        },
    }
}

#[async_trait]
impl Aggregate for AlertRule {
    type Command = AlertRuleCommand;
    type Event = AlertRuleEvent;
    type Error = AlertError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: AlertRuleCommand,
        _: &(),
    ) -> Result<Vec<AlertRuleEvent>, AlertError> {
        let now = Utc::now();
        match command {
            AlertRuleCommand::CreateRule(draft) => {
                if self.details.is_some() {
                    return Err(AlertError::AlreadyExists("alert rule"));
                }
                Ok(vec![AlertRuleEvent::AlertRuleCreated(
                    RuleDetails::validate(draft)?,
                )])
            }
            AlertRuleCommand::UpdateRule(draft) => {
                let current = self.live().ok_or(AlertError::NotFound("alert rule"))?;
                let details = RuleDetails::validate(draft)?;
                if *current == details {
                    return Ok(vec![]);
                }
                // Open episodes end when the rule is disabled, or when what it watches
                // changes (the episode was about the old condition).
                let reason = if !details.enabled {
                    Some("rule_disabled")
                } else if details.condition != current.condition {
                    Some("rule_changed")
                } else {
                    None
                };
                let mut events = vec![AlertRuleEvent::AlertRuleUpdated(details)];
                if let Some(reason) = reason {
                    events.extend(self.resolve_all(current, reason, now));
                }
                Ok(events)
            }
            AlertRuleCommand::DeleteRule => {
                let current = self.live().ok_or(AlertError::NotFound("alert rule"))?;
                let mut events = self.resolve_all(current, "rule_deleted", now);
                events.push(AlertRuleEvent::AlertRuleDeleted {});
                Ok(events)
            }
            AlertRuleCommand::Observe(o) => Ok(self.observe(o).into_iter().collect()),
        }
    }

    fn apply(&mut self, event: AlertRuleEvent) {
        match event {
            AlertRuleEvent::AlertRuleCreated(d) | AlertRuleEvent::AlertRuleUpdated(d) => {
                self.details = Some(d)
            }
            AlertRuleEvent::AlertRuleDeleted {} => self.deleted = true,
            AlertRuleEvent::AlertFired(f) => {
                self.episodes = self.episodes.max(f.episode);
                self.firing.insert(f.key.clone(), f.episode);
                self.last_fired.insert(f.key, f.at);
            }
            AlertRuleEvent::AlertResolved(r) => {
                self.firing.remove(&r.key);
            }
        }
    }
}

impl AlertRule {
    /// The event an observation causes, if any (see the module docs).
    pub fn observe(&self, o: Observation) -> Option<AlertRuleEvent> {
        let d = self.live().filter(|d| d.enabled)?;
        match (o.breached, self.firing.get(&o.key)) {
            (true, None) => {
                if let Some(last) = self.last_fired.get(&o.key) {
                    if (o.at - *last).num_seconds() < i64::from(d.cooldown_seconds) {
                        return None; // cooling down: no new episode yet
                    }
                }
                Some(AlertRuleEvent::AlertFired(Firing {
                    episode: self.episodes + 1,
                    key: o.key,
                    rule_name: d.name.clone(),
                    rule_type: d.condition.type_name().to_owned(),
                    severity: d.severity,
                    value: o.value,
                    threshold: o.threshold,
                    window_start: o.window_start,
                    window_end: o.window_end,
                    at: o.at,
                    details: o.details,
                    notify: d.notify.clone(),
                }))
            }
            (false, Some(episode)) => Some(AlertRuleEvent::AlertResolved(resolution(
                d, &o.key, *episode, o.value, o.reason, o.at,
            ))),
            _ => None,
        }
    }
}

impl EventSourced for AlertRule {
    const STREAM_TYPE: &'static str = "alert_rule";
}

/// Channel settings, checked per kind.
fn check_url(config: &Value) -> Result<(), AlertError> {
    match config.get("url").and_then(Value::as_str) {
        Some(u)
            if (u.starts_with("http://") || u.starts_with("https://"))
                && u.len() <= 2000
                && !u.chars().any(char::is_whitespace)
                && u.len() > "https://".len() =>
        {
            Ok(())
        }
        _ => Err(invalid(
            "config.url",
            "must be an http:// or https:// URL of at most 2000 characters",
        )),
    }
}

fn check_timeout(config: &Value) -> Result<u64, AlertError> {
    match config.get("timeout_ms") {
        None | Some(Value::Null) => Ok(5000),
        Some(v) => match v.as_u64() {
            Some(ms) if (100..=60_000).contains(&ms) => Ok(ms),
            _ => Err(invalid(
                "config.timeout_ms",
                "must be an integer between 100 and 60000",
            )),
        },
    }
}

fn check_keys(config: &Value, allowed: &[&str]) -> Result<(), AlertError> {
    let obj = config
        .as_object()
        .ok_or_else(|| invalid("config", "must be an object"))?;
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(
            &format!("config.{k}"),
            format!("unknown field; expected one of {}", allowed.join(", ")),
        ));
    }
    Ok(())
}

fn is_address(s: &str) -> bool {
    let parts: Vec<&str> = s.split('@').collect();
    parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && s.len() <= 254
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>' || c == ',')
}

impl ChannelDetails {
    /// Checks a draft; `had_secret`: whether the channel has a stored secret already
    /// (kept when a replace omits it). Returns the settings as stored (defaults filled).
    pub fn validate(draft: &ChannelDraft, had_secret: bool) -> Result<Self, AlertError> {
        let name = check_name(&draft.name)?;
        if let Some(s) = &draft.secret {
            if s.is_empty() || s.len() > 500 {
                return Err(invalid("secret", "must be 1 to 500 bytes"));
            }
        }
        let has_secret = draft.secret.is_some() || had_secret;
        let c = &draft.config;
        let config = match draft.kind {
            ChannelKind::Webhook | ChannelKind::Dingtalk | ChannelKind::Wecom => {
                check_keys(c, &["url", "timeout_ms"])?;
                check_url(c)?;
                let timeout = check_timeout(c)?;
                if draft.kind == ChannelKind::Webhook {
                    match &draft.secret {
                        Some(s) if s.len() < 16 => {
                            return Err(invalid(
                                "secret",
                                "a webhook secret must be at least 16 bytes",
                            ))
                        }
                        None if !had_secret => {
                            return Err(invalid(
                                "secret",
                                "is required for a webhook (the HMAC-SHA256 key)",
                            ))
                        }
                        _ => {}
                    }
                }
                if draft.kind == ChannelKind::Wecom && draft.secret.is_some() {
                    return Err(invalid("secret", "WeCom robots take no secret"));
                }
                json!({"url": c["url"], "timeout_ms": timeout})
            }
            ChannelKind::Email => {
                check_keys(
                    c,
                    &[
                        "host",
                        "port",
                        "security",
                        "username",
                        "from",
                        "to",
                        "timeout_ms",
                    ],
                )?;
                let host = c.get("host").and_then(Value::as_str).unwrap_or_default();
                if host.is_empty() || host.len() > 253 || host.chars().any(char::is_whitespace) {
                    return Err(invalid("config.host", "must be a host name"));
                }
                let security = c
                    .get("security")
                    .and_then(Value::as_str)
                    .unwrap_or("starttls");
                if !["starttls", "tls", "none"].contains(&security) {
                    return Err(invalid("config.security", "must be starttls, tls or none"));
                }
                let port = match c.get("port") {
                    None | Some(Value::Null) => {
                        if security == "tls" {
                            465
                        } else {
                            587
                        }
                    }
                    Some(v) => match v.as_u64() {
                        Some(p) if (1..=65535).contains(&p) => p,
                        _ => return Err(invalid("config.port", "must be between 1 and 65535")),
                    },
                };
                let username = match c.get("username") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(u)) if !u.is_empty() && u.len() <= 200 => Some(u.clone()),
                    _ => return Err(invalid("config.username", "must be 1 to 200 characters")),
                };
                if username.is_some() && security == "none" {
                    return Err(invalid(
                        "config.security",
                        "a password is never sent unencrypted: use starttls or tls with a username",
                    ));
                }
                if username.is_some() && !has_secret {
                    return Err(invalid(
                        "secret",
                        "the SMTP password is required with a username",
                    ));
                }
                let from = c.get("from").and_then(Value::as_str).unwrap_or_default();
                if !is_address(from) {
                    return Err(invalid("config.from", "must be an email address"));
                }
                let to: Vec<&str> = match c.get("to").and_then(Value::as_array) {
                    Some(list) if !list.is_empty() && list.len() <= 50 => {
                        let mut out = Vec::new();
                        for (i, v) in list.iter().enumerate() {
                            match v.as_str() {
                                Some(a) if is_address(a) => out.push(a),
                                _ => {
                                    return Err(invalid(
                                        &format!("config.to[{i}]"),
                                        "must be an email address",
                                    ))
                                }
                            }
                        }
                        out
                    }
                    _ => return Err(invalid("config.to", "must list 1 to 50 email addresses")),
                };
                let timeout = check_timeout(c)?;
                json!({"host": host, "port": port, "security": security, "username": username,
                       "from": from, "to": to, "timeout_ms": timeout})
            }
        };
        Ok(ChannelDetails {
            name,
            kind: draft.kind,
            config,
            has_secret,
        })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationChannel {
    pub details: Option<ChannelDetails>,
    pub deleted: bool,
}

impl NotificationChannel {
    pub fn live(&self) -> Option<&ChannelDetails> {
        self.details.as_ref().filter(|_| !self.deleted)
    }
}

#[async_trait]
impl Aggregate for NotificationChannel {
    type Command = ChannelCommand;
    type Event = ChannelEvent;
    type Error = AlertError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: ChannelCommand,
        _: &(),
    ) -> Result<Vec<ChannelEvent>, AlertError> {
        match command {
            ChannelCommand::CreateChannel(draft) => {
                if self.details.is_some() {
                    return Err(AlertError::AlreadyExists("notification channel"));
                }
                Ok(vec![ChannelEvent::NotificationChannelCreated(
                    ChannelDetails::validate(&draft, false)?,
                )])
            }
            ChannelCommand::UpdateChannel(draft) => {
                let current = self
                    .live()
                    .ok_or(AlertError::NotFound("notification channel"))?;
                let details = ChannelDetails::validate(&draft, current.has_secret)?;
                // A new secret alone changes no event (it is stored beside the log).
                if *current == details {
                    return Ok(vec![]);
                }
                Ok(vec![ChannelEvent::NotificationChannelUpdated(details)])
            }
            ChannelCommand::DeleteChannel => {
                self.live()
                    .ok_or(AlertError::NotFound("notification channel"))?;
                Ok(vec![ChannelEvent::NotificationChannelDeleted {}])
            }
        }
    }

    fn apply(&mut self, event: ChannelEvent) {
        match event {
            ChannelEvent::NotificationChannelCreated(d)
            | ChannelEvent::NotificationChannelUpdated(d) => self.details = Some(d),
            ChannelEvent::NotificationChannelDeleted {} => self.deleted = true,
        }
    }
}

impl EventSourced for NotificationChannel {
    const STREAM_TYPE: &'static str = "notification_channel";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::commands::Observation;
    use chrono::Duration;

    fn rule(cooldown: u32) -> AlertRule {
        let draft: RuleDraft = serde_json::from_value(json!({
            "name": "cpu", "type": "metric_threshold", "cooldown": cooldown,
            "condition": {"metric": "cpu", "aggregation": "avg", "window_seconds": 60,
                          "comparator": "gt", "threshold": 90}
        }))
        .unwrap();
        let mut r = AlertRule::default();
        r.apply(AlertRuleEvent::AlertRuleCreated(
            RuleDetails::validate(draft).unwrap(),
        ));
        r
    }

    fn obs(breached: bool, at: DateTime<Utc>) -> Observation {
        Observation {
            key: "series:a".into(),
            breached,
            value: None,
            threshold: None,
            window_start: None,
            window_end: None,
            at,
            details: json!({}),
            reason: "condition_cleared",
        }
    }

    #[test]
    fn one_episode_fires_once_resolves_once_and_cools_down() {
        let mut r = rule(600);
        let t0 = Utc::now();
        let fired = r.observe(obs(true, t0)).unwrap();
        assert!(matches!(&fired, AlertRuleEvent::AlertFired(f) if f.episode == 1));
        r.apply(fired);
        assert_eq!(
            r.observe(obs(true, t0 + Duration::seconds(30))),
            None,
            "still firing: nothing"
        );
        let resolved = r.observe(obs(false, t0 + Duration::seconds(60))).unwrap();
        assert!(matches!(&resolved, AlertRuleEvent::AlertResolved(x) if x.episode == 1));
        r.apply(resolved);
        assert_eq!(r.observe(obs(false, t0 + Duration::seconds(70))), None);
        assert_eq!(
            r.observe(obs(true, t0 + Duration::seconds(120))),
            None,
            "cooling down"
        );
        let again = r.observe(obs(true, t0 + Duration::seconds(601))).unwrap();
        assert!(matches!(&again, AlertRuleEvent::AlertFired(f) if f.episode == 2));
    }

    #[test]
    fn a_disabled_or_deleted_rule_resolves_its_open_episodes() {
        let mut r = rule(0);
        r.apply(r.observe(obs(true, Utc::now())).unwrap());
        let events =
            futures::executor::block_on(r.handle(AlertRuleCommand::DeleteRule, &())).unwrap();
        assert!(
            matches!(&events[0], AlertRuleEvent::AlertResolved(x) if x.reason == "rule_deleted")
        );
        assert!(matches!(events[1], AlertRuleEvent::AlertRuleDeleted {}));
    }

    #[test]
    fn channels_are_checked_per_kind() {
        let draft = |kind: &str, config: Value, secret: Option<&str>| ChannelDraft {
            name: "ops".into(),
            kind: serde_json::from_value(json!(kind)).unwrap(),
            config,
            secret: secret.map(str::to_owned),
        };
        let field = |d: ChannelDraft| match ChannelDetails::validate(&d, false) {
            Err(AlertError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(
            field(draft("webhook", json!({"url": "http://x.example/h"}), None)),
            "secret"
        );
        assert_eq!(
            field(draft(
                "webhook",
                json!({"url": "ftp://x"}),
                Some("0123456789abcdef")
            )),
            "config.url"
        );
        assert_eq!(
            field(draft(
                "wecom",
                json!({"url": "https://q.example", "extra": 1}),
                None
            )),
            "config.extra"
        );
        assert_eq!(
            field(draft(
                "email",
                json!({"host": "smtp.example", "from": "a@b.example", "to": ["nope"]}),
                None
            )),
            "config.to[0]"
        );
        let ok = ChannelDetails::validate(
            &draft(
                "email",
                json!({"host": "smtp.example", "from": "a@b.example", "to": ["c@d.example"]}),
                None,
            ),
            false,
        )
        .unwrap();
        assert_eq!(ok.config["port"], 587);
        assert!(!ok.has_secret);
    }
}
