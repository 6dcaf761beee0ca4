#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Dashboards end to end: CRUD with If-Match, validation naming the field (and writing
//! nothing), sharing between actors, the data endpoint against real costs, points and
//! budgets (one widget's failure stays its own), the global search, the rebuild, and the
//! business Grafana dashboard's SQL run as its read-only role.

use serde_json::{json, Value};

use crate::helpers::*;

const BILL: &str = "billing_cycle,billing_date,product_code,pretax_amount,currency,tag
2024-03,2024-03-02,ecs,1.25,USD,team:a
2024-03,2024-03-05,oss,2,USD,
";

fn dashboard(budget_id: &str) -> Value {
    json!({
        "name": "Prod overview", "description": "spend and load", "layout": "grid",
        "is_shared": true,
        "widgets": [
            {"id": "costs", "type": "chart", "title": "Cost by service",
             "position": {"x": 0, "y": 0, "w": 8, "h": 4},
             "data_source": {"kind": "cost_breakdown", "group_by": ["service"],
                             "granularity": "month", "filters": {"account": "prod"}}},
            {"id": "cpu", "type": "metric", "title": "Web CPU",
             "position": {"x": 8, "y": 0, "w": 4, "h": 4},
             "data_source": {"kind": "metric_series", "series": "web-1", "metric": "cpu",
                             "aggregation": "avg", "step": "1d"}},
            {"id": "budget", "type": "table", "title": "Prod budget",
             "position": {"x": 0, "y": 4, "w": 6, "h": 3},
             "data_source": {"kind": "budget_status", "budget_id": budget_id}},
            {"id": "gone", "type": "table", "title": "Old budget",
             "position": {"x": 6, "y": 4, "w": 6, "h": 3},
             "data_source": {"kind": "budget_status", "budget_id": uuid::Uuid::now_v7()}},
            {"id": "tag", "type": "metric", "title": "Tag",
             "position": {"x": 0, "y": 7, "w": 4, "h": 2},
             "data_source": {"kind": "tag_stats", "tag_id": 99}},
            {"id": "alerts", "type": "table", "title": "Firing",
             "position": {"x": 4, "y": 7, "w": 8, "h": 2},
             "data_source": {"kind": "alert_list", "state": "firing"}}
        ]
    })
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    actor: &str,
    if_match: Option<&str>,
    body: Option<&Value>,
) -> (u16, Option<String>, Value) {
    let mut req = match method {
        "POST" => app.client.post(app.url(path)),
        "PUT" => app.client.put(app.url(path)),
        "DELETE" => app.client.delete(app.url(path)),
        _ => app.client.get(app.url(path)),
    }
    .insert_header(("X-Actor", actor));
    if let Some(v) = if_match {
        req = req.insert_header(("If-Match", v));
    }
    let mut res = match body {
        Some(b) => req.send_json(b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let status = res.status().as_u16();
    let etag = res
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let ctype = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let v: Value = res.json().limit(16 << 20).await.unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(ctype, "application/problem+json", "{method} {path}: {v}");
    }
    (status, etag, v)
}

async fn dashboards_written(app: &TestApp) -> i64 {
    count(
        &app.conn,
        "SELECT count(*) FROM events WHERE stream_type = 'dashboard'",
    )
    .await
}

#[actix_web::test]
async fn dashboards_are_created_read_listed_replaced_and_deleted_with_if_match() {
    let app = spawn_app().await;
    let body = dashboard(&uuid::Uuid::now_v7().to_string());
    let (status, etag, created) =
        send(&app, "POST", "/api/v1/dashboards", "ann", None, Some(&body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(etag.as_deref(), Some("\"1\""));
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/dashboards/{id}");
    let pos = created["position"].clone();

    let (status, etag, got) = send(
        &app,
        "GET",
        &format!("{path}?min_position={pos}"),
        "ann",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(etag.as_deref(), Some("\"1\""));
    assert_eq!(got["name"], "Prod overview");
    assert_eq!(got["created_by"], "ann");
    assert_eq!(got["is_shared"], true);
    assert_eq!(got["widgets"].as_array().unwrap().len(), 6);
    assert_eq!(
        got["widgets"][1]["data_source"]["fill"], "none",
        "defaults filled in"
    );

    // A second one, private; the list pages by id.
    let mut private = body.clone();
    private["name"] = "Mine".into();
    private["is_shared"] = false.into();
    let (_, _, second) = send(
        &app,
        "POST",
        "/api/v1/dashboards",
        "ann",
        None,
        Some(&private),
    )
    .await;
    let pos2 = second["position"].clone();
    let (_, _, page) = send(
        &app,
        "GET",
        &format!("/api/v1/dashboards?limit=1&min_position={pos2}"),
        "ann",
        None,
        None,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], id.as_str());
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, _, page2) = send(
        &app,
        "GET",
        &format!("/api/v1/dashboards?limit=1&cursor={cursor}"),
        "ann",
        None,
        None,
    )
    .await;
    assert_eq!(page2["items"][0]["name"], "Mine");
    assert!(page2["next_cursor"].is_null());

    // PUT of what GET answered is accepted as is (no change, no event).
    let mut again = got.clone();
    for k in ["id", "version", "created_by", "created_at", "updated_at"] {
        again.as_object_mut().unwrap().remove(k);
    }
    let (status, _, same) = send(&app, "PUT", &path, "ann", Some("\"1\""), Some(&again)).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["version"], 1);
    // A change with the right version; a stale If-Match is 409.
    again["name"] = "Renamed".into();
    let (status, etag, updated) =
        send(&app, "PUT", &path, "ann", Some("\"1\""), Some(&again)).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"2\"")), "{updated}");
    let (status, _, conflict) = send(&app, "PUT", &path, "ann", Some("\"1\""), Some(&again)).await;
    assert_eq!(status, 409);
    assert_eq!(conflict["code"], "version_conflict");
    let (status, _, bad) = send(&app, "PUT", &path, "ann", Some("abc"), Some(&again)).await;
    assert_eq!(
        (status, bad["code"].as_str()),
        (400, Some("invalid_header"))
    );

    // Delete with a stale version is refused, with the current one it goes.
    let (status, _, _) = send(&app, "DELETE", &path, "ann", Some("\"1\""), None).await;
    assert_eq!(status, 409);
    let (status, _, deleted) = send(&app, "DELETE", &path, "ann", Some("\"2\""), None).await;
    assert_eq!(status, 200, "{deleted}");
    let (status, _, gone) = send(
        &app,
        "GET",
        &format!("{path}?min_position={}", deleted["position"]),
        "ann",
        None,
        None,
    )
    .await;
    assert_eq!((status, gone["code"].as_str()), (404, Some("not_found")));
    let (status, _, _) = send(&app, "DELETE", &path, "ann", None, None).await;
    assert_eq!(status, 404);
    let (status, _, _) = send(
        &app,
        "GET",
        "/api/v1/dashboards/not-a-uuid",
        "ann",
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn each_invalid_dashboard_is_422_naming_the_field_and_nothing_is_written() {
    let app = spawn_app().await;
    let base = dashboard(&uuid::Uuid::now_v7().to_string());
    let cases: Vec<(&str, Value, &str)> = vec![
        // overlap: "cpu" moved onto "costs"
        (
            "/widgets/1/position",
            json!({"x": 6, "y": 2, "w": 4, "h": 4}),
            "/widgets/1/position",
        ),
        ("/widgets/1/position/w", json!(5), "/widgets/1/position/w"),
        ("/widgets/0/position/x", json!(12), "/widgets/0/position/x"),
        ("/widgets/0/position/h", json!(49), "/widgets/0/position/h"),
        ("/widgets/2/id", json!("costs"), "/widgets/2/id"),
        ("/widgets/2/type", json!("pie"), "/widgets/2/type"),
        (
            "/widgets/0/data_source/kind",
            json!("sql"),
            "/widgets/0/data_source/kind",
        ),
        (
            "/widgets/0/data_source/group_by",
            json!(["service", "colour"]),
            "/widgets/0/data_source/group_by/1",
        ),
        (
            "/widgets/1/data_source/aggregation",
            json!("median"),
            "/widgets/1/data_source/aggregation",
        ),
        (
            "/widgets/5/data_source/state",
            json!("open"),
            "/widgets/5/data_source/state",
        ),
        // a type error from the JSON itself is named by pointer too
        (
            "/widgets/3/position/y",
            json!("top"),
            "/widgets/3/position/y",
        ),
    ];
    for (path, value, field) in cases {
        let mut body = base.clone();
        *body.pointer_mut(path).unwrap() = value.clone();
        let (status, _, problem) =
            send(&app, "POST", "/api/v1/dashboards", "ann", None, Some(&body)).await;
        assert_eq!(status, 422, "{path} = {value}: {problem}");
        assert_eq!(problem["code"], "validation_failed", "{problem}");
        assert_eq!(problem["field"], field, "{path} = {value}: {problem}");
    }
    let mut body = base.clone();
    body["widgets"][1]["position"] = json!({"x": 6, "y": 2, "w": 4, "h": 4});
    let (_, _, problem) = send(&app, "POST", "/api/v1/dashboards", "ann", None, Some(&body)).await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"cpu\"") && detail.contains("\"costs\""),
        "{detail}"
    );
    let (status, _, problem) = send(
        &app,
        "POST",
        "/api/v1/dashboards",
        "ann",
        None,
        Some(&json!({"name": "x", "widgets": 3})),
    )
    .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("/widgets")));
    assert_eq!(dashboards_written(&app).await, 0);
}

#[actix_web::test]
async fn others_see_shared_dashboards_only_and_cannot_change_them() {
    let app = spawn_app().await;
    let mut body = dashboard(&uuid::Uuid::now_v7().to_string());
    let (_, _, shared) = send(&app, "POST", "/api/v1/dashboards", "ann", None, Some(&body)).await;
    body["is_shared"] = false.into();
    body["name"] = "Ann's own".into();
    let (_, _, private) = send(&app, "POST", "/api/v1/dashboards", "ann", None, Some(&body)).await;
    let pos = private["position"].clone();
    let (shared_id, private_id) = (
        shared["id"].as_str().unwrap(),
        private["id"].as_str().unwrap(),
    );

    let (_, _, page) = send(
        &app,
        "GET",
        &format!("/api/v1/dashboards?min_position={pos}"),
        "bob",
        None,
        None,
    )
    .await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![shared_id]);
    let (_, _, page) = send(&app, "GET", "/api/v1/dashboards", "ann", None, None).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (status, _, _) = send(
        &app,
        "GET",
        &format!("/api/v1/dashboards/{shared_id}"),
        "bob",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = send(
        &app,
        "GET",
        &format!("/api/v1/dashboards/{private_id}"),
        "bob",
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = send(
        &app,
        "GET",
        &format!("/api/v1/dashboards/{private_id}/data"),
        "bob",
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);
    // Another tenant sees neither.
    let res = app
        .client
        .get(app.url("/api/v1/dashboards"))
        .insert_header(("X-Tenant-Id", "other"))
        .insert_header(("X-Actor", "ann"))
        .send()
        .await
        .unwrap();
    assert_eq!(body_of(res).await["items"].as_array().unwrap().len(), 0);

    // Bob cannot change or delete Ann's shared dashboard (403), nor her private one (404).
    body["name"] = "Bob's now".into();
    let (status, _, problem) = send(
        &app,
        "PUT",
        &format!("/api/v1/dashboards/{shared_id}"),
        "bob",
        None,
        Some(&body),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("not_owner")),
        "{problem}"
    );
    let (status, _, problem) = send(
        &app,
        "DELETE",
        &format!("/api/v1/dashboards/{shared_id}"),
        "bob",
        None,
        None,
    )
    .await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("not_owner")));
    let (status, _, _) = send(
        &app,
        "PUT",
        &format!("/api/v1/dashboards/{private_id}"),
        "bob",
        None,
        Some(&body),
    )
    .await;
    assert_eq!(status, 404);
    let (_, _, still) = send(
        &app,
        "GET",
        &format!("/api/v1/dashboards/{shared_id}"),
        "ann",
        None,
        None,
    )
    .await;
    assert_eq!(still["version"], 1);
    assert_eq!(dashboards_written(&app).await, 2);
}

async fn body_of(res: Response) -> Value {
    body(res).await
}

#[actix_web::test]
async fn the_data_endpoint_answers_each_widget_from_its_endpoint_and_errors_stay_per_widget() {
    let app = spawn_app().await;
    // Costs: 1.25 (ecs) + 2 (oss) USD in March 2024 on account prod.
    let res = app
        .post_json(
            "/api/v1/accounts",
            &json!({"provider": "aws", "name": "prod", "currency": "USD"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = app
        .client
        .post(app.url("/api/v1/costs/imports?account=prod&format=cloudlens"))
        .insert_header(("Content-Type", "text/csv"))
        .send_body(BILL)
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let import = body(res).await;
    // A budget of 100 USD a month on that account.
    let budget = body(
        app.post_json(
            "/api/v1/budgets",
            &json!({"name": "prod", "amount": "100", "currency": "USD", "period": "monthly",
                    "type": "cost", "start_date": "2024-03-01", "account": "prod"}),
        )
        .await,
    )
    .await;
    // Points: two on the same day two days ago.
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let day = today - chrono::Duration::days(2);
    let t = |m: i64| {
        (day + chrono::Duration::minutes(m)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let points = body(
        app.post_json(
            "/api/v1/metrics:batch",
            &json!({"points": [{"series": "web-1", "metric": "cpu", "time": t(60), "value": 1.0},
                               {"series": "web-1", "metric": "cpu", "time": t(90), "value": 3.0}]}),
        )
        .await,
    )
    .await;
    let (_, _, created) = send(
        &app,
        "POST",
        "/api/v1/dashboards",
        "ann",
        None,
        Some(&dashboard(budget["id"].as_str().unwrap())),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let pos = [
        &import["position"],
        &budget["position"],
        &points["position"],
        &created["position"],
    ]
    .iter()
    .map(|p| p.as_i64().unwrap())
    .max()
    .unwrap();

    let (status, _, data) = send(&app, "GET",
        &format!("/api/v1/dashboards/{id}/data?from=2024-03-01T00:00:00Z&to=2024-04-01T00:00:00Z&min_position={pos}"),
        "bob", None, None).await;
    assert_eq!(status, 200, "{data}");
    let w = |id: &str| {
        data["widgets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == id)
            .unwrap()
            .clone()
    };
    let ids: Vec<&str> = data["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["costs", "cpu", "budget", "gone", "tag", "alerts"],
        "in the dashboard's order"
    );

    // The cost widget is what GET /api/v1/costs answers for the same parameters.
    let costs = w("costs");
    assert!(costs["error"].is_null(), "{costs}");
    assert_eq!(costs["result"]["total"], "3.25");
    assert_eq!(costs["result"]["currency"], "USD");
    let own = body(app.get("/api/v1/costs?from=2024-03-01T00:00:00Z&to=2024-04-01T00:00:00Z&bucket=month&group_by=service&account=prod").await).await;
    assert_eq!(costs["result"], own);

    let status = w("budget");
    assert!(status["error"].is_null(), "{status}");
    assert_eq!(status["result"]["spent"], "3.25");
    assert_eq!(status["result"]["percent_used"], "3.25");
    assert_eq!(status["result"]["as_of"], "2024-03-31");
    let own = body(
        app.get(&format!(
            "/api/v1/budgets/{}/status?as_of=2024-03-31",
            budget["id"].as_str().unwrap()
        ))
        .await,
    )
    .await;
    assert_eq!(status["result"], own);

    // A missing budget, a missing tag: their own errors only.
    let gone = w("gone");
    assert!(gone["result"].is_null());
    assert_eq!(gone["error"]["code"], "not_found");
    assert_eq!(gone["error"]["status"], 404);
    assert_eq!(w("tag")["error"]["code"], "not_found");
    // The alerts widget answers what the alerts endpoint answers.
    let alerts = body(app.get("/api/v1/alerts?state=firing").await).await;
    assert_eq!(w("alerts")["result"], alerts);
    // No points in March 2024: an answer without points, not an error.
    assert_eq!(w("cpu")["result"]["points"], json!([]));

    // The metric widget over the days of the points: avg of 1 and 3 in one day bucket.
    let (from, to) = (
        day.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (day + chrono::Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let (status, _, data) = send(
        &app,
        "GET",
        &format!("/api/v1/dashboards/{id}/data?from={from}&to={to}"),
        "ann",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let cpu = data["widgets"][1].clone();
    assert_eq!(cpu["id"], "cpu");
    assert_eq!(
        cpu["result"]["points"].as_array().unwrap().len(),
        1,
        "{cpu}"
    );
    assert_eq!(cpu["result"]["points"][0]["avg"], 2.0);
    let own = body(
        app.get(&format!(
            "/api/v1/metrics/web-1/cpu?from={from}&to={to}&bucket=1d&agg=avg"
        ))
        .await,
    )
    .await;
    assert_eq!(cpu["result"], own);

    // Bad ranges are the request's problem, not a widget's.
    for q in ["from=yesterday", "from=2024-04-01&to=2024-03-01"] {
        let (status, _, problem) = send(
            &app,
            "GET",
            &format!("/api/v1/dashboards/{id}/data?{q}"),
            "ann",
            None,
            None,
        )
        .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("validation_failed")),
            "{q}"
        );
    }
}

#[actix_web::test]
async fn shared_dashboards_are_found_by_the_search_and_the_rebuild_equals_the_live_model() {
    let app = spawn_app().await;
    let mut body = dashboard(&uuid::Uuid::now_v7().to_string());
    body["description"] = "quarterly zeppelin spend".into();
    let (_, _, a) = send(&app, "POST", "/api/v1/dashboards", "ann", None, Some(&body)).await;
    body["name"] = "Private zeppelin".into();
    body["is_shared"] = false.into();
    let (_, _, b) = send(&app, "POST", "/api/v1/dashboards", "bob", None, Some(&body)).await;
    body["name"] = "Deleted zeppelin".into();
    body["is_shared"] = true.into();
    let (_, _, c) = send(&app, "POST", "/api/v1/dashboards", "ann", None, Some(&body)).await;
    let (_, _, d) = send(
        &app,
        "DELETE",
        &format!("/api/v1/dashboards/{}", c["id"].as_str().unwrap()),
        "ann",
        None,
        None,
    )
    .await;
    let _ = (a, b);
    let search = body_of(
        app.get(&format!(
            "/api/v1/search?q=zeppelin&type=dashboard&min_position={}",
            d["position"]
        ))
        .await,
    )
    .await;
    let hits = search["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{search}");
    assert_eq!(hits[0]["title"], "Prod overview");
    assert_eq!(hits[0]["type"], "dashboard");
    // Widget titles are searchable too.
    let search = body_of(app.get("/api/v1/search?q=Firing&type=dashboard").await).await;
    assert_eq!(search["hits"].as_array().unwrap().len(), 1, "{search}");

    let sql =
        "SELECT row(tenant_id, id, name, description, layout, widgets, is_shared, created_by, \
               version, created_at, updated_at, last_position)::text FROM dashboards";
    let live = snapshot(&app.conn, sql).await;
    assert_eq!(live.len(), 2);
    rebuild_and_wait(&app, "dashboards").await;
    assert_eq!(snapshot(&app.conn, sql).await, live);
}

/// Grafana macros of the business dashboard's SQL, expanded simply.
fn expand(sql: &str) -> String {
    let mut out = sql
        .replace("'$tenant'", "'default'")
        .replace("${tenant}", "default");
    while let Some(start) = out.find("$__timeFilter(") {
        let end = start + out[start..].find(')').unwrap();
        let col = &out[start + "$__timeFilter(".len()..end];
        let cond = format!("{col} BETWEEN '2024-01-01T00:00:00Z'::timestamptz AND '2024-12-31T00:00:00Z'::timestamptz");
        out.replace_range(start..=end, &cond);
    }
    out
}

#[actix_web::test]
async fn every_business_dashboard_query_runs_as_the_grafana_role_with_its_columns() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("grafana/dashboards/business.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let app = spawn_app().await;
    // Some rows to see: a cost import and a budget of the default tenant.
    app.post_json(
        "/api/v1/accounts",
        &json!({"provider": "aws", "name": "prod", "currency": "USD"}),
    )
    .await;
    let res = app
        .client
        .post(app.url("/api/v1/costs/imports?account=prod&format=cloudlens"))
        .insert_header(("Content-Type", "text/csv"))
        .send_body(BILL)
        .await
        .unwrap();
    let import = body(res).await;
    let budget = body(app.post_json("/api/v1/budgets", &json!({"name": "prod", "amount": "100",
        "currency": "USD", "period": "monthly", "type": "cost", "start_date": "2024-03-01", "account": "prod"})).await).await;
    for p in [&import["position"], &budget["position"]] {
        assert_eq!(
            app.get(&format!("/api/v1/budgets?min_position={p}"))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        body(
            app.get(&format!(
                "/api/v1/costs/imports/{}?min_position={}",
                import["import_id"].as_str().unwrap(),
                import["position"]
            ))
            .await
        )
        .await["state"],
        "complete"
    );

    let client = cloudlens::db::connect(&app.conn).await.unwrap();
    let alerts_exist: bool = client
        .query_one("SELECT to_regclass('alerts') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute("SET ROLE cloudlens_grafana")
        .await
        .unwrap();
    let mut checked = 0;
    for panel in doc["panels"].as_array().unwrap() {
        if panel["type"] == "row" || panel["type"] == "text" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        let expected: Vec<&str> = panel["description"]
            .as_str()
            .and_then(|d| d.split("Columns: ").nth(1))
            .unwrap_or_else(|| panic!("{title}: its description names no columns"))
            .trim_end_matches('.')
            .split(", ")
            .collect();
        for target in panel["targets"].as_array().unwrap() {
            let sql = expand(target["rawSql"].as_str().unwrap());
            if sql.contains(" alerts") && !alerts_exist {
                // `alerts` is the alerts context's read model (its V18, on another
                // branch): once merged the table exists and this query runs like the
                // others. Until then there is nothing to run it against.
                eprintln!("{title}: skipped, no alerts table yet");
                continue;
            }
            let stmt = client
                .prepare(&sql)
                .await
                .unwrap_or_else(|e| panic!("{title}: {e}: {sql}"));
            let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
            assert_eq!(names, expected, "{title}");
            let rows = client
                .query(&stmt, &[])
                .await
                .unwrap_or_else(|e| panic!("{title}: {e}"));
            if title.starts_with("Costs") {
                assert!(!rows.is_empty(), "{title}: the role sees the rows");
            }
            if title.starts_with("Budgets") {
                assert_eq!(rows.len(), 1, "{title}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "checked {checked} queries");
    // The role reads nothing else: not the events, not another read model.
    for table in ["events", "dashboards", "cost_lines"] {
        let err = client
            .query(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
            .await
            .unwrap_err();
        // 42501: insufficient_privilege.
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("42501"),
            "{table}: {err:?}"
        );
    }
}
