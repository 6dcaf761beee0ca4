//! Reads of the costs context: accounts, imports, cost breakdowns, top lists and lines.
//!
//! Breakdowns read the daily rollup `cost_daily` whenever they can (grouping and
//! filtering by account, service, region or currency over whole UTC days), the daily tag
//! rollup `cost_daily_tags` for one `tag:KEY` group (with account and service groups),
//! and the raw `cost_lines` only for the rest (a region or resource with a tag, two tag
//! keys, virtual tags, a bound that is not midnight UTC). Their SQL is built from
//! whitelisted column names; every value is a bind parameter.

use base64::Engine;
use chrono::{DateTime, NaiveDate, Timelike, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::Client;
use utoipa::ToSchema;
use uuid::Uuid;

use std::collections::{BTreeMap, BTreeSet};

use super::allocation::{split, AllocationRuleDef, Method};
use super::budget_status::{Figures, Window};
use super::events::CurrencyTotal;
use crate::db::{QueryError, ReadConnection};

const ACCOUNTS_SQL: &str = "\
SELECT name, provider, external_id, currency, created_at FROM cost_accounts
 WHERE tenant_id = $1 ORDER BY name";
macro_rules! import_columns {
    () => {
        "import_id, account, format, sha256, periods, lines, lines_loaded, totals, state, \
         started_at, completed_at, position, restated_by"
    };
}
const IMPORT_SQL: &str = concat!(
    "SELECT ",
    import_columns!(),
    " FROM cost_imports WHERE tenant_id = $1 AND import_id = $2"
);
const IMPORTS_SQL: &str = concat!(
    "SELECT ",
    import_columns!(),
    " FROM cost_imports WHERE tenant_id = $1 AND ($2::text IS NULL OR account = $2)
      ORDER BY started_at DESC, import_id LIMIT 200"
);

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccountView {
    pub name: String,
    pub provider: String,
    pub external_id: Option<String>,
    pub currency: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccountList {
    pub items: Vec<AccountView>,
}

pub async fn accounts(conn: &ReadConnection, tenant: &str) -> Result<Vec<AccountView>, QueryError> {
    conn.query(ACCOUNTS_SQL, &[&tenant])
        .await?
        .iter()
        .map(|r| {
            Ok(AccountView {
                name: r.try_get(0)?,
                provider: r.try_get(1)?,
                external_id: r.try_get(2)?,
                currency: r.try_get(3)?,
                created_at: r.try_get(4)?,
            })
        })
        .collect()
}

/// An import and how far its lines are visible to queries.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportView {
    pub import_id: Uuid,
    pub account: String,
    pub format: String,
    pub sha256: String,
    /// The billing periods (first days) the file restates.
    #[schema(value_type = Vec<String>)]
    pub periods: Vec<NaiveDate>,
    pub lines: i64,
    /// Lines visible to queries so far.
    pub lines_loaded: i64,
    pub totals: Vec<CurrencyTotal>,
    /// `loading` while the projector writes the lines, then `complete`.
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The import's last event once complete (use as `min_position`).
    pub position: i64,
    /// A later import of the same account that restated (some of) these periods.
    pub restated_by: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportList {
    pub items: Vec<ImportView>,
}

fn import_view(r: &tokio_postgres::Row) -> Result<ImportView, QueryError> {
    let totals: Json<Vec<CurrencyTotal>> = r.try_get(7)?;
    Ok(ImportView {
        import_id: r.try_get(0)?,
        account: r.try_get(1)?,
        format: r.try_get(2)?,
        sha256: r.try_get(3)?,
        periods: r.try_get(4)?,
        lines: r.try_get(5)?,
        lines_loaded: r.try_get(6)?,
        totals: totals.0,
        state: r.try_get(8)?,
        started_at: r.try_get(9)?,
        completed_at: r.try_get(10)?,
        position: r.try_get(11)?,
        restated_by: r.try_get(12)?,
    })
}

pub async fn import(
    conn: &ReadConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<ImportView>, QueryError> {
    conn.query_opt(IMPORT_SQL, &[&tenant, &id])
        .await?
        .as_ref()
        .map(import_view)
        .transpose()
}

pub async fn imports(
    conn: &ReadConnection,
    tenant: &str,
    account: Option<&str>,
) -> Result<Vec<ImportView>, QueryError> {
    conn.query(IMPORTS_SQL, &[&tenant, &account])
        .await?
        .iter()
        .map(import_view)
        .collect()
}

// --- breakdowns ------------------------------------------------------------------------

/// Calendar buckets, UTC: days start at midnight, weeks on Monday, months on the 1st.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Day,
    Week,
    Month,
}

impl Bucket {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Bucket::Day),
            "week" => Some(Bucket::Week),
            "month" => Some(Bucket::Month),
            _ => None,
        }
    }

    fn interval(self) -> &'static str {
        match self {
            Bucket::Day => "1 day",
            // TimescaleDB's weeks start on Monday (origin 2000-01-03).
            Bucket::Week => "1 week",
            Bucket::Month => "1 month",
        }
    }
}

/// A dimension lines can be grouped or ranked by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Account,
    Service,
    Region,
    Resource,
    Tag(String),
    /// A virtual tag's value (`vtag:NAME`).
    VTag(String),
}

impl Dim {
    /// `account`, `service`, `region`, `tag:KEY` (and `resource` where allowed).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "account" => Some(Dim::Account),
            "service" => Some(Dim::Service),
            "region" => Some(Dim::Region),
            "resource" => Some(Dim::Resource),
            _ => {
                if let Some(name) = s.strip_prefix("vtag:") {
                    return crate::projections::readmodel::is_identifier(name)
                        .then(|| Dim::VTag(name.to_owned()));
                }
                let key = s.strip_prefix("tag:")?;
                (!key.is_empty() && key.chars().count() <= 200 && !key.contains('\0'))
                    .then(|| Dim::Tag(key.to_owned()))
            }
        }
    }

    pub fn label(&self) -> String {
        match self {
            Dim::Account => "account".into(),
            Dim::Service => "service".into(),
            Dim::Region => "region".into(),
            Dim::Resource => "resource".into(),
            Dim::Tag(k) => format!("tag:{k}"),
            Dim::VTag(n) => format!("vtag:{n}"),
        }
    }

    /// Whether the daily rollup has this column.
    fn in_rollup(&self) -> bool {
        matches!(self, Dim::Account | Dim::Service | Dim::Region)
    }
}

/// Filters shared by breakdowns, top lists and line pages.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub account: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
    pub resource: Option<String>,
    pub currency: Option<String>,
    /// `tag=KEY:VALUE`.
    pub tag: Option<(String, String)>,
}

impl Filters {
    /// Whether the rollup can answer these filters exactly.
    fn rollup_ok(&self) -> bool {
        let midnight = |t: &Option<DateTime<Utc>>| {
            t.is_none_or(|t| t.num_seconds_from_midnight() == 0 && t.nanosecond() == 0)
        };
        self.tag.is_none() && self.resource.is_none() && midnight(&self.from) && midnight(&self.to)
    }
}

/// SQL text with its bind parameters.
struct Sql {
    text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            params: Vec::new(),
        }
    }

    /// Binds a value; returns its placeholder.
    fn bind<T: ToSql + Sync + Send + 'static>(&mut self, v: T) -> String {
        self.params.push(Box::new(v));
        format!("${}", self.params.len())
    }

    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    async fn run(&self, conn: &Client) -> Result<Vec<tokio_postgres::Row>, QueryError> {
        let params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect();
        Ok(conn.query(self.text.as_str(), &params).await?)
    }
}

/// The source a query reads: the rollup or the raw lines.
struct Source {
    table: &'static str,
    time: &'static str,
}

const ROLLUP: Source = Source {
    table: "cost_daily",
    time: "day",
};
const LINES: Source = Source {
    table: "cost_lines",
    time: "charge_start",
};
const TAG_ROLLUP: Source = Source {
    table: "cost_daily_tags",
    time: "day",
};

/// The expression of a dimension, binding a tag key as a parameter.
fn dim_sql(sql: &mut Sql, d: &Dim) -> String {
    match d {
        Dim::Account => "account".into(),
        Dim::Service => "service".into(),
        Dim::Region => "region".into(),
        Dim::Resource => "resource".into(),
        Dim::Tag(k) => {
            let p = sql.bind(k.clone());
            format!("(tags ->> {p}::text)")
        }
        Dim::VTag(n) => {
            let p = sql.bind(n.clone());
            format!("(vtags ->> {p}::text)")
        }
    }
}

/// ` WHERE tenant_id = … AND …` for `f` over `src`.
fn where_sql(sql: &mut Sql, tenant: &str, src: &Source, f: &Filters) {
    let p = sql.bind(tenant.to_owned());
    sql.push(&format!(" WHERE tenant_id = {p}"));
    if let Some(from) = f.from {
        let p = sql.bind(from);
        sql.push(&format!(" AND {} >= {p}", src.time));
    }
    if let Some(to) = f.to {
        let p = sql.bind(to);
        sql.push(&format!(" AND {} < {p}", src.time));
    }
    for (column, value) in [
        ("account", &f.account),
        ("service", &f.service),
        ("region", &f.region),
        ("resource", &f.resource),
        ("currency", &f.currency),
    ] {
        if let Some(v) = value {
            let p = sql.bind(v.clone());
            sql.push(&format!(" AND {column} = {p}"));
        }
    }
    if let Some((k, v)) = &f.tag {
        let mut o = Map::new();
        o.insert(k.clone(), Value::String(v.clone()));
        let p = sql.bind(Value::Object(o));
        sql.push(&format!(" AND tags @> {p}::jsonb"));
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CostGroup {
    /// The group's value per `group_by` item (`null`: the line has no such tag).
    #[schema(value_type = Object)]
    pub key: Map<String, Value>,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "123.45")]
    pub cost: Decimal,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CostBucket {
    /// Start of the bucket (UTC); the first and last buckets may be cut by `from`/`to`.
    pub start: DateTime<Utc>,
    pub groups: Vec<CostGroup>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CurrencySum {
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "123.45")]
    pub total: Decimal,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CostBreakdown {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: String,
    pub group_by: Vec<String>,
    /// The one currency of the result; `null` when it holds several (see `totals`).
    pub currency: Option<String>,
    /// The total when the result holds one currency: costs in different currencies are
    /// never summed.
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>, example = "123.45")]
    pub total: Option<Decimal>,
    pub totals: Vec<CurrencySum>,
    pub buckets: Vec<CostBucket>,
    /// `rollup` (daily sums), `tag_rollup` (daily sums per tag: one `tag:KEY` group) or
    /// `lines` (raw lines: a virtual tag, a resource, a tag with a region or another tag
    /// key, a bound that is not midnight UTC).
    pub source: String,
    /// Shared costs spread over their allocation rules' targets (`allocated=true`).
    pub allocated: bool,
}

/// A breakdown request: range and filters, buckets, groups.
#[derive(Debug, Clone)]
pub struct BreakdownQuery {
    /// `from` and `to` are required.
    pub filters: Filters,
    pub bucket: Bucket,
    pub group_by: Vec<Dim>,
    /// Read the raw lines even where the rollup could answer (to compare).
    pub force_lines: bool,
}

/// `GET /api/v1/costs`.
pub async fn breakdown(
    conn: &Client,
    tenant: &str,
    q: &BreakdownQuery,
) -> Result<CostBreakdown, QueryError> {
    let (Some(from), Some(to)) = (q.filters.from, q.filters.to) else {
        return Err(QueryError::BadValue("a breakdown needs from and to".into()));
    };
    let (f, bucket, group_by, force_lines) = (&q.filters, q.bucket, &q.group_by, q.force_lines);
    let rollup = !force_lines && f.rollup_ok() && group_by.iter().all(Dim::in_rollup);
    let tag_key = (!rollup).then(|| tag_rollup_key(q)).flatten();
    let n = 2 + group_by.len();
    let positions: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let mut sql = if let Some(key) = &tag_key {
        tag_rollup_sql(tenant, q, key)
    } else {
        let src = if rollup { &ROLLUP } else { &LINES };
        let mut sql = Sql::new("");
        let dims: Vec<String> = group_by.iter().map(|d| dim_sql(&mut sql, d)).collect();
        let mut select = format!(
            "SELECT time_bucket(interval '{}', {}) AS b, currency",
            bucket.interval(),
            src.time
        );
        for d in &dims {
            select.push_str(&format!(", {d}"));
        }
        select.push_str(&format!(", sum(cost) FROM {}", src.table));
        sql.text = select;
        where_sql(&mut sql, tenant, src, f);
        sql.push(&format!(" GROUP BY {0}", positions.join(", ")));
        sql
    };
    sql.push(&format!(" ORDER BY {}", positions.join(", ")));
    let rows = sql.run(conn).await?;
    let mut buckets: Vec<CostBucket> = Vec::new();
    let mut totals: std::collections::BTreeMap<String, Decimal> = Default::default();
    for r in &rows {
        let start: DateTime<Utc> = r.try_get(0)?;
        let currency: String = r.try_get(1)?;
        let mut key = Map::new();
        for (i, d) in group_by.iter().enumerate() {
            let v: Option<String> = r.try_get(2 + i)?;
            key.insert(d.label(), v.map_or(Value::Null, Value::String));
        }
        let cost: Decimal = r.try_get(n)?;
        *totals.entry(currency.clone()).or_default() += cost;
        let group = CostGroup {
            key,
            currency,
            cost,
        };
        match buckets.last_mut() {
            Some(b) if b.start == start => b.groups.push(group),
            _ => buckets.push(CostBucket {
                start,
                groups: vec![group],
            }),
        }
    }
    let totals: Vec<CurrencySum> = totals
        .into_iter()
        .map(|(currency, total)| CurrencySum { currency, total })
        .collect();
    let (currency, total) = match totals.as_slice() {
        [one] => (Some(one.currency.clone()), Some(one.total)),
        _ => (f.currency.clone(), None),
    };
    Ok(CostBreakdown {
        from,
        to,
        bucket: match bucket {
            Bucket::Day => "day",
            Bucket::Week => "week",
            Bucket::Month => "month",
        }
        .into(),
        group_by: group_by.iter().map(Dim::label).collect(),
        currency,
        total: total.or_else(|| totals.is_empty().then_some(Decimal::ZERO)),
        totals,
        buckets,
        source: match (rollup, &tag_key) {
            (true, _) => "rollup",
            (false, Some(_)) => "tag_rollup",
            (false, None) => "lines",
        }
        .into(),
        allocated: false,
    })
}

/// The tag key a breakdown can read from the tag rollup `cost_daily_tags`: one
/// `tag:KEY` group among `account` and `service` groups, over whole UTC days, filtered
/// by nothing the rollup lacks (region, resource, another tag key).
fn tag_rollup_key(q: &BreakdownQuery) -> Option<String> {
    if q.force_lines {
        return None;
    }
    let mut key = None;
    for d in &q.group_by {
        match d {
            Dim::Account | Dim::Service => {}
            Dim::Tag(k) if key.is_none() => key = Some(k.clone()),
            _ => return None,
        }
    }
    let key = key?;
    let f = &q.filters;
    let days = Filters {
        tag: None,
        ..f.clone()
    }
    .rollup_ok();
    let tag_ok = f.tag.as_ref().is_none_or(|(k, _)| *k == key);
    (days && tag_ok && f.region.is_none()).then_some(key)
}

/// A breakdown over the tag rollup, in the row shape of the others (bucket, currency,
/// groups, cost; no ORDER BY). The lines without the key (the `null` group) are the
/// daily rollup's cost less the tag rollup's, per bucket and group, where lines remain.
fn tag_rollup_sql(tenant: &str, q: &BreakdownQuery, key: &str) -> Sql {
    let f = Filters {
        tag: None,
        ..q.filters.clone()
    };
    let interval = q.bucket.interval();
    // The group columns in `group_by` order, the tag's as `tag`.
    let cols = |prefix: &str, tag: &str| -> String {
        q.group_by
            .iter()
            .map(|d| match d {
                Dim::Account => format!("{prefix}account"),
                Dim::Service => format!("{prefix}service"),
                _ => tag.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Group columns other than the tag, for the join with the daily rollup.
    let plain: Vec<&str> = q
        .group_by
        .iter()
        .filter_map(|d| match d {
            Dim::Account => Some("account"),
            Dim::Service => Some("service"),
            _ => None,
        })
        .collect();
    let group = |n: usize| {
        (1..=n)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut sql = Sql::new(&format!(
        "WITH t AS (SELECT time_bucket(interval '{interval}', day) AS b, currency, {}, \
         sum(cost) AS cost, sum(lines) AS lines FROM cost_daily_tags",
        cols("", "value AS tag")
    ));
    where_sql(&mut sql, tenant, &TAG_ROLLUP, &f);
    let k = sql.bind(key.to_owned());
    sql.push(&format!(" AND key = {k}"));
    if let Some((_, v)) = &q.filters.tag {
        let v = sql.bind(v.clone());
        sql.push(&format!(" AND value = {v}"));
    }
    sql.push(&format!(" GROUP BY {})", group(2 + q.group_by.len())));
    sql.push(&format!(
        " SELECT b, currency, {}, cost FROM t",
        cols("", "tag")
    ));
    if q.filters.tag.is_none() {
        let on: Vec<String> = ["b", "currency"]
            .iter()
            .chain(&plain)
            .map(|c| format!("a.{c} IS NOT DISTINCT FROM s.{c}"))
            .collect();
        let plain_cols: String = plain.iter().map(|c| format!(", {c}")).collect();
        sql.push(&format!(
            " UNION ALL SELECT a.b, a.currency, {}, a.cost - coalesce(s.cost, 0) FROM \
             (SELECT time_bucket(interval '{interval}', day) AS b, currency{plain_cols}, \
              sum(cost) AS cost, sum(lines) AS lines FROM cost_daily",
            cols("a.", "NULL::text")
        ));
        where_sql(&mut sql, tenant, &ROLLUP, &f);
        sql.push(&format!(
            " GROUP BY {}) a LEFT JOIN (SELECT b, currency{plain_cols}, sum(cost) AS cost, \
             sum(lines) AS lines FROM t GROUP BY {}) s ON {} \
             WHERE a.lines > coalesce(s.lines, 0)",
            group(2 + plain.len()),
            group(2 + plain.len()),
            on.join(" AND ")
        ));
    }
    sql
}

const ALLOCATION_RULES_SQL: &str =
    "SELECT definition FROM cost_allocation_rules WHERE tenant_id = $1 ORDER BY name";

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AllocationRuleList {
    pub items: Vec<AllocationRuleDef>,
}

pub async fn allocation_rules(
    conn: &ReadConnection,
    tenant: &str,
) -> Result<Vec<AllocationRuleDef>, QueryError> {
    conn.query(ALLOCATION_RULES_SQL, &[&tenant])
        .await?
        .iter()
        .map(|r| Ok(r.try_get::<_, Json<AllocationRuleDef>>(0)?.0))
        .collect()
}

/// Both filters, or `None` when they cannot both hold.
fn both(a: &Option<String>, b: &Option<String>) -> Option<Option<String>> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => None,
        (Some(x), _) | (_, Some(x)) => Some(Some(x.clone())),
        (None, None) => Some(None),
    }
}

/// Spreads the shared costs of `rules` (those along the breakdown's one dimension) over
/// their targets, bucket by bucket and currency by currency (ADR 0011). Each rule moves
/// the cost of its source lines from their own groups to its targets' groups; the totals
/// stay what they were to the last digit (`allocation::split`).
pub async fn allocate(
    conn: &Client,
    tenant: &str,
    q: &BreakdownQuery,
    base: &mut CostBreakdown,
    rules: &[AllocationRuleDef],
) -> Result<(), QueryError> {
    let [dim] = q.group_by.as_slice() else {
        return Ok(());
    };
    let label = dim.label();
    type Key = (DateTime<Utc>, Option<String>, String);
    let mut cells: BTreeMap<Key, Decimal> = BTreeMap::new();
    for b in &base.buckets {
        for g in &b.groups {
            let key = g.key.get(&label).and_then(Value::as_str).map(str::to_owned);
            *cells.entry((b.start, key, g.currency.clone())).or_default() += g.cost;
        }
    }
    let mut emptied = BTreeSet::new();
    for rule in rules.iter().filter(|r| r.by == label) {
        let f = &q.filters;
        let (Some(account), Some(service), Some(region)) = (
            both(&f.account, &rule.source.account),
            both(&f.service, &rule.source.service),
            both(&f.region, &rule.source.region),
        ) else {
            continue; // the query's filters exclude the rule's source
        };
        let tag = rule
            .source
            .tag
            .as_deref()
            .and_then(|t| t.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let source = breakdown(
            conn,
            tenant,
            &BreakdownQuery {
                filters: Filters {
                    account,
                    service,
                    region,
                    tag,
                    ..f.clone()
                },
                ..q.clone()
            },
        )
        .await?;
        let mut shared: BTreeMap<(DateTime<Utc>, String), Decimal> = BTreeMap::new();
        for b in &source.buckets {
            for g in &b.groups {
                let key = g.key.get(&label).and_then(Value::as_str).map(str::to_owned);
                let cell = (b.start, key, g.currency.clone());
                *cells.entry(cell.clone()).or_default() -= g.cost;
                emptied.insert(cell);
                *shared.entry((b.start, g.currency.clone())).or_default() += g.cost;
            }
        }
        for ((start, currency), amount) in shared {
            let weights: BTreeMap<String, Decimal> = rule
                .targets
                .iter()
                .map(|t| {
                    let w = match rule.method {
                        Method::Even => Decimal::ONE,
                        Method::Fixed => t.weight.unwrap_or_default(),
                        Method::Proportional => cells
                            .get(&(start, Some(t.key.clone()), currency.clone()))
                            .copied()
                            .unwrap_or_default()
                            .max(Decimal::ZERO),
                    };
                    (t.key.clone(), w)
                })
                .collect();
            let scale = super::reference::minor_units(&currency);
            for (key, share) in split(amount, &weights, scale) {
                *cells
                    .entry((start, Some(key), currency.clone()))
                    .or_default() += share;
            }
        }
    }
    let mut buckets: Vec<CostBucket> = Vec::new();
    for ((start, key, currency), cost) in cells {
        if cost.is_zero() && emptied.contains(&(start, key.clone(), currency.clone())) {
            continue; // a source group whose whole cost was allocated away
        }
        let mut k = Map::new();
        k.insert(label.clone(), key.map_or(Value::Null, Value::String));
        let group = CostGroup {
            key: k,
            currency,
            cost,
        };
        match buckets.last_mut() {
            Some(b) if b.start == start => b.groups.push(group),
            _ => buckets.push(CostBucket {
                start,
                groups: vec![group],
            }),
        }
    }
    base.buckets = buckets;
    base.allocated = true;
    Ok(())
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopItem {
    pub rank: i64,
    pub key: String,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "123.45")]
    pub cost: Decimal,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopList {
    pub by: String,
    /// Ranked within each currency: at most `limit` items per currency.
    pub items: Vec<TopItem>,
    pub source: String,
}

/// `GET /api/v1/costs/top`.
pub async fn top(
    conn: &Client,
    tenant: &str,
    by: &Dim,
    filters: &Filters,
    limit: i64,
) -> Result<TopList, QueryError> {
    let rollup = filters.rollup_ok() && by.in_rollup();
    let src = if rollup { &ROLLUP } else { &LINES };
    let mut sql = Sql::new("");
    let dim = dim_sql(&mut sql, by);
    sql.text = format!(
        "SELECT rank, k, currency, cost FROM (
           SELECT row_number() OVER (PARTITION BY currency ORDER BY sum(cost) DESC, {dim}) AS rank,
                  {dim} AS k, currency, sum(cost) AS cost FROM {}",
        src.table
    );
    where_sql(&mut sql, tenant, src, filters);
    let l = sql.bind(limit);
    sql.push(&format!(
        " GROUP BY {dim}, currency) t WHERE rank <= {l} ORDER BY currency, rank"
    ));
    let items = sql
        .run(conn)
        .await?
        .iter()
        .map(|r| {
            Ok(TopItem {
                rank: r.try_get(0)?,
                key: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                currency: r.try_get(2)?,
                cost: r.try_get(3)?,
            })
        })
        .collect::<Result<_, QueryError>>()?;
    Ok(TopList {
        by: by.label(),
        items,
        source: if rollup { "rollup" } else { "lines" }.into(),
    })
}

/// One bill line as clients read it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LineView {
    pub import_id: Uuid,
    pub line: i32,
    pub charge_start: DateTime<Utc>,
    pub charge_end: Option<DateTime<Utc>>,
    #[schema(value_type = String, format = Date)]
    pub billing_period: NaiveDate,
    pub account: String,
    pub provider: String,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub cost: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>)]
    pub effective_cost: Option<Decimal>,
    pub service: String,
    pub service_name: String,
    pub category: String,
    pub region: String,
    pub resource: String,
    pub sub_account: String,
    pub charge_category: String,
    #[schema(value_type = Object)]
    pub tags: Value,
    #[schema(value_type = Object)]
    pub extra: Value,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LinePage {
    pub items: Vec<LineView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page position: after this line in (charge_start, import_id, line) order.
pub type Cursor = (DateTime<Utc>, Uuid, i32);

pub fn encode_cursor(c: &Cursor) -> String {
    let mut bytes = c.0.timestamp_micros().to_be_bytes().to_vec();
    bytes.extend_from_slice(c.1.as_bytes());
    bytes.extend_from_slice(&c.2.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn decode_cursor(s: &str) -> Option<Cursor> {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    if b.len() != 28 {
        return None;
    }
    let micros = i64::from_be_bytes(b[0..8].try_into().ok()?);
    let id = Uuid::from_slice(&b[8..24]).ok()?;
    let line = i32::from_be_bytes(b[24..28].try_into().ok()?);
    Some((DateTime::from_timestamp_micros(micros)?, id, line))
}

/// `GET /api/v1/costs/lines`.
pub async fn lines(
    conn: &Client,
    tenant: &str,
    filters: &Filters,
    after: Option<Cursor>,
    limit: i64,
) -> Result<LinePage, QueryError> {
    let mut sql = Sql::new(
        "SELECT import_id, line_no, charge_start, charge_end, billing_period, account, provider,
                currency, cost, effective_cost, service, service_name, category, region,
                resource, sub_account, charge_category, tags, extra FROM cost_lines",
    );
    where_sql(&mut sql, tenant, &LINES, filters);
    if let Some((t, id, line)) = after {
        let (t, id, line) = (sql.bind(t), sql.bind(id), sql.bind(line));
        sql.push(&format!(
            " AND (charge_start, import_id, line_no) > ({t}, {id}, {line})"
        ));
    }
    let l = sql.bind(limit + 1);
    sql.push(&format!(
        " ORDER BY charge_start, import_id, line_no LIMIT {l}"
    ));
    let mut items = sql
        .run(conn)
        .await?
        .iter()
        .map(|r| {
            Ok(LineView {
                import_id: r.try_get(0)?,
                line: r.try_get(1)?,
                charge_start: r.try_get(2)?,
                charge_end: r.try_get(3)?,
                billing_period: r.try_get(4)?,
                account: r.try_get(5)?,
                provider: r.try_get(6)?,
                currency: r.try_get(7)?,
                cost: r.try_get(8)?,
                effective_cost: r.try_get(9)?,
                service: r.try_get(10)?,
                service_name: r.try_get(11)?,
                category: r.try_get(12)?,
                region: r.try_get(13)?,
                resource: r.try_get(14)?,
                sub_account: r.try_get(15)?,
                charge_category: r.try_get(16)?,
                tags: r.try_get(17)?,
                extra: r.try_get(18)?,
            })
        })
        .collect::<Result<Vec<_>, QueryError>>()?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items
            .last()
            .map(|l| encode_cursor(&(l.charge_start, l.import_id, l.line)))
    } else {
        None
    };
    Ok(LinePage { items, next_cursor })
}

// --- virtual tags --------------------------------------------------------------------

const VIRTUAL_TAGS_SQL: &str = "\
SELECT definition, saved_at, position, recompute_state, recomputed_lines, recompute_total,
       recomputed_until
  FROM cost_virtual_tags WHERE tenant_id = $1 ORDER BY name";

/// A virtual tag as saved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VirtualTagView {
    pub name: String,
    pub values: Vec<super::events::VirtualTagValue>,
    pub default: Option<String>,
    pub saved_at: DateTime<Utc>,
    /// The event that saved it: lines projected after it carry it as they are written.
    pub position: i64,
    /// How far the lines that existed at the save have been given it.
    pub recompute: RecomputeView,
}

/// Progress of a virtual tag's recomputation over the lines that existed when it was saved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecomputeView {
    /// `running`, or `complete` once every line carries the saved definition.
    #[schema(example = "running")]
    pub state: String,
    pub lines_done: i64,
    /// Lines to recompute, as counted when the recomputation began (0 until it begins).
    pub lines_total: i64,
    /// Lines charged before this time are done (absent until the first step).
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VirtualTagList {
    pub items: Vec<VirtualTagView>,
}

pub async fn virtual_tags(
    conn: &ReadConnection,
    tenant: &str,
) -> Result<Vec<VirtualTagView>, QueryError> {
    conn.query(VIRTUAL_TAGS_SQL, &[&tenant])
        .await?
        .iter()
        .map(|r| {
            let d: Json<super::events::VirtualTagDefinition> = r.try_get(0)?;
            Ok(VirtualTagView {
                name: d.0.name,
                values: d.0.values,
                default: d.0.default,
                saved_at: r.try_get(1)?,
                position: r.try_get(2)?,
                recompute: RecomputeView {
                    state: r.try_get(3)?,
                    lines_done: r.try_get(4)?,
                    lines_total: r.try_get(5)?,
                    until: r.try_get(6)?,
                },
            })
        })
        .collect()
}

// --- budget status -------------------------------------------------------------------

/// A budget's read-model row is read here (budgets_view): what the budget counts.
macro_rules! budget_columns {
    () => {
        "amount, currency, period, start_date, end_date, tag_filter, service_filter, \
         alert_thresholds, account, id, budget_type = 'cost'"
    };
}
const BUDGET_SQL: &str = concat!(
    "SELECT ",
    budget_columns!(),
    " FROM budgets_view WHERE tenant_id = $1 AND id = $2"
);
/// Budgets that count an account's lines and have thresholds.
const ALERTING_BUDGETS_SQL: &str = concat!(
    "SELECT ",
    budget_columns!(),
    " FROM budgets_view WHERE tenant_id = $1 AND (account = $2 OR account IS NULL)
        AND alert_thresholds <> '[]'::jsonb AND budget_type = 'cost' ORDER BY id"
);

/// Cost budgets with thresholds changed after a position (the budget's last event).
const CHANGED_ALERTING_BUDGETS_SQL: &str = concat!(
    "SELECT ",
    budget_columns!(),
    " FROM budgets_view WHERE tenant_id = $1 AND last_position > $2
        AND alert_thresholds <> '[]'::jsonb AND budget_type = 'cost' ORDER BY id"
);
const HAS_COSTS_SQL: &str = "SELECT EXISTS (SELECT 1 FROM cost_daily WHERE tenant_id = $1)";

/// What a budget counts and where it alerts.
#[derive(Debug, Clone)]
pub struct BudgetScope {
    pub id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub period: String,
    pub start_date: NaiveDate,
    pub end_date: Option<NaiveDate>,
    /// A JSON object: every pair must be among a line's tags.
    pub tag_filter: Value,
    pub service_filter: Vec<String>,
    pub thresholds: Vec<Decimal>,
    pub account: Option<String>,
    /// A cost budget (not a usage budget): what thresholds are evaluated for.
    pub cost: bool,
}

pub async fn budget(
    conn: &Client,
    tenant: &str,
    id: Uuid,
) -> Result<Option<BudgetScope>, QueryError> {
    conn.query_opt(BUDGET_SQL, &[&tenant, &id])
        .await?
        .as_ref()
        .map(budget_scope)
        .transpose()
}

/// The cost budgets with thresholds that count `account`'s lines (theirs, or every
/// account's).
pub async fn alerting_budgets(
    conn: &Client,
    tenant: &str,
    account: &str,
) -> Result<Vec<BudgetScope>, QueryError> {
    conn.query(ALERTING_BUDGETS_SQL, &[&tenant, &account])
        .await?
        .iter()
        .map(budget_scope)
        .collect()
}

/// The cost budgets with thresholds whose last event is after `position`.
pub async fn changed_alerting_budgets(
    conn: &Client,
    tenant: &str,
    position: i64,
) -> Result<Vec<BudgetScope>, QueryError> {
    conn.query(CHANGED_ALERTING_BUDGETS_SQL, &[&tenant, &position])
        .await?
        .iter()
        .map(budget_scope)
        .collect()
}

/// Whether the tenant has any cost line.
pub async fn has_costs(conn: &Client, tenant: &str) -> Result<bool, QueryError> {
    Ok(conn
        .query_one(HAS_COSTS_SQL, &[&tenant])
        .await?
        .try_get(0)?)
}

fn budget_scope(r: &tokio_postgres::Row) -> Result<BudgetScope, QueryError> {
    let thresholds: Json<Vec<String>> = r.try_get(7)?;
    let services: Json<Vec<String>> = r.try_get(6)?;
    Ok(BudgetScope {
        id: r.try_get(9)?,
        amount: r.try_get(0)?,
        currency: r.try_get(1)?,
        period: r.try_get(2)?,
        start_date: r.try_get(3)?,
        end_date: r.try_get(4)?,
        tag_filter: r.try_get(5)?,
        service_filter: services.0,
        thresholds: thresholds
            .0
            .iter()
            .map(|t| {
                t.parse()
                    .map_err(|_| QueryError::BadValue(format!("threshold {t:?}")))
            })
            .collect::<Result<_, _>>()?,
        account: r.try_get(8)?,
        cost: r.try_get(10)?,
    })
}

/// A budget's figures in `window` as of the day `as_of` (its lines up to and including
/// that day), and the source that answered: what `GET …/status` reports and what the
/// threshold process manager decides on.
pub async fn budget_figures(
    conn: &Client,
    tenant: &str,
    b: &BudgetScope,
    window: Window,
    as_of: NaiveDate,
) -> Result<(Figures, &'static str), QueryError> {
    let until = as_of.succ_opt().unwrap_or(as_of).min(window.end);
    let (daily, source) = budget_daily(conn, tenant, b, window.start, until).await?;
    let scale = super::reference::minor_units(&b.currency);
    let figures =
        super::budget_status::figures(b.amount, &b.thresholds, window, as_of, &daily, scale);
    Ok((figures, source))
}

/// The budget's cost per UTC day in `[from, to)`, only days with lines, in day order,
/// and the source that answered: `rollup` without a tag filter, `tag_rollup` with one tag
/// (a string value), `lines` with more.
async fn budget_daily(
    conn: &Client,
    tenant: &str,
    b: &BudgetScope,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<(Vec<(NaiveDate, Decimal)>, &'static str), QueryError> {
    let pairs = b.tag_filter.as_object().map_or(0, |o| o.len());
    let one_tag = b
        .tag_filter
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
        .and_then(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())));
    let (src, name) = match (&one_tag, pairs) {
        (_, 0) => (&ROLLUP, "rollup"),
        (Some(_), _) => (&TAG_ROLLUP, "tag_rollup"),
        (None, _) => (&LINES, "lines"),
    };
    let mut sql = Sql::new(&format!(
        "SELECT (time_bucket(interval '1 day', {t}) AT TIME ZONE 'UTC')::date, sum(cost) FROM {}",
        src.table,
        t = src.time
    ));
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let f = Filters {
        from: Some(midnight(from)),
        to: Some(midnight(to)),
        account: b.account.clone(),
        currency: Some(b.currency.clone()),
        ..Filters::default()
    };
    where_sql(&mut sql, tenant, src, &f);
    if !b.service_filter.is_empty() {
        let p = sql.bind(b.service_filter.clone());
        sql.push(&format!(" AND service = ANY({p})"));
    }
    if let Some((key, value)) = one_tag {
        let (k, v) = (sql.bind(key), sql.bind(value));
        sql.push(&format!(" AND key = {k} AND value = {v}"));
    } else if pairs > 0 {
        let p = sql.bind(b.tag_filter.clone());
        sql.push(&format!(" AND tags @> {p}::jsonb"));
    }
    sql.push(" GROUP BY 1 ORDER BY 1");
    let days = sql
        .run(conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, QueryError>>()?;
    Ok((days, name))
}

// --- anomalies -------------------------------------------------------------------------

const ACCOUNT_CURRENCY_SQL: &str =
    "SELECT currency FROM cost_accounts WHERE tenant_id = $1 AND name = $2";
/// Per service of the account in its currency: the first day with cost ever, and the last
/// day with cost of the whole account (how far its bills reach).
const ANOMALY_SERVICES_SQL: &str = "\
SELECT service, (min(day) AT TIME ZONE 'UTC')::date,
       (max(max(day)) OVER () AT TIME ZONE 'UTC')::date
  FROM cost_daily WHERE tenant_id = $1 AND account = $2 AND currency = $3
 GROUP BY service";
/// The daily cost per service over `[$4, $5]` (dates), regions summed.
const ANOMALY_SERIES_SQL: &str = "\
SELECT service, (day AT TIME ZONE 'UTC')::date, sum(cost)
  FROM cost_daily
 WHERE tenant_id = $1 AND account = $2 AND currency = $3
   AND day >= $4::date::timestamp AT TIME ZONE 'UTC'
   AND day < ($5::date + 1)::timestamp AT TIME ZONE 'UTC'
 GROUP BY 1, 2";
/// The top 3 contributors of each anomalous (service, day, sign): every region
/// (`cost_daily`), resource (`cost_lines`) and tag value (`cost_daily_tags`) of the
/// service, its cost on the day against its own median over the 28 days before (days
/// without cost count as 0; `percentile_disc`: the lower middle value, exact), ranked by
/// delta in the anomaly's direction. One statement for all days and dimensions.
const ANOMALY_CONTRIBUTORS_SQL: &str = "\
WITH t AS (SELECT * FROM unnest($4::text[], $5::date[], $6::int[]) AS t(service, day, sign)),
src AS (
  SELECT t.service, t.day, t.sign, 'region' AS dimension, d.region AS value,
         (d.day AT TIME ZONE 'UTC')::date AS d, sum(d.cost) AS cost
    FROM t JOIN cost_daily d
      ON d.tenant_id = $1 AND d.account = $2 AND d.currency = $3 AND d.service = t.service
     AND d.day >= (t.day - 28)::timestamp AT TIME ZONE 'UTC'
     AND d.day < (t.day + 1)::timestamp AT TIME ZONE 'UTC'
   WHERE d.region <> ''
   GROUP BY 1, 2, 3, 4, 5, 6
  UNION ALL
  SELECT t.service, t.day, t.sign, 'resource', l.resource,
         (l.charge_start AT TIME ZONE 'UTC')::date, sum(l.cost)
    FROM t JOIN cost_lines l
      ON l.tenant_id = $1 AND l.account = $2 AND l.currency = $3 AND l.service = t.service
     AND l.charge_start >= (t.day - 28)::timestamp AT TIME ZONE 'UTC'
     AND l.charge_start < (t.day + 1)::timestamp AT TIME ZONE 'UTC'
   WHERE l.resource <> ''
   GROUP BY 1, 2, 3, 4, 5, 6
  UNION ALL
  SELECT t.service, t.day, t.sign, 'tag:' || g.key, g.value,
         (g.day AT TIME ZONE 'UTC')::date, sum(g.cost)
    FROM t JOIN cost_daily_tags g
      ON g.tenant_id = $1 AND g.account = $2 AND g.currency = $3 AND g.service = t.service
     AND g.day >= (t.day - 28)::timestamp AT TIME ZONE 'UTC'
     AND g.day < (t.day + 1)::timestamp AT TIME ZONE 'UTC'
   GROUP BY 1, 2, 3, 4, 5, 6),
keys AS (SELECT DISTINCT service, day, sign, dimension, value FROM src),
grid AS (
  SELECT k.service, k.day, k.sign, k.dimension, k.value, n.n, coalesce(s.cost, 0) AS cost
    FROM keys k CROSS JOIN generate_series(0, 28) AS n(n)
    LEFT JOIN src s ON s.service = k.service AND s.day = k.day AND s.dimension = k.dimension
                   AND s.value = k.value AND s.d = k.day - n.n),
scored AS (
  SELECT service, day, sign, dimension, value,
         sum(cost) FILTER (WHERE n = 0) AS actual,
         percentile_disc(0.5) WITHIN GROUP (ORDER BY cost) FILTER (WHERE n > 0) AS expected
    FROM grid GROUP BY 1, 2, 3, 4, 5)
SELECT service, day, dimension, value, actual, expected, actual - expected
  FROM (SELECT *, row_number() OVER (PARTITION BY service, day
                                     ORDER BY (actual - expected) * sign DESC, dimension, value) AS rank
          FROM scored) r
 WHERE rank <= 3
 ORDER BY service, day, rank";

/// The currency of an account (`None`: no such account).
pub async fn account_currency(
    conn: &Client,
    tenant: &str,
    account: &str,
) -> Result<Option<String>, QueryError> {
    Ok(conn
        .query_opt(ACCOUNT_CURRENCY_SQL, &[&tenant, &account])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
}

/// The services of an account in `currency`: each with its first day with cost; and the
/// account's last day with cost.
pub async fn anomaly_services(
    conn: &Client,
    tenant: &str,
    account: &str,
    currency: &str,
) -> Result<(Vec<(String, NaiveDate)>, Option<NaiveDate>), QueryError> {
    let rows = conn
        .query(ANOMALY_SERVICES_SQL, &[&tenant, &account, &currency])
        .await?;
    let mut last = None;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push((r.try_get(0)?, r.try_get(1)?));
        last = Some(r.try_get(2)?);
    }
    out.sort();
    Ok((out, last))
}

/// Daily cost per service of an account in `currency` over `[from, to]`.
pub async fn anomaly_series(
    conn: &Client,
    tenant: &str,
    account: &str,
    currency: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<BTreeMap<String, Vec<(NaiveDate, Decimal)>>, QueryError> {
    let rows = conn
        .query(
            ANOMALY_SERIES_SQL,
            &[&tenant, &account, &currency, &from, &to],
        )
        .await?;
    let mut out: BTreeMap<String, Vec<(NaiveDate, Decimal)>> = BTreeMap::new();
    for r in &rows {
        out.entry(r.try_get(0)?)
            .or_default()
            .push((r.try_get(1)?, r.try_get(2)?));
    }
    Ok(out)
}

/// The top 3 contributors of each `(service, day, sign)` (sign −1 for a drop).
pub async fn anomaly_contributors(
    conn: &Client,
    tenant: &str,
    account: &str,
    currency: &str,
    days: &[(String, NaiveDate, i32)],
) -> Result<BTreeMap<(String, NaiveDate), Vec<super::events::Contributor>>, QueryError> {
    let mut out: BTreeMap<(String, NaiveDate), Vec<super::events::Contributor>> = BTreeMap::new();
    if days.is_empty() {
        return Ok(out);
    }
    let services: Vec<&str> = days.iter().map(|d| d.0.as_str()).collect();
    let dates: Vec<NaiveDate> = days.iter().map(|d| d.1).collect();
    let signs: Vec<i32> = days.iter().map(|d| d.2).collect();
    let rows = conn
        .query(
            ANOMALY_CONTRIBUTORS_SQL,
            &[&tenant, &account, &currency, &services, &dates, &signs],
        )
        .await?;
    for r in &rows {
        out.entry((r.try_get(0)?, r.try_get(1)?))
            .or_default()
            .push(super::events::Contributor {
                dimension: r.try_get(2)?,
                value: r.try_get(3)?,
                actual: r.try_get(4)?,
                expected: r.try_get(5)?,
                delta: r.try_get(6)?,
            });
    }
    Ok(out)
}

const ANOMALIES_SQL: &str = "\
SELECT id, account_id, service, currency, first_day, last_day, ended_day, actual, expected,
       deviation, severity, contributors, state, restated, detected_at
  FROM cost_anomalies
 WHERE tenant_id = $1
   AND ($2::date IS NULL OR first_day >= $2) AND ($3::date IS NULL OR first_day < $3)
   AND ($4::text IS NULL OR account_id = $4) AND ($5::text IS NULL OR service = $5)
   AND severity = ANY($6) AND ($7::text IS NULL OR state = $7)
   AND ($8::date IS NULL OR (first_day, id) < ($8, $9))
 ORDER BY first_day DESC, id DESC
 LIMIT $10";

/// One cost anomaly (an episode of anomalous days of one account × service).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AnomalyView {
    pub id: Uuid,
    pub account_id: String,
    pub service: String,
    pub currency: String,
    /// The first anomalous day.
    #[schema(value_type = String, format = Date)]
    pub first_day: NaiveDate,
    /// The last anomalous day known.
    #[schema(value_type = String, format = Date)]
    pub last_day: NaiveDate,
    /// The first normal day after the episode (`null` while open).
    #[schema(value_type = Option<String>, format = Date)]
    pub ended_day: Option<NaiveDate>,
    /// Cost of the worst day.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub actual: Decimal,
    /// What that day was expected to cost (the trailing median of its weekday).
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub expected: Decimal,
    /// Robust z of the worst day (negative for a drop).
    pub deviation: f64,
    /// `low`, `medium`, `high` or `critical`.
    pub severity: String,
    pub contributors: Vec<super::events::Contributor>,
    /// `open` or `ended`.
    pub state: String,
    /// Ended because a restated bill removed its first day.
    pub restated: bool,
    pub detected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AnomalyPage {
    pub items: Vec<AnomalyView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of the anomaly list.
#[derive(Debug, Clone, Default)]
pub struct AnomalyFilters {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub account: Option<String>,
    pub service: Option<String>,
    /// The severities to list.
    pub severities: Vec<String>,
    pub state: Option<String>,
}

/// A page of anomalies, newest first day first, after the `(first_day, id)` of `after`.
pub async fn anomalies(
    conn: &ReadConnection,
    tenant: &str,
    f: &AnomalyFilters,
    after: Option<(NaiveDate, Uuid)>,
    limit: i64,
) -> Result<AnomalyPage, QueryError> {
    let (after_day, after_id) = (after.map(|a| a.0), after.map(|a| a.1));
    let rows = conn
        .query(
            ANOMALIES_SQL,
            &[
                &tenant,
                &f.from,
                &f.to,
                &f.account,
                &f.service,
                &f.severities,
                &f.state,
                &after_day,
                &after_id,
                &(limit + 1),
            ],
        )
        .await?;
    let mut items = rows
        .iter()
        .map(|r| {
            let contributors: Json<Vec<super::events::Contributor>> = r.try_get(11)?;
            Ok(AnomalyView {
                id: r.try_get(0)?,
                account_id: r.try_get(1)?,
                service: r.try_get(2)?,
                currency: r.try_get(3)?,
                first_day: r.try_get(4)?,
                last_day: r.try_get(5)?,
                ended_day: r.try_get(6)?,
                actual: r.try_get(7)?,
                expected: r.try_get(8)?,
                deviation: r.try_get(9)?,
                severity: r.try_get(10)?,
                contributors: contributors.0,
                state: r.try_get(12)?,
                restated: r.try_get(13)?,
                detected_at: r.try_get(14)?,
            })
        })
        .collect::<Result<Vec<_>, QueryError>>()?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items
            .last()
            .map(|a| crate::db::cursor::encode(&(a.first_day, a.id)))
    } else {
        None
    };
    Ok(AnomalyPage { items, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_parse_from_a_whitelist() {
        assert_eq!(Dim::parse("service"), Some(Dim::Service));
        assert_eq!(Dim::parse("tag:team"), Some(Dim::Tag("team".into())));
        assert_eq!(Dim::parse("tag:"), None);
        assert_eq!(Dim::parse("cost; drop table x"), None);
        assert_eq!(Dim::parse("Service"), None);
    }

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let c = (
            DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            Uuid::now_v7(),
            42,
        );
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        assert_eq!(decode_cursor("abc"), None);
    }

    #[test]
    fn the_rollup_answers_only_whole_days_without_tags() {
        let day = DateTime::parse_from_rfc3339("2024-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut f = Filters {
            from: Some(day),
            to: Some(day),
            ..Filters::default()
        };
        assert!(f.rollup_ok());
        f.to = Some(day + chrono::Duration::hours(1));
        assert!(!f.rollup_ok());
        f.to = Some(day);
        f.tag = Some(("team".into(), "a".into()));
        assert!(!f.rollup_ok());
    }
}
