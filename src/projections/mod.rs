//! The projection runtime (ADR 0002).
//!
//! - A batch reads events after the projector's checkpoint (gap-free, `eventstore::global`),
//!   applies them to the read model and advances the checkpoint **in one transaction**;
//!   the checkpoint row is locked `FOR UPDATE` at the start of every batch, so even two
//!   runners by mistake would serialise and never apply an event twice.
//! - Each projector runs in one process: the runner holds a session advisory lock on its
//!   own connection; when that process dies the lock goes with its connection and another
//!   process, retrying every second, takes over.
//! - Runners wake on appends (`eventstore::signal`) and poll as a fallback; they reconnect
//!   by themselves when the database goes away and comes back.
//! - Rebuilds replay everything into shadow tables in a schema of their own, then swap
//!   them in under the checkpoint lock (see `rebuild`).

pub mod rebuild;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_postgres::{Client, Transaction};

use crate::eventstore::global::{self, Cursor};
use crate::eventstore::{RecordedEvent, StoreError};
use crate::telemetry::METRICS;

/// A read model fed from the event log.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name: checkpoint key, metric label, URL segment (`[a-z_]+`).
    fn name(&self) -> &'static str;
    /// Stream types whose events it reads.
    fn stream_types(&self) -> &'static [&'static str];
    /// Tables it owns (unqualified, in `public`); rebuilds copy and swap these.
    fn tables(&self) -> &'static [&'static str];
    /// Applies a batch inside the batch transaction. Table names must stay unqualified:
    /// rebuilds point `search_path` at the shadow schema.
    async fn apply(&self, tx: &Transaction<'_>, events: &[RecordedEvent]) -> anyhow::Result<()>;
}

pub type Registry = Arc<Vec<Arc<dyn Projection>>>;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("projection {name} failed to apply a batch: {source:#}")]
    Apply {
        name: &'static str,
        source: anyhow::Error,
    },
}

impl From<tokio_postgres::Error> for ProjectionError {
    fn from(e: tokio_postgres::Error) -> Self {
        ProjectionError::Store(e.into())
    }
}

impl ProjectionError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ProjectionError::Store(StoreError::Unavailable(_)))
    }
}

const ENSURE_CHECKPOINT_SQL: &str =
    "INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING";
const LOCK_CHECKPOINT_SQL: &str = "\
SELECT last_xid, last_position FROM projection_checkpoints WHERE name = $1 FOR UPDATE";
const ADVANCE_SQL: &str = "\
UPDATE projection_checkpoints
   SET last_xid = $2, last_position = $3, events_applied = events_applied + $4,
       updated_at = now(), last_error = NULL
 WHERE name = $1";
const HEARTBEAT_SQL: &str =
    "UPDATE projection_checkpoints SET heartbeat_at = now(), owner = $2 WHERE name = $1";
const RECORD_ERROR_SQL: &str = "UPDATE projection_checkpoints SET last_error = $2 WHERE name = $1";
const CLEAR_ERROR_SQL: &str = "UPDATE projection_checkpoints SET last_error = NULL WHERE name = $1";
/// Shortest time between the starts of two batches of a caught-up projector.
const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(10);
/// Session lock that elects the one runner of a projector (two-key form: namespace, name).
const TRY_LEAD_SQL: &str = "SELECT pg_try_advisory_lock(1668048002, hashtext($1))";

/// What one batch did.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchOutcome {
    pub applied: usize,
    pub last_position: Option<i64>,
}

/// Reads the next batch on a second connection while the current one is being applied,
/// so reading and writing overlap during catch-up and rebuilds. A prefetched batch is used
/// only if the checkpoint (locked by the batch transaction) is exactly where the
/// prefetch started; otherwise it is dropped and the batch is read again.
pub struct Prefetch {
    reader: Client,
    next: Option<(Cursor, Vec<RecordedEvent>)>,
}

impl Prefetch {
    pub async fn connect(conn: &str) -> Result<Self, ProjectionError> {
        Ok(Self {
            reader: crate::db::connect(conn).await?,
            next: None,
        })
    }

    fn take_from(&mut self, after: Cursor) -> Option<Vec<RecordedEvent>> {
        match self.next.take() {
            Some((from, events)) if from == after => Some(events),
            _ => None,
        }
    }
}

/// Applies one batch within `tx`: lock the checkpoint, read, apply, advance. The caller
/// commits (so a rebuild's final catch-up can share the swap transaction).
pub async fn apply_batch(
    tx: &Transaction<'_>,
    projection: &dyn Projection,
    checkpoint: &str,
    batch_size: i64,
    mut prefetch: Option<&mut Prefetch>,
) -> Result<BatchOutcome, ProjectionError> {
    let row = tx.query_one(LOCK_CHECKPOINT_SQL, &[&checkpoint]).await?;
    let after = Cursor {
        transaction_id: row.try_get(0)?,
        position: row.try_get(1)?,
    };
    let types = projection.stream_types();
    let events = match prefetch.as_deref_mut().and_then(|p| p.take_from(after)) {
        Some(events) => events,
        None => global::read_batch(tx, after, types, batch_size).await?,
    };
    let Some(last) = events.last() else {
        return Ok(BatchOutcome::default());
    };
    let last = Cursor::from(last);
    let full = events.len() as i64 >= batch_size;
    let read_ahead = async {
        match prefetch {
            Some(p) if full => {
                // A failed read-ahead only costs a re-read inside the next batch.
                p.next = global::read_batch(&p.reader, last, types, batch_size)
                    .await
                    .ok()
                    .map(|ev| (last, ev));
            }
            _ => {}
        }
    };
    let (applied, ()) = tokio::join!(projection.apply(tx, &events), read_ahead);
    applied.map_err(|source| ProjectionError::Apply {
        name: projection.name(),
        source,
    })?;
    let count = events.len() as i64;
    tx.execute(
        ADVANCE_SQL,
        &[&checkpoint, &last.transaction_id, &last.position, &count],
    )
    .await?;
    Ok(BatchOutcome {
        applied: events.len(),
        last_position: Some(last.position),
    })
}

/// Projector batches need no fsync of their own: the read-model writes and the checkpoint
/// commit together, so a commit lost in a crash is simply applied again. (A projection
/// with effects outside this database must not rely on this.)
pub(crate) const ASYNC_COMMIT_SQL: &str = "SET LOCAL synchronous_commit = off";

/// Batches must run READ COMMITTED whatever the server's default: the global read takes
/// a new snapshot after computing the horizon (eventstore::global).
pub(crate) async fn read_committed(
    client: &mut Client,
) -> Result<Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await
}

/// One batch in its own transaction.
pub async fn run_batch(
    client: &mut Client,
    projection: &dyn Projection,
    batch_size: i64,
    prefetch: Option<&mut Prefetch>,
) -> Result<BatchOutcome, ProjectionError> {
    let started = Instant::now();
    let tx = read_committed(client).await?;
    tx.batch_execute(ASYNC_COMMIT_SQL).await?;
    let outcome = apply_batch(&tx, projection, projection.name(), batch_size, prefetch).await?;
    tx.commit().await?;
    if outcome.applied > 0 {
        let name = projection.name();
        METRICS
            .projector_batch_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        METRICS
            .projector_events_applied
            .with_label_values(&[name])
            .inc_by(outcome.applied as u64);
        if let Some(p) = outcome.last_position {
            METRICS.projector_position.with_label_values(&[name]).set(p);
        }
    }
    Ok(outcome)
}

/// Settings of the runners.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub conn: String,
    pub batch_size: i64,
    pub poll: Duration,
    /// Identifies this process in `projection_checkpoints.owner`.
    pub owner: String,
    /// Bumped after every committed batch (wakes `min_position` waiters here).
    pub progress: watch::Sender<u64>,
}

/// Runs one projector until `shutdown` turns true: elect, catch up, wait, repeat.
/// A batch in progress is always finished (committed or rolled back) before returning.
pub async fn run(
    projection: Arc<dyn Projection>,
    cfg: RunnerConfig,
    mut wake: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = projection.name();
    let mut backoff = Duration::from_millis(200);
    while !*shutdown.borrow() {
        let result = lead(&*projection, &cfg, &mut wake, &mut shutdown).await;
        METRICS.projector_leader.with_label_values(&[name]).set(0);
        match result {
            Ok(()) => return,
            Err(e) if e.is_unavailable() => {
                tracing::warn!(projector = name, error = %e, "database unavailable; projector will reconnect");
            }
            Err(e) => {
                METRICS.projector_errors.with_label_values(&[name]).inc();
                tracing::error!(projector = name, error = %e, "projector batch failed; retrying");
                record_error(&cfg.conn, name, &e.to_string()).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn record_error(conn: &str, name: &str, error: &str) {
    if let Ok(client) = crate::db::connect(conn).await {
        let _ = client.execute(RECORD_ERROR_SQL, &[&name, &error]).await;
    }
}

/// Connects, waits to become the runner, then projects until shutdown or an error.
async fn lead(
    projection: &dyn Projection,
    cfg: &RunnerConfig,
    wake: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ProjectionError> {
    let name = projection.name();
    let mut client = crate::db::connect(&cfg.conn).await?;
    client.execute(ENSURE_CHECKPOINT_SQL, &[&name]).await?;
    loop {
        let leader: bool = client.query_one(TRY_LEAD_SQL, &[&name]).await?.try_get(0)?;
        if leader {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
    tracing::info!(projector = name, "this process now runs the projector");
    let mut prefetch = Prefetch::connect(&cfg.conn).await?;
    METRICS.projector_leader.with_label_values(&[name]).set(1);
    // `None` = never (an `Instant` in the past could underflow just after boot).
    let mut last_beat: Option<Instant> = None;
    let mut last_batch: Option<Instant> = None;
    let mut error_cleared = false;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        if last_beat.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            client.execute(HEARTBEAT_SQL, &[&name, &cfg.owner]).await?;
            last_beat = Some(Instant::now());
        }
        // Under a steady stream of appends, wait a moment so one batch carries many events
        // (each batch has a fixed cost); a lone event after a quiet spell goes at once.
        if let Some(rest) = last_batch.and_then(|t| MIN_BATCH_INTERVAL.checked_sub(t.elapsed())) {
            tokio::time::sleep(rest).await;
        }
        last_batch = Some(Instant::now());
        wake.mark_unchanged();
        let outcome =
            run_batch(&mut client, projection, cfg.batch_size, Some(&mut prefetch)).await?;
        if outcome.applied > 0 {
            cfg.progress.send_modify(|n| *n = n.wrapping_add(1));
        }
        if !error_cleared {
            // A batch went through: whatever failed before is over.
            client.execute(CLEAR_ERROR_SQL, &[&name]).await?;
            error_cleared = true;
        }
        if outcome.applied as i64 >= cfg.batch_size {
            continue; // more is waiting
        }
        tokio::select! {
            _ = wake.changed() => {}
            _ = tokio::time::sleep(cfg.poll) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
