//! Reads of the budgets context; they touch only `budgets_view`.
//!
//! Each query is a named constant, prepared once per read connection (`ReadConnection`):
//! a point read is then one round trip, pipelined with the others on that connection
//! (ARCHITECTURE.md, "How a query stays fast"). A budget's JSON is stored in its row
//! (`doc`, written by the projector, ADR 0032): a read adds `version` and `created_at`
//! and passes it on, with nothing decoded and nothing encoded per field.

use std::fmt::Write as _;

use base64::Engine;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{QueryError, ReadConnection};

macro_rules! columns {
    () => {
        "id, version, created_at, doc"
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

/// What `budgets_view.doc` holds: a budget as clients read it (`BudgetView`) but for
/// `version` and `created_at`, which a read adds from their columns (a threshold crossing
/// moves the version and an update keeps the creation time, without rewriting the row).
#[derive(Debug, Serialize)]
pub struct BudgetDoc<'a> {
    pub id: Uuid,
    pub name: &'a str,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: &'a str,
    pub period: &'a str,
    #[serde(rename = "type")]
    pub budget_type: &'a str,
    pub start_date: NaiveDate,
    pub end_date: Option<NaiveDate>,
    pub tag_filter: &'a Value,
    pub service_filter: &'a Value,
    pub alert_thresholds: &'a Value,
    pub account: Option<&'a str>,
    pub updated_at: DateTime<Utc>,
}

impl BudgetDoc<'_> {
    /// The text stored in `doc`.
    pub fn render(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// A budget as clients read it: the schema of the JSON the reads return (a stored `doc`
/// with `version` and `created_at` added).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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

/// The schema of a page of budgets (the list returns it as JSON text, see `list`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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

/// A budget as JSON text (a `BudgetView`): the stored `doc` with `version` and
/// `created_at` appended, written to `out`. Returns the budget's id and version.
fn write_budget(row: &Row, out: &mut String) -> Result<(Uuid, i64), QueryError> {
    let id: Uuid = row.try_get(0)?;
    let version: i64 = row.try_get(1)?;
    let created_at: DateTime<Utc> = row.try_get(2)?;
    let doc: &str = row.try_get(3)?;
    // A JSON object: the table's CHECK (sql/V29) holds that it ends with `}`.
    out.push_str(doc.strip_suffix('}').unwrap_or(doc));
    // Chrono's serde format, as every other time the API returns.
    let _ = write!(
        out,
        ",\"version\":{version},\"created_at\":\"{}\"}}",
        created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    );
    Ok((id, version))
}

/// A budget read by id: its JSON text and its version (the ETag).
pub struct BudgetJson {
    pub json: String,
    pub version: i64,
}

pub async fn get(
    conn: &ReadConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<BudgetJson>, QueryError> {
    let Some(row) = conn.query_opt(GET_SQL, &[&tenant, &id]).await? else {
        return Ok(None);
    };
    let mut json = String::with_capacity(512);
    let (_, version) = write_budget(&row, &mut json)?;
    Ok(Some(BudgetJson { json, version }))
}

/// Keyset pagination by id (UUIDv7, so roughly creation order): a `BudgetPage` as JSON
/// text.
pub async fn list(
    conn: &ReadConnection,
    tenant: &str,
    f: &ListFilter,
) -> Result<String, QueryError> {
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
    // A `BudgetPage` as JSON text.
    let shown = rows.len().min(f.limit as usize);
    let mut json = String::with_capacity(64 + 512 * shown);
    json.push_str("{\"items\":[");
    let mut last = None;
    for (i, row) in rows.iter().take(shown).enumerate() {
        if i > 0 {
            json.push(',');
        }
        last = Some(write_budget(row, &mut json)?.0);
    }
    json.push_str("],\"next_cursor\":");
    match last.filter(|_| rows.len() > shown) {
        Some(id) => {
            let _ = write!(json, "\"{}\"}}", encode_cursor(id));
        }
        None => json.push_str("null}"),
    }
    Ok(json)
}
