//! Reads of the budgets context; they touch only `budgets_view`.
//!
//! Each query is a named constant, prepared once per read connection (`ReadConnection`):
//! a point read is then one round trip, pipelined with the others on that connection
//! (ARCHITECTURE.md, "How a query stays fast").

use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::types::Json;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{QueryError, ReadConnection};

macro_rules! columns {
    () => {
        "id, version, name, amount, currency, period, budget_type, start_date, end_date, \
         tag_filter, service_filter, alert_thresholds, account, created_at, updated_at"
    };
}

const GET_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM budgets_view WHERE tenant_id = $1 AND id = $2"
);

/// One statement per filter combination, so each prepared plan can use its index
/// (`account`: btree; `tag`: GIN) instead of a generic plan around `$n IS NULL OR …`.
macro_rules! list_sql {
    ($filter:literal) => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM budgets_view WHERE tenant_id = $1 AND id > $2",
            $filter,
            " ORDER BY id LIMIT $3"
        )
    };
}
const LIST_SQL: &str = list_sql!("");
const LIST_ACCOUNT_SQL: &str = list_sql!(" AND account = $4");
const LIST_TAG_SQL: &str = list_sql!(" AND tag_filter @> $4");
const LIST_ACCOUNT_TAG_SQL: &str = list_sql!(" AND account = $4 AND tag_filter @> $5");

/// A budget as clients read it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetView {
    pub id: Uuid,
    pub version: i64,
    pub name: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "1200.5")]
    pub amount: Decimal,
    pub currency: String,
    pub period: String,
    #[serde(rename = "type")]
    pub budget_type: String,
    #[schema(value_type = String, format = Date)]
    pub start_date: NaiveDate,
    #[schema(value_type = Option<String>, format = Date)]
    pub end_date: Option<NaiveDate>,
    /// JSONB columns are passed through as stored (no JSON tree is built per request).
    #[schema(value_type = Object)]
    pub tag_filter: Box<RawValue>,
    #[schema(value_type = Vec<String>)]
    pub service_filter: Box<RawValue>,
    /// Percents as decimal strings.
    #[schema(value_type = Vec<String>)]
    pub alert_thresholds: Box<RawValue>,
    pub account: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ALERTS_SQL: &str = "\
SELECT period_start, period_end, percent, basis, observed_percent, spent, forecast, as_of,
       import_id, crossed_at, position
  FROM budget_alerts WHERE tenant_id = $1 AND budget_id = $2 ORDER BY position";

/// A threshold crossing (`BudgetThresholdCrossed`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertView {
    #[schema(value_type = String, format = Date)]
    pub period_start: NaiveDate,
    /// First day after the period.
    #[schema(value_type = String, format = Date)]
    pub period_end: NaiveDate,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "80")]
    pub percent: Decimal,
    /// `actual` or `forecast`.
    pub basis: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub observed_percent: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub spent: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>)]
    pub forecast: Option<Decimal>,
    #[schema(value_type = String, format = Date)]
    pub as_of: NaiveDate,
    pub import_id: Option<Uuid>,
    pub crossed_at: DateTime<Utc>,
    pub position: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertList {
    pub items: Vec<AlertView>,
}

pub async fn alerts(
    conn: &ReadConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Vec<AlertView>, QueryError> {
    conn.query(ALERTS_SQL, &[&tenant, &id])
        .await?
        .iter()
        .map(|r| {
            Ok(AlertView {
                period_start: r.try_get(0)?,
                period_end: r.try_get(1)?,
                percent: r.try_get(2)?,
                basis: r.try_get(3)?,
                observed_percent: r.try_get(4)?,
                spent: r.try_get(5)?,
                forecast: r.try_get(6)?,
                as_of: r.try_get(7)?,
                import_id: r.try_get(8)?,
                crossed_at: r.try_get(9)?,
                position: r.try_get(10)?,
            })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetPage {
    pub items: Vec<BudgetView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of the list query, already checked.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub account: Option<String>,
    /// `{key: value}` that `tag_filter` must contain.
    pub tag: Option<(String, String)>,
    pub after: Option<Uuid>,
    pub limit: i64,
}

pub fn encode_cursor(id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub fn decode_cursor(cursor: &str) -> Option<Uuid> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    Uuid::from_slice(&bytes).ok()
}

fn view(row: &Row) -> Result<BudgetView, tokio_postgres::Error> {
    Ok(BudgetView {
        id: row.try_get(0)?,
        version: row.try_get(1)?,
        name: row.try_get(2)?,
        amount: row.try_get(3)?,
        currency: row.try_get(4)?,
        period: row.try_get(5)?,
        budget_type: row.try_get(6)?,
        start_date: row.try_get(7)?,
        end_date: row.try_get(8)?,
        tag_filter: row.try_get::<_, Json<Box<RawValue>>>(9)?.0,
        service_filter: row.try_get::<_, Json<Box<RawValue>>>(10)?.0,
        alert_thresholds: row.try_get::<_, Json<Box<RawValue>>>(11)?.0,
        account: row.try_get(12)?,
        created_at: row.try_get(13)?,
        updated_at: row.try_get(14)?,
    })
}

pub async fn get(
    conn: &ReadConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<BudgetView>, QueryError> {
    Ok(conn
        .query_opt(GET_SQL, &[&tenant, &id])
        .await?
        .as_ref()
        .map(view)
        .transpose()?)
}

/// Keyset pagination by id (UUIDv7, so roughly creation order).
pub async fn list(
    conn: &ReadConnection,
    tenant: &str,
    f: &ListFilter,
) -> Result<BudgetPage, QueryError> {
    let tag = f.tag.as_ref().map(|(k, v)| serde_json::json!({ k: v }));
    let after = f.after.unwrap_or(Uuid::nil());
    let limit = f.limit + 1;
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&tenant, &after, &limit];
    let sql = match (&f.account, &tag) {
        (None, None) => LIST_SQL,
        (Some(account), None) => {
            params.push(account);
            LIST_ACCOUNT_SQL
        }
        (None, Some(tag)) => {
            params.push(tag);
            LIST_TAG_SQL
        }
        (Some(account), Some(tag)) => {
            params.push(account);
            params.push(tag);
            LIST_ACCOUNT_TAG_SQL
        }
    };
    let rows = conn.query(sql, &params).await?;
    let mut items = rows.iter().map(view).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() as i64 > f.limit {
        items.truncate(f.limit as usize);
        items.last().map(|b| encode_cursor(b.id))
    } else {
        None
    };
    Ok(BudgetPage { items, next_cursor })
}
