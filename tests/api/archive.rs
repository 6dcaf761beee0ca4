#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Event archiving: ended streams (deleted budgets) leave the live log for the archive;
//! rebuilds equal the live read models; the stream API and commands still see them.

use serde_json::{json, Value};

use crate::helpers::*;

async fn create(app: &TestApp, name: &str) -> String {
    let res = app.post_json("/api/v1/budgets", &budget_body(name)).await;
    assert_eq!(res.status(), 201);
    body(res).await["id"].as_str().unwrap().to_owned()
}

async fn delete(app: &TestApp, id: &str) -> Response {
    app.client
        .delete(app.url(&format!("/api/v1/budgets/{id}")))
        .send()
        .await
        .unwrap()
}

async fn archive(app: &TestApp, request: &Value) -> Response {
    app.post_json("/api/v1/admin/archive", request).await
}

const VIEW_SQL: &str = "SELECT concat_ws('|', id, tenant_id, name, amount, version, \
    created_at, updated_at, last_position) FROM budgets_view";

#[actix_web::test]
async fn ended_streams_move_to_the_archive_out_of_rebuilds_but_not_out_of_sight() {
    let app = spawn_app().await;
    let kept = create(&app, "kept").await;
    let gone = [create(&app, "gone-1").await, create(&app, "gone-2").await];
    let mut position = 0;
    for id in &gone {
        let res = delete(&app, id).await;
        assert_eq!(res.status(), 200);
        position = body(res).await["position"].as_i64().unwrap();
    }
    // Read models (and the jobs projector) have applied the deletes.
    assert_eq!(
        app.get(&format!("/api/v1/budgets/{kept}?min_position={position}"))
            .await
            .status(),
        200
    );
    eventually(std::time::Duration::from_secs(30), || async {
        let v = body(app.get("/api/v1/admin/projections").await).await;
        v["projections"]
            .as_array()?
            .iter()
            .all(|p| p["lag_events"] == 0)
            .then_some(())
    })
    .await
    .expect("projectors caught up");

    // Nothing ended a day ago; a dry run counts and moves nothing.
    let v = body(archive(&app, &json!({"ended_days_ago": 1})).await).await;
    assert_eq!(
        (v["streams"].as_i64(), v["events"].as_i64()),
        (Some(0), Some(0))
    );
    let res = archive(&app, &json!({"ended_days_ago": 0, "dry_run": true})).await;
    assert_eq!(res.status(), 200);
    let v = body(res).await;
    assert_eq!(
        (v["streams"].as_i64(), v["events"].as_i64()),
        (Some(2), Some(4))
    );
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM events_archive").await,
        0
    );

    let live = snapshot(&app.conn, VIEW_SQL).await;
    let before = count(&app.conn, "SELECT count(*) FROM events").await;
    let v = body(archive(&app, &json!({"ended_days_ago": 0})).await).await;
    assert_eq!(
        (v["streams"].as_i64(), v["events"].as_i64()),
        (Some(2), Some(4))
    );
    assert_eq!(v["by_stream_type"], json!({"budget": 4}));
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM events").await,
        before - 4
    );
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM events_archive").await,
        4
    );
    // Archiving again finds nothing more.
    let v = body(archive(&app, &json!({"ended_days_ago": 0})).await).await;
    assert_eq!(v["streams"], 0);

    // Still readable per stream, and commands still see the stream's history.
    let trail = body(
        app.get(&format!("/api/v1/streams/budget/{}/events", gone[0]))
            .await,
    )
    .await;
    let types: Vec<&str> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["BudgetCreated", "BudgetDeleted"]);
    assert_eq!(delete(&app, &gone[0]).await.status(), 404);

    // A rebuild no longer replays the archived streams, and equals the live model.
    rebuild_and_wait(&app, "budgets").await;
    assert_eq!(snapshot(&app.conn, VIEW_SQL).await, live);

    // The log itself stays append-only outside the archive's move.
    let client = cloudlens::db::connect(&app.conn).await.unwrap();
    let err = client
        .execute("DELETE FROM events WHERE stream_id::text = $1", &[&kept])
        .await
        .unwrap_err();
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("append-only"), "{message}");
    assert!(client
        .execute("DELETE FROM events_archive", &[])
        .await
        .is_err());

    // Bad requests.
    for (request, status) in [
        (json!({"ended_days_ago": -1}), 422),
        (json!({"ended_days_ago": 40000}), 422),
        (json!({"ended_days_ago": 1, "everything": true}), 422),
        (json!({}), 422),
    ] {
        let res = archive(&app, &request).await;
        assert_eq!(res.status(), status, "{request}");
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
    }

    let metrics = app
        .get("/metrics")
        .await
        .body()
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap();
    assert!(
        metrics.contains("cloudlens_events_archived_total{stream_type=\"budget\"}"),
        "metric missing"
    );
}
