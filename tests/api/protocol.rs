#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The edges of the ordering protocol and the rebuild swap (ADR 0001, 0002, 0005): a move
//! to another cluster, writers that skip the protocol, an idle lock holder, a rebuild
//! behind a long reader, a migration during a rebuild, a stop during a rebuild.

use std::sync::Arc;
use std::time::Duration;

use cloudlens::db;
use cloudlens::projections::rebuild::{self, Rebuild, RebuildError};
use cloudlens::projections::Projection;
use serde_json::Value;
use tokio::sync::watch;

use crate::helpers::*;

async fn create_budgets(app: &TestApp, n: usize) -> i64 {
    let mut last = 0;
    for i in 0..n {
        let mut res = app
            .post_json("/api/v1/budgets", &budget_body(&format!("b{i}")))
            .await;
        assert_eq!(res.status(), 201);
        last = res.json::<Value>().await.unwrap()["position"]
            .as_i64()
            .unwrap();
    }
    last
}

async fn budgets_listed(app: &TestApp, min_position: i64) -> usize {
    let mut res = app
        .get(&format!(
            "/api/v1/budgets?limit=500&min_position={min_position}"
        ))
        .await;
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["items"]
        .as_array()
        .unwrap()
        .len()
}

async fn projector_status(app: &TestApp) -> Value {
    let mut res = app.get("/api/v1/admin/projections").await;
    res.json::<Value>().await.unwrap()["projections"][0].clone()
}

async fn rebuild_done(app: &TestApp) -> bool {
    eventually(Duration::from_secs(30), || async {
        (projector_status(app).await["rebuild"]["state"] == "done").then_some(())
    })
    .await
    .is_some()
}

#[actix_web::test]
async fn a_database_dumped_into_a_fresh_cluster_keeps_its_order() {
    let origin = fresh_database().await;
    // Make sure the origin's transaction ids are above anything the fresh cluster has.
    db::connect(&origin)
        .await
        .unwrap()
        .batch_execute(
            "DO $$ BEGIN FOR i IN 1..3000 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$",
        )
        .await
        .unwrap();
    let app = spawn_app_on(origin.clone(), test_settings()).await;
    let last = create_budgets(&app, 51).await;
    assert_eq!(budgets_listed(&app, last).await, 51);
    app.handle.stop(true).await;
    app.background.stop_background().await;

    // Moved with `cloudlens backup` / `restore --into`'s code.
    let dir = test_root().join(format!("dump-{}", uuid::Uuid::new_v4().simple()));
    cloudlens::ops::backup::backup(&origin, &dir).await.unwrap();
    let fresh = tokio::task::spawn_blocking(|| own_cluster("moved"))
        .await
        .unwrap();
    let target = cloudlens::ops::backup::restore_into(
        &dir,
        &fresh.connection_string_for("postgres"),
        "moved",
    )
    .await
    .unwrap();
    let t = db::connect(&target).await.unwrap();
    let stored_max: i64 = t
        .query_one("SELECT max(transaction_id)::text::bigint FROM events", &[])
        .await
        .unwrap()
        .get(0);
    let here: i64 = t
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        here < stored_max,
        "the test needs a cluster with lower transaction ids"
    );

    // The start opens a new epoch; new events sort after every restored one.
    cloudlens::app::prepare(&target, None).await.unwrap();
    let epoch: i32 = t
        .query_one("SELECT max(epoch) FROM event_epochs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(epoch, 2);
    let app = spawn_app_on(target.clone(), test_settings()).await;
    let mut res = app
        .post_json("/api/v1/budgets", &budget_body("after the move"))
        .await;
    let created = res.json::<Value>().await.unwrap();
    let mut res = app.read_own_write(&created).await;
    assert_eq!(res.status(), 200, "{:?}", res.body().await);
    assert_eq!(budgets_listed(&app, 0).await, 52);
    let status = projector_status(&app).await;
    assert_eq!(status["lag_events"], 0);
    assert_eq!(status["position"], created["position"]);
    // A rebuild replays the restored events and the new one, in order.
    app.start_rebuild("budgets").await;
    assert!(rebuild_done(&app).await, "the rebuild did not finish");
    assert_eq!(
        count(&target, "SELECT count(*) FROM budgets_view").await,
        52
    );
    // A second start on the same cluster keeps the epoch.
    cloudlens::app::prepare(&target, None).await.unwrap();
    assert_eq!(
        count(&target, "SELECT max(epoch)::bigint FROM event_epochs").await,
        2
    );
    let _ = std::fs::remove_dir_all(dir);
    fresh.stop().unwrap();
}

#[actix_web::test]
async fn events_written_after_another_write_in_one_transaction_are_refused() {
    let conn = fresh_database().await;
    let mut c = db::connect(&conn).await.unwrap();
    let insert = "INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, \
                  event_type, schema_version, payload) VALUES ('default', 'counter', $1, 1, 'Counted', 1, '{}')";
    // Something else first: the transaction has an id before the writer lock. Refused.
    let tx = c.transaction().await.unwrap();
    tx.batch_execute("CREATE TEMP TABLE scratch (a int)")
        .await
        .unwrap();
    let err = tx
        .execute(insert, &[&uuid::Uuid::now_v7()])
        .await
        .unwrap_err();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code().code(), "55000");
    assert!(db_err
        .message()
        .contains("first write of their transaction"));
    tx.rollback().await.unwrap();
    // As the first write (the supported way), and again later in the same transaction.
    let tx = c.transaction().await.unwrap();
    tx.execute(insert, &[&uuid::Uuid::now_v7()]).await.unwrap();
    tx.execute(insert, &[&uuid::Uuid::now_v7()]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM events").await, 2);
}

#[actix_web::test]
async fn an_idle_writer_is_cut_off_and_the_stall_is_visible_meanwhile() {
    let app = spawn_app().await;
    let mut writer = db::connect(&app.conn).await.unwrap();
    let pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let tx = writer.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type, \
         schema_version, payload) VALUES ('default', 'counter', $1, 1, 'Counted', 1, '{}')",
        &[&uuid::Uuid::now_v7()],
    )
    .await
    .unwrap();
    // The writer now sits idle in its transaction, holding the horizon.
    let mut res = app
        .post_json("/api/v1/budgets", &budget_body("behind"))
        .await;
    let created = res.json::<Value>().await.unwrap();
    let stalled = eventually(Duration::from_secs(9), || async {
        let mut res = app.get("/readyz").await;
        let r = res.json::<Value>().await.unwrap();
        (r["writers_stalled"] == true).then_some(r)
    })
    .await
    .expect("readiness shows the stall");
    assert!(stalled["oldest_writer_seconds"].as_f64().unwrap() >= 5.0);
    let metrics =
        String::from_utf8(app.get("/metrics").await.body().await.unwrap().to_vec()).unwrap();
    assert!(metrics.contains("cloudlens_event_writer_stalled 1"));
    // The database ends the writer's session (the idle timeout its trigger set), and the
    // projector moves on. (Watched from another session: any statement on the writer's
    // own connection would reset its idle timer.)
    let cut = eventually(Duration::from_secs(20), || async {
        let gone = count(
            &app.conn,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .await
            == 0;
        gone.then_some(())
    })
    .await;
    assert!(cut.is_some(), "the idle writer was not cut off");
    assert!(tx.execute("SELECT 1", &[]).await.is_err());
    let mut res = app.read_own_write(&created).await;
    assert_eq!(res.status(), 200, "{:?}", res.body().await);
}

#[actix_web::test]
async fn a_rebuild_behind_a_long_reader_does_not_stall_other_reads() {
    let app = spawn_app().await;
    let last = create_budgets(&app, 5).await;
    assert_eq!(budgets_listed(&app, last).await, 5);
    // A long report holds the read model's table.
    let mut reader = db::connect(&app.conn).await.unwrap();
    let report = reader.transaction().await.unwrap();
    report
        .query_one("SELECT count(*) FROM budgets_view", &[])
        .await
        .unwrap();
    app.start_rebuild("budgets").await;
    // The replay is done; the swap keeps timing out behind the report and retrying.
    let waiting = eventually(Duration::from_secs(20), || async {
        let c = db::connect(&app.conn).await.ok()?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE 'LOCK TABLE public.budgets_view%'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    assert!(waiting.is_some(), "the swap never waited for the report");
    // Reads keep being answered while the report still holds its lock (a read queued
    // behind a waiting swap would hang here until the client times out).
    for _ in 0..20 {
        assert_eq!(budgets_listed(&app, 0).await, 5);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(projector_status(&app).await["rebuild"]["state"], "running");
    report.commit().await.unwrap();
    assert!(rebuild_done(&app).await, "the rebuild did not finish");
    assert_eq!(budgets_listed(&app, 0).await, 5);
}

async fn counting_setup() -> (String, Arc<CountingProjection>) {
    let conn = fresh_counting_database().await;
    let s = store(&conn, 4);
    append_counter_events(&s, uuid::Uuid::now_v7(), 0, 10).await;
    (conn, CountingProjection::new(true))
}

#[actix_web::test]
async fn a_migration_during_a_rebuild_is_not_undone_by_the_swap() {
    let (conn, counting) = counting_setup().await;
    let p: Arc<dyn Projection> = counting.clone();
    let rebuild = Rebuild::begin(&conn, p).await.unwrap();
    let (_keep, stop) = watch::channel(false);
    let task = tokio::spawn(rebuild.run(100, stop));
    // The replay stalls in its first batch: a migration changes the live table meanwhile.
    counting.stalled.notified().await;
    db::connect(&conn)
        .await
        .unwrap()
        .batch_execute("ALTER TABLE test_seen ADD COLUMN note text")
        .await
        .unwrap();
    let result = task.await.unwrap();
    assert!(
        matches!(result, Err(RebuildError::ShapeChanged(_))),
        "{result:?}"
    );
    // The live table keeps the migration's column.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' \
             AND table_name = 'test_seen' AND column_name = 'note'"
        )
        .await,
        1
    );
    let state: String = db::connect(&conn)
        .await
        .unwrap()
        .query_one(
            "SELECT rebuild_state FROM projection_checkpoints WHERE name = 'counting'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "failed");
}

#[actix_web::test]
async fn a_rebuild_stopped_by_shutdown_or_left_by_a_dead_process_is_interrupted() {
    let (conn, counting) = counting_setup().await;
    let p: Arc<dyn Projection> = counting.clone();
    let state = || async {
        db::connect(&conn)
            .await
            .unwrap()
            .query_one(
                "SELECT rebuild_state FROM projection_checkpoints WHERE name = 'counting'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    // Stopped: ends between batches, marked interrupted, live table untouched.
    let rebuild = Rebuild::begin(&conn, p.clone()).await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(rebuild.run(2, stopped));
    counting.stalled.notified().await;
    stop.send(true).unwrap();
    let result = task.await.unwrap();
    assert!(
        matches!(result, Err(RebuildError::Interrupted(_))),
        "{result:?}"
    );
    assert_eq!(state().await, "interrupted");
    // Left running by a process that died (its lock went with its connection).
    let client = db::connect(&conn).await.unwrap();
    client
        .execute(
            "UPDATE projection_checkpoints SET rebuild_state = 'running' WHERE name = 'counting'",
            &[],
        )
        .await
        .unwrap();
    let held = Rebuild::begin(&conn, p.clone()).await.unwrap();
    rebuild::mark_abandoned(&client).await.unwrap();
    assert_eq!(
        state().await,
        "running",
        "a live rebuild must not be marked"
    );
    drop(held);
    let marked = eventually(Duration::from_secs(10), || async {
        rebuild::mark_abandoned(&client).await.unwrap();
        (state().await == "interrupted").then_some(())
    })
    .await;
    assert!(marked.is_some());
}

#[actix_web::test]
async fn the_horizon_settles_positions_only_under_read_committed_and_the_trigger_never_loosens_a_timeout(
) {
    let conn = fresh_database().await;
    let s = store(&conn, 2);
    append_counter_events(&s, uuid::Uuid::now_v7(), 0, 3).await;
    let mut c = db::connect(&conn).await.unwrap();
    let settled = |row: tokio_postgres::Row| row.get::<_, Option<i64>>(0);
    let rc = c
        .query_one("SELECT settled FROM cloudlens_event_horizon()", &[])
        .await
        .unwrap();
    assert_eq!(settled(rc), Some(3));
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    let rr = tx
        .query_one("SELECT settled FROM cloudlens_event_horizon()", &[])
        .await
        .unwrap();
    assert_eq!(
        settled(rr),
        None,
        "one snapshot cannot prove anything settled"
    );
    tx.rollback().await.unwrap();
    // A session's stricter idle timeout stays; a looser (or no) one becomes 10 s.
    let insert = "INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, \
                  event_type, schema_version, payload) VALUES ('default', 'counter', $1, 1, 'Counted', 1, '{}')";
    for (session, expected) in [("2s", "2s"), ("0", "10s"), ("5min", "10s")] {
        c.batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = '{session}'"
        ))
        .await
        .unwrap();
        let tx = c.transaction().await.unwrap();
        tx.execute(insert, &[&uuid::Uuid::now_v7()]).await.unwrap();
        let now: String = tx
            .query_one("SHOW idle_in_transaction_session_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(now, expected, "session {session}");
        tx.rollback().await.unwrap();
    }
}
