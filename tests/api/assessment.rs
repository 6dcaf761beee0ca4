#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The assessment (`GET /api/v1/admin/assessment`, `cloudlens assess`): its figures
//! against the database's own counts.

use serde_json::Value;

use crate::costs::{import_ok, open_account};
use crate::helpers::*;

#[actix_web::test]
async fn the_assessment_counts_what_the_database_holds() {
    let app = spawn_app().await;
    open_account(&app, "prod", "CNY").await;
    import_ok(
        &app,
        "prod",
        "cloudlens",
        "billing_cycle,billing_date,product_code,pretax_amount,currency\n\
         2024-05,2024-05-01,ecs,1.00,CNY\n2024-05,2024-05-20,oss,2.00,CNY\n",
    )
    .await;
    for name in ["a", "b"] {
        let res = app.post_json("/api/v1/budgets", &budget_body(name)).await;
        assert_eq!(res.status(), 201);
    }
    let res = app.get("/api/v1/admin/assessment").await;
    assert_eq!(res.status(), 200);
    let a = body(res).await;
    let events = count(&app.conn, "SELECT count(*) FROM events").await;
    assert_eq!(a["growth"]["events_total"], events);
    assert_eq!(
        a["growth"]["events_last_7_days"], events,
        "every event is new"
    );
    let created = a["events_by_type"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stream_type"] == "budget" && e["event_type"] == "BudgetCreated")
        .unwrap();
    assert_eq!(created["events"], 2);
    let table = |name: &str| {
        a["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert!(table("events")["total_bytes"].as_i64().unwrap() > 0);
    assert!(table("budgets_view")["index_bytes"].as_i64().unwrap() > 0);
    // Hypertables are reported with their chunks, not as empty parent tables.
    assert_eq!(table("cost_lines"), Value::Null);
    let lines = a["hypertables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "cost_lines")
        .unwrap();
    assert!(lines["chunks"].as_i64().unwrap() >= 2, "{lines}");
    assert!(!a["indexes"].as_array().unwrap().is_empty());
    // The local cluster preloads pg_stat_statements; V8 installs it.
    assert!(a["top_statements"]
        .as_array()
        .is_some_and(|s| !s.is_empty()));

    // The command line says the same, as JSON and as tables.
    let run = |args: &[&str]| cli_ok(&app.conn, args);
    let json: Value = serde_json::from_str(&run(&["assess", "--json"])).unwrap();
    assert_eq!(json["growth"]["events_total"], events);
    let text = run(&["assess"]);
    assert!(
        text.contains("HYPERTABLE") && text.contains("cost_lines"),
        "{text}"
    );
    assert!(text.contains(&format!("events: {events} in all")), "{text}");
}
