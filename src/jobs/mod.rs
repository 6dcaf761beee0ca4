//! Background jobs with progress (ADR 0007): long work a command asks for (a tagging run,
//! later imports of bills and replays) done by one elected process, surviving restarts.
//!
//! - **Requested by an event.** A job kind names the event that requests it; the `jobs`
//!   projector ([`JobsProjection`]) enqueues one row per such event in `jobs`, exactly once
//!   (under its checkpoint, durably). So a job is never lost once its request is
//!   acknowledged, and never enqueued twice.
//! - **One runner.** The process holding the session advisory lock `(1668048005, 1)` runs
//!   jobs, one at a time, in the order of their requests: two jobs never interleave, a
//!   later one waits. When that process dies its lock goes with its connection and
//!   another process takes over within a second.
//! - **Restarts.** A job left `running` by a runner that stopped (crash, kill, lost
//!   database) is queued again with `restarts + 1` when a runner next takes the lock, and
//!   runs again from the start. Handlers are therefore written all-or-nothing: their
//!   effects are one bulk append, and a handler that finds its own effects already in
//!   the log returns their result instead of doing the work twice.
//! - **Shutdown** stops the runner between steps of the handler: the job goes back to
//!   `queued` and the next start runs it again; the runner is awaited like every other
//!   background task.
//! - **Progress** is a JSON object the handler updates while it runs; it is written to
//!   the job's row at most every [`PROGRESS_EVERY`] and read by the context's queries.
//! - **Coalescing kinds** ([`JobHandler::coalesce`]): many requests map to one job id
//!   (e.g. one per tenant), and a request for a job that exists queues it again instead
//!   of being dropped; one that arrives while it runs makes it run once more afterwards
//!   (`rerun`). The handler sees its previous result ([`Job::previous`]) and does what
//!   changed since. A flood of requests (90,000 budgets seeded at once) is one run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::db::Reader;
use crate::eventstore::{EventStore, RecordedEvent};
use crate::projections::{wait, Lane, Progress, Projection, ProjectorOptions, Registry};
use crate::telemetry::METRICS;

/// How often a running job's progress is written to its row.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

const LEAD_SQL: &str = "SELECT pg_try_advisory_lock(1668048005, 1)";
const REQUEUE_ORPHANS_SQL: &str = "\
UPDATE jobs SET state = 'queued', restarts = restarts + 1,
       progress = progress || '{\"restarted\": true}'::jsonb
 WHERE state = 'running'";
const CLAIM_SQL: &str = "\
UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = now(),
       finished_at = NULL, error = NULL
 WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY position LIMIT 1)
RETURNING id, tenant_id, kind, params, position, attempts, restarts, result";
const PROGRESS_SQL: &str = "UPDATE jobs SET progress = progress || $2 WHERE id = $1";
/// A coalescing job asked for again while it ran goes back to the queue.
const FINISH_SQL: &str = "\
UPDATE jobs SET state = CASE WHEN rerun THEN 'queued' ELSE $2 END, rerun = false,
       result = $3, error = $4, finished_at = now(),
       progress = progress || coalesce($3, '{}'::jsonb)
 WHERE id = $1";
const BACK_TO_QUEUE_SQL: &str = "UPDATE jobs SET state = 'queued' WHERE id = $1";
const ENQUEUE_SQL: &str = "\
INSERT INTO public.jobs (id, tenant_id, kind, params, position, requested_at)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::bigint[],
                     $6::timestamptz[])
ON CONFLICT (id) DO NOTHING";
/// For coalescing kinds: a request for an existing job queues it again (or, while it
/// runs, marks it to run once more), at the latest requesting position.
const ENQUEUE_COALESCING_SQL: &str = "\
INSERT INTO public.jobs AS j (id, tenant_id, kind, params, position, requested_at)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::bigint[],
                     $6::timestamptz[])
ON CONFLICT (id) DO UPDATE
   SET params = EXCLUDED.params, position = greatest(j.position, EXCLUDED.position),
       requested_at = EXCLUDED.requested_at, rerun = j.state = 'running',
       state = CASE WHEN j.state = 'running' THEN 'running' ELSE 'queued' END";

/// What every job handler may use.
#[derive(Clone)]
pub struct JobEnv {
    pub store: EventStore,
    /// Connection string, for handlers that need a session of their own.
    pub conn: String,
    /// How far this process's projectors have got (to wait for a read model).
    pub progress: Progress,
    pub reads: Reader,
    pub projections: Registry,
    pub settings: crate::config::Settings,
}

impl JobEnv {
    /// Waits until projector `name` reflects every event up to `position`.
    pub async fn wait_for(
        &self,
        name: &str,
        position: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let p = self
            .projections
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| anyhow::anyhow!("no projection {name}"))?;
        wait::wait_for(&self.reads, &self.progress, &**p, position, timeout).await?;
        Ok(())
    }
}

/// One job as its handler sees it.
pub struct Job {
    pub id: Uuid,
    pub tenant_id: String,
    /// Payload of the requesting event.
    pub params: Value,
    /// Global position of the requesting event.
    pub position: i64,
    pub attempt: i32,
    /// How often the job was restarted after its runner stopped.
    pub restarts: i32,
    /// The result of this job's previous run (coalescing kinds run many times).
    pub previous: Option<Value>,
    pub progress: JobProgress,
    /// Turns true on shutdown: stop at the next step and return [`Interrupted`].
    pub stop: watch::Receiver<bool>,
}

/// Returned (inside `anyhow`) by a handler that stopped for shutdown: the job is queued
/// again, not failed.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by shutdown")]
pub struct Interrupted;

impl Job {
    /// `Err(Interrupted)` once shutdown was asked for.
    pub fn check_stop(&self) -> anyhow::Result<()> {
        if *self.stop.borrow() {
            return Err(Interrupted.into());
        }
        Ok(())
    }
}

/// A job's live progress: fields merged into the row's `progress` object.
#[derive(Clone, Default)]
pub struct JobProgress(Arc<Mutex<(Value, bool)>>);

impl JobProgress {
    /// Merges `fields` (a JSON object) into the progress.
    pub fn set(&self, fields: Value) {
        if let (Ok(mut p), Value::Object(fields)) = (self.0.lock(), fields) {
            if !p.0.is_object() {
                p.0 = json!({});
            }
            if let Value::Object(current) = &mut p.0 {
                current.extend(fields);
            }
            p.1 = true;
        }
    }

    fn take_changed(&self) -> Option<Value> {
        let mut p = self.0.lock().ok()?;
        p.1.then(|| {
            p.1 = false;
            p.0.clone()
        })
    }
}

/// The work of one job kind.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// Stable name, e.g. `tagging.run`.
    fn kind(&self) -> &'static str;
    /// `(stream type, event type)` of the event that requests a job of this kind; the
    /// job's id is that event's stream id.
    fn requested_by(&self) -> (&'static str, &'static str);
    /// The id of the job a requesting event asks for: its stream id (one job per stream,
    /// as for a tagging run) unless the kind says otherwise (a stream that requests a job
    /// more than once derives one id per event).
    fn job_id(&self, e: &RecordedEvent) -> Uuid {
        e.stream_id
    }
    /// The job's parameters: the requesting event's payload unless the kind says otherwise.
    fn job_params(&self, e: &RecordedEvent) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(e.payload.get())?)
    }
    /// Whether requests for an existing job queue it again (see the module docs).
    fn coalesce(&self) -> bool {
        false
    }
    /// Does the job; its result (a JSON object) is stored with the job. Must be
    /// all-or-nothing and recognise its own effects when run again (see the module docs).
    async fn run(&self, job: &Job, env: &JobEnv) -> anyhow::Result<Value>;
}

pub type Handlers = Arc<Vec<Arc<dyn JobHandler>>>;

/// The `jobs` projector: enqueues a job for every requesting event. It owns no read
/// model (the queue is never rebuilt); a rebuild replays the requests and enqueues none
/// twice.
pub struct JobsProjection {
    handlers: Handlers,
    /// `stream_type/EventType` of each requesting event: the projector reads those
    /// events only, not the batches beside them in the same streams.
    stream_types: Vec<&'static str>,
}

impl JobsProjection {
    pub fn new(handlers: Handlers) -> Self {
        let mut stream_types: Vec<&'static str> = handlers
            .iter()
            .map(|h| {
                let (stream_type, event_type) = h.requested_by();
                // Once per projector registry (per server start): a few bytes.
                &*Box::leak(format!("{stream_type}/{event_type}").into_boxed_str())
            })
            .collect();
        stream_types.sort_unstable();
        stream_types.dedup();
        Self {
            handlers,
            stream_types,
        }
    }
}

#[async_trait]
impl Projection for JobsProjection {
    fn name(&self) -> &'static str {
        "jobs"
    }

    fn stream_types(&self) -> &[&'static str] {
        &self.stream_types
    }

    fn tables(&self) -> Vec<&'static str> {
        Vec::new()
    }

    fn options(&self) -> ProjectorOptions {
        // Enqueued work is an effect beyond the read models: never lose it in a crash.
        ProjectorOptions {
            durable_commit: true,
            batch_size: None,
            ..Default::default()
        }
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: &[RecordedEvent],
        _lane: Lane,
    ) -> anyhow::Result<()> {
        let mut once = Requests::default();
        // One row per id and statement: the last request of a coalescing job wins.
        let mut coalescing: std::collections::BTreeMap<Uuid, (&RecordedEvent, &dyn JobHandler)> =
            Default::default();
        // Every handler an event requests (a `BillImportCompleted` requests the budget
        // thresholds and the cost anomalies); each derives its own job id.
        for (e, h) in events.iter().flat_map(|e| {
            self.handlers
                .iter()
                .filter(|h| h.requested_by() == (e.stream_type.as_str(), e.event_type.as_str()))
                .map(move |h| (e, h))
        }) {
            if h.coalesce() {
                coalescing.insert(h.job_id(e), (e, &**h));
            } else {
                once.push(h.job_id(e), e, &**h)?;
            }
        }
        once.enqueue(tx, ENQUEUE_SQL).await?;
        let mut again = Requests::default();
        for (id, (e, h)) in coalescing {
            again.push(id, e, h)?;
        }
        again.enqueue(tx, ENQUEUE_COALESCING_SQL).await
    }
}

/// Job requests as the columns of one enqueue statement.
#[derive(Default)]
struct Requests<'a> {
    ids: Vec<Uuid>,
    tenants: Vec<&'a str>,
    kinds: Vec<&'static str>,
    params: Vec<Value>,
    positions: Vec<i64>,
    times: Vec<DateTime<Utc>>,
}

impl<'a> Requests<'a> {
    fn push(&mut self, id: Uuid, e: &'a RecordedEvent, h: &dyn JobHandler) -> anyhow::Result<()> {
        self.ids.push(id);
        self.tenants.push(e.tenant_id.as_str());
        self.kinds.push(h.kind());
        self.params.push(h.job_params(e)?);
        self.positions.push(e.position);
        self.times.push(e.recorded_at);
        Ok(())
    }

    async fn enqueue(&self, tx: &Transaction<'_>, sql: &str) -> anyhow::Result<()> {
        if !self.ids.is_empty() {
            let r = self;
            tx.execute(
                sql,
                &[
                    &r.ids,
                    &r.tenants,
                    &r.kinds,
                    &r.params,
                    &r.positions,
                    &r.times,
                ],
            )
            .await?;
        }
        Ok(())
    }
}

/// Runs jobs while this process is the elected runner, until shutdown.
pub async fn run(env: JobEnv, handlers: Handlers, mut shutdown: watch::Receiver<bool>) {
    let mut lock: Option<tokio_postgres::Client> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if lock.as_ref().is_none_or(|c| c.is_closed()) {
            lock = lead(&env.conn).await;
            METRICS.job_runner_leader.set(i64::from(lock.is_some()));
        }
        let mut idle = true;
        if let Some(client) = &lock {
            match next(client, &env, &handlers, &shutdown).await {
                Ok(worked) => idle = !worked,
                Err(e) => tracing::warn!(error = %e, "job runner: database error; retrying"),
            }
        }
        if idle {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Takes the runner lock and queues again what a stopped runner left running.
async fn lead(conn: &str) -> Option<tokio_postgres::Client> {
    let client = crate::db::connect(conn).await.ok()?;
    let won: bool = client
        .query_one(LEAD_SQL, &[])
        .await
        .ok()?
        .try_get(0)
        .ok()?;
    if !won {
        return None;
    }
    match client.execute(REQUEUE_ORPHANS_SQL, &[]).await {
        Ok(n) if n > 0 => tracing::warn!(
            jobs = n,
            "jobs left running by a stopped runner are queued again"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "job runner: cannot requeue orphaned jobs");
            return None;
        }
    }
    Some(client)
}

/// Claims and runs the next queued job; false when there was none.
async fn next(
    client: &tokio_postgres::Client,
    env: &JobEnv,
    handlers: &Handlers,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let Some(row) = client.query_opt(CLAIM_SQL, &[]).await? else {
        return Ok(false);
    };
    let kind: String = row.try_get(2)?;
    let job = Job {
        id: row.try_get(0)?,
        tenant_id: row.try_get(1)?,
        params: row.try_get(3)?,
        position: row.try_get(4)?,
        attempt: row.try_get(5)?,
        restarts: row.try_get(6)?,
        previous: row.try_get(7)?,
        progress: JobProgress::default(),
        stop: shutdown.clone(),
    };
    let Some(handler) = handlers.iter().find(|h| h.kind() == kind) else {
        let error = format!("no handler for job kind {kind:?}");
        client
            .execute(FINISH_SQL, &[&job.id, &"failed", &None::<Value>, &error])
            .await?;
        return Ok(true);
    };
    let id = job.id;
    let started = std::time::Instant::now();
    // The handler runs as a task of its own: a panic in it fails the job instead of
    // ending the runner.
    let progress = job.progress.clone();
    let outcome = {
        let (handler, env) = (handler.clone(), env.clone());
        let work = tokio::spawn(async move { handler.run(&job, &env).await });
        tokio::pin!(work);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                outcome = &mut work => break outcome.unwrap_or_else(|e| {
                    Err(anyhow::anyhow!("job {id} panicked: {e}"))
                }),
                _ = tick.tick() => flush(client, id, &progress).await,
            }
        }
    };
    flush(client, id, &progress).await;
    let label = match &outcome {
        Ok(result) => {
            client
                .execute(FINISH_SQL, &[&id, &"succeeded", result, &None::<String>])
                .await?;
            "succeeded"
        }
        Err(e) if e.is::<Interrupted>() => {
            client.execute(BACK_TO_QUEUE_SQL, &[&id]).await?;
            "interrupted"
        }
        Err(e) => {
            tracing::warn!(job = %id, kind, error = format!("{e:#}"), "job failed");
            client
                .execute(
                    FINISH_SQL,
                    &[&id, &"failed", &None::<Value>, &format!("{e:#}")],
                )
                .await?;
            "failed"
        }
    };
    METRICS
        .jobs
        .with_label_values(&[handler.kind(), label])
        .inc();
    METRICS
        .job_duration
        .with_label_values(&[handler.kind()])
        .observe(started.elapsed().as_secs_f64());
    Ok(true)
}

async fn flush(client: &tokio_postgres::Client, id: Uuid, progress: &JobProgress) {
    if let Some(p) = progress.take_changed() {
        if let Err(e) = client.execute(PROGRESS_SQL, &[&id, &p]).await {
            tracing::debug!(error = %e, "cannot record job progress");
        }
    }
}
