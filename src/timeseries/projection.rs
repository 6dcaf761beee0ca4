//! The time-series read models.
//!
//! - `metric_points` (projector `metric_points`): raw points, the series catalog
//!   `metric_series` and the rollups `metric_points_1h` / `metric_points_1d`, all in the
//!   batch transaction. Points are copied into a staging table and upserted (last write
//!   wins); the rollup buckets of the batch are merged into the rollups (sums added,
//!   least/greatest, earlier first, later last), except buckets where a point replaced an
//!   earlier one: those are computed again from the raw points (an old value cannot be
//!   taken out of a sum). A `RawPointsExpired` in the log applies retention right there
//!   (`retention::expire`, `metric_raw_horizon`); raw points before a metric's horizon
//!   are not written (their rollups are). So a replay drops what live dropped (ADR 0021).
//! - `bars_1m` (projector `bars`): 1-minute bars, last write wins.
//! - `metric_retention` (projector `metric_retention`): per-metric raw retention.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use super::aggregate::{BarBatch, MetricBatch, MetricRetention};
use super::events::{BarBatchEvent, MetricBatchEvent, PointsBlock, RetentionEvent};
use super::{retention, series_id};
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Envelope, Projector, ProjectorOptions};

pub const METRIC_POINTS: &str = "metric_points";
pub const BARS: &str = "bars";
pub const METRIC_RETENTION: &str = "metric_retention";

/// Events per batch of the point projector: 20 blocks of up to 10,000 points.
const POINT_EVENTS_PER_BATCH: i64 = 20;

static POINTS: ReadModel = ReadModel {
    table: "metric_points",
    key: &["series_id", "time"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("series_id", Type::INT8),
        col("time", Type::TIMESTAMPTZ),
        col("value", Type::FLOAT8),
    ],
    keep_on_update: &["tenant_id"],
    newer: None,
};

static SERIES: ReadModel = ReadModel {
    table: "metric_series",
    key: &["id"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("id", Type::INT8),
        col("series", Type::TEXT),
        col("metric", Type::TEXT),
        col("tags", Type::JSONB),
        col("first_time", Type::TIMESTAMPTZ),
        col("last_time", Type::TIMESTAMPTZ),
        col("last_value", Type::FLOAT8),
    ],
    keep_on_update: &[],
    newer: None,
};

/// The rollups share one layout; only their table and bucket differ.
static ROLLUP_1H: ReadModel = rollup!("metric_points_1h");
static ROLLUP_1D: ReadModel = rollup!("metric_points_1d");

macro_rules! rollup {
    ($table:literal) => {
        ReadModel {
            table: $table,
            key: &["series_id", "bucket"],
            columns: &[
                col("tenant_id", Type::TEXT),
                col("series_id", Type::INT8),
                col("bucket", Type::TIMESTAMPTZ),
                col("count", Type::INT8),
                col("sum", Type::FLOAT8),
                col("min", Type::FLOAT8),
                col("max", Type::FLOAT8),
                col("first_time", Type::TIMESTAMPTZ),
                col("first_value", Type::FLOAT8),
                col("last_time", Type::TIMESTAMPTZ),
                col("last_value", Type::FLOAT8),
            ],
            keep_on_update: &[],
            newer: None,
        }
    };
}
use rollup;

static HORIZON: ReadModel = ReadModel {
    table: "metric_raw_horizon",
    key: &["tenant_id", "metric"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("metric", Type::TEXT),
        col("before", Type::TIMESTAMPTZ),
        col("points_deleted", Type::INT8),
        col("updated_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &[],
    newer: None,
};

static BARS_1M: ReadModel = ReadModel {
    table: "bars_1m",
    key: &["tenant_id", "symbol", "time"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("symbol", Type::TEXT),
        col("time", Type::TIMESTAMPTZ),
        col("open", Type::NUMERIC),
        col("high", Type::NUMERIC),
        col("low", Type::NUMERIC),
        col("close", Type::NUMERIC),
        col("volume", Type::NUMERIC),
    ],
    keep_on_update: &[],
    newer: None,
};

static RETENTION: ReadModel = ReadModel {
    table: "metric_retention",
    key: &["tenant_id", "metric"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("metric", Type::TEXT),
        col("raw_days", Type::INT4),
        col("updated_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &[],
    newer: None,
};

struct PointRow<'a> {
    tenant: &'a str,
    series_id: i64,
    time: DateTime<Utc>,
    value: f64,
}

impl Row for PointRow<'_> {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.tenant, &self.series_id, &self.time, &self.value]
    }
}

struct SeriesRow {
    tenant: String,
    id: i64,
    series: String,
    metric: String,
    tags: Value,
    first_time: DateTime<Utc>,
    last_time: DateTime<Utc>,
    last_value: f64,
}

impl Row for SeriesRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant,
            &self.id,
            &self.series,
            &self.metric,
            &self.tags,
            &self.first_time,
            &self.last_time,
            &self.last_value,
        ]
    }
}

fn micros(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// An upsert of a series merges: tags key by key, the earliest first time, the latest
/// point (a point at the same time as the stored latest replaces it: it came later).
const SERIES_MERGE: &str = "tags = metric_series.tags || EXCLUDED.tags, \
     first_time = least(metric_series.first_time, EXCLUDED.first_time), \
     last_value = CASE WHEN EXCLUDED.last_time >= metric_series.last_time \
                  THEN EXCLUDED.last_value ELSE metric_series.last_value END, \
     last_time = greatest(metric_series.last_time, EXCLUDED.last_time)";

/// Upserts the staged points, except those before their series' horizon (`cl_horizon`:
/// retention dropped that range); the buckets (series, hour) where a point replaced a
/// stored one go to `cl_replaced`.
const UPSERT_POINTS_SQL: &str = "
CREATE TEMP TABLE IF NOT EXISTS cl_replaced (series_id bigint, bucket timestamptz)
    ON COMMIT DELETE ROWS;
WITH up AS (
    INSERT INTO metric_points (tenant_id, series_id, time, value)
    SELECT s.tenant_id, s.series_id, s.time, s.value FROM pg_temp.cl_stage_metric_points s
    LEFT JOIN pg_temp.cl_horizon h ON h.series_id = s.series_id
    WHERE h.before IS NULL OR s.time >= h.before
    ON CONFLICT (series_id, time) DO UPDATE SET value = EXCLUDED.value
    RETURNING series_id, time, xmax <> 0 AS replaced)
INSERT INTO pg_temp.cl_replaced
SELECT DISTINCT series_id, time_bucket('1 hour', time) FROM up WHERE replaced;";

/// The merge of a batch's buckets into a rollup (`{table}`, `{width}`), for buckets
/// without a replaced point.
const MERGE_ROLLUP_SQL: &str = "
INSERT INTO {table} AS t (tenant_id, series_id, bucket, count, sum, min, max,
                          first_time, first_value, last_time, last_value)
SELECT tenant_id, series_id, time_bucket('{width}', time) AS b, count(*), sum(value),
       min(value), max(value), min(time), first(value, time), max(time), last(value, time)
FROM pg_temp.cl_stage_metric_points s
WHERE NOT EXISTS (SELECT 1 FROM pg_temp.cl_replaced r
                  WHERE r.series_id = s.series_id
                    AND time_bucket('{width}', r.bucket) = time_bucket('{width}', s.time))
GROUP BY tenant_id, series_id, b
ON CONFLICT (series_id, bucket) DO UPDATE SET
    count = t.count + EXCLUDED.count,
    sum = t.sum + EXCLUDED.sum,
    min = least(t.min, EXCLUDED.min),
    max = greatest(t.max, EXCLUDED.max),
    first_value = CASE WHEN EXCLUDED.first_time < t.first_time
                  THEN EXCLUDED.first_value ELSE t.first_value END,
    first_time = least(t.first_time, EXCLUDED.first_time),
    last_value = CASE WHEN EXCLUDED.last_time > t.last_time
                 THEN EXCLUDED.last_value ELSE t.last_value END,
    last_time = greatest(t.last_time, EXCLUDED.last_time)";

/// Sets every column of a rollup row to the recomputed one.
const REPLACE_ROLLUP: &str = "ON CONFLICT (series_id, bucket) DO UPDATE SET
    count = EXCLUDED.count, sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max,
    first_time = EXCLUDED.first_time, first_value = EXCLUDED.first_value,
    last_time = EXCLUDED.last_time, last_value = EXCLUDED.last_value";

/// Hours with a replaced point, computed again from the raw points (a replaced point is
/// never before its horizon, and horizons are whole chunks: the hour is whole).
const RECOMPUTE_1H_SQL: &str = "
INSERT INTO metric_points_1h (tenant_id, series_id, bucket, count, sum, min, max,
                              first_time, first_value, last_time, last_value)
SELECT p.tenant_id, p.series_id, r.bucket, count(*), sum(p.value), min(p.value),
       max(p.value), min(p.time), first(p.value, p.time), max(p.time), last(p.value, p.time)
FROM pg_temp.cl_replaced r
JOIN metric_points p ON p.series_id = r.series_id
                    AND p.time >= r.bucket AND p.time < r.bucket + interval '1 hour'
GROUP BY p.tenant_id, p.series_id, r.bucket
";

/// Days with a replaced point, computed again from their hours.
const RECOMPUTE_1D_SQL: &str = "
INSERT INTO metric_points_1d (tenant_id, series_id, bucket, count, sum, min, max,
                              first_time, first_value, last_time, last_value)
SELECT h.tenant_id, h.series_id, r.day, sum(h.count)::bigint, sum(h.sum), min(h.min),
       max(h.max), min(h.first_time), first(h.first_value, h.first_time),
       max(h.last_time), last(h.last_value, h.last_time)
FROM (SELECT DISTINCT series_id, time_bucket('1 day', bucket) AS day FROM pg_temp.cl_replaced) r
JOIN metric_points_1h h ON h.series_id = r.series_id
                       AND h.bucket >= r.day AND h.bucket < r.day + interval '1 day'
GROUP BY h.tenant_id, h.series_id, r.day
";

const BATCH_HORIZONS_SQL: &str = "SELECT tenant_id, metric, before FROM metric_raw_horizon
 WHERE tenant_id = ANY($1) AND metric = ANY($2)";

/// The points of a batch's events up to the next retention event, and their series.
#[derive(Default)]
struct Pending {
    /// (series id, time, order of arrival, value)
    points: Vec<(i64, i64, usize, f64)>,
    series: HashMap<i64, SeriesRow>,
}

impl Pending {
    fn add(&mut self, tenant: &str, block: &PointsBlock) -> anyhow::Result<()> {
        let ids: Vec<i64> = block
            .keys
            .iter()
            .map(|(s, m)| series_id(tenant, s, m))
            .collect();
        for p in block.points()? {
            let id = ids[p.key as usize];
            let order = self.points.len();
            self.points.push((id, p.time, order, p.value));
            let t = micros(p.time);
            let row = self.series.entry(id).or_insert_with(|| {
                let (s, m) = &block.keys[p.key as usize];
                SeriesRow {
                    tenant: tenant.to_owned(),
                    id,
                    series: s.clone(),
                    metric: m.clone(),
                    tags: Value::Object(serde_json::Map::new()),
                    first_time: t,
                    last_time: t,
                    last_value: p.value,
                }
            });
            row.first_time = row.first_time.min(t);
            if t >= row.last_time {
                row.last_time = t;
                row.last_value = p.value;
            }
        }
        for (k, tags) in &block.tags {
            let id = ids.get(*k as usize);
            if let Some(Value::Object(map)) = id
                .and_then(|id| self.series.get_mut(id))
                .map(|r| &mut r.tags)
            {
                for (tk, tv) in tags {
                    map.insert(tk.clone(), Value::String(tv.clone()));
                }
            }
        }
        Ok(())
    }

    /// Writes the points (last write wins), the series and the rollups; empties itself.
    async fn flush(&mut self, tx: &Transaction<'_>) -> anyhow::Result<()> {
        let mut points = std::mem::take(&mut self.points);
        let series: Vec<SeriesRow> = std::mem::take(&mut self.series).into_values().collect();
        if points.is_empty() {
            return Ok(());
        }
        let tenant_of: HashMap<i64, &str> =
            series.iter().map(|s| (s.id, s.tenant.as_str())).collect();
        // Series whose metric has a retention horizon: no raw point before it.
        let distinct = |f: fn(&SeriesRow) -> &str| {
            let mut v: Vec<&str> = series.iter().map(f).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let (tenants, metrics) = (distinct(|s| &s.tenant), distinct(|s| &s.metric));
        let horizons: HashMap<(String, String), DateTime<Utc>> = tx
            .query(BATCH_HORIZONS_SQL, &[&tenants, &metrics])
            .await?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let (mut ids, mut befores) = (Vec::new(), Vec::new());
        let mut horizon_of: HashMap<i64, i64> = HashMap::new();
        for s in &series {
            if let Some(b) = horizons.get(&(s.tenant.clone(), s.metric.clone())) {
                ids.push(s.id);
                befores.push(*b);
                horizon_of.insert(s.id, b.timestamp_micros());
            }
        }
        // Across the batch, the last point given for a (series, time) wins. A point before
        // its horizon has no raw row to replace: each write of it adds to the rollups as it
        // is (within its block it is already the last), whichever batch it falls in, live
        // or in a replay.
        points.sort_unstable_by_key(|p| (p.0, p.1, p.2));
        let late = |p: &(i64, i64, usize, f64)| horizon_of.get(&p.0).is_some_and(|h| p.1 < *h);
        points.dedup_by(|later, earlier| {
            if (later.0, later.1) == (earlier.0, earlier.1) && !late(later) {
                earlier.3 = later.3;
                true
            } else {
                false
            }
        });
        let rows: Vec<PointRow<'_>> = points
            .iter()
            .map(|p| PointRow {
                tenant: tenant_of.get(&p.0).copied().unwrap_or_default(),
                series_id: p.0,
                time: micros(p.1),
                value: p.3,
            })
            .collect();
        SERIES.merge(tx, &series, SERIES_MERGE).await?;
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS cl_horizon (series_id bigint, before timestamptz)
                 ON COMMIT DELETE ROWS",
        )
        .await?;
        if !ids.is_empty() {
            tx.execute(
                "INSERT INTO pg_temp.cl_horizon SELECT * FROM unnest($1::bigint[], $2::timestamptz[])",
                &[&ids, &befores],
            )
            .await?;
        }
        POINTS.stage(tx, &rows).await?;
        tx.batch_execute(UPSERT_POINTS_SQL).await?;
        for (table, width) in [
            ("metric_points_1h", "1 hour"),
            ("metric_points_1d", "1 day"),
        ] {
            tx.batch_execute(
                &MERGE_ROLLUP_SQL
                    .replace("{table}", table)
                    .replace("{width}", width),
            )
            .await?;
        }
        tx.batch_execute(&format!(
            "{RECOMPUTE_1H_SQL} {REPLACE_ROLLUP}; {RECOMPUTE_1D_SQL} {REPLACE_ROLLUP}; \
             DELETE FROM pg_temp.cl_stage_metric_points; DELETE FROM pg_temp.cl_replaced; \
             DELETE FROM pg_temp.cl_horizon"
        ))
        .await?;
        Ok(())
    }
}

/// Keeps the raw points, the series catalog, the rollups and the retention horizons.
pub struct PointsProjector;

#[async_trait]
impl Projector for PointsProjector {
    type Aggregate = MetricBatch;
    const NAME: &'static str = METRIC_POINTS;
    const READ_MODELS: &'static [&'static ReadModel] =
        &[&POINTS, &SERIES, &ROLLUP_1H, &ROLLUP_1D, &HORIZON];

    fn options(&self) -> ProjectorOptions {
        ProjectorOptions {
            durable_commit: false,
            batch_size: Some(POINT_EVENTS_PER_BATCH),
            ..Default::default()
        }
    }

    async fn prepare_shadow(&self, tx: &Transaction<'_>, schema: &str) -> anyhow::Result<()> {
        tx.batch_execute(&format!(
            "SELECT create_hypertable('{schema}.metric_points', 'time',
                 chunk_time_interval => interval '7 days', create_default_indexes => false);
             SELECT create_hypertable('{schema}.metric_points_1h', 'bucket',
                 chunk_time_interval => interval '30 days', create_default_indexes => false);
             SELECT create_hypertable('{schema}.metric_points_1d', 'bucket',
                 chunk_time_interval => interval '365 days', create_default_indexes => false);"
        ))
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<MetricBatchEvent>>,
    ) -> anyhow::Result<()> {
        let mut pending = Pending::default();
        let mut expired = retention::Expired::default();
        for e in &events {
            match &e.event {
                MetricBatchEvent::PointsWritten(block) => pending.add(&e.tenant_id, block)?,
                MetricBatchEvent::MetricBatchCompleted { .. } => {}
                MetricBatchEvent::RawPointsExpired { trigger, cutoffs } => {
                    // The points before it in the log first: retention applies to them.
                    pending.flush(tx).await?;
                    expired
                        .advance(tx, &e.tenant_id, trigger, cutoffs, e.recorded_at)
                        .await?;
                }
            }
        }
        pending.flush(tx).await?;
        expired.remove(tx).await
    }
}

struct BarRow<'a> {
    tenant: &'a str,
    symbol: &'a str,
    time: DateTime<Utc>,
    values: [Decimal; 5],
}

impl Row for BarRow<'_> {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant,
            &self.symbol,
            &self.time,
            &self.values[0],
            &self.values[1],
            &self.values[2],
            &self.values[3],
            &self.values[4],
        ]
    }
}

/// Keeps `bars_1m`.
pub struct BarsProjector;

#[async_trait]
impl Projector for BarsProjector {
    type Aggregate = BarBatch;
    const NAME: &'static str = BARS;
    const READ_MODELS: &'static [&'static ReadModel] = &[&BARS_1M];

    fn options(&self) -> ProjectorOptions {
        ProjectorOptions {
            durable_commit: false,
            batch_size: Some(POINT_EVENTS_PER_BATCH),
            ..Default::default()
        }
    }

    async fn prepare_shadow(&self, tx: &Transaction<'_>, schema: &str) -> anyhow::Result<()> {
        tx.batch_execute(&format!(
            "SELECT create_hypertable('{schema}.bars_1m', 'time',
                 chunk_time_interval => interval '30 days', create_default_indexes => false);"
        ))
        .await?;
        Ok(())
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<BarBatchEvent>>,
    ) -> anyhow::Result<()> {
        let mut decoded = Vec::new();
        for e in &events {
            if let BarBatchEvent::BarsWritten(block) = &e.event {
                decoded.push((e, block, block.bars()?));
            }
        }
        let mut bars: Vec<(&str, &str, i64, usize, [Decimal; 5])> = Vec::new();
        for (e, block, list) in &decoded {
            for b in list {
                let order = bars.len();
                bars.push((
                    &e.tenant_id,
                    &block.symbols[b.symbol as usize],
                    b.time,
                    order,
                    [b.open, b.high, b.low, b.close, b.volume],
                ));
            }
        }
        bars.sort_unstable_by_key(|b| (b.0, b.1, b.2, b.3));
        bars.dedup_by(|later, earlier| {
            if (later.0, later.1, later.2) == (earlier.0, earlier.1, earlier.2) {
                earlier.4 = later.4;
                true
            } else {
                false
            }
        });
        let rows: Vec<BarRow<'_>> = bars
            .iter()
            .map(|b| BarRow {
                tenant: b.0,
                symbol: b.1,
                time: micros(b.2),
                values: b.4,
            })
            .collect();
        BARS_1M.upsert(tx, &rows).await
    }
}

struct RetentionRow {
    tenant: String,
    metric: String,
    raw_days: i32,
    updated_at: DateTime<Utc>,
}

impl Row for RetentionRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.tenant, &self.metric, &self.raw_days, &self.updated_at]
    }
}

/// Keeps `metric_retention`: the metrics whose retention is not the default.
pub struct RetentionProjector;

#[async_trait]
impl Projector for RetentionProjector {
    type Aggregate = MetricRetention;
    const NAME: &'static str = METRIC_RETENTION;
    const READ_MODELS: &'static [&'static ReadModel] = &[&RETENTION];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<RetentionEvent>>,
    ) -> anyhow::Result<()> {
        // One statement per event keeps the order; retention changes are rare.
        for e in events {
            let RetentionEvent::RetentionSet { metric, raw_days } = e.event;
            match raw_days {
                Some(days) => {
                    RETENTION
                        .upsert(
                            tx,
                            &[RetentionRow {
                                tenant: e.tenant_id,
                                metric,
                                raw_days: days,
                                updated_at: e.recorded_at,
                            }],
                        )
                        .await?
                }
                None => {
                    tx.execute(
                        "DELETE FROM metric_retention WHERE tenant_id = $1 AND metric = $2",
                        &[&e.tenant_id, &metric],
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}
