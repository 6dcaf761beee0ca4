//! Retention of raw points (ADR 0021), as events. Each metric of a tenant keeps its raw
//! points for its `raw_days` (`metric_retention`) or the server's default
//! (`CLOUDLENS_METRICS_RETENTION_DAYS`); rollups are kept.
//!
//! - [`request`] (the elected scheduled job, or the admin API) finds the metrics whose
//!   cutoff (now minus the retention, rounded down to the chunk interval of 7 days, as
//!   chunks are aligned: from the Unix epoch) has
//!   moved past their horizon and appends, per tenant, a `metric_batch` stream of one
//!   `RawPointsExpired` event with those cutoffs.
//! - [`Expired`] (the point projector, in log order with the points) moves each metric's
//!   horizon (`metric_raw_horizon`, only forward) at the event, and at the end of the
//!   batch drops the chunks older than every horizon with `drop_chunks`, deletes the
//!   moved metrics' remaining points before their horizons, and counts what it removed
//!   per metric. Raw points written later for a range before the horizon are not kept
//!   (their rollups are).
//!
//! Live and replay run the same events in the same order, so a rebuild drops exactly what
//! the live read model dropped and never brings a raw point back.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio_postgres::GenericClient;
use utoipa::ToSchema;
use uuid::Uuid;

use super::aggregate::MetricBatch;
use super::events::{Cutoff, MetricBatchEvent};
use super::metrics::TS;
use crate::eventstore::{codec, AppendRequest, EventStore};
use crate::pipeline::EventSourced;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Admin,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Admin => "admin",
        }
    }
}

/// What one retention request asked for.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RetentionRun {
    pub trigger: String,
    pub ran_at: DateTime<Utc>,
    /// Tenants and metrics whose raw points got a new cutoff.
    pub tenants: i32,
    pub metrics: i32,
    /// Read with `min_position` at least this to see the points removed (0: nothing to
    /// remove).
    pub position: i64,
}

/// The metrics whose cutoff moved past their horizon, by tenant. The cutoff is a chunk
/// boundary of `metric_points` (7 days from the epoch), so whole chunks go.
const DUE_SQL: &str = "
SELECT s.tenant_id, s.metric, c.cutoff
FROM (SELECT DISTINCT tenant_id, metric FROM metric_series) s
LEFT JOIN metric_retention r ON r.tenant_id = s.tenant_id AND r.metric = s.metric
CROSS JOIN LATERAL (SELECT time_bucket(interval '7 days',
        now() - make_interval(days => coalesce(r.raw_days, $1::int)),
        '1970-01-01 00:00:00+00'::timestamptz) AS cutoff) c
LEFT JOIN metric_raw_horizon h ON h.tenant_id = s.tenant_id AND h.metric = s.metric
WHERE h.before IS NULL OR h.before < c.cutoff
ORDER BY 1, 2";

const RECORD_SQL: &str = "INSERT INTO metric_retention_runs (trigger, tenants, metrics, position)
 VALUES ($1, $2, $3, $4) RETURNING ran_at";

/// Appends the cutoffs that are due, one `RawPointsExpired` per tenant, and records the
/// run.
pub async fn request<C: GenericClient + Sync>(
    client: &C,
    store: &EventStore,
    default_days: i32,
    trigger: Trigger,
) -> anyhow::Result<RetentionRun> {
    let rows = client.query(DUE_SQL, &[&default_days]).await?;
    let mut by_tenant: BTreeMap<String, Vec<Cutoff>> = BTreeMap::new();
    for r in &rows {
        by_tenant.entry(r.get(0)).or_default().push(Cutoff {
            metric: r.get(1),
            before: r.get(2),
        });
    }
    let mut position = 0;
    for (tenant, cutoffs) in &by_tenant {
        let event = codec::encode(&MetricBatchEvent::RawPointsExpired {
            trigger: trigger.as_str().to_owned(),
            cutoffs: cutoffs.clone(),
        })?;
        let appended = store
            .append(AppendRequest {
                tenant_id: tenant,
                stream_type: MetricBatch::STREAM_TYPE,
                stream_id: Uuid::now_v7(),
                expected_version: 0,
                events: vec![event],
                metadata: json!({
                    "command_id": Uuid::now_v7(),
                    "actor": format!("cloudlens:retention:{}", trigger.as_str()),
                    "tenant_id": tenant,
                }),
                idempotency: None,
            })
            .await?;
        position = position.max(appended.position);
    }
    let (tenants, metrics) = (by_tenant.len() as i32, rows.len() as i32);
    let ran_at = client
        .query_one(
            RECORD_SQL,
            &[&trigger.as_str(), &tenants, &metrics, &position],
        )
        .await?
        .get(0);
    TS.retention_requests
        .with_label_values(&[trigger.as_str()])
        .inc_by(u64::try_from(metrics).unwrap_or(0));
    TS.retention_last_run
        .set(Utc::now().timestamp_millis() as f64 / 1000.0);
    Ok(RetentionRun {
        trigger: trigger.as_str().to_owned(),
        ran_at,
        tenants,
        metrics,
        position,
    })
}

/// The last runs, newest first.
pub async fn runs<C: GenericClient + Sync>(
    client: &C,
    limit: i64,
) -> anyhow::Result<Vec<RetentionRun>> {
    let rows = client
        .query(
            "SELECT trigger, ran_at, tenants, metrics, position
             FROM metric_retention_runs ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RetentionRun {
            trigger: r.get(0),
            ran_at: r.get(1),
            tenants: r.get(2),
            metrics: r.get(3),
            position: r.get(4),
        })
        .collect())
}

const HORIZON_SQL: &str = "
INSERT INTO metric_raw_horizon (tenant_id, metric, before, updated_at)
SELECT $1, c.metric, c.before, $4 FROM unnest($2::text[], $3::timestamptz[]) AS c(metric, before)
ON CONFLICT (tenant_id, metric) DO UPDATE
SET before = greatest(metric_raw_horizon.before, EXCLUDED.before), updated_at = EXCLUDED.updated_at";

/// Chunks may go up to the earliest horizon, once every metric with points has one.
const DROPPABLE_SQL: &str = "
SELECT CASE WHEN EXISTS (SELECT 1 FROM metric_series s WHERE NOT EXISTS
                          (SELECT 1 FROM metric_raw_horizon h
                           WHERE h.tenant_id = s.tenant_id AND h.metric = s.metric))
            THEN NULL ELSE (SELECT min(before) FROM metric_raw_horizon) END";

/// The points in the chunks about to be dropped (by chunk, so exactly what `drop_chunks`
/// takes), counted to their metrics.
const COUNT_DROPPED_SQL: &str = "
UPDATE metric_raw_horizon h SET points_deleted = h.points_deleted + c.n
FROM (SELECT s.tenant_id, s.metric, count(*) AS n
      FROM metric_points p JOIN metric_series s ON s.id = p.series_id
      WHERE p.tableoid = ANY(ARRAY(SELECT show_chunks('metric_points', older_than => $1::timestamptz))::oid[])
      GROUP BY 1, 2) c
WHERE h.tenant_id = c.tenant_id AND h.metric = c.metric
RETURNING c.n";

const DROP_SQL: &str =
    "SELECT count(*)::int FROM drop_chunks('metric_points', older_than => $1::timestamptz)";

/// The points of these (tenant, metric) pairs before their horizons, in the chunks that
/// stay.
const DELETE_SQL: &str = "
WITH d AS (
    DELETE FROM metric_points p USING metric_series s, metric_raw_horizon h
    WHERE p.series_id = s.id
      AND (s.tenant_id, s.metric) IN (SELECT * FROM unnest($1::text[], $2::text[]))
      AND h.tenant_id = s.tenant_id AND h.metric = s.metric
      AND p.time < h.before AND p.time < $3
    RETURNING s.tenant_id, s.metric)
UPDATE metric_raw_horizon h SET points_deleted = h.points_deleted + c.n
FROM (SELECT tenant_id, metric, count(*) AS n FROM d GROUP BY 1, 2) c
WHERE h.tenant_id = c.tenant_id AND h.metric = c.metric
RETURNING c.n";

/// The horizons that `RawPointsExpired` events of one projector batch moved; the points
/// before them are removed once, at the end of the batch ([`Expired::remove`]).
#[derive(Default)]
pub struct Expired {
    pairs: Vec<(String, String)>,
    latest: Option<DateTime<Utc>>,
    trigger: String,
}

impl Expired {
    /// Moves the horizons of one event of `tenant` forward. From here on the projector
    /// writes no raw point before them, so removing the older ones later in the batch
    /// removes the same points as right now would.
    pub async fn advance(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        tenant: &str,
        trigger: &str,
        cutoffs: &[Cutoff],
        recorded_at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let metrics: Vec<&str> = cutoffs.iter().map(|c| c.metric.as_str()).collect();
        let befores: Vec<DateTime<Utc>> = cutoffs.iter().map(|c| c.before).collect();
        tx.execute(HORIZON_SQL, &[&tenant, &metrics, &befores, &recorded_at])
            .await?;
        self.pairs
            .extend(metrics.iter().map(|m| (tenant.to_owned(), (*m).to_owned())));
        self.latest = self.latest.max(befores.iter().max().copied());
        trigger.clone_into(&mut self.trigger);
        Ok(())
    }

    /// Drops the chunks before every horizon, then deletes the moved metrics' points
    /// before theirs, counting both per metric. One pass for all the batch's events: a
    /// retention request appends one event per tenant, and only with all of their
    /// horizons moved can the chunks go whole.
    pub async fn remove(self, tx: &tokio_postgres::Transaction<'_>) -> anyhow::Result<()> {
        let Some(latest) = self.latest else {
            return Ok(());
        };
        let mut deleted: i64 = 0;
        let mut chunks = 0;
        let droppable: Option<DateTime<Utc>> = tx.query_one(DROPPABLE_SQL, &[]).await?.get(0);
        if let Some(older_than) = droppable {
            for r in tx.query(COUNT_DROPPED_SQL, &[&older_than]).await? {
                deleted += r.get::<_, i64>(0);
            }
            chunks = tx.query_one(DROP_SQL, &[&older_than]).await?.get(0);
        }
        let (tenants, metrics): (Vec<String>, Vec<String>) = self.pairs.into_iter().unzip();
        for r in tx.query(DELETE_SQL, &[&tenants, &metrics, &latest]).await? {
            deleted += r.get::<_, i64>(0);
        }
        // Counted for the live read model only, not again by a rebuild's replay.
        let live: bool = tx
            .query_one("SELECT current_schema() = 'public'", &[])
            .await?
            .get(0);
        if live {
            TS.chunks_dropped
                .with_label_values(&[&self.trigger])
                .inc_by(u64::try_from(chunks).unwrap_or(0));
            TS.points_deleted
                .with_label_values(&[&self.trigger])
                .inc_by(u64::try_from(deleted).unwrap_or(0));
        }
        Ok(())
    }
}
