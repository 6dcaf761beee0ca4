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
use tokio_postgres::Client;
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
/// Streams whose last event ends them, recorded before `$3`, that every projector
/// reading them (`$4`) has applied.
const ENDED_SQL: &str = "\
SELECT e.stream_id FROM events e
 WHERE e.stream_type = $1 AND e.event_type = ANY($2) AND e.recorded_at < $3
   AND NOT EXISTS (SELECT 1 FROM events l
                    WHERE l.stream_id = e.stream_id AND l.stream_type = e.stream_type
                      AND l.stream_version > e.stream_version)
   AND NOT EXISTS (SELECT 1 FROM projection_checkpoints c
                    WHERE c.name = ANY($4)
                      AND (e.epoch, e.transaction_id, e.position)
                          > (c.last_epoch, c.last_xid, c.last_position))
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

/// Archives the streams `ended` names that ended before `ended_before`; `readers(type)`
/// are the projectors that read a stream type. With `dry_run`, counts and moves nothing.
pub async fn archive_ended(
    client: &mut Client,
    ended: &[EndedBy],
    readers: &dyn Fn(&str) -> Vec<&'static str>,
    ended_before: DateTime<Utc>,
    dry_run: bool,
) -> Result<Archived, ArchiveError> {
    let mut report = Archived {
        dry_run,
        ended_before,
        ..Archived::default()
    };
    for e in ended {
        let names = readers(e.stream_type);
        let mut seen: Vec<Uuid> = Vec::new();
        loop {
            let tx = client.transaction().await?;
            for name in &names {
                let locked: bool = tx.query_one(REBUILD_LOCK_SQL, &[name]).await?.get(0);
                if !locked {
                    return Err(ArchiveError::RebuildInProgress((*name).to_owned()));
                }
            }
            let ids: Vec<Uuid> = tx
                .query(
                    ENDED_SQL,
                    &[
                        &e.stream_type,
                        &e.event_types,
                        &ended_before,
                        &names,
                        &BATCH,
                    ],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .filter(|id| !seen.contains(id))
                .collect();
            if ids.is_empty() {
                break;
            }
            let events = if dry_run {
                // Nothing moves: remember the streams so the next batch finds others.
                seen.extend(&ids);
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
