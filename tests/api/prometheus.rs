#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Grafana dashboards against a real Prometheus: every PromQL expression they contain
//! must evaluate without error and return at least one series after the server has been
//! scraped under some load. Also checks the alerting rules with promtool.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `"expr"` string in a Grafana dashboard JSON, wherever it sits.
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) if !e.trim().is_empty() => out.push(e.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| expressions(i, out)),
        _ => {}
    }
}

fn dashboard_expressions() -> Vec<(String, String)> {
    let dir = repo().join("grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let doc: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let mut exprs = Vec::new();
            expressions(&doc, &mut exprs);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.extend(exprs.into_iter().map(|e| (name.clone(), e)));
        }
    }
    out
}

fn start_prometheus(dir: &Path, target_port: u16, port: u16) -> Prometheus {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: cloudlens\n    \
             static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed by scripts/setup.sh");
    Prometheus(child)
}

async fn query(client: &awc::Client, port: u16, expr: &str) -> Value {
    query_params(client, port, &[("query", expr)]).await
}

/// `query` evaluated at `time` (Unix seconds).
async fn query_at(client: &awc::Client, port: u16, expr: &str, time: f64) -> Value {
    query_params(
        client,
        port,
        &[("query", expr), ("time", &time.to_string())],
    )
    .await
}

async fn query_params(client: &awc::Client, port: u16, params: &[(&str, &str)]) -> Value {
    let mut res = client
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&params)
        .unwrap()
        .send()
        .await
        .unwrap();
    res.json::<Value>()
        .limit(16 << 20)
        .await
        .unwrap_or(Value::Null)
}

/// Feed pages (JSON, NDJSON) and a consumer group polled and acknowledged, so the feed's
/// metrics and the group's lag (measured by the elected job) have series.
async fn drive_feed(app: &TestApp) {
    assert_eq!(app.get("/api/v1/feed?after=0&limit=10").await.status(), 200);
    let res = app
        .client
        .get(app.url("/api/v1/feed?after=0"))
        .insert_header(("Accept", "application/x-ndjson"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .put(app.url("/api/v1/consumers/metrics"))
        .send_json(&serde_json::json!({"filters": {"stream_types": ["budget"]}}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let batch = body(
        app.post_json(
            "/api/v1/consumers/metrics/poll",
            &serde_json::json!({"member": "m", "max": 5}),
        )
        .await,
    )
    .await;
    if let Some(cursor) = batch["cursor"].as_str() {
        let res = app
            .post_json(
                "/api/v1/consumers/metrics/ack",
                &serde_json::json!({"member": "m", "cursor": cursor}),
            )
            .await;
        assert_eq!(res.status(), 200);
    }
}

/// A tagging import and run, so the tagging and job metrics have series.
async fn drive_tagging(app: &TestApp) {
    let res = app
        .client
        .put(app.url("/api/v1/subject-kinds/user"))
        .send_json(
            &serde_json::json!({"id_field": "user_id", "primary_source": "basic",
            "attributes": [{"name": "level", "type": "number", "source": "basic"}]}),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .post(app.url("/api/v1/subjects/user/import?source=basic"))
        .insert_header(("Content-Type", "text/csv"))
        .send_body("user_id,level\nu1,1\nu2,5\n")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.post_json(
        "/api/v1/tag-categories",
        &serde_json::json!({"code": "c", "name": "c"}),
    )
    .await;
    app.post_json(
        "/api/v1/tags",
        &serde_json::json!({"code": "high", "name": "High", "category": "c", "kind": "AUTO",
            "subject_kind": "user", "rule": {"logic": "AND", "conditions": [
                {"field": "level", "operator": ">", "value": 2}]}}),
    )
    .await;
    let mut res = app
        .post_json(
            "/api/v1/tagging/runs",
            &serde_json::json!({"subject_kind": "user"}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let run: Value = res.json().await.unwrap();
    let path = format!(
        "/api/v1/tagging/runs/{}?min_position={}",
        run["run_id"].as_str().unwrap(),
        run["position"]
    );
    let done = eventually(Duration::from_secs(30), || async {
        let v: Value = app.get(&path).await.json().await.ok()?;
        (v["state"] == "succeeded").then_some(())
    })
    .await;
    assert!(done.is_some(), "the tagging run succeeds");
}

/// Bill imports (accepted, duplicate, rejected) and cost queries from both sources.
async fn drive_costs(app: &TestApp) {
    let res = app
        .post_json(
            "/api/v1/accounts",
            &serde_json::json!({"provider": "aws", "name": "prod", "currency": "USD"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let bill = "billing_cycle,billing_date,product_code,pretax_amount,currency,tag
2024-03,2024-03-02,ecs,1.25,USD,team:a
2024-03,,oss,2,USD,
";
    for (csv, status) in [(bill, 202), (bill, 200), ("billing_cycle\n2024-03\n", 422)] {
        let res = app
            .client
            .post(app.url("/api/v1/costs/imports?account=prod&format=cloudlens"))
            .insert_header(("Content-Type", "text/csv"))
            .send_body(csv)
            .await
            .unwrap();
        assert_eq!(res.status(), status);
    }
    for q in [
        "/api/v1/costs?from=2024-03-01&to=2024-04-01&group_by=service",
        "/api/v1/costs?from=2024-03-01&to=2024-04-01&group_by=tag:team",
        "/api/v1/costs/top?by=service&from=2024-03-01&to=2024-04-01",
    ] {
        assert_eq!(app.get(q).await.status(), 200, "{q}");
    }
}

/// Points and bars ingested (accepted and rejected), queried from each source, a refused
/// query and a retention run.
async fn drive_timeseries(app: &TestApp) {
    let t = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    let mut position = 0;
    for (path, body, status) in [
        (
            "/api/v1/metrics:batch",
            serde_json::json!({"points": [{"series": "h", "metric": "cpu", "time": t, "value": 1.5}]}),
            202,
        ),
        (
            "/api/v1/metrics:batch",
            serde_json::json!({"points": [{"series": "", "metric": "cpu", "time": t, "value": 1}]}),
            422,
        ),
        (
            "/api/v1/bars:batch",
            serde_json::json!({"bars": [{"symbol": "A", "time": "2024-01-02T09:30:00Z", "open": "1", "high": "2", "low": "1", "close": "2", "volume": "10"}]}),
            202,
        ),
    ] {
        let mut res = app.post_json(path, &body).await;
        assert_eq!(res.status(), status, "{path}");
        let v: Value = res.json().await.unwrap();
        position = position.max(v["position"].as_i64().unwrap_or(0));
    }
    let first = format!("/api/v1/metrics/h/cpu?bucket=1m&agg=avg,p95&min_position={position}");
    for (q, status) in [
        (first.as_str(), 200),
        ("/api/v1/metrics/h/cpu?bucket=1h", 200),
        ("/api/v1/metrics?metric=cpu&bucket=1d", 200),
        (
            "/api/v1/bars/A?from=2024-01-02T00:00:00Z&to=2024-01-03T00:00:00Z&interval=1h",
            200,
        ),
        (
            "/api/v1/metrics/h/cpu?bucket=1m&from=2020-01-01T00:00:00Z",
            422,
        ),
    ] {
        assert_eq!(app.get(q).await.status(), status, "{q}");
    }
    let res = app
        .client
        .post(app.url("/api/v1/admin/metrics/retention:run"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

/// A document and searches in both scripts.
async fn drive_documents(app: &TestApp) {
    let res = app
        .post_json(
            "/api/v1/documents",
            &serde_json::json!({"title": "成本 report", "content": "cost"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    for q in [
        "/api/v1/search?q=cost",
        "/api/v1/search?q=%E6%88%90%E6%9C%AC",
    ] {
        assert_eq!(app.get(q).await.status(), 200, "{q}");
    }
    for (body, status) in [
        ("{\"title\":\"batch\",\"content\":\"cost\"}\n", 202),
        ("{\"title\":\"\",\"content\":\"x\"}\n", 422),
    ] {
        let res = app
            .client
            .post(app.url("/api/v1/documents:batch"))
            .insert_header(("Content-Type", "application/x-ndjson"))
            .send_body(body)
            .await
            .unwrap();
        assert_eq!(res.status(), status);
    }
}

/// A declared collection with a 1 s TTL, single and batch writes (one batch refused),
/// reads; the expired items are purged later by [`purge_collections`].
async fn drive_collections(app: &TestApp) {
    let res = app
        .client
        .put(app.url("/api/v1/collections/blink"))
        .send_json(&serde_json::json!({"ttl_seconds": 1}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let single = serde_json::json!({"key": "one", "data": {"level": "INFO", "service": "api"}});
    for path in [
        "/api/v1/collections/system_logs/items",
        "/api/v1/collections/blink/items",
    ] {
        assert_eq!(app.post_json(path, &single).await.status(), 201, "{path}");
    }
    for (body, status) in [
        ("{\"data\":{\"level\":\"ERROR\",\"service\":\"api\"}}\n{\"data\":{\"level\":\"INFO\"}}\n", 200),
        ("{\"data\":{}}\n{\"data\":[1]}\n", 422),
    ] {
        let res = app
            .client
            .post(app.url("/api/v1/collections/system_logs/items"))
            .insert_header(("Content-Type", "application/x-ndjson"))
            .send_body(body)
            .await
            .unwrap();
        assert_eq!(res.status(), status);
    }
    for q in [
        "/api/v1/collections/system_logs/items/one",
        "/api/v1/collections/system_logs/items?filter=%7B%22level%22%3A%22ERROR%22%7D&limit=10",
    ] {
        assert_eq!(app.get(q).await.status(), 200, "{q}");
    }
}

/// The expired items of [`drive_collections`] purged.
async fn purge_collections(app: &TestApp) {
    // Past the 1 s TTL of the items written before, however fast the rest went.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut res = app
        .client
        .post(app.url("/api/v1/admin/collections/purge:run"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let run: Value = res.json().await.unwrap();
    assert!(run["purged"].as_i64().unwrap() >= 1, "{run}");
}

/// A dashboard's data: widgets that answer and one that fails (a missing budget).
async fn drive_dashboards(app: &TestApp) {
    let mut res = app
        .post_json(
            "/api/v1/dashboards",
            &serde_json::json!({"name": "ops", "widgets": [
                {"id": "c", "type": "chart", "position": {"x": 0, "y": 0, "w": 6, "h": 4},
                 "data_source": {"kind": "cost_breakdown", "group_by": ["service"]}},
                {"id": "b", "type": "table", "position": {"x": 6, "y": 0, "w": 6, "h": 4},
                 "data_source": {"kind": "budget_status", "budget_id": uuid::Uuid::now_v7()}}
            ]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    let q = format!(
        "/api/v1/dashboards/{}/data?min_position={}",
        v["id"].as_str().unwrap(),
        v["position"]
    );
    for _ in 0..3 {
        assert_eq!(app.get(&q).await.status(), 200, "{q}");
    }
}

/// A metric rule that fires and notifies a receiver that is not there: transitions,
/// evaluations and failed deliveries.
async fn drive_alerts(app: &TestApp) {
    let mut res = app
        .post_json(
            "/api/v1/notification-channels",
            &serde_json::json!({"name": "nowhere", "kind": "wecom",
                "config": {"url": format!("http://127.0.0.1:{}/x", free_port()), "timeout_ms": 200}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let channel: Value = res.json().await.unwrap();
    let res = app
        .post_json(
            "/api/v1/alert-rules",
            &serde_json::json!({"name": "mem", "type": "metric_threshold", "notify": [channel["id"]],
                "condition": {"metric": "mem", "aggregation": "max", "window_seconds": 60,
                              "comparator": "gt", "threshold": 1}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = app
        .post_json(
            "/api/v1/metrics:batch",
            &serde_json::json!({"points": [{"series": "h1", "metric": "mem", "value": 5,
                "time": chrono::Utc::now().to_rfc3339()}]}),
        )
        .await;
    assert!(res.status().is_success());
}

async fn drive_load(app: &TestApp) {
    for i in 0..20 {
        let mut res = app
            .client
            .post(app.url("/api/v1/budgets"))
            .send_json(&budget_body(&format!("p{i}")))
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_owned();
        let pos = body["position"].as_i64().unwrap();
        app.client
            .put(app.url(&format!("/api/v1/budgets/{id}")))
            .send_json(&budget_body("renamed"))
            .await
            .unwrap();
        app.get(&format!("/api/v1/budgets/{id}?min_position={pos}"))
            .await;
        app.get("/api/v1/budgets?limit=5").await;
        if i % 5 == 0 {
            app.client
                .delete(app.url(&format!("/api/v1/budgets/{id}")))
                .send()
                .await
                .unwrap();
            let mut bad = budget_body("bad");
            bad["amount"] = "-1".into();
            app.post_json("/api/v1/budgets", &bad).await;
            app.client
                .get(app.url(&format!("/api/v1/budgets/{}", uuid::Uuid::now_v7())))
                .send()
                .await
                .unwrap();
        }
        app.get("/api/v1/admin/projections").await;
    }
}

#[actix_web::test]
async fn every_dashboard_expression_returns_data_from_a_real_prometheus() {
    let exprs = dashboard_expressions();
    assert!(
        exprs.len() >= 20,
        "expected the dashboards to hold many expressions, found {}",
        exprs.len()
    );
    let app = spawn_app().await;
    let app_port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    let prom_port = free_port();
    let _prom = start_prometheus(
        &test_root().join(format!("prometheus-{}", uuid::Uuid::new_v4().simple())),
        app_port,
        prom_port,
    );
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    // Load in two rounds a few seconds apart, so rates see samples before and after.
    drive_load(&app).await;
    drive_tagging(&app).await;
    drive_costs(&app).await;
    drive_timeseries(&app).await;
    drive_documents(&app).await;
    drive_collections(&app).await;
    drive_dashboards(&app).await;
    drive_alerts(&app).await;
    drive_feed(&app).await;
    let scraped = eventually(Duration::from_secs(60), || async {
        let v = query(
            &client,
            prom_port,
            "count_over_time(up{job=\"cloudlens\"}[1m])",
        )
        .await;
        let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
        (n >= 4.0).then_some(())
    })
    .await;
    assert!(scraped.is_some(), "prometheus never scraped the server");
    drive_load(&app).await;
    purge_collections(&app).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The collections' metrics reach Prometheus with what was done.
    for (expr, least) in [
        (
            r#"cloudlens_collection_items_written_total{collection="system_logs"}"#,
            3.0,
        ),
        (
            r#"cloudlens_collection_items_written_total{collection="other"}"#,
            1.0,
        ),
        (
            r#"cloudlens_collection_writes_total{kind="batch",outcome="rejected"}"#,
            1.0,
        ),
        (
            r#"cloudlens_collection_write_duration_seconds_count{kind="batch"}"#,
            1.0,
        ),
        (
            r#"cloudlens_collection_item_read_duration_seconds_count{query="list"}"#,
            1.0,
        ),
        ("cloudlens_collection_items_purged_total", 1.0),
        (
            r#"cloudlens_alert_transitions_total{type="metric_threshold",transition="fired"}"#,
            1.0,
        ),
        (
            r#"cloudlens_notifications_total{kind="wecom",outcome="failed"}"#,
            1.0,
        ),
        ("cloudlens_collection_purge_last_run_timestamp_seconds", 1.0),
        (
            r#"cloudlens_consumer_group_lag_events{group="default/metrics"}"#,
            0.0,
        ),
        (r#"cloudlens_feed_requests_total{format="ndjson"}"#, 1.0),
        (
            r#"cloudlens_db_table_size_bytes{table="collection_items"}"#,
            1.0,
        ),
    ] {
        let seen = eventually(Duration::from_secs(30), || async {
            let v = query(&client, prom_port, expr).await;
            let x: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (x >= least).then_some(())
        })
        .await;
        assert!(seen.is_some(), "{expr} did not reach {least} in Prometheus");
    }

    // Every expression is evaluated at the time of one successful scrape. A scrape that
    // times out (1 s, the interval, on a machine busy with the other tests) marks every
    // series of the target stale, and an instant query just after it sees no gauge.
    let at = eventually(Duration::from_secs(30), || async {
        let v = query(&client, prom_port, "timestamp(up{job=\"cloudlens\"} == 1)").await;
        v["data"]["result"][0]["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()
    })
    .await
    .expect("a successful scrape of the server");
    let mut failures = Vec::new();
    for (file, expr) in &exprs {
        let promql = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1m");
        let v = query_at(&client, prom_port, &promql, at).await;
        if v["status"] != "success" {
            failures.push(format!("{file}: {expr}: {}", v["error"]));
        } else if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            failures.push(format!("{file}: {expr}: no series"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} expressions failed:\n{}",
        failures.len(),
        exprs.len(),
        failures.join("\n")
    );
}

#[test]
fn alerting_rules_pass_promtool() {
    let rules = repo().join("grafana/alerts/cloudlens-rules.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboards_use_the_provisioned_datasource() {
    let provisioned =
        std::fs::read_to_string(repo().join("grafana/provisioning/datasources/prometheus.yml"))
            .unwrap();
    assert!(provisioned.contains("uid: cloudlens-prometheus"));
    let postgres =
        std::fs::read_to_string(repo().join("grafana/provisioning/datasources/postgres.yml"))
            .unwrap();
    assert!(postgres.contains("uid: cloudlens-postgres"));
    assert!(postgres.contains("user: cloudlens_grafana"));
    let dir = repo().join("grafana/dashboards");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // The business dashboard reads the read models in PostgreSQL (its SQL is run by
        // `dashboards::every_business_dashboard_query_runs_as_the_grafana_role…`).
        let uid = if path.file_name().is_some_and(|n| n == "business.json") {
            "cloudlens-postgres"
        } else {
            "cloudlens-prometheus"
        };
        for panel in doc["panels"].as_array().unwrap() {
            if panel["type"] == "row" || panel["type"] == "text" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"],
                uid,
                "{}: {}",
                path.display(),
                panel["title"]
            );
            for t in panel["targets"].as_array().unwrap() {
                assert_eq!(
                    t["datasource"]["uid"],
                    uid,
                    "{}: {}",
                    path.display(),
                    panel["title"]
                );
            }
        }
    }
}
