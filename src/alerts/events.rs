//! Events of the alerts context: alert rules (`alert_rule` streams, with their episodes)
//! and notification channels (`notification_channel` streams). Names and versions are
//! stable: they are stored forever. `AlertFired`/`AlertResolved` with a non-empty
//! `notify` list queue notifications in the outbox in their own transaction (the
//! `events_alert_outbox` trigger of sql/V18 reads `notify`, `episode` and the rest of
//! the payload as the message).

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::condition::{Condition, Severity};

/// A validated rule, as carried by `AlertRuleCreated`/`AlertRuleUpdated` (full state).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RuleDetails {
    pub name: String,
    pub condition: Condition,
    pub notify: Vec<Uuid>,
    pub severity: Severity,
    pub enabled: bool,
    /// After an episode of a key fired, no new episode of that key fires for this long.
    pub cooldown_seconds: u32,
    /// Whether the end of an episode is notified too (its start always is).
    pub notify_resolved: bool,
}

/// The start of an episode: the rule's condition held for `key`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Firing {
    pub episode: u32,
    /// What the episode is about within the rule: `""` for a rule over one value,
    /// `series:<name>`, `budget:<id>:<period start>`, `anomaly:<id>`.
    pub key: String,
    pub rule_name: String,
    #[serde(rename = "type")]
    pub rule_type: String,
    pub severity: Severity,
    #[serde(with = "rust_decimal::serde::str_option", default)]
    pub value: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option", default)]
    pub threshold: Option<Decimal>,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
    /// What the evaluation saw beyond the value (the comparator, the budget, the
    /// anomaly's contributors …).
    pub details: Value,
    /// Channels to notify (read by the outbox trigger).
    pub notify: Vec<Uuid>,
}

/// The end of an episode.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Resolution {
    pub episode: u32,
    pub key: String,
    pub rule_name: String,
    #[serde(rename = "type")]
    pub rule_type: String,
    pub severity: Severity,
    #[serde(with = "rust_decimal::serde::str_option", default)]
    pub value: Option<Decimal>,
    pub at: DateTime<Utc>,
    /// `condition_cleared`, `rule_disabled`, `rule_deleted`, `rule_changed`.
    pub reason: String,
    /// Empty unless the rule notifies resolutions.
    pub notify: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", content = "data")]
pub enum AlertRuleEvent {
    AlertRuleCreated(RuleDetails),
    AlertRuleUpdated(RuleDetails),
    AlertRuleDeleted {},
    AlertFired(Firing),
    AlertResolved(Resolution),
}

impl DomainEvent for AlertRuleEvent {
    fn event_type(&self) -> String {
        match self {
            AlertRuleEvent::AlertRuleCreated(_) => "AlertRuleCreated",
            AlertRuleEvent::AlertRuleUpdated(_) => "AlertRuleUpdated",
            AlertRuleEvent::AlertRuleDeleted {} => "AlertRuleDeleted",
            AlertRuleEvent::AlertFired(_) => "AlertFired",
            AlertRuleEvent::AlertResolved(_) => "AlertResolved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A validated channel, without its secret (kept outside the log, sql/V18).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ChannelDetails {
    pub name: String,
    pub kind: ChannelKind,
    /// Kind-specific settings (`url`, `timeout_ms`; SMTP host, port, security, from, to).
    pub config: Value,
    pub has_secret: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Webhook,
    Dingtalk,
    Wecom,
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Dingtalk => "dingtalk",
            ChannelKind::Wecom => "wecom",
            ChannelKind::Email => "email",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", content = "data")]
pub enum ChannelEvent {
    NotificationChannelCreated(ChannelDetails),
    NotificationChannelUpdated(ChannelDetails),
    NotificationChannelDeleted {},
}

impl DomainEvent for ChannelEvent {
    fn event_type(&self) -> String {
        match self {
            ChannelEvent::NotificationChannelCreated(_) => "NotificationChannelCreated",
            ChannelEvent::NotificationChannelUpdated(_) => "NotificationChannelUpdated",
            ChannelEvent::NotificationChannelDeleted {} => "NotificationChannelDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
