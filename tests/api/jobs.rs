#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The job runner: one elected runner, orphans of a stopped runner run again, shutdown
//! queues a running job again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudlens::jobs::{self, Interrupted, Job, JobEnv, JobHandler};
use cloudlens::projections::Progress;
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
        reads: cloudlens::db::Reader::new(conn, 1),
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
