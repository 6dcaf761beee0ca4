//! The alerts projectors. `alert_rules` keeps `alert_rules` (one row per live rule, with
//! its open episodes) and `alerts` (one row per episode, kept after the rule is deleted:
//! it is the alert history); `notification_channels` keeps `notification_channels`.
//! A batch is folded in memory and written set-wise.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::aggregate::{AlertRule, NotificationChannel};
use super::events::{AlertRuleEvent, ChannelDetails, ChannelEvent, RuleDetails};
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Envelope, Projector};

pub const RULES: &str = "alert_rules";
pub const CHANNELS: &str = "notification_channels";

pub static ALERT_RULES: ReadModel = ReadModel {
    table: "alert_rules",
    key: &["id"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("id", Type::UUID),
        col("version", Type::INT8),
        col("name", Type::TEXT),
        col("type", Type::TEXT),
        col("condition", Type::JSONB),
        col("notify", Type::JSONB),
        col("severity", Type::TEXT),
        col("enabled", Type::BOOL),
        col("cooldown_seconds", Type::INT4),
        col("notify_resolved", Type::BOOL),
        col("firing", Type::JSONB),
        col("created_at", Type::TIMESTAMPTZ),
        col("updated_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &["created_at", "firing"],
    newer: Some("version"),
};

pub static ALERTS: ReadModel = ReadModel {
    table: "alerts",
    key: &["rule_id", "episode"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("rule_id", Type::UUID),
        col("episode", Type::INT4),
        col("key", Type::TEXT),
        col("rule_name", Type::TEXT),
        col("type", Type::TEXT),
        col("severity", Type::TEXT),
        col("state", Type::TEXT),
        col("value", Type::NUMERIC),
        col("threshold", Type::NUMERIC),
        col("window_start", Type::TIMESTAMPTZ),
        col("window_end", Type::TIMESTAMPTZ),
        col("fired_at", Type::TIMESTAMPTZ),
        col("resolved_at", Type::TIMESTAMPTZ),
        col("resolved_value", Type::NUMERIC),
        col("details", Type::JSONB),
    ],
    keep_on_update: &[],
    newer: None,
};

pub static NOTIFICATION_CHANNELS: ReadModel = ReadModel {
    table: "notification_channels",
    key: &["id"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("id", Type::UUID),
        col("version", Type::INT8),
        col("name", Type::TEXT),
        col("kind", Type::TEXT),
        col("config", Type::JSONB),
        col("has_secret", Type::BOOL),
        col("created_at", Type::TIMESTAMPTZ),
        col("updated_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &["created_at"],
    newer: Some("version"),
};

struct RuleRow {
    tenant: String,
    id: Uuid,
    version: i64,
    details: RuleDetails,
    rule_type: &'static str,
    severity: &'static str,
    cooldown: i32,
    condition: Value,
    notify: Value,
    firing: Value,
    created_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl Row for RuleRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        let d = &self.details;
        vec![
            &self.tenant,
            &self.id,
            &self.version,
            &d.name,
            &self.rule_type,
            &self.condition,
            &self.notify,
            &self.severity,
            &d.enabled,
            &self.cooldown,
            &d.notify_resolved,
            &self.firing,
            self.created_at.as_ref().unwrap_or(&self.updated_at),
            &self.updated_at,
        ]
    }
}

struct AlertRow {
    tenant: String,
    rule_id: Uuid,
    episode: i32,
    key: String,
    rule_name: String,
    rule_type: String,
    severity: &'static str,
    state: &'static str,
    value: Option<Decimal>,
    threshold: Option<Decimal>,
    window_start: Option<DateTime<Utc>>,
    window_end: Option<DateTime<Utc>>,
    fired_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
    resolved_value: Option<Decimal>,
    details: Value,
}

impl Row for AlertRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant,
            &self.rule_id,
            &self.episode,
            &self.key,
            &self.rule_name,
            &self.rule_type,
            &self.severity,
            &self.state,
            &self.value,
            &self.threshold,
            &self.window_start,
            &self.window_end,
            &self.fired_at,
            &self.resolved_at,
            &self.resolved_value,
            &self.details,
        ]
    }
}

/// Episodes that fired in an earlier batch and end in this one.
const RESOLVE_SQL: &str = "\
UPDATE alerts a
   SET state = 'resolved', resolved_at = u.at, resolved_value = u.value,
       details = a.details || jsonb_build_object('resolved_reason', u.reason)
  FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::numeric[], $5::text[])
       AS u(rule_id, episode, at, value, reason)
 WHERE a.rule_id = u.rule_id AND a.episode = u.episode";

pub struct AlertRulesProjector;

/// What a batch does to one rule beyond its details.
#[derive(Default)]
struct Patch {
    version: i64,
    /// key → Some(episode) opened, None closed; the last change per key wins.
    keys: BTreeMap<String, Option<u32>>,
}

#[async_trait]
impl Projector for AlertRulesProjector {
    type Aggregate = AlertRule;
    const NAME: &'static str = RULES;
    const READ_MODELS: &'static [&'static ReadModel] = &[&ALERT_RULES, &ALERTS];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<AlertRuleEvent>>,
    ) -> anyhow::Result<()> {
        let mut rules: HashMap<Uuid, Option<RuleRow>> = HashMap::new();
        let mut patches: HashMap<Uuid, Patch> = HashMap::new();
        let mut fired: BTreeMap<(Uuid, i32), AlertRow> = BTreeMap::new();
        let mut resolved = Vec::new();
        for e in events {
            let patch = patches.entry(e.stream_id).or_default();
            patch.version = patch.version.max(e.version);
            match e.event {
                AlertRuleEvent::AlertRuleCreated(d) | AlertRuleEvent::AlertRuleUpdated(d) => {
                    let created_at = match rules.get(&e.stream_id) {
                        Some(Some(earlier)) => earlier.created_at,
                        _ if e.version == 1 => Some(e.recorded_at),
                        _ => None,
                    };
                    rules.insert(
                        e.stream_id,
                        Some(RuleRow {
                            tenant: e.tenant_id,
                            id: e.stream_id,
                            version: e.version,
                            rule_type: d.condition.type_name(),
                            severity: d.severity.as_str(),
                            cooldown: i32::try_from(d.cooldown_seconds)?,
                            condition: d.condition.to_json()?,
                            notify: serde_json::to_value(&d.notify)?,
                            firing: Value::Object(Default::default()),
                            details: d,
                            created_at,
                            updated_at: e.recorded_at,
                        }),
                    );
                }
                AlertRuleEvent::AlertRuleDeleted {} => {
                    rules.insert(e.stream_id, None);
                }
                AlertRuleEvent::AlertFired(f) => {
                    patch.keys.insert(f.key.clone(), Some(f.episode));
                    let episode = i32::try_from(f.episode)?;
                    fired.insert(
                        (e.stream_id, episode),
                        AlertRow {
                            tenant: e.tenant_id,
                            rule_id: e.stream_id,
                            episode,
                            key: f.key,
                            rule_name: f.rule_name,
                            rule_type: f.rule_type,
                            severity: f.severity.as_str(),
                            state: "firing",
                            value: f.value,
                            threshold: f.threshold,
                            window_start: f.window_start,
                            window_end: f.window_end,
                            fired_at: f.at,
                            resolved_at: None,
                            resolved_value: None,
                            details: f.details,
                        },
                    );
                }
                AlertRuleEvent::AlertResolved(r) => {
                    patch.keys.insert(r.key.clone(), None);
                    let episode = i32::try_from(r.episode)?;
                    match fired.get_mut(&(e.stream_id, episode)) {
                        Some(row) => {
                            row.state = "resolved";
                            row.resolved_at = Some(r.at);
                            row.resolved_value = r.value;
                            if let Value::Object(m) = &mut row.details {
                                m.insert("resolved_reason".into(), Value::from(r.reason));
                            }
                        }
                        None => resolved.push((e.stream_id, episode, r.at, r.value, r.reason)),
                    }
                }
            }
        }
        let (mut inserts, mut updates, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for (id, row) in rules {
            match row {
                Some(row) if row.version == 1 => inserts.push(row),
                Some(row) => updates.push(row),
                None => deletes.push(id),
            }
        }
        ALERT_RULES.insert(tx, &inserts).await?;
        ALERT_RULES.upsert(tx, &updates).await?;
        let fired: Vec<AlertRow> = fired.into_values().collect();
        ALERTS.insert(tx, &fired).await?;
        if !resolved.is_empty() {
            let ids: Vec<Uuid> = resolved.iter().map(|r| r.0).collect();
            let episodes: Vec<i32> = resolved.iter().map(|r| r.1).collect();
            let at: Vec<DateTime<Utc>> = resolved.iter().map(|r| r.2).collect();
            let values: Vec<Option<Decimal>> = resolved.iter().map(|r| r.3).collect();
            let reasons: Vec<&str> = resolved.iter().map(|r| r.4.as_str()).collect();
            tx.execute(RESOLVE_SQL, &[&ids, &episodes, &at, &values, &reasons])
                .await?;
        }
        if !patches.is_empty() {
            let mut ids = Vec::new();
            let mut versions = Vec::new();
            let mut closed: Vec<Vec<String>> = Vec::new();
            let mut opened = Vec::new();
            // Created/Updated rows carry their version already: only episodes patch.
            for (id, p) in patches.into_iter().filter(|(_, p)| !p.keys.is_empty()) {
                ids.push(id);
                versions.push(p.version);
                let mut open = serde_json::Map::new();
                let mut shut = Vec::new();
                for (k, v) in p.keys {
                    match v {
                        Some(ep) => {
                            open.insert(k, Value::from(ep));
                        }
                        None => shut.push(k),
                    }
                }
                closed.push(shut);
                opened.push(Value::Object(open));
            }
            let closed: Vec<Value> = closed.into_iter().map(Value::from).collect();
            tx.execute(PATCH_RULES_SQL, &[&ids, &versions, &closed, &opened])
                .await?;
        }
        ALERT_RULES.delete(tx, &deletes).await?;
        Ok(())
    }
}

/// Every event moves the rule's version (its ETag) and may open or close episodes:
/// `firing` loses the keys closed and gains the ones opened. The closed keys of each rule
/// are a JSON array (a `text[][]` must be rectangular).
const PATCH_RULES_SQL: &str = "\
UPDATE alert_rules r
   SET version = greatest(r.version, u.version),
       firing = (r.firing - ARRAY(SELECT jsonb_array_elements_text(u.closed))) || u.opened
  FROM unnest($1::uuid[], $2::bigint[], $3::jsonb[], $4::jsonb[])
       AS u(id, version, closed, opened)
 WHERE r.id = u.id";

struct ChannelRow {
    tenant: String,
    kind: &'static str,
    id: Uuid,
    version: i64,
    details: ChannelDetails,
    created_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl Row for ChannelRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        let d = &self.details;
        vec![
            &self.tenant,
            &self.id,
            &self.version,
            &d.name,
            &self.kind,
            &d.config,
            &d.has_secret,
            self.created_at.as_ref().unwrap_or(&self.updated_at),
            &self.updated_at,
        ]
    }
}

pub struct ChannelsProjector;

#[async_trait]
impl Projector for ChannelsProjector {
    type Aggregate = NotificationChannel;
    const NAME: &'static str = CHANNELS;
    const READ_MODELS: &'static [&'static ReadModel] = &[&NOTIFICATION_CHANNELS];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<ChannelEvent>>,
    ) -> anyhow::Result<()> {
        let mut last: HashMap<Uuid, Option<ChannelRow>> = HashMap::new();
        for e in events {
            let row = match e.event {
                ChannelEvent::NotificationChannelCreated(d)
                | ChannelEvent::NotificationChannelUpdated(d) => Some(ChannelRow {
                    created_at: match last.get(&e.stream_id) {
                        Some(Some(earlier)) => earlier.created_at,
                        _ if e.version == 1 => Some(e.recorded_at),
                        _ => None,
                    },
                    tenant: e.tenant_id,
                    kind: d.kind.as_str(),
                    id: e.stream_id,
                    version: e.version,
                    details: d,
                    updated_at: e.recorded_at,
                }),
                ChannelEvent::NotificationChannelDeleted {} => None,
            };
            last.insert(e.stream_id, row);
        }
        let (mut rows, mut deletes) = (Vec::new(), Vec::new());
        for (id, row) in last {
            match row {
                Some(r) => rows.push(r),
                None => deletes.push(id),
            }
        }
        NOTIFICATION_CHANNELS.upsert(tx, &rows).await?;
        NOTIFICATION_CHANNELS.delete(tx, &deletes).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_read_model_declarations_are_valid() {
        super::ALERT_RULES.check().unwrap();
        super::ALERTS.check().unwrap();
        super::NOTIFICATION_CHANNELS.check().unwrap();
    }
}
