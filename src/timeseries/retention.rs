//! Retention of raw points (ADR 0021). Each metric of a tenant keeps its raw points for
//! its `raw_days` (`metric_retention`) or the server's default
//! (`CLOUDLENS_METRICS_RETENTION_DAYS`); rollups are kept.
//!
//! Whole chunks older than the longest retention of any metric are dropped with
//! `drop_chunks`; points of metrics with a shorter retention are deleted from the chunks
//! that remain. The elected scheduled job runs it (`scheduled`), the admin API on
//! request, and the point projector in its batch transaction whenever the batch holds
//! points older than the shortest retention: so a replay applies it as it goes and a
//! rebuild never brings dropped raw points back, while the rollups, fed from the events,
//! stay whole. Every run that removed something is recorded in `metric_retention_runs`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use super::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Admin,
    Projector,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Admin => "admin",
            Trigger::Projector => "projector",
        }
    }
}

/// What one run removed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RetentionRun {
    pub trigger: String,
    pub ran_at: DateTime<Utc>,
    /// Raw points before this time were dropped for every metric (the longest retention).
    pub cutoff: DateTime<Utc>,
    pub chunks_dropped: i32,
    pub points_deleted: i64,
}

/// The shortest and longest retention in days, the default included.
const RANGE_SQL: &str = "SELECT least($1::int, coalesce(min(raw_days), $1::int)),
        greatest($1::int, coalesce(max(raw_days), $1::int)),
        now() - make_interval(days => greatest($1::int, coalesce(max(raw_days), $1::int)))
 FROM metric_retention";

const DROP_SQL: &str = "SELECT count(*)::int
 FROM drop_chunks('metric_points', older_than => now() - make_interval(days => $1::int))";

const DELETE_SQL: &str = "DELETE FROM metric_points p
 USING metric_series s
 LEFT JOIN metric_retention r ON r.tenant_id = s.tenant_id AND r.metric = s.metric
 WHERE p.series_id = s.id
   AND p.time < now() - make_interval(days => $1::int)
   AND p.time < now() - make_interval(days => coalesce(r.raw_days, $2::int))";

const RECORD_SQL: &str = "INSERT INTO metric_retention_runs
 (trigger, cutoff, chunks_dropped, points_deleted) VALUES ($1, $2, $3, $4)
 RETURNING ran_at";

/// Whether points as old as `oldest` are past some metric's retention.
pub async fn reaches<C: GenericClient + Sync>(
    client: &C,
    default_days: i32,
    oldest: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let row = client.query_one(RANGE_SQL, &[&default_days]).await?;
    let shortest: i32 = row.get(0);
    Ok(oldest < Utc::now() - chrono::Duration::days(i64::from(shortest)))
}

/// Removes the raw points past their retention and records what it removed.
pub async fn apply<C: GenericClient + Sync>(
    client: &C,
    default_days: i32,
    trigger: Trigger,
) -> anyhow::Result<RetentionRun> {
    let row = client.query_one(RANGE_SQL, &[&default_days]).await?;
    let (shortest, longest, cutoff): (i32, i32, DateTime<Utc>) =
        (row.get(0), row.get(1), row.get(2));
    let chunks: i32 = client.query_one(DROP_SQL, &[&longest]).await?.get(0);
    let deleted = if shortest < longest {
        client
            .execute(DELETE_SQL, &[&shortest, &default_days])
            .await? as i64
    } else {
        0
    };
    let mut run = RetentionRun {
        trigger: trigger.as_str().to_owned(),
        ran_at: Utc::now(),
        cutoff,
        chunks_dropped: chunks,
        points_deleted: deleted,
    };
    if chunks > 0 || deleted > 0 || trigger != Trigger::Projector {
        run.ran_at = client
            .query_one(RECORD_SQL, &[&run.trigger, &cutoff, &chunks, &deleted])
            .await?
            .get(0);
    }
    metrics::retention_ran(trigger, chunks, deleted);
    Ok(run)
}

/// The last runs, newest first.
pub async fn runs<C: GenericClient + Sync>(
    client: &C,
    limit: i64,
) -> anyhow::Result<Vec<RetentionRun>> {
    let rows = client
        .query(
            "SELECT trigger, ran_at, cutoff, chunks_dropped, points_deleted
             FROM metric_retention_runs ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RetentionRun {
            trigger: r.get(0),
            ran_at: r.get(1),
            cutoff: r.get(2),
            chunks_dropped: r.get(3),
            points_deleted: r.get(4),
        })
        .collect())
}
