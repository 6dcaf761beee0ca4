//! Reads of the alerts context: rules, episodes (`alerts`), channels and the delivery
//! log (`notification_outbox`). Named constants, keyset-paginated, tenant-scoped.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::types::Json;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{QueryError, ReadConnection};

const GET_RULE_SQL: &str = "\
SELECT id, version, name, type, condition, notify, severity, enabled, cooldown_seconds,
       notify_resolved, firing, created_at, updated_at
  FROM alert_rules WHERE tenant_id = $1 AND id = $2";
const LIST_RULES_SQL: &str = "\
SELECT id, version, name, type, condition, notify, severity, enabled, cooldown_seconds,
       notify_resolved, firing, created_at, updated_at
  FROM alert_rules WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3";

/// An alert rule as clients read it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    pub id: Uuid,
    pub version: i64,
    pub name: String,
    #[serde(rename = "type")]
    pub rule_type: String,
    /// As written by the client (defaults filled in).
    #[schema(value_type = Object)]
    pub condition: Box<RawValue>,
    #[schema(value_type = Vec<Uuid>)]
    pub notify: Box<RawValue>,
    pub severity: String,
    pub enabled: bool,
    pub cooldown: i32,
    pub notify_resolved: bool,
    /// Open episodes by key.
    #[schema(value_type = Object)]
    pub firing: Box<RawValue>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn raw(row: &Row, i: usize) -> Result<Box<RawValue>, QueryError> {
    let Json(v): Json<Box<RawValue>> = row.try_get(i)?;
    Ok(v)
}

fn rule(row: &Row) -> Result<RuleView, QueryError> {
    Ok(RuleView {
        id: row.try_get(0)?,
        version: row.try_get(1)?,
        name: row.try_get(2)?,
        rule_type: row.try_get(3)?,
        condition: raw(row, 4)?,
        notify: raw(row, 5)?,
        severity: row.try_get(6)?,
        enabled: row.try_get(7)?,
        cooldown: row.try_get(8)?,
        notify_resolved: row.try_get(9)?,
        firing: raw(row, 10)?,
        created_at: row.try_get(11)?,
        updated_at: row.try_get(12)?,
    })
}

pub async fn get_rule(
    conn: &ReadConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<RuleView>, QueryError> {
    conn.query_opt(GET_RULE_SQL, &[&tenant, &id])
        .await?
        .as_ref()
        .map(rule)
        .transpose()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RulePage {
    pub items: Vec<RuleView>,
    pub next_cursor: Option<String>,
}

pub async fn list_rules(
    conn: &ReadConnection,
    tenant: &str,
    after: Option<Uuid>,
    limit: i64,
) -> Result<RulePage, QueryError> {
    let rows = conn
        .query(
            LIST_RULES_SQL,
            &[&tenant, &after.unwrap_or(Uuid::nil()), &limit],
        )
        .await?;
    let items = rows.iter().map(rule).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|r| crate::db::cursor::encode(&r.id)))
        .flatten();
    Ok(RulePage { items, next_cursor })
}

/// One episode of a rule.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    pub rule_id: Uuid,
    pub episode: i32,
    pub key: String,
    pub rule_name: String,
    #[serde(rename = "type")]
    pub rule_type: String,
    pub severity: String,
    /// `firing` or `resolved`.
    pub state: String,
    #[schema(value_type = Option<String>)]
    #[serde(with = "rust_decimal::serde::str_option")]
    pub value: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    #[serde(with = "rust_decimal::serde::str_option")]
    pub threshold: Option<Decimal>,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub fired_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<String>)]
    #[serde(with = "rust_decimal::serde::str_option")]
    pub resolved_value: Option<Decimal>,
    #[schema(value_type = Object)]
    pub details: Box<RawValue>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertPage {
    pub items: Vec<AlertView>,
    pub next_cursor: Option<String>,
}

macro_rules! alerts_sql {
    ($filter:literal) => {
        concat!(
            "SELECT rule_id, episode, key, rule_name, type, severity, state, value, threshold,
                    window_start, window_end, fired_at, resolved_at, resolved_value, details
               FROM alerts
              WHERE tenant_id = $1 AND state = ANY($2) AND fired_at >= $3 AND fired_at < $4
                AND (fired_at, rule_id, episode) < ($5, $6, $7)",
            $filter,
            " ORDER BY fired_at DESC, rule_id DESC, episode DESC LIMIT $8"
        )
    };
}
const ALERTS_SQL: &str = alerts_sql!("");
const ALERTS_RULE_SQL: &str = alerts_sql!(" AND rule_id = $9");

/// The widest `from`/`to` of a filter (what PostgreSQL and chrono both represent).
pub fn all_time() -> (DateTime<Utc>, DateTime<Utc>) {
    let at = |y, m, d| {
        chrono::NaiveDate::from_ymd_opt(y, m, d)
            .unwrap_or_default()
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
    };
    (at(1970, 1, 1), at(9999, 12, 31))
}

/// Which episodes to list.
pub struct AlertFilter {
    pub states: Vec<String>,
    pub rule: Option<Uuid>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The last row of the previous page: (fired_at, rule_id, episode).
    pub after: Option<(DateTime<Utc>, Uuid, i32)>,
    pub limit: i64,
}

pub async fn list_alerts(
    conn: &ReadConnection,
    tenant: &str,
    f: &AlertFilter,
) -> Result<AlertPage, QueryError> {
    let (at, rule, episode) = f.after.unwrap_or((all_time().1, Uuid::max(), i32::MAX));
    let base: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &tenant, &f.states, &f.from, &f.to, &at, &rule, &episode, &f.limit,
    ];
    let rows = match &f.rule {
        None => conn.query(ALERTS_SQL, &base).await?,
        Some(r) => {
            let mut p = base.to_vec();
            p.push(r);
            conn.query(ALERTS_RULE_SQL, &p).await?
        }
    };
    let items = rows
        .iter()
        .map(|row| {
            Ok(AlertView {
                rule_id: row.try_get(0)?,
                episode: row.try_get(1)?,
                key: row.try_get(2)?,
                rule_name: row.try_get(3)?,
                rule_type: row.try_get(4)?,
                severity: row.try_get(5)?,
                state: row.try_get(6)?,
                value: row.try_get(7)?,
                threshold: row.try_get(8)?,
                window_start: row.try_get(9)?,
                window_end: row.try_get(10)?,
                fired_at: row.try_get(11)?,
                resolved_at: row.try_get(12)?,
                resolved_value: row.try_get(13)?,
                details: raw(row, 14)?,
            })
        })
        .collect::<Result<Vec<_>, QueryError>>()?;
    let next_cursor = (items.len() as i64 == f.limit)
        .then(|| {
            items
                .last()
                .map(|a| crate::db::cursor::encode(&(a.fired_at, a.rule_id, a.episode)))
        })
        .flatten();
    Ok(AlertPage { items, next_cursor })
}

const GET_CHANNEL_SQL: &str = "\
SELECT id, version, name, kind, config, has_secret, created_at, updated_at
  FROM notification_channels WHERE tenant_id = $1 AND id = $2";
const LIST_CHANNELS_SQL: &str = "\
SELECT id, version, name, kind, config, has_secret, created_at, updated_at
  FROM notification_channels WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3";

/// A channel as clients read it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelView {
    pub id: Uuid,
    pub version: i64,
    pub name: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub config: Box<RawValue>,
    pub has_secret: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn channel(row: &Row) -> Result<ChannelView, QueryError> {
    Ok(ChannelView {
        id: row.try_get(0)?,
        version: row.try_get(1)?,
        name: row.try_get(2)?,
        kind: row.try_get(3)?,
        config: raw(row, 4)?,
        has_secret: row.try_get(5)?,
        created_at: row.try_get(6)?,
        updated_at: row.try_get(7)?,
    })
}

pub async fn get_channel(
    conn: &ReadConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<ChannelView>, QueryError> {
    conn.query_opt(GET_CHANNEL_SQL, &[&tenant, &id])
        .await?
        .as_ref()
        .map(channel)
        .transpose()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelPage {
    pub items: Vec<ChannelView>,
    pub next_cursor: Option<String>,
}

pub async fn list_channels(
    conn: &ReadConnection,
    tenant: &str,
    after: Option<Uuid>,
    limit: i64,
) -> Result<ChannelPage, QueryError> {
    let rows = conn
        .query(
            LIST_CHANNELS_SQL,
            &[&tenant, &after.unwrap_or(Uuid::nil()), &limit],
        )
        .await?;
    let items = rows.iter().map(channel).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|c| crate::db::cursor::encode(&c.id)))
        .flatten();
    Ok(ChannelPage { items, next_cursor })
}

/// One notification in the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    pub id: i64,
    pub channel_id: Uuid,
    pub rule_id: Option<Uuid>,
    pub episode: Option<i32>,
    /// `firing`, `resolved` or `test`.
    pub kind: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub message: Box<RawValue>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationView>,
    pub next_cursor: Option<String>,
}

macro_rules! notifications_sql {
    ($filter:literal) => {
        concat!(
            "SELECT id, channel_id, rule_id, episode, kind, state, attempts, next_attempt_at,
                    last_status, last_error, created_at, delivered_at, message
               FROM notification_outbox
              WHERE tenant_id = $1 AND state = ANY($2) AND id < $3",
            $filter,
            " ORDER BY id DESC LIMIT $4"
        )
    };
}
const NOTIFICATIONS_SQL: &str = notifications_sql!("");
const NOTIFICATIONS_CHANNEL_SQL: &str = notifications_sql!(" AND channel_id = $5");

pub async fn list_notifications(
    conn: &ReadConnection,
    tenant: &str,
    states: &[String],
    channel: Option<Uuid>,
    after: Option<i64>,
    limit: i64,
) -> Result<NotificationPage, QueryError> {
    let after = after.unwrap_or(i64::MAX);
    let rows = match channel {
        None => {
            conn.query(NOTIFICATIONS_SQL, &[&tenant, &states, &after, &limit])
                .await?
        }
        Some(c) => {
            conn.query(
                NOTIFICATIONS_CHANNEL_SQL,
                &[&tenant, &states, &after, &limit, &c],
            )
            .await?
        }
    };
    let items = rows
        .iter()
        .map(|row| {
            Ok(NotificationView {
                id: row.try_get(0)?,
                channel_id: row.try_get(1)?,
                rule_id: row.try_get(2)?,
                episode: row.try_get(3)?,
                kind: row.try_get(4)?,
                state: row.try_get(5)?,
                attempts: row.try_get(6)?,
                next_attempt_at: row.try_get(7)?,
                last_status: row.try_get(8)?,
                last_error: row.try_get(9)?,
                created_at: row.try_get(10)?,
                delivered_at: row.try_get(11)?,
                message: raw(row, 12)?,
            })
        })
        .collect::<Result<Vec<_>, QueryError>>()?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|n| crate::db::cursor::encode(&n.id)))
        .flatten();
    Ok(NotificationPage { items, next_cursor })
}
