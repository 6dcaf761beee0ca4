#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Rebuilds and leader election of the projection runtime.

use std::sync::Arc;
use std::time::Duration;

use cloudlens::budgets::projection::BudgetsProjector;
use cloudlens::db;
use cloudlens::projections::rebuild::{Rebuild, RebuildError};
use cloudlens::projections::{self, Projection, RunnerConfig};
use cloudlens::projections::{Progress, Typed};
use tokio::sync::watch;

use crate::helpers::*;

async fn view_snapshot(conn: &str) -> Vec<String> {
    let c = db::connect(conn).await.unwrap();
    c.query(
        "SELECT to_jsonb(b)::text FROM budgets_view b ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn index_names(conn: &str) -> Vec<String> {
    let c = db::connect(conn).await.unwrap();
    c.query(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'budgets_view' ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[actix_web::test]
async fn rebuild_yields_the_same_read_model_as_live_and_keeps_serving() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    let mut last = 0_i64;
    for i in 0..40 {
        let mut res = app
            .client
            .post(app.url("/api/v1/budgets"))
            .send_json(&budget_body(&format!("b{i}")))
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let body: serde_json::Value = res.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
        last = body["position"].as_i64().unwrap();
    }
    for id in ids.iter().take(10) {
        let mut b = budget_body("renamed");
        b["amount"] = "7.25".into();
        let res = app
            .client
            .put(app.url(&format!("/api/v1/budgets/{id}")))
            .send_json(&b)
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    for id in ids.iter().skip(30) {
        let mut res = app
            .client
            .delete(app.url(&format!("/api/v1/budgets/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        last = res.json::<serde_json::Value>().await.unwrap()["position"]
            .as_i64()
            .unwrap();
    }
    let res = app
        .get(&format!("/api/v1/budgets?min_position={last}&limit=500"))
        .await;
    assert_eq!(res.status(), 200);
    let live = view_snapshot(&app.conn).await;
    assert_eq!(live.len(), 30);
    let indexes = index_names(&app.conn).await;

    // Rebuild through the API while the server runs, then wait for the swap.
    app.start_rebuild("budgets").await;
    let done = eventually(Duration::from_secs(60), || async {
        let mut r = app
            .client
            .get(app.url("/api/v1/admin/projections"))
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        (v["projections"][0]["rebuild"]["state"] == "done").then_some(v)
    })
    .await;
    assert!(done.is_some(), "rebuild did not finish");
    assert_eq!(
        view_snapshot(&app.conn).await,
        live,
        "rebuilt read model differs from live"
    );
    assert_eq!(
        index_names(&app.conn).await,
        indexes,
        "index names changed by the swap"
    );
    let shadow = count(
        &app.conn,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'cl_rebuild_%'",
    )
    .await;
    assert_eq!(shadow, 0);

    // The live projector carries on after the swap.
    let mut res = app
        .post_json("/api/v1/budgets", &budget_body("after"))
        .await;
    let pos = res.json::<serde_json::Value>().await.unwrap()["position"]
        .as_i64()
        .unwrap();
    let res = app
        .get(&format!("/api/v1/budgets?min_position={pos}&limit=500"))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(view_snapshot(&app.conn).await.len(), 31);
}

#[actix_web::test]
async fn a_second_rebuild_while_one_runs_is_refused() {
    let conn = fresh_database().await;
    let p: Arc<dyn Projection> = Arc::new(Typed(BudgetsProjector));
    let first = Rebuild::begin(&conn, p.clone()).await.unwrap();
    let second = Rebuild::begin(&conn, p.clone()).await;
    assert!(matches!(second, Err(RebuildError::InProgress(_))));
    first.run(100, watch::channel(false).1).await.unwrap();
    let third = Rebuild::begin(&conn, p).await;
    assert!(third.is_ok(), "{:?}", third.err());
}

#[actix_web::test]
async fn another_runner_takes_over_when_the_leader_dies() {
    let conn = fresh_counting_database().await;
    let store = store(&conn, 4);
    let cfg = |owner: &str| RunnerConfig {
        conn: conn.clone(),
        batch_size: 100,
        poll: Duration::from_millis(50),
        owner: owner.into(),
        progress: Progress::new(["counting"]),
    };
    let wake = || cloudlens::eventstore::signal::EventSignal::default().subscribe(&["counter"]);
    let (stop, stop_rx) = watch::channel(false);
    let a = tokio::spawn(projections::run(
        CountingProjection::new(false),
        cfg("a"),
        wake(),
        stop_rx.clone(),
    ));
    let owner = || async {
        let c = db::connect(&conn).await.ok()?;
        c.query_one(
            "SELECT owner FROM projection_checkpoints WHERE name = 'counting'",
            &[],
        )
        .await
        .ok()?
        .get::<_, Option<String>>(0)
    };
    assert_eq!(
        eventually(Duration::from_secs(10), owner).await.as_deref(),
        Some("a")
    );
    let b = tokio::spawn(projections::run(
        CountingProjection::new(false),
        cfg("b"),
        wake(),
        stop_rx.clone(),
    ));
    append_counter_events(&store, uuid::Uuid::now_v7(), 0, 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // "Kill" a: its task and its connection (and so its advisory lock) go away.
    a.abort();
    let _ = a.await;
    let took_over = eventually(Duration::from_secs(10), || async {
        (owner().await.as_deref() == Some("b")).then_some(())
    })
    .await;
    assert!(took_over.is_some(), "runner b did not take over");
    append_counter_events(&store, uuid::Uuid::now_v7(), 0, 20).await;
    let done = eventually(Duration::from_secs(10), || async {
        (count(&conn, "SELECT count(*) FROM test_seen").await == 40).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    b.await.unwrap();
    assert!(done.is_some());
    assert_eq!(
        count(&conn, "SELECT count(DISTINCT position) FROM test_seen").await,
        40
    );
}

/// A hypertable read model with a digit in its name, whose rebuild copy must be made a
/// hypertable again by `prepare_shadow` (`LIKE … INCLUDING ALL` does not carry that).
struct Hourly;

#[async_trait::async_trait]
impl Projection for Hourly {
    fn name(&self) -> &'static str {
        "hourly_1h"
    }
    fn stream_types(&self) -> &[&'static str] {
        &["counter"]
    }
    fn tables(&self) -> Vec<&'static str> {
        vec!["counts_1h"]
    }
    fn options(&self) -> projections::ProjectorOptions {
        projections::ProjectorOptions {
            durable_commit: true,
            batch_size: Some(7),
            ..Default::default()
        }
    }
    async fn prepare_shadow(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        schema: &str,
    ) -> anyhow::Result<()> {
        tx.execute(
            "SELECT create_hypertable(format('%I.counts_1h', $1::text)::regclass, 'bucket')",
            &[&schema],
        )
        .await?;
        Ok(())
    }
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        events: &[cloudlens::eventstore::RecordedEvent],
        _lane: projections::Lane,
    ) -> anyhow::Result<()> {
        let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
        let times: Vec<chrono::DateTime<chrono::Utc>> =
            events.iter().map(|e| e.recorded_at).collect();
        tx.execute(
            "INSERT INTO counts_1h SELECT date_trunc('hour', t), p \
             FROM unnest($1::timestamptz[], $2::bigint[]) AS u(t, p)",
            &[&times, &positions],
        )
        .await?;
        Ok(())
    }
}

#[actix_web::test]
async fn a_hypertable_read_model_is_rebuilt_as_a_hypertable() {
    let conn = fresh_database().await;
    let c = db::connect(&conn).await.unwrap();
    c.batch_execute(
        "CREATE TABLE counts_1h (bucket timestamptz NOT NULL, position bigint NOT NULL);
         SELECT create_hypertable('counts_1h', 'bucket');",
    )
    .await
    .unwrap();
    let s = store(&conn, 4);
    append_counter_events(&s, uuid::Uuid::now_v7(), 0, 30).await;
    let p: Arc<dyn Projection> = Arc::new(Hourly);
    let report = Rebuild::begin(&conn, p)
        .await
        .unwrap()
        .run(5000, watch::channel(false).1)
        .await
        .unwrap();
    assert_eq!(report.events, 30);
    assert_eq!(count(&conn, "SELECT count(*) FROM counts_1h").await, 30);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM timescaledb_information.hypertables \
             WHERE hypertable_schema = 'public' AND hypertable_name = 'counts_1h'"
        )
        .await,
        1,
        "the swapped-in table is not a hypertable"
    );
}

/// A projector walks over the events of types it does not read once: when a batch finds
/// fewer events than it holds, the checkpoint moves to the horizon, past them.
#[actix_web::test]
async fn a_projector_steps_over_other_types_events_once() {
    let app = spawn_app().await;
    let first = body(
        app.post_json("/api/v1/budgets", &budget_body("before"))
            .await,
    )
    .await;
    assert_eq!(app.read_own_write(&first).await.status(), 200);
    let client = db::connect(&app.conn).await.unwrap();
    client
        .execute(
            "INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type, schema_version, payload)
             SELECT 'default', 'other_kind', gen_random_uuid(), 1, 'Happened', 1, '{}'::jsonb
               FROM generate_series(1, 3000)",
            &[],
        )
        .await
        .unwrap();
    let last_other: i64 = client
        .query_one(
            "SELECT max(position) FROM events WHERE stream_type = 'other_kind'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    const PASSED_SQL: &str = "\
SELECT (c.last_epoch, c.last_xid, c.last_position) > (e.epoch, e.transaction_id, e.position),
       c.position_seen
  FROM projection_checkpoints c, events e WHERE c.name = 'budgets' AND e.position = $1";
    let passed = eventually(Duration::from_secs(30), || async {
        let row = client.query_one(PASSED_SQL, &[&last_other]).await.unwrap();
        let (past, seen): (bool, i64) = (row.get(0), row.get(1));
        (past && seen >= last_other).then_some(seen)
    })
    .await;
    assert!(
        passed.is_some(),
        "the budgets checkpoint never moved past the other events"
    );
    // Reading on from the horizon misses nothing of its own types.
    let second = body(
        app.post_json("/api/v1/budgets", &budget_body("after"))
            .await,
    )
    .await;
    let res = app.read_own_write(&second).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await["name"], "after");
    let status = body(app.get("/api/v1/admin/projections").await).await;
    let budgets = status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "budgets")
        .unwrap()
        .clone();
    assert!(budgets["position"].as_i64().unwrap() >= second["position"].as_i64().unwrap());
}

#[actix_web::test]
async fn a_rebuild_keeps_its_start_time_while_it_reports_progress() {
    let app = spawn_app().await;
    let mut last = 0;
    for i in 0..7 {
        let mut res = app
            .post_json("/api/v1/budgets", &budget_body(&format!("b{i}")))
            .await;
        assert_eq!(res.status(), 201);
        last = res.json::<serde_json::Value>().await.unwrap()["position"]
            .as_i64()
            .unwrap();
    }
    let res = app
        .get(&format!("/api/v1/budgets?min_position={last}"))
        .await;
    assert_eq!(res.status(), 200);
    // Every change of the budgets projector's rebuild columns, as the rebuild makes them.
    let client = cloudlens::db::connect(&app.conn).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE rebuild_log (state text, started timestamptz, position bigint);
             CREATE FUNCTION log_rebuild() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO rebuild_log VALUES (NEW.rebuild_state, NEW.rebuild_started_at, NEW.rebuild_position);
               RETURN NEW;
             END $$;
             CREATE TRIGGER log_rebuild AFTER UPDATE ON projection_checkpoints
               FOR EACH ROW WHEN (NEW.name = 'budgets') EXECUTE FUNCTION log_rebuild();",
        )
        .await
        .unwrap();
    // Batches of 2: the rebuild reports its progress several times.
    cli_ok_with(
        &app.conn,
        &[("CLOUDLENS_PROJECTOR_BATCH", "2")],
        &["projections", "rebuild", "budgets"],
    );
    let progress = count(
        &app.conn,
        "SELECT count(DISTINCT position) FROM rebuild_log WHERE state = 'running' AND position > 0",
    )
    .await;
    assert!(progress >= 3, "{progress} progress reports");
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(DISTINCT started) FROM rebuild_log WHERE state = 'running'"
        )
        .await,
        1,
        "the start time moved while the rebuild ran"
    );
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM projection_checkpoints p WHERE name = 'budgets'
               AND rebuild_state = 'done'
               AND rebuild_started_at = (SELECT min(started) FROM rebuild_log WHERE state = 'running')
               AND rebuild_finished_at > rebuild_started_at"
        )
        .await,
        1
    );
}
