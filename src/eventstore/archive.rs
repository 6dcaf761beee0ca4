//! Archiving streams that ended (ADR 0020). A context names the events that end a stream
//! of one of its types and leave nothing of it in any read model (a deleted budget);
//! such streams, ended longer ago than asked, move from `events` to `events_archive` in
//! one transaction each batch. Replays and rebuilds read the live log only, so they no
//! longer pay for those events; aggregate loads and the stream API read both tables.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, Opts};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::StoreError;
use crate::telemetry::{reg, METRICS};

/// Events of `event_types` end a stream of `stream_type` for good, and its read-model
/// rows with it: the stream can be archived once every projector reading it is past.
#[derive(Debug, Clone, Copy)]
pub struct EndedBy {
    pub stream_type: &'static str,
    pub event_types: &'static [&'static str],
}

/// What an archive run moved (or, dry, would move).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Archived {
    pub streams: i64,
    pub events: i64,
    pub by_stream_type: BTreeMap<String, i64>,
    pub dry_run: bool,
    pub ended_before: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A rebuild of a projector that reads the streams is replaying: it could see the
    /// start of a stream and not its end.
    #[error("projection {0} is being rebuilt; archive after the rebuild")]
    RebuildInProgress(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for ArchiveError {
    fn from(e: tokio_postgres::Error) -> Self {
        ArchiveError::Store(e.into())
    }
}

/// Streams per transaction.
const BATCH: i64 = 1_000;

/// Holds off rebuilds of the projector for the transaction (the rebuild lock, ADR 0002).
const REBUILD_LOCK_SQL: &str = "SELECT pg_try_advisory_xact_lock(1668048003, hashtext($1))";
/// Streams whose last event ends them, recorded before `$3`, with nothing left to apply
/// for any projector that reads them (`$4`: name → the types it reads, as in
/// `global::after_cursor!`); after position `$6` (batches page on).
const ENDED_SQL: &str = "\
SELECT e.stream_id, e.position FROM events e
 WHERE e.stream_type = $1 AND e.event_type = ANY($2) AND e.recorded_at < $3
   AND e.position > $6
   AND NOT EXISTS (SELECT 1 FROM events l
                    WHERE l.stream_id = e.stream_id AND l.stream_type = e.stream_type
                      AND l.stream_version > e.stream_version)
   AND NOT EXISTS (
       SELECT 1 FROM projection_checkpoints c
         JOIN jsonb_each($4::jsonb) r ON r.key = c.projector
         JOIN events s ON s.stream_id = e.stream_id AND s.stream_type = e.stream_type
        WHERE (s.epoch, s.transaction_id, s.position) > (c.last_epoch, c.last_xid, c.last_position)
          AND (r.value ? s.stream_type OR r.value ? (s.stream_type || '/' || s.event_type)))
 ORDER BY e.position
 LIMIT $5";
const MOVE_SQL: &str = "\
WITH moved AS (
    DELETE FROM events WHERE stream_type = $1 AND stream_id = ANY($2) RETURNING *)
INSERT INTO events_archive (position, transaction_id, tenant_id, stream_type, stream_id,
                            stream_version, event_type, schema_version, payload, metadata,
                            recorded_at, epoch)
SELECT position, transaction_id, tenant_id, stream_type, stream_id, stream_version,
       event_type, schema_version, payload, metadata, recorded_at, epoch
  FROM moved";
const COUNT_SQL: &str = "\
SELECT count(*) FROM events WHERE stream_type = $1 AND stream_id = ANY($2)";

static ARCHIVED: LazyLock<Result<IntCounterVec, prometheus::Error>> = LazyLock::new(|| {
    reg(
        &METRICS.registry,
        IntCounterVec::new(
            Opts::new(
                "cloudlens_events_archived_total",
                "Events moved to the archive, by stream type",
            ),
            &["stream_type"],
        )?,
    )
});

/// Registers the metric with a zero series per archivable stream type.
pub fn init_metrics(ended: &[EndedBy]) {
    if let Ok(m) = &*ARCHIVED {
        for e in ended {
            m.with_label_values(&[e.stream_type]).inc_by(0);
        }
    }
}

/// The longest ago an archive may reach back (100 years).
pub const MAX_DAYS: u32 = 36_500;

/// What to archive: streams that ended `ended_days_ago` days ago or earlier, and never
/// less than `min_age` ago (`Settings::archive_min_age`).
#[derive(Debug, Clone, Copy)]
pub struct Cutoff {
    pub ended_days_ago: u32,
    pub min_age: std::time::Duration,
}

impl Cutoff {
    fn ended_before(self) -> DateTime<Utc> {
        let now = Utc::now();
        let asked = now - chrono::Duration::days(i64::from(self.ended_days_ago.min(MAX_DAYS)));
        let latest =
            now - chrono::Duration::from_std(self.min_age).unwrap_or(chrono::Duration::zero());
        asked.min(latest)
    }
}

/// Archives the streams `ended` names that ended before the cutoff, once the projectors
/// of `registry` that read them have nothing left to apply. With `dry_run`, counts and
/// moves nothing.
pub async fn archive_ended(
    conn: &str,
    ended: &[EndedBy],
    registry: &crate::projections::Registry,
    cutoff: Cutoff,
    dry_run: bool,
) -> Result<Archived, ArchiveError> {
    let ended_before = cutoff.ended_before();
    let mut client = crate::db::connect(conn)
        .await
        .map_err(|e| StoreError::Unavailable(format!("{e:#}")))?;
    let mut report = Archived {
        dry_run,
        ended_before,
        ..Archived::default()
    };
    for e in ended {
        let reading = crate::projections::readers(registry, e.stream_type);
        let filters = tokio_postgres::types::Json(
            reading
                .iter()
                .cloned()
                .collect::<BTreeMap<&str, Vec<String>>>(),
        );
        let mut after = 0_i64;
        loop {
            let tx = client.transaction().await?;
            for (name, _) in &reading {
                let locked: bool = tx.query_one(REBUILD_LOCK_SQL, &[name]).await?.get(0);
                if !locked {
                    return Err(ArchiveError::RebuildInProgress((*name).to_owned()));
                }
            }
            let rows = tx
                .query(
                    ENDED_SQL,
                    &[
                        &e.stream_type,
                        &e.event_types,
                        &ended_before,
                        &filters,
                        &BATCH,
                        &after,
                    ],
                )
                .await?;
            let Some(last) = rows.last() else {
                break;
            };
            // Keyset: the next batch starts after this one (a dry run moves nothing).
            after = last.get(1);
            let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
            let events = if dry_run {
                tx.query_one(COUNT_SQL, &[&e.stream_type, &ids])
                    .await?
                    .get(0)
            } else {
                tx.batch_execute("SET LOCAL cloudlens.archiving = on")
                    .await?;
                let n = tx.execute(MOVE_SQL, &[&e.stream_type, &ids]).await?;
                i64::try_from(n).unwrap_or(i64::MAX)
            };
            tx.commit().await?;
            report.streams += ids.len() as i64;
            report.events += events;
            *report
                .by_stream_type
                .entry(e.stream_type.to_owned())
                .or_default() += events;
            if !dry_run {
                if let Ok(m) = &*ARCHIVED {
                    m.with_label_values(&[e.stream_type])
                        .inc_by(events.max(0) as u64);
                }
            }
        }
    }
    Ok(report)
}
