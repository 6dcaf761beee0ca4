//! Projectors of the costs context.
//!
//! - `cost_accounts` keeps one row per account.
//! - `cost_lines` keeps the bill lines (hypertable `cost_lines`), their daily rollups
//!   (`cost_daily`, and `cost_daily_tags` per tag; same transaction), the imports
//!   (`cost_imports`) and the virtual tags (`cost_virtual_tags`). A batch is applied in
//!   log order: lines are buffered and written set-wise (binary COPY for the lines, one
//!   additive merge per rollup) before the next `BillImportStarted`, which restates its
//!   periods: the rollups lose the sums of the lines they supersede, then those lines go.
//!   A `VirtualTagRecomputed` step sets a virtual tag on one time range of lines.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::aggregate::{Account, BillImport, VirtualTag};
use super::events::{
    AccountEvent, BillImportEvent, BillLine, ImportStarted, RecomputeStep, VirtualTagDefinition,
    VirtualTagEvent,
};
use super::import::json_object;
use super::vtags::Compiled;
use crate::eventstore::RecordedEvent;
use crate::pipeline::EventSourced;
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Envelope, Lane, Projection, Projector, ProjectorOptions};

pub const COST_ACCOUNTS: &str = "cost_accounts";
pub const COST_LINES: &str = "cost_lines";

static ACCOUNTS_MODEL: ReadModel = ReadModel {
    table: "cost_accounts",
    key: &["tenant_id", "name"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("name", Type::TEXT),
        col("provider", Type::TEXT),
        col("external_id", Type::TEXT),
        col("currency", Type::TEXT),
        col("created_at", Type::TIMESTAMPTZ),
        col("last_position", Type::INT8),
    ],
    keep_on_update: &[],
    newer: None,
};

struct AccountRow {
    tenant: String,
    name: String,
    provider: &'static str,
    external_id: Option<String>,
    currency: String,
    created_at: DateTime<Utc>,
    position: i64,
}

impl Row for AccountRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant,
            &self.name,
            &self.provider,
            &self.external_id,
            &self.currency,
            &self.created_at,
            &self.position,
        ]
    }
}

pub struct AccountsProjector;

#[async_trait]
impl Projector for AccountsProjector {
    type Aggregate = Account;
    const NAME: &'static str = COST_ACCOUNTS;
    const READ_MODELS: &'static [&'static ReadModel] = &[&ACCOUNTS_MODEL];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<AccountEvent>>,
    ) -> anyhow::Result<()> {
        let rows: Vec<AccountRow> = events
            .into_iter()
            .map(|e| {
                let AccountEvent::AccountOpened(d) = e.event;
                AccountRow {
                    tenant: e.tenant_id,
                    name: d.name,
                    provider: d.provider.as_str(),
                    external_id: d.external_id,
                    currency: d.currency,
                    created_at: e.recorded_at,
                    position: e.position,
                }
            })
            .collect();
        // An account stream has one event: every row is new.
        ACCOUNTS_MODEL.insert(tx, &rows).await
    }
}

pub const COST_ALLOCATION_RULES: &str = "cost_allocation_rules";

static ALLOCATION_MODEL: ReadModel = ReadModel {
    table: "cost_allocation_rules",
    key: &["tenant_id", "name"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("name", Type::TEXT),
        col("definition", Type::JSONB),
        col("position", Type::INT8),
    ],
    keep_on_update: &[],
    newer: Some("position"),
};

struct AllocationRow {
    tenant: String,
    name: String,
    definition: Value,
    position: i64,
}

impl Row for AllocationRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.tenant, &self.name, &self.definition, &self.position]
    }
}

/// Keeps `cost_allocation_rules` (one row per rule, the last definition).
pub struct AllocationRulesProjector;

#[async_trait]
impl Projector for AllocationRulesProjector {
    type Aggregate = super::aggregate::AllocationRule;
    const NAME: &'static str = COST_ALLOCATION_RULES;
    const READ_MODELS: &'static [&'static ReadModel] = &[&ALLOCATION_MODEL];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<super::events::AllocationRuleEvent>>,
    ) -> anyhow::Result<()> {
        // The last definition per rule (keys must be distinct in one upsert).
        let mut last: HashMap<(String, String), AllocationRow> = HashMap::new();
        for e in events {
            let super::events::AllocationRuleEvent::AllocationRuleSaved(d) = e.event;
            last.insert(
                (e.tenant_id.clone(), d.name.clone()),
                AllocationRow {
                    tenant: e.tenant_id,
                    name: d.name.clone(),
                    definition: serde_json::to_value(&d)?,
                    position: e.position,
                },
            );
        }
        let rows: Vec<AllocationRow> = last.into_values().collect();
        ALLOCATION_MODEL.upsert(tx, &rows).await
    }
}

pub static LINES_MODEL: ReadModel = ReadModel {
    table: "cost_lines",
    key: &["import_id", "line_no"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("charge_start", Type::TIMESTAMPTZ),
        col("charge_end", Type::TIMESTAMPTZ),
        col("billing_period", Type::DATE),
        col("account", Type::TEXT),
        col("provider", Type::TEXT),
        col("import_id", Type::UUID),
        col("line_no", Type::INT4),
        col("currency", Type::TEXT),
        col("cost", Type::NUMERIC),
        col("effective_cost", Type::NUMERIC),
        col("list_cost", Type::NUMERIC),
        col("service", Type::TEXT),
        col("service_name", Type::TEXT),
        col("category", Type::TEXT),
        col("region", Type::TEXT),
        col("resource", Type::TEXT),
        col("sub_account", Type::TEXT),
        col("charge_category", Type::TEXT),
        col("tags", Type::JSONB),
        col("vtags", Type::JSONB),
        col("extra", Type::JSONB),
    ],
    keep_on_update: &[],
    newer: None,
};

/// The virtual tags as saved (the projector needs them for every line it writes).
static VTAGS_MODEL: ReadModel = ReadModel {
    table: "cost_virtual_tags",
    key: &["tenant_id", "name"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("name", Type::TEXT),
        col("definition", Type::JSONB),
        col("saved_at", Type::TIMESTAMPTZ),
        col("position", Type::INT8),
        col("revision", Type::INT8),
        col("recompute_state", Type::TEXT),
        col("recomputed_lines", Type::INT8),
        col("recompute_total", Type::INT8),
        col("recomputed_until", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &[],
    newer: Some("position"),
};

pub static DAILY_MODEL: ReadModel = ReadModel {
    table: "cost_daily",
    key: &[
        "tenant_id",
        "account",
        "service",
        "region",
        "currency",
        "day",
    ],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("day", Type::TIMESTAMPTZ),
        col("account", Type::TEXT),
        col("service", Type::TEXT),
        col("region", Type::TEXT),
        col("currency", Type::TEXT),
        col("cost", Type::NUMERIC),
        col("lines", Type::INT8),
    ],
    keep_on_update: &[],
    newer: None,
};

/// Daily cost per string-valued tag (what a budget's one-tag filter reads).
pub static DAILY_TAGS_MODEL: ReadModel = ReadModel {
    table: "cost_daily_tags",
    key: &[
        "tenant_id",
        "account",
        "key",
        "value",
        "service",
        "currency",
        "day",
    ],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("day", Type::TIMESTAMPTZ),
        col("account", Type::TEXT),
        col("key", Type::TEXT),
        col("value", Type::TEXT),
        col("service", Type::TEXT),
        col("currency", Type::TEXT),
        col("cost", Type::NUMERIC),
        col("lines", Type::INT8),
    ],
    keep_on_update: &[],
    newer: None,
};

static IMPORTS_MODEL: ReadModel = ReadModel {
    table: "cost_imports",
    key: &["import_id"],
    columns: &[
        col("import_id", Type::UUID),
        col("tenant_id", Type::TEXT),
        col("account", Type::TEXT),
        col("format", Type::TEXT),
        col("sha256", Type::TEXT),
        col("periods", Type::DATE_ARRAY),
        col("lines", Type::INT8),
        col("lines_loaded", Type::INT8),
        col("totals", Type::JSONB),
        col("state", Type::TEXT),
        col("started_at", Type::TIMESTAMPTZ),
        col("position", Type::INT8),
    ],
    keep_on_update: &[],
    newer: None,
};

/// What every line of one import shares.
struct ImportContext {
    tenant: String,
    account: String,
    provider: &'static str,
    import_id: Uuid,
}

/// A line as written: the JSON columns are passed to COPY as the text they arrived in.
struct LineRow {
    import: Arc<ImportContext>,
    line: i32,
    charge_start: DateTime<Utc>,
    charge_end: Option<DateTime<Utc>>,
    billing_period: chrono::NaiveDate,
    currency: String,
    cost: Decimal,
    effective_cost: Option<Decimal>,
    list_cost: Option<Decimal>,
    service: String,
    service_name: String,
    category: String,
    region: String,
    resource: String,
    sub_account: String,
    charge_category: String,
    tags: Json<Box<RawValue>>,
    vtags: Json<Box<RawValue>>,
    extra: Json<Box<RawValue>>,
}

impl LineRow {
    fn new(
        import: Arc<ImportContext>,
        extra_columns: &[String],
        l: BillLine,
        vtags: Box<RawValue>,
    ) -> Self {
        let extra: Vec<(&str, &str)> = extra_columns
            .iter()
            .zip(&l.extra)
            .filter_map(|(name, v)| Some((name.as_str(), v.as_deref()?)))
            .collect();
        Self {
            import,
            line: l.line,
            charge_start: l.charge_start,
            charge_end: l.charge_end,
            billing_period: l.billing_period,
            currency: l.currency,
            cost: l.cost,
            effective_cost: l.effective_cost,
            list_cost: l.list_cost,
            service: l.service,
            service_name: l.service_name,
            category: l.category,
            region: l.region,
            resource: l.resource,
            sub_account: l.sub_account,
            charge_category: l.charge_category,
            tags: Json(l.tags.0),
            vtags: Json(vtags),
            extra: Json(json_object(&extra)),
        }
    }
}

impl Row for LineRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        let i = &*self.import;
        vec![
            &i.tenant,
            &self.charge_start,
            &self.charge_end,
            &self.billing_period,
            &i.account,
            &i.provider,
            &i.import_id,
            &self.line,
            &self.currency,
            &self.cost,
            &self.effective_cost,
            &self.list_cost,
            &self.service,
            &self.service_name,
            &self.category,
            &self.region,
            &self.resource,
            &self.sub_account,
            &self.charge_category,
            &self.tags,
            &self.vtags,
            &self.extra,
        ]
    }
}

/// A key of `cost_daily`: tenant, day, account, service, region, currency.
type DayKey = (String, DateTime<Utc>, String, String, String, String);

struct DailyRow {
    key: DayKey,
    cost: Decimal,
    lines: i64,
}

impl Row for DailyRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        let k = &self.key;
        vec![&k.0, &k.1, &k.2, &k.3, &k.4, &k.5, &self.cost, &self.lines]
    }
}

/// A key of `cost_daily_tags`: day, service, currency, tag key, tag value (the tenant and
/// account are the import's).
type TagDayKey = (DateTime<Utc>, String, String, String, String);
type TagSums = HashMap<TagDayKey, (Decimal, i64)>;

struct DailyTagRow {
    import: Arc<ImportContext>,
    key: TagDayKey,
    cost: Decimal,
    lines: i64,
}

impl Row for DailyTagRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        let (i, k) = (&*self.import, &self.key);
        vec![
            &i.tenant,
            &k.0,
            &i.account,
            &k.3,
            &k.4,
            &k.1,
            &k.2,
            &self.cost,
            &self.lines,
        ]
    }
}

struct ImportRow {
    id: Uuid,
    format: &'static str,
    tenant: String,
    started: ImportStarted,
    totals: Value,
    at: DateTime<Utc>,
    position: i64,
}

impl Row for ImportRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.id,
            &self.tenant,
            &self.started.account,
            &self.format,
            &self.started.sha256,
            &self.started.periods,
            &self.started.lines,
            &0_i64,
            &self.totals,
            &"loading",
            &self.at,
            &self.position,
        ]
    }
}

/// The lines a batch has read and not yet written.
#[derive(Default)]
struct Pending {
    lines: Vec<LineRow>,
    daily: HashMap<DayKey, (Decimal, i64)>,
    /// Per import (its tenant and account), the tag sums.
    tags: HashMap<Uuid, (Arc<ImportContext>, TagSums)>,
    loaded: HashMap<Uuid, i64>,
}

impl Pending {
    fn add(
        &mut self,
        import: &Arc<ImportContext>,
        extra_columns: &[String],
        lines: Vec<BillLine>,
        vtags: &[Compiled],
    ) -> anyhow::Result<()> {
        *self.loaded.entry(import.import_id).or_default() += lines.len() as i64;
        let tag_sums = &mut self
            .tags
            .entry(import.import_id)
            .or_insert_with(|| (import.clone(), HashMap::new()))
            .1;
        for line in lines {
            let day = line
                .charge_start
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .unwrap_or_default()
                .and_utc();
            let sums = self
                .daily
                .entry((
                    import.tenant.clone(),
                    day,
                    import.account.clone(),
                    line.service.clone(),
                    line.region.clone(),
                    line.currency.clone(),
                ))
                .or_default();
            sums.0 += line.cost;
            sums.1 += 1;
            let tags: Map<String, Value> = serde_json::from_str(line.tags.0.get())?;
            for (key, value) in &tags {
                if let Value::String(value) = value {
                    let sums = tag_sums
                        .entry((
                            day,
                            line.service.clone(),
                            line.currency.clone(),
                            key.clone(),
                            value.clone(),
                        ))
                        .or_default();
                    sums.0 += line.cost;
                    sums.1 += 1;
                }
            }
            let values = line_vtags(import, &line, &tags, vtags)?;
            self.lines
                .push(LineRow::new(import.clone(), extra_columns, line, values));
        }
        Ok(())
    }

    async fn flush(&mut self, tx: &Transaction<'_>) -> anyhow::Result<()> {
        if self.lines.is_empty() {
            return Ok(());
        }
        LINES_MODEL.insert(tx, &self.lines).await?;
        let daily: Vec<DailyRow> = self
            .daily
            .drain()
            .map(|(key, (cost, lines))| DailyRow { key, cost, lines })
            .collect();
        DAILY_MODEL
            .accumulate(tx, &daily, &["cost", "lines"])
            .await?;
        let tags: Vec<DailyTagRow> = self
            .tags
            .drain()
            .flat_map(|(_, (import, sums))| {
                sums.into_iter()
                    .map(move |(key, (cost, lines))| DailyTagRow {
                        import: import.clone(),
                        key,
                        cost,
                        lines,
                    })
            })
            .collect();
        DAILY_TAGS_MODEL
            .accumulate(tx, &tags, &["cost", "lines"])
            .await?;
        let (ids, counts): (Vec<Uuid>, Vec<i64>) = self.loaded.drain().unzip();
        tx.execute(LOADED_SQL, &[&ids, &counts]).await?;
        self.lines.clear();
        Ok(())
    }
}

/// The virtual tags of one line, as a JSON object (`{}` when the tenant has none).
fn line_vtags(
    import: &ImportContext,
    line: &BillLine,
    tags: &Map<String, Value>,
    vtags: &[Compiled],
) -> anyhow::Result<Box<RawValue>> {
    if vtags.is_empty() {
        return Ok(json_object(&[]));
    }
    let text = |field: &str| -> Option<String> {
        Some(
            match field {
                "account" => &import.account,
                "service" => &line.service,
                "region" => &line.region,
                "resource" => &line.resource,
                "currency" => &line.currency,
                "category" => &line.category,
                "charge_category" => &line.charge_category,
                "sub_account" => &line.sub_account,
                _ => return None,
            }
            .clone(),
        )
    };
    let values: Map<String, Value> = vtags
        .iter()
        .map(|v| {
            let value = v.evaluate(&text, line.cost, tags);
            (v.name.clone(), value.map_or(Value::Null, Value::String))
        })
        .collect();
    Ok(serde_json::value::to_raw_value(&values)?)
}

/// The virtual tags of every tenant, as the log has saved them so far.
struct VirtualTags {
    by_tenant: HashMap<String, Vec<Compiled>>,
}

const VTAGS_SQL: &str =
    "SELECT tenant_id, definition FROM cost_virtual_tags ORDER BY tenant_id, name";

/// Sets one virtual tag on the tenant's lines charged in a time range (`$1` tenant, `$2`
/// name, `$3`/`$4` the range, the CASE's parameters from `$5`).
fn recompute_sql(case: &str) -> String {
    format!(
        "UPDATE cost_lines SET vtags = vtags || jsonb_build_object($2::text, {case})
          WHERE tenant_id = $1 AND charge_start >= $3 AND charge_start < $4"
    )
}
const RECOMPUTED_SQL: &str = "\
UPDATE cost_virtual_tags SET recomputed_lines = recomputed_lines + $3, recompute_total = $4,
       recomputed_until = $5
 WHERE tenant_id = $1 AND name = $2";
const RECOMPUTE_COMPLETED_SQL: &str = "\
UPDATE cost_virtual_tags SET recompute_state = 'complete', recomputed_lines = $3
 WHERE tenant_id = $1 AND name = $2";

struct VtagRow {
    tenant: String,
    name: String,
    definition: Value,
    at: DateTime<Utc>,
    position: i64,
    revision: i64,
}

impl Row for VtagRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant,
            &self.name,
            &self.definition,
            &self.at,
            &self.position,
            &self.revision,
            &"running",
            &0_i64,
            &0_i64,
            &None::<DateTime<Utc>>,
        ]
    }
}

impl VirtualTags {
    async fn load(tx: &Transaction<'_>) -> anyhow::Result<Self> {
        let mut by_tenant: HashMap<String, Vec<Compiled>> = HashMap::new();
        for r in tx.query(VTAGS_SQL, &[]).await? {
            let d: VirtualTagDefinition = serde_json::from_value(r.try_get(1)?)?;
            let compiled = Compiled::new(&d).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            by_tenant.entry(r.try_get(0)?).or_default().push(compiled);
        }
        Ok(Self { by_tenant })
    }

    fn of(&self, tenant: &str) -> &[Compiled] {
        self.by_tenant.get(tenant).map_or(&[], Vec::as_slice)
    }

    /// Saves a definition: the lines written from here on get it in `add`; the lines
    /// already there get it from the recompute job's steps ([`Self::recompute`]).
    async fn save(
        &mut self,
        tx: &Transaction<'_>,
        e: &RecordedEvent,
        d: VirtualTagDefinition,
    ) -> anyhow::Result<()> {
        let compiled = Compiled::new(&d).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let tenant = &e.tenant_id;
        VTAGS_MODEL
            .upsert(
                tx,
                &[VtagRow {
                    tenant: tenant.clone(),
                    name: d.name.clone(),
                    definition: serde_json::to_value(&d)?,
                    at: e.recorded_at,
                    position: e.position,
                    revision: e.stream_version,
                }],
            )
            .await?;
        let list = self.by_tenant.entry(tenant.to_owned()).or_default();
        list.retain(|c| c.name != d.name);
        list.push(compiled);
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    /// One recompute step: the tag's current definition (the aggregate records a step
    /// only for the current one) on every line of the tenant charged in the step's range,
    /// set-wise.
    async fn recompute(
        &self,
        tx: &Transaction<'_>,
        tenant: &str,
        step: &RecomputeStep,
    ) -> anyhow::Result<()> {
        let compiled = self
            .of(tenant)
            .iter()
            .find(|c| c.name == step.name)
            .ok_or_else(|| anyhow::anyhow!("recompute of unknown virtual tag {}", step.name))?;
        let (case, params) = compiled.case_sql(5);
        let mut bound: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(tenant.to_owned()),
            Box::new(step.name.clone()),
            Box::new(step.from),
            Box::new(step.to),
        ];
        bound.extend(params.iter().map(crate::tagging::run::to_sql));
        let refs: Vec<&(dyn ToSql + Sync)> =
            bound.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        tx.execute(recompute_sql(&case).as_str(), &refs).await?;
        tx.execute(
            RECOMPUTED_SQL,
            &[&tenant, &step.name, &step.lines, &step.total, &step.to],
        )
        .await?;
        Ok(())
    }
}

const LOADED_SQL: &str = "\
UPDATE cost_imports i SET lines_loaded = i.lines_loaded + u.n
  FROM unnest($1::uuid[], $2::bigint[]) AS u(id, n) WHERE i.import_id = u.id";

/// A restatement: the rollup loses the sums of the superseded lines.
const RESTATE_DAILY_SQL: &str = "\
UPDATE cost_daily d SET cost = d.cost - g.cost, lines = d.lines - g.lines
  FROM (SELECT time_bucket('1 day', charge_start) AS day, service, region, currency,
               sum(cost) AS cost, count(*) AS lines
          FROM cost_lines
         WHERE tenant_id = $1 AND account = $2 AND billing_period = ANY($3)
         GROUP BY 1, 2, 3, 4) g
 WHERE d.tenant_id = $1 AND d.account = $2 AND d.day = g.day AND d.service = g.service
   AND d.region = g.region AND d.currency = g.currency";
const DROP_EMPTY_DAYS_SQL: &str =
    "DELETE FROM cost_daily WHERE tenant_id = $1 AND account = $2 AND lines = 0";
/// The same for the tag rollup.
const RESTATE_DAILY_TAGS_SQL: &str = "\
UPDATE cost_daily_tags d SET cost = d.cost - g.cost, lines = d.lines - g.lines
  FROM (SELECT time_bucket('1 day', charge_start) AS day, service, currency, t.key,
               t.value #>> '{}' AS value, sum(cost) AS cost, count(*) AS lines
          FROM cost_lines, jsonb_each(tags) AS t
         WHERE tenant_id = $1 AND account = $2 AND billing_period = ANY($3)
           AND jsonb_typeof(t.value) = 'string'
         GROUP BY 1, 2, 3, 4, 5) g
 WHERE d.tenant_id = $1 AND d.account = $2 AND d.key = g.key AND d.value = g.value
   AND d.service = g.service AND d.currency = g.currency AND d.day = g.day";
const DROP_EMPTY_TAG_DAYS_SQL: &str =
    "DELETE FROM cost_daily_tags WHERE tenant_id = $1 AND account = $2 AND lines = 0";
const RESTATE_LINES_SQL: &str =
    "DELETE FROM cost_lines WHERE tenant_id = $1 AND account = $2 AND billing_period = ANY($3)";
const RESTATED_BY_SQL: &str = "\
UPDATE cost_imports SET restated_by = $4
 WHERE tenant_id = $1 AND account = $2 AND periods && $3 AND import_id <> $4
   AND restated_by IS NULL";
const COMPLETED_SQL: &str = "\
UPDATE cost_imports SET state = 'complete', completed_at = $2, position = $3
 WHERE import_id = $1";

pub struct CostLinesProjector;

/// The tables of the `cost_lines` projector.
const LINE_MODELS: [&ReadModel; 5] = [
    &LINES_MODEL,
    &DAILY_MODEL,
    &DAILY_TAGS_MODEL,
    &IMPORTS_MODEL,
    &VTAGS_MODEL,
];

/// The projector reads two aggregates (bill imports and virtual tags), so it implements
/// `Projection` and decodes each event by its stream type.
#[async_trait]
impl Projection for CostLinesProjector {
    fn name(&self) -> &'static str {
        COST_LINES
    }

    fn stream_types(&self) -> &[&'static str] {
        &[BillImport::STREAM_TYPE, VirtualTag::STREAM_TYPE]
    }

    fn tables(&self) -> Vec<&'static str> {
        LINE_MODELS.iter().map(|m| m.table).collect()
    }

    fn options(&self) -> ProjectorOptions {
        // Line events are large (1,000 lines each): 20 per batch.
        ProjectorOptions {
            durable_commit: false,
            batch_size: Some(20),
            ..Default::default()
        }
    }

    async fn prepare_shadow(&self, tx: &Transaction<'_>, schema: &str) -> anyhow::Result<()> {
        tx.batch_execute(&format!(
            "SELECT create_hypertable('{schema}.cost_lines', 'charge_start',
                 chunk_time_interval => interval '7 days', create_default_indexes => false);
             SELECT create_hypertable('{schema}.cost_daily', 'day',
                 chunk_time_interval => interval '90 days', create_default_indexes => false);
             SELECT create_hypertable('{schema}.cost_daily_tags', 'day',
                 chunk_time_interval => interval '90 days', create_default_indexes => false);"
        ))
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: &[RecordedEvent],
        _lane: Lane,
    ) -> anyhow::Result<()> {
        let mut pending = Pending::default();
        let mut imports: HashMap<Uuid, Arc<ImportContext>> = HashMap::new();
        let mut vtags = VirtualTags::load(tx).await?;
        for raw in events {
            if raw.stream_type == VirtualTag::STREAM_TYPE {
                pending.flush(tx).await?;
                match VirtualTag::decode(raw)? {
                    VirtualTagEvent::VirtualTagSaved(d) => vtags.save(tx, raw, d).await?,
                    VirtualTagEvent::VirtualTagRecomputed(step) => {
                        vtags.recompute(tx, &raw.tenant_id, &step).await?;
                    }
                    VirtualTagEvent::VirtualTagRecomputeCompleted { name, lines, .. } => {
                        tx.execute(RECOMPUTE_COMPLETED_SQL, &[&raw.tenant_id, &name, &lines])
                            .await?;
                    }
                }
                continue;
            }
            let e = Envelope::decode::<BillImport>(raw)?;
            match e.event {
                BillImportEvent::BillImportStarted(started) => {
                    pending.flush(tx).await?;
                    let periods = &started.periods;
                    let restate: [&(dyn ToSql + Sync); 3] =
                        [&e.tenant_id, &started.account, periods];
                    tx.execute(RESTATE_DAILY_SQL, &restate).await?;
                    tx.execute(DROP_EMPTY_DAYS_SQL, &restate[..2]).await?;
                    tx.execute(RESTATE_DAILY_TAGS_SQL, &restate).await?;
                    tx.execute(DROP_EMPTY_TAG_DAYS_SQL, &restate[..2]).await?;
                    tx.execute(RESTATE_LINES_SQL, &restate).await?;
                    tx.execute(
                        RESTATED_BY_SQL,
                        &[&e.tenant_id, &started.account, periods, &e.stream_id],
                    )
                    .await?;
                    imports.insert(
                        e.stream_id,
                        Arc::new(ImportContext {
                            tenant: e.tenant_id.clone(),
                            account: started.account.clone(),
                            provider: started.provider.as_str(),
                            import_id: e.stream_id,
                        }),
                    );
                    let row = ImportRow {
                        id: e.stream_id,
                        format: started.format.as_str(),
                        tenant: e.tenant_id,
                        totals: serde_json::to_value(&started.totals)?,
                        started,
                        at: e.recorded_at,
                        position: e.position,
                    };
                    IMPORTS_MODEL.insert(tx, &[row]).await?;
                }
                BillImportEvent::BillLinesImported(batch) => {
                    let import = imports
                        .entry(e.stream_id)
                        .or_insert_with(|| {
                            Arc::new(ImportContext {
                                tenant: e.tenant_id.clone(),
                                account: batch.account.clone(),
                                provider: batch.provider.as_str(),
                                import_id: e.stream_id,
                            })
                        })
                        .clone();
                    let defs = vtags.of(&import.tenant);
                    pending.add(&import, &batch.extra_columns, batch.lines, defs)?;
                }
                BillImportEvent::BillImportCompleted { .. } => {
                    pending.flush(tx).await?;
                    tx.execute(COMPLETED_SQL, &[&e.stream_id, &e.recorded_at, &e.position])
                        .await?;
                }
            }
        }
        pending.flush(tx).await
    }
}

pub const COST_ANOMALIES: &str = "cost_anomalies";

static ANOMALIES_MODEL: ReadModel = ReadModel {
    table: "cost_anomalies",
    key: &["tenant_id", "id"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("id", Type::UUID),
        col("account_id", Type::TEXT),
        col("service", Type::TEXT),
        col("currency", Type::TEXT),
        col("first_day", Type::DATE),
        col("last_day", Type::DATE),
        col("ended_day", Type::DATE),
        col("actual", Type::NUMERIC),
        col("expected", Type::NUMERIC),
        col("deviation", Type::FLOAT8),
        col("severity", Type::TEXT),
        col("contributors", Type::JSONB),
        col("state", Type::TEXT),
        col("restated", Type::BOOL),
        col("detected_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &[],
    newer: None,
};

struct AnomalyRow {
    tenant: String,
    id: Uuid,
    account_id: String,
    service: String,
    currency: String,
    first_day: chrono::NaiveDate,
    last_day: chrono::NaiveDate,
    ended_day: Option<chrono::NaiveDate>,
    actual: Decimal,
    expected: Decimal,
    deviation: f64,
    severity: &'static str,
    contributors: Value,
    state: &'static str,
    restated: bool,
    detected_at: DateTime<Utc>,
}

impl Row for AnomalyRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant,
            &self.id,
            &self.account_id,
            &self.service,
            &self.currency,
            &self.first_day,
            &self.last_day,
            &self.ended_day,
            &self.actual,
            &self.expected,
            &self.deviation,
            &self.severity,
            &self.contributors,
            &self.state,
            &self.restated,
            &self.detected_at,
        ]
    }
}

const ANOMALY_UPDATED_SQL: &str = "\
UPDATE cost_anomalies SET last_day = greatest(last_day, $3), actual = $4, expected = $5,
       deviation = $6, severity = $7, contributors = $8
 WHERE tenant_id = $1 AND id = $2";
const ANOMALY_ENDED_SQL: &str = "\
UPDATE cost_anomalies SET ended_day = $3, last_day = $4, state = 'ended', restated = $5
 WHERE tenant_id = $1 AND id = $2";

/// Keeps `cost_anomalies`: a row per episode, from its `CostAnomalyDetected`, changed by
/// `CostAnomalyUpdated` (the worst day) and `CostAnomalyEnded`. Rows detected in the
/// batch are folded in memory and COPYed; earlier rows are updated in place.
pub struct AnomaliesProjector;

#[async_trait]
impl Projector for AnomaliesProjector {
    type Aggregate = super::aggregate::CostAnomalyStream;
    const NAME: &'static str = COST_ANOMALIES;
    const READ_MODELS: &'static [&'static ReadModel] = &[&ANOMALIES_MODEL];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<super::events::CostAnomalyEvent>>,
    ) -> anyhow::Result<()> {
        use super::events::CostAnomalyEvent as E;
        let mut new: Vec<AnomalyRow> = Vec::new();
        let mut index: HashMap<(String, Uuid), usize> = HashMap::new();
        for e in events {
            match e.event {
                E::CostAnomalyDetected(d) => {
                    index.insert((e.tenant_id.clone(), d.anomaly_id), new.len());
                    new.push(AnomalyRow {
                        tenant: e.tenant_id,
                        id: d.anomaly_id,
                        account_id: d.account_id,
                        service: d.service,
                        currency: d.currency,
                        first_day: d.day,
                        last_day: d.day,
                        ended_day: None,
                        actual: d.actual,
                        expected: d.expected,
                        deviation: d.deviation,
                        severity: d.severity.as_str(),
                        contributors: serde_json::to_value(&d.contributors)?,
                        state: "open",
                        restated: false,
                        detected_at: e.recorded_at,
                    });
                }
                E::CostAnomalyUpdated(u) => {
                    let contributors = serde_json::to_value(&u.contributors)?;
                    match index.get(&(e.tenant_id.clone(), u.anomaly_id)) {
                        Some(&i) => {
                            let r = &mut new[i];
                            r.last_day = r.last_day.max(u.day);
                            r.actual = u.actual;
                            r.expected = u.expected;
                            r.deviation = u.deviation;
                            r.severity = u.severity.as_str();
                            r.contributors = contributors;
                        }
                        None => {
                            tx.execute(
                                ANOMALY_UPDATED_SQL,
                                &[
                                    &e.tenant_id,
                                    &u.anomaly_id,
                                    &u.day,
                                    &u.actual,
                                    &u.expected,
                                    &u.deviation,
                                    &u.severity.as_str(),
                                    &contributors,
                                ],
                            )
                            .await?;
                        }
                    }
                }
                E::CostAnomalyEnded(x) => match index.get(&(e.tenant_id.clone(), x.anomaly_id)) {
                    Some(&i) => {
                        let r = &mut new[i];
                        r.ended_day = Some(x.day);
                        r.last_day = x.last_day;
                        r.state = "ended";
                        r.restated = x.restated;
                    }
                    None => {
                        tx.execute(
                            ANOMALY_ENDED_SQL,
                            &[
                                &e.tenant_id,
                                &x.anomaly_id,
                                &x.day,
                                &x.last_day,
                                &x.restated,
                            ],
                        )
                        .await?;
                    }
                },
            }
        }
        ANOMALIES_MODEL.insert(tx, &new).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_read_model_declarations_are_valid() {
        for m in [
            &super::ACCOUNTS_MODEL,
            &super::LINES_MODEL,
            &super::DAILY_MODEL,
            &super::DAILY_TAGS_MODEL,
            &super::IMPORTS_MODEL,
            &super::VTAGS_MODEL,
            &super::ALLOCATION_MODEL,
        ] {
            m.check().unwrap();
        }
    }
}
