#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The job runner: one elected runner, orphans of a stopped runner run again, shutdown
//! queues a running job again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudlens::jobs::{self, Interrupted, Job, JobEnv, JobHandler};
use cloudlens::projections::{Lane, Progress};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::helpers::*;

/// Runs until told to stop (`block`), panics (`panic`), or finishes at once.
struct Handler {
    block: bool,
    panic: bool,
}

#[async_trait]
impl JobHandler for Handler {
    fn kind(&self) -> &'static str {
        "test.job"
    }
    fn requested_by(&self) -> (&'static str, &'static str) {
        ("counter", "TestJobRequested")
    }
    async fn run(&self, job: &Job, _: &JobEnv) -> anyhow::Result<Value> {
        job.progress.set(json!({"phase": "working"}));
        if self.panic {
            panic!("a bug in a handler");
        }
        if self.block {
            let mut stop = job.stop.clone();
            let _ = stop.wait_for(|s| *s).await;
            return Err(Interrupted.into());
        }
        Ok(json!({"done": job.attempt}))
    }
}

fn env(conn: &str) -> JobEnv {
    JobEnv {
        store: store(conn, 2),
        conn: conn.to_owned(),
        progress: Progress::new([]),
        reads: cloudlens::db::Reader::new(conn, 1, 1),
        settings: test_settings(),
        projections: Arc::new(Vec::new()),
    }
}

async fn state(conn: &str, id: uuid::Uuid) -> (String, i32, i32, Value) {
    let client = cloudlens::db::connect(conn).await.unwrap();
    let r = client
        .query_one(
            "SELECT state, attempts, restarts, progress FROM jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

async fn until(conn: &str, id: uuid::Uuid, want: &str) -> (String, i32, i32, Value) {
    eventually(Duration::from_secs(30), || async {
        let s = state(conn, id).await;
        (s.0 == want).then_some(s)
    })
    .await
    .unwrap_or_else(|| panic!("job never {want}"))
}

#[actix_web::test]
async fn an_orphaned_job_runs_again_and_shutdown_queues_a_running_one() {
    let conn = fresh_database().await;
    let id = uuid::Uuid::now_v7();
    cloudlens::db::connect(&conn)
        .await
        .unwrap()
        .execute(
            "INSERT INTO jobs (id, tenant_id, kind, params, position, requested_at)
             VALUES ($1, 't', 'test.job', '{}', 1, now())",
            &[&id],
        )
        .await
        .unwrap();
    let blocking: jobs::Handlers = Arc::new(vec![Arc::new(Handler {
        block: true,
        panic: false,
    })]);

    // A runner takes the job; its process dies (task aborted, connection gone).
    let (_keep, never) = watch::channel(false);
    let a = tokio::spawn(jobs::run(env(&conn), blocking.clone(), never));
    let (_, attempts, _, _) = until(&conn, id, "running").await;
    assert_eq!(attempts, 1);
    eventually(Duration::from_secs(5), || async {
        (state(&conn, id).await.3["phase"] == "working").then_some(())
    })
    .await
    .expect("progress is recorded while the job runs");
    a.abort();
    let _ = a.await;

    // The next runner queues the orphan again and runs it; shutdown sends it back.
    let (stop, stop_rx) = watch::channel(false);
    let b = tokio::spawn(jobs::run(env(&conn), blocking, stop_rx));
    let (_, attempts, restarts, _) = eventually(Duration::from_secs(30), || async {
        let s = state(&conn, id).await;
        (s.0 == "running" && s.1 == 2).then_some(s)
    })
    .await
    .expect("the orphan runs again");
    assert_eq!((attempts, restarts), (2, 1));
    stop.send(true).unwrap();
    b.await.unwrap();
    assert_eq!(
        state(&conn, id).await.0,
        "queued",
        "shutdown queues it again"
    );

    // A runner that finishes it.
    let done: jobs::Handlers = Arc::new(vec![Arc::new(Handler {
        block: false,
        panic: false,
    })]);
    let (stop, stop_rx) = watch::channel(false);
    let c = tokio::spawn(jobs::run(env(&conn), done, stop_rx));
    let (_, attempts, restarts, progress) = until(&conn, id, "succeeded").await;
    assert_eq!((attempts, restarts), (3, 1));
    assert_eq!(
        progress["done"], 3,
        "the result is merged into the progress"
    );
    stop.send(true).unwrap();
    c.await.unwrap();
}

#[actix_web::test]
async fn a_panicking_handler_fails_its_job_and_the_runner_goes_on() {
    let conn = fresh_database().await;
    let client = cloudlens::db::connect(&conn).await.unwrap();
    let (first, second) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (id, position) in [(first, 1_i64), (second, 2)] {
        client
            .execute(
                "INSERT INTO jobs (id, tenant_id, kind, params, position, requested_at)
                 VALUES ($1, 't', 'test.job', '{}', $2, now())",
                &[&id, &position],
            )
            .await
            .unwrap();
    }
    let panicking: jobs::Handlers = Arc::new(vec![Arc::new(Handler {
        block: false,
        panic: true,
    })]);
    let (stop, stop_rx) = watch::channel(false);
    let runner = tokio::spawn(jobs::run(env(&conn), panicking, stop_rx));
    // Both fail: the first panic did not end the runner.
    until(&conn, first, "failed").await;
    until(&conn, second, "failed").await;
    let error: String = client
        .query_one("SELECT error FROM jobs WHERE id = $1", &[&first])
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("panicked"), "{error}");
    stop.send(true).unwrap();
    runner.await.unwrap();
}

/// A coalescing kind: every `Counted` event asks for the one job of its tenant. Its first
/// run waits until `gate` opens; each run counts itself in its result.
struct Coalescing {
    gate: watch::Receiver<bool>,
}

const COALESCED: uuid::Uuid = uuid::Uuid::from_u128(0xc0a1_e5ce);

#[async_trait]
impl JobHandler for Coalescing {
    fn kind(&self) -> &'static str {
        "test.coalescing"
    }
    fn requested_by(&self) -> (&'static str, &'static str) {
        ("counter", "Counted")
    }
    fn job_id(&self, _: &cloudlens::eventstore::RecordedEvent) -> uuid::Uuid {
        COALESCED
    }
    fn coalesce(&self) -> bool {
        true
    }
    async fn run(&self, job: &Job, _: &JobEnv) -> anyhow::Result<Value> {
        let runs = job
            .previous
            .as_ref()
            .and_then(|p| p["runs"].as_i64())
            .unwrap_or(0);
        let mut gate = self.gate.clone();
        let _ = gate.wait_for(|open| *open).await;
        Ok(json!({"runs": runs + 1, "through": job.position}))
    }
}

#[actix_web::test]
async fn a_coalescing_job_is_one_row_and_runs_again_when_asked_while_running() {
    let conn = fresh_database().await;
    let store = store(&conn, 2);
    let (open, gate) = watch::channel(false);
    let handlers: jobs::Handlers = Arc::new(vec![Arc::new(Coalescing { gate })]);
    let projection = jobs::JobsProjection::new(handlers.clone());
    let mut client = cloudlens::db::connect(&conn).await.unwrap();
    client
        .execute(
            "INSERT INTO projection_checkpoints (name) VALUES ('jobs') ON CONFLICT DO NOTHING",
            &[],
        )
        .await
        .unwrap();
    // Five requests in one batch: one row.
    append_counter_events(&store, uuid::Uuid::now_v7(), 0, 5).await;
    cloudlens::projections::run_batch(&mut client, &projection, Lane::SOLE, 1000, None)
        .await
        .unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM jobs").await, 1);
    let (stop, stop_rx) = watch::channel(false);
    let runner = tokio::spawn(jobs::run(env(&conn), handlers, stop_rx));
    until(&conn, COALESCED, "running").await;
    // Asked for again while it runs: it stays running, marked to run once more.
    append_counter_events(&store, uuid::Uuid::now_v7(), 0, 2).await;
    cloudlens::projections::run_batch(&mut client, &projection, Lane::SOLE, 1000, None)
        .await
        .unwrap();
    let (state, rerun): (String, bool) = {
        let r = client
            .query_one("SELECT state, rerun FROM jobs WHERE id = $1", &[&COALESCED])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((state.as_str(), rerun), ("running", true));
    open.send(true).unwrap();
    let result = eventually(Duration::from_secs(30), || async {
        let r = client
            .query_one(
                "SELECT state, result FROM jobs WHERE id = $1",
                &[&COALESCED],
            )
            .await
            .unwrap();
        let (state, result): (String, Option<Value>) = (r.get(0), r.get(1));
        (state == "succeeded" && result.as_ref().is_some_and(|r| r["runs"] == 2)).then_some(result)
    })
    .await
    .expect("the job runs a second time, after the first");
    let last = count(&conn, "SELECT max(position) FROM events").await;
    assert_eq!(
        result.unwrap()["through"],
        last,
        "the second run saw the last request"
    );
    // Asked for after it finished: queued and run again, still one row.
    append_counter_events(&store, uuid::Uuid::now_v7(), 0, 1).await;
    cloudlens::projections::run_batch(&mut client, &projection, Lane::SOLE, 1000, None)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), || async {
        let r = client
            .query_one("SELECT result FROM jobs WHERE id = $1", &[&COALESCED])
            .await
            .unwrap();
        let result: Option<Value> = r.get(0);
        result.is_some_and(|r| r["runs"] == 3).then_some(())
    })
    .await
    .expect("a later request runs it again");
    assert_eq!(count(&conn, "SELECT count(*) FROM jobs").await, 1);
    stop.send(true).unwrap();
    runner.await.unwrap();
}
