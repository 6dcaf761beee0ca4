//! Commands of the alerts context and the drafts they carry (unvalidated input).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::condition::Severity;
use super::events::ChannelKind;

/// What a client sends to create or replace an alert rule. Validated by the aggregate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleDraft {
    /// 1–200 characters, not only blanks.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// `budget_threshold`, `cost_threshold`, `cost_anomaly` or `metric_threshold`.
    #[serde(rename = "type")]
    #[schema(example = "metric_threshold")]
    pub rule_type: String,
    /// Depends on `type`; see README "Alert rules".
    #[schema(value_type = Object)]
    pub condition: Value,
    /// Notification channel ids (at most 20).
    #[serde(default)]
    pub notify: Vec<Uuid>,
    /// `info`, `warning` (default) or `critical`.
    #[serde(default)]
    pub severity: Option<Severity>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Seconds after an episode fired during which the same key does not fire again
    /// (default 300, at most 7 days).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800)]
    pub cooldown: Option<u32>,
    /// Notify the end of an episode too (default false: one notification per episode).
    #[serde(default)]
    pub notify_resolved: Option<bool>,
}

/// What the evaluator measured for one key of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub key: String,
    /// Whether the condition holds now.
    pub breached: bool,
    pub value: Option<Decimal>,
    pub threshold: Option<Decimal>,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
    pub details: Value,
    /// Why the condition no longer holds, for a clear (`condition_cleared`, `no_data`,
    /// `period_ended`, `budget_deleted`, `anomaly_ended`).
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlertRuleCommand {
    CreateRule(RuleDraft),
    UpdateRule(RuleDraft),
    DeleteRule,
    /// From the evaluator: fires an episode, resolves one, or does nothing.
    Observe(Observation),
}

/// What a client sends to create or replace a notification channel.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelDraft {
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    pub kind: ChannelKind,
    /// `webhook`, `dingtalk`, `wecom`: `{url, timeout_ms?}`; `email`: `{host, port?,
    /// security?: starttls|tls|none, username?, from, to: [..], timeout_ms?}`.
    #[schema(value_type = Object)]
    pub config: Value,
    /// The webhook's HMAC key (required for `webhook`), DingTalk's signing secret, or
    /// the SMTP password. Write-only: never returned; omitted on a replace, the stored
    /// one is kept.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500)]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChannelCommand {
    CreateChannel(ChannelDraft),
    UpdateChannel(ChannelDraft),
    DeleteChannel,
}
