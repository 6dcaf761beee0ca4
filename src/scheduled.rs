//! Periodic work done by exactly one process among all servers on the database: the
//! process that holds the job's session advisory lock `(1668048004, hashtext(job))` runs
//! it; when that process dies its lock goes with its connection and another takes over at
//! its next try. Used for retention purges; later contexts add their jobs here.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;

use crate::telemetry::METRICS;

const TRY_LEAD_SQL: &str = "SELECT pg_try_advisory_lock(1668048004, hashtext($1))";

type Work = Box<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// What a context's periodic jobs are made from (`BoundedContext.scheduled`).
pub struct Env {
    pub settings: crate::config::Settings,
    /// The database's connection string.
    pub conn: String,
    pub store: crate::eventstore::EventStore,
}

/// A job: what to run and how often.
pub struct Job {
    pub name: &'static str,
    pub every: Duration,
    pub work: Work,
}

impl Job {
    pub fn new<F, Fut>(name: &'static str, every: Duration, work: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self {
            name,
            every,
            work: Box::new(move || Box::pin(work())),
        }
    }
}

/// Runs `job` every `job.every` while this process is its elected runner, until shutdown.
/// A run in progress is finished before this returns.
pub async fn run(conn: String, job: Job, mut shutdown: watch::Receiver<bool>) {
    let mut lock: Option<tokio_postgres::Client> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if lock.as_ref().is_none_or(|c| c.is_closed()) {
            lock = lead(&conn, job.name).await;
            let leading = i64::from(lock.is_some());
            METRICS
                .scheduled_leader
                .with_label_values(&[job.name])
                .set(leading);
        }
        if lock.is_some() {
            let outcome = match (job.work)().await {
                Ok(()) => "ok",
                Err(e) => {
                    tracing::warn!(job = job.name, error = %e, "periodic job failed; it runs again later");
                    "error"
                }
            };
            METRICS
                .scheduled_runs
                .with_label_values(&[job.name, outcome])
                .inc();
        }
        tokio::select! {
            _ = tokio::time::sleep(job.every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A connection holding the job's lock, or `None` when another process holds it (or the
/// database is not there).
async fn lead(conn: &str, name: &str) -> Option<tokio_postgres::Client> {
    let client = crate::db::connect(conn).await.ok()?;
    let won: bool = client
        .query_one(TRY_LEAD_SQL, &[&name])
        .await
        .ok()?
        .try_get(0)
        .ok()?;
    won.then_some(client)
}
