#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Queries on a streaming replica (`CLOUDLENS_REPLICA_URL`): a real hot standby made by
//! `pg_basebackup -R` of a cluster of the test's own, with replay paused (lag) and the
//! standby stopped (loss).

use std::time::Duration;

use cloudlens::db::{self, cluster::LocalCluster};
use serde_json::Value;

use crate::helpers::*;

/// The value of a metric line (`name{labels} value`) in `/metrics`, or 0.
async fn metric(app: &TestApp, line_start: &str) -> f64 {
    let mut res = app.get("/metrics").await;
    let text = String::from_utf8(res.body().limit(1 << 24).await.unwrap().to_vec()).unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const SERVED_BY_REPLICA: &str = "cloudlens_replica_queries_total{served_by=\"replica\"}";
const SERVED_BY_PRIMARY: &str = "cloudlens_replica_queries_total{served_by=\"primary\"}";

async fn on_standby(conn: &str, sql: &str) {
    db::connect(conn)
        .await
        .unwrap()
        .batch_execute(sql)
        .await
        .unwrap();
}

#[actix_web::test]
async fn queries_read_the_replica_with_read_your_writes_and_fall_back_when_it_is_lost() {
    let primary = own_cluster("replica-primary");
    let conn = fresh_database_in(&primary).await;
    let dbname = conn
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap()
        .to_owned();
    let standby_dir =
        test_root().join(format!("replica-standby-{}", uuid::Uuid::new_v4().simple()));
    let standby = LocalCluster::new(&standby_dir, 5432).unwrap();
    standby.start_standby_of(&primary).unwrap();
    let replica_conn = standby.connection_string_for(&dbname);
    let mut settings = test_settings();
    settings.replica_url = Some(replica_conn.clone());
    settings.min_position_timeout = Duration::from_secs(2);
    let app = spawn_app_on(conn.clone(), settings).await;

    // Read-your-writes through the replica.
    let created = body(
        app.post_json("/api/v1/budgets", &budget_body("replicated"))
            .await,
    )
    .await;
    let res = app.read_own_write(&created).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await["name"], "replicated");
    assert!(metric(&app, SERVED_BY_REPLICA).await >= 1.0);
    assert_eq!(metric(&app, "cloudlens_replica_up ").await, 1.0);
    let on_primary = metric(&app, SERVED_BY_PRIMARY).await;

    // Lag: with replay paused, a query that needs the write waits, then answers 503 with
    // Retry-After; one without min_position answers at once, stale by the lag.
    on_standby(&replica_conn, "SELECT pg_wal_replay_pause()").await;
    let late = body(app.post_json("/api/v1/budgets", &budget_body("late")).await).await;
    let late_id = late["id"].as_str().unwrap().to_owned();
    let res = app.read_own_write(&late).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("retry-after").is_some());
    let problem: Value = body(res).await;
    assert_eq!(problem["code"], "read_model_behind");
    // The projector has it on the primary; the paused replica does not.
    let primary_has = count(
        &conn,
        &format!("SELECT count(*) FROM budgets_view WHERE id = '{late_id}'"),
    )
    .await;
    assert_eq!(primary_has, 1);
    assert_eq!(
        app.get(&format!("/api/v1/budgets/{late_id}"))
            .await
            .status(),
        404
    );
    let lagging = eventually(Duration::from_secs(10), || async {
        (metric(&app, "cloudlens_replica_lag_bytes ").await > 0.0).then_some(())
    })
    .await;
    assert!(
        lagging.is_some(),
        "the replica's lag never showed in /metrics"
    );

    // Replay resumed: the same query answers.
    on_standby(&replica_conn, "SELECT pg_wal_replay_resume()").await;
    let res = app.read_own_write(&late).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await["name"], "late");

    // Loss: with the standby gone, queries go to the primary and still see their writes.
    standby.stop().unwrap();
    let after_loss = body(
        app.post_json("/api/v1/budgets", &budget_body("after loss"))
            .await,
    )
    .await;
    let res = app.read_own_write(&after_loss).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await["name"], "after loss");
    assert_eq!(metric(&app, "cloudlens_replica_up ").await, 0.0);
    assert!(metric(&app, SERVED_BY_PRIMARY).await > on_primary);
    let listed = app.get("/api/v1/budgets").await;
    assert_eq!(listed.status(), 200);

    // Back: the monitor finds it answering and queries return to it.
    standby.ensure_running().unwrap();
    let back = eventually(Duration::from_secs(20), || async {
        (metric(&app, "cloudlens_replica_up ").await == 1.0).then_some(())
    })
    .await;
    assert!(back.is_some(), "queries never went back to the replica");
    let before = metric(&app, SERVED_BY_REPLICA).await;
    assert_eq!(app.read_own_write(&after_loss).await.status(), 200);
    assert!(metric(&app, SERVED_BY_REPLICA).await > before);

    app.handle.stop(true).await;
    standby.stop().unwrap();
    primary.stop().unwrap();
}
