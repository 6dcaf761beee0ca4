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

pub mod lanes;
pub mod readmodel;
pub mod rebuild;
pub mod status;
pub mod wait;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use tokio::sync::watch;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::eventstore::global::{self, Cursor};
use crate::eventstore::signal::Wake;
use crate::eventstore::{codec, RecordedEvent, StoreError};
use crate::pipeline::EventSourced;
use crate::telemetry::METRICS;
pub use lanes::Lane;
use readmodel::ReadModel;

/// How a projector's batches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectorOptions {
    /// Wait for the WAL flush on commit. Off by default: the read-model writes and the
    /// checkpoint commit together, so a commit lost in a crash is simply applied again. A
    /// projector with effects outside this database (notifications, calls) must be durable.
    pub durable_commit: bool,
    /// Events per batch; `None` takes `CLOUDLENS_PROJECTOR_BATCH`.
    pub batch_size: Option<i64>,
    /// Loops writing the read model at once, each on its own connection with its own
    /// checkpoint (`lanes`, ADR 0031). A projection with more than one applies, in each
    /// lane, only the items whose key `Lane::owns`.
    pub lanes: u16,
}

impl Default for ProjectorOptions {
    fn default() -> Self {
        Self {
            durable_commit: false,
            batch_size: None,
            lanes: 1,
        }
    }
}

impl ProjectorOptions {
    pub fn lane_count(&self) -> u16 {
        self.lanes.max(1)
    }
}

/// A read model fed from the event log: the runtime's view of a projector. Contexts
/// usually implement [`Projector`] instead and register `Typed(projector)`.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name: checkpoint key, metric label, URL segment (`[a-z][a-z0-9_]*`).
    fn name(&self) -> &'static str;
    /// What it reads: stream types (`budget`), or single event types of a stream type
    /// (`bill_import/BillImportCompleted`).
    fn stream_types(&self) -> &[&'static str];
    /// Tables it owns (unqualified, in `public`); rebuilds copy and swap these.
    fn tables(&self) -> Vec<&'static str>;
    fn options(&self) -> ProjectorOptions {
        ProjectorOptions::default()
    }
    /// Runs once on a rebuild, after the shadow copies of `tables()` were created in
    /// `schema` (e.g. `create_hypertable` on a copy, which `LIKE … INCLUDING ALL` does not
    /// carry over).
    async fn prepare_shadow(&self, _tx: &Transaction<'_>, _schema: &str) -> anyhow::Result<()> {
        Ok(())
    }
    /// Applies a batch inside the batch transaction: the items of `lane` (all of them
    /// with one lane). Table names must stay unqualified: rebuilds point `search_path` at
    /// the shadow schema.
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: &[RecordedEvent],
        lane: Lane,
    ) -> anyhow::Result<()>;
}

pub type Registry = Arc<Vec<Arc<dyn Projection>>>;

/// A decoded, upcast event of aggregate `A` with its place in the log.
#[derive(Debug, Clone)]
pub struct Envelope<E> {
    pub event: E,
    pub tenant_id: String,
    pub stream_id: Uuid,
    pub version: i64,
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
}

impl<E> Envelope<E> {
    /// A recorded event of aggregate `A`, decoded and upcast, with its place in the log.
    pub fn decode<A: EventSourced<Event = E>>(
        e: &RecordedEvent,
    ) -> Result<Self, codec::CodecError> {
        Ok(Envelope {
            event: A::decode(e)?,
            tenant_id: e.tenant_id.clone(),
            stream_id: e.stream_id,
            version: e.stream_version,
            position: e.position,
            recorded_at: e.recorded_at,
        })
    }
}

/// A projector of one aggregate's events. It receives them decoded and upcast, in one
/// lane.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    type Aggregate: EventSourced;
    /// See [`Projection::name`].
    const NAME: &'static str;
    /// The tables it writes.
    const READ_MODELS: &'static [&'static ReadModel];
    fn options(&self) -> ProjectorOptions {
        ProjectorOptions::default()
    }
    async fn prepare_shadow(&self, _tx: &Transaction<'_>, _schema: &str) -> anyhow::Result<()> {
        Ok(())
    }
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<<Self::Aggregate as Aggregate>::Event>>,
    ) -> anyhow::Result<()>;
}

/// Runs a [`Projector`] as a [`Projection`]: reads its aggregate's stream type and
/// decodes every event (upcasters included) before handing the batch over.
pub struct Typed<P>(pub P);

#[async_trait]
impl<P: Projector> Projection for Typed<P>
where
    <P::Aggregate as Aggregate>::Event: Send,
{
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn stream_types(&self) -> &[&'static str] {
        std::slice::from_ref(&<P::Aggregate as EventSourced>::STREAM_TYPE)
    }

    fn tables(&self) -> Vec<&'static str> {
        P::READ_MODELS.iter().map(|m| m.table).collect()
    }

    fn options(&self) -> ProjectorOptions {
        // Its `apply` knows nothing of lanes.
        ProjectorOptions {
            lanes: 1,
            ..self.0.options()
        }
    }

    async fn prepare_shadow(&self, tx: &Transaction<'_>, schema: &str) -> anyhow::Result<()> {
        self.0.prepare_shadow(tx, schema).await
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: &[RecordedEvent],
        _lane: Lane,
    ) -> anyhow::Result<()> {
        let typed = events
            .iter()
            .map(Envelope::decode::<P::Aggregate>)
            .collect::<Result<Vec<_>, codec::CodecError>>()?;
        self.0.apply(tx, typed).await
    }
}

/// How far each projector has got, as the queries of this process see it: the positions
/// known to be reached (for the `min_position` fast path) and a counter bumped after
/// every committed batch (to wake waiters).
#[derive(Clone, Debug)]
pub struct Progress {
    /// Per projector, what each of its lanes has settled.
    settled: Arc<HashMap<&'static str, Vec<AtomicI64>>>,
    changed: watch::Sender<u64>,
}

impl Progress {
    /// Tracks the projectors with these names, one lane each.
    pub fn new(names: impl IntoIterator<Item = &'static str>) -> Self {
        Self::with_lanes(names.into_iter().map(|n| (n, 1)))
    }

    /// Tracks the projectors of `registry` with their lanes.
    pub fn of(registry: &Registry) -> Self {
        Self::with_lanes(
            registry
                .iter()
                .map(|p| (p.name(), p.options().lane_count())),
        )
    }

    fn with_lanes(projectors: impl IntoIterator<Item = (&'static str, u16)>) -> Self {
        let settled = projectors
            .into_iter()
            .map(|(n, lanes)| (n, (0..lanes.max(1)).map(|_| AtomicI64::new(0)).collect()))
            .collect();
        Self {
            settled: Arc::new(settled),
            changed: watch::channel(0).0,
        }
    }

    /// Every event at or below this position is reflected in the projector's read model
    /// (or is not one it reads): in every lane. A position once reached stays reached.
    pub fn reached(&self, name: &str) -> i64 {
        self.settled.get(name).map_or(0, |lanes| {
            lanes
                .iter()
                .map(|p| p.load(Ordering::Acquire))
                .min()
                .unwrap_or(0)
        })
    }

    /// Forgets what `name` had reached: its runner lost the database, and batches it
    /// committed asynchronously may be lost with a crash of the database.
    fn reset(&self, name: &str) {
        for p in self.settled.get(name).into_iter().flatten() {
            p.store(0, Ordering::Release);
        }
    }

    fn batch_committed(&self, name: &str, lane: Lane, settled: Option<i64>) {
        let slot = self
            .settled
            .get(name)
            .and_then(|lanes| lanes.get(usize::from(lane.index)));
        if let (Some(s), Some(p)) = (settled, slot) {
            p.fetch_max(s, Ordering::AcqRel);
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

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

pub(crate) const ENSURE_CHECKPOINT_SQL: &str =
    "INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING";
const LOCK_CHECKPOINT_SQL: &str = "\
SELECT last_epoch, last_xid, last_position, position_seen FROM projection_checkpoints
 WHERE name = $1 FOR UPDATE";
const ADVANCE_SQL: &str = "\
UPDATE projection_checkpoints
   SET last_epoch = $2, last_xid = $3, last_position = $4, events_applied = events_applied + $5,
       position_seen = GREATEST(position_seen, $6), updated_at = now(), last_error = NULL
 WHERE name = $1";
const HEARTBEAT_SQL: &str =
    "UPDATE projection_checkpoints SET heartbeat_at = now(), owner = $2 WHERE name = $1";
const RECORD_ERROR_SQL: &str = "UPDATE projection_checkpoints SET last_error = $2 WHERE name = $1";
const CLEAR_ERROR_SQL: &str = "UPDATE projection_checkpoints SET last_error = NULL WHERE name = $1";
/// An empty batch moves the checkpoint to the horizon once this many transactions went
/// by (or once positions were settled past it): a bound on re-walking other types' events
/// without a checkpoint write at every idle poll.
const SKIP_AFTER_XIDS: u64 = 1_000;
/// Shortest time between the starts of two batches of a caught-up projector.
const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(10);
/// Session lock that elects the one runner of a projector (two-key form: namespace, name).
const TRY_LEAD_SQL: &str = "SELECT pg_try_advisory_lock(1668048002, hashtext($1))";

pub(crate) fn cursor(row: &tokio_postgres::Row) -> Result<Cursor, tokio_postgres::Error> {
    Ok(Cursor {
        epoch: row.try_get(0)?,
        transaction_id: row.try_get(1)?,
        position: row.try_get(2)?,
    })
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchOutcome {
    pub applied: usize,
    pub last_position: Option<i64>,
    /// Set when the batch reached the end of the readable log: every position up to this
    /// one is now reflected (see `global::Horizon::settled`).
    pub settled: Option<i64>,
}

/// Reads the next batch on a second connection while the current one is being applied,
/// so reading and writing overlap during catch-up and rebuilds. A prefetched batch is used
/// only if the checkpoint (locked by the batch transaction) is exactly where the
/// prefetch started; otherwise it is dropped and the batch is read again.
pub struct Prefetch {
    reader: Client,
    next: Option<(Cursor, global::Batch)>,
}

impl Prefetch {
    pub async fn connect(conn: &str) -> Result<Self, ProjectionError> {
        Ok(Self {
            reader: crate::db::connect(conn).await?,
            next: None,
        })
    }

    fn take_from(&mut self, after: Cursor) -> Option<global::Batch> {
        match self.next.take() {
            Some((from, events)) if from == after => Some(events),
            _ => None,
        }
    }
}

/// Applies one batch of `lane` within `tx`: lock the lane's checkpoint row `checkpoint`,
/// read, apply, advance. The caller commits (so a rebuild's final catch-up can share the
/// swap transaction).
pub async fn apply_batch(
    tx: &Transaction<'_>,
    projection: &dyn Projection,
    checkpoint: &str,
    lane: Lane,
    batch_size: i64,
    mut prefetch: Option<&mut Prefetch>,
) -> Result<BatchOutcome, ProjectionError> {
    let row = tx.query_one(LOCK_CHECKPOINT_SQL, &[&checkpoint]).await?;
    let after = cursor(&row)?;
    let types = projection.stream_types();
    let batch = match prefetch.as_deref_mut().and_then(|p| p.take_from(after)) {
        Some(batch) => batch,
        None => global::read_batch(tx, after, types, batch_size).await?,
    };
    let full = batch.events.len() as i64 >= batch_size;
    let settled = if full { None } else { batch.horizon.settled };
    // A short batch read everything below the horizon: the checkpoint moves there.
    let next = global::resume_after(after, &batch.events, batch_size, batch.horizon);
    let events = batch.events;
    let advance = |count: i64, seen: i64| async move {
        let seen = settled.map_or(seen, |s| s.max(seen));
        tx.execute(
            ADVANCE_SQL,
            &[
                &checkpoint,
                &next.epoch,
                &next.transaction_id,
                &next.position,
                &count,
                &seen,
            ],
        )
        .await
    };
    let Some(last) = events.last() else {
        // Nothing to apply. Step over the other types' events that went by, once enough
        // did (an idle projector should not write its checkpoint at every poll).
        let seen: i64 = row.try_get(3)?;
        let moved_far = next.epoch != after.epoch
            || next.transaction_id.0.saturating_sub(after.transaction_id.0) >= SKIP_AFTER_XIDS;
        if next > after && (moved_far || settled.is_some_and(|s| s > seen)) {
            advance(0, seen).await?;
        }
        return Ok(BatchOutcome {
            settled,
            ..BatchOutcome::default()
        });
    };
    let last = Cursor::from(last);
    let read_ahead = async {
        match prefetch {
            Some(p) if full => {
                // A failed read-ahead only costs a re-read inside the next batch.
                p.next = global::read_batch(&p.reader, last, types, batch_size)
                    .await
                    .ok()
                    .map(|batch| (last, batch));
            }
            _ => {}
        }
    };
    let span = tracing::info_span!(
        "projector.batch",
        projector = projection.name(),
        lane = lane.index,
        events = events.len(),
        last_position = last.position,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::record_trace_id(&span);
    let apply = tracing::Instrument::instrument(projection.apply(tx, &events, lane), span);
    let (applied, ()) = tokio::join!(apply, read_ahead);
    applied.map_err(|source| ProjectionError::Apply {
        name: projection.name(),
        source,
    })?;
    advance(events.len() as i64, last.position).await?;
    Ok(BatchOutcome {
        applied: events.len(),
        last_position: Some(last.position),
        settled,
    })
}

/// See [`ProjectorOptions::durable_commit`].
pub(crate) const ASYNC_COMMIT_SQL: &str = "SET LOCAL synchronous_commit = off";

pub(crate) fn batch_size(projection: &dyn Projection, default: i64) -> i64 {
    projection.options().batch_size.unwrap_or(default).max(1)
}

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

/// One batch of `lane` in its own transaction.
pub async fn run_batch(
    client: &mut Client,
    projection: &dyn Projection,
    lane: Lane,
    batch_size: i64,
    prefetch: Option<&mut Prefetch>,
) -> Result<BatchOutcome, ProjectionError> {
    let started = Instant::now();
    let tx = read_committed(client).await?;
    if !projection.options().durable_commit {
        tx.batch_execute(ASYNC_COMMIT_SQL).await?;
    }
    let checkpoint = lane.checkpoint(projection.name());
    let outcome = apply_batch(&tx, projection, &checkpoint, lane, batch_size, prefetch).await?;
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
        // With lanes, the status shows the least advanced one.
        if let (Some(p), 1) = (outcome.last_position, lane.count) {
            METRICS.projector_position.with_label_values(&[name]).set(p);
        }
    }
    Ok(outcome)
}

/// Brings every lane of `projection` to the end of the log, one batch after another on
/// `client` (a verified restore; the runners do this on their own).
pub async fn catch_up(
    client: &mut Client,
    projection: &dyn Projection,
    batch_size: i64,
) -> Result<u64, ProjectionError> {
    let lanes = projection.options().lane_count();
    lanes::ensure(client, projection.name(), lanes).await?;
    let mut applied = 0;
    for lane in Lane::all(lanes) {
        loop {
            let outcome = run_batch(client, projection, lane, batch_size, None).await?;
            applied += outcome.applied as u64;
            if outcome.applied == 0 {
                break;
            }
        }
    }
    Ok(applied)
}

/// Settings of the runners.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub conn: String,
    pub batch_size: i64,
    pub poll: Duration,
    /// Identifies this process in `projection_checkpoints.owner`.
    pub owner: String,
    /// Told about every committed batch (serves and wakes `min_position` waiters here).
    pub progress: Progress,
}

/// Runs one projector until `shutdown` turns true: elect, catch up, wait, repeat.
/// A batch in progress is always finished (committed or rolled back) before returning.
pub async fn run(
    projection: Arc<dyn Projection>,
    cfg: RunnerConfig,
    mut wake: Wake,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = projection.name();
    let mut backoff = Duration::from_millis(200);
    while !*shutdown.borrow() {
        let result = lead(&*projection, &cfg, &mut wake, &mut shutdown).await;
        METRICS.projector_leader.with_label_values(&[name]).set(0);
        cfg.progress.reset(name);
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

/// Connects, waits to become the runner, then projects in every lane until shutdown or
/// an error (which ends all lanes).
async fn lead(
    projection: &dyn Projection,
    cfg: &RunnerConfig,
    wake: &mut Wake,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ProjectionError> {
    let name = projection.name();
    let mut client = crate::db::connect(&cfg.conn).await?;
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
    let lanes = projection.options().lane_count();
    lanes::ensure(&mut client, name, lanes).await?;
    // Lane 0 runs on the connection that holds the election lock, the others on their own.
    let mut clients = vec![client];
    for _ in 1..lanes {
        clients.push(crate::db::connect(&cfg.conn).await?);
    }
    METRICS.projector_leader.with_label_values(&[name]).set(1);
    let loops = clients
        .iter_mut()
        .zip(Lane::all(lanes))
        .map(|(client, lane)| {
            project_lane(
                projection,
                cfg,
                lane,
                client,
                wake.clone(),
                shutdown.clone(),
            )
        });
    futures::future::try_join_all(loops).await.map(|_| ())
}

/// One lane's loop: catch up, wait for appends, repeat. Lane 0 also keeps the heartbeat.
async fn project_lane(
    projection: &dyn Projection,
    cfg: &RunnerConfig,
    lane: Lane,
    client: &mut Client,
    mut wake: Wake,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ProjectionError> {
    let name = projection.name();
    let batch_size = batch_size(projection, cfg.batch_size);
    let mut prefetch = Prefetch::connect(&cfg.conn).await?;
    // `None` = never (an `Instant` in the past could underflow just after boot).
    let mut last_beat: Option<Instant> = None;
    let mut last_batch: Option<Instant> = None;
    let mut error_cleared = false;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        if lane.is_first() && last_beat.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
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
        let outcome = run_batch(client, projection, lane, batch_size, Some(&mut prefetch)).await?;
        if outcome.applied > 0 || outcome.settled.is_some() {
            cfg.progress.batch_committed(name, lane, outcome.settled);
        }
        if !error_cleared {
            // A batch went through: whatever failed before is over.
            client.execute(CLEAR_ERROR_SQL, &[&name]).await?;
            error_cleared = true;
        }
        if outcome.applied as i64 >= batch_size {
            continue; // more is waiting
        }
        tokio::select! {
            _ = wake.changed() => {}
            _ = tokio::time::sleep(cfg.poll) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// The projectors in `registry` that read `stream_type` (all of its events, or some:
/// `type/EventType`, as the jobs projector does), with what they read.
pub fn readers(registry: &Registry, stream_type: &str) -> Vec<(&'static str, Vec<String>)> {
    registry
        .iter()
        .filter_map(|p| {
            let reads = p.stream_types().iter().any(|t| {
                *t == stream_type
                    || t.strip_prefix(stream_type)
                        .is_some_and(|rest| rest.starts_with('/'))
            });
            reads.then(|| {
                let types = p.stream_types().iter().map(|t| (*t).to_owned()).collect();
                (p.name(), types)
            })
        })
        .collect()
}
