#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The HTTP API through the real server on a random port.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::helpers::*;

async fn problem(
    res: &mut awc::ClientResponse<
        impl futures::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
    >,
) -> Value {
    let ct = res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body = res.body().await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[actix_web::test]
async fn budget_lifecycle() {
    let app = spawn_app().await;
    let mut res = app
        .post_json("/api/v1/budgets", &budget_body("Data team"))
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["version"], 1);
    let pos = created["position"].as_i64().unwrap();
    assert!(pos > 0);

    let mut res = app
        .get(&format!("/api/v1/budgets/{id}?min_position={pos}"))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("etag").unwrap(), "\"1\"");
    let b: Value = res.json().await.unwrap();
    assert_eq!(b["amount"], "1200.50");
    assert_eq!(b["currency"], "CNY");
    assert_eq!(b["type"], "cost");
    assert_eq!(b["tag_filter"], json!({"team": "data"}));

    // Amount as a JSON number is accepted, returned as a string, exactly.
    let mut body = budget_body("Data team");
    body["amount"] = json!(2500.75);
    let mut res = app
        .client
        .put(app.url(&format!("/api/v1/budgets/{id}")))
        .insert_header(("If-Match", "\"1\""))
        .send_json(&body)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["version"], 2);
    let pos = updated["position"].as_i64().unwrap();
    let mut res = app
        .get(&format!("/api/v1/budgets/{id}?min_position={pos}"))
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["amount"], "2500.75");

    // Stale If-Match.
    let mut res = app
        .client
        .put(app.url(&format!("/api/v1/budgets/{id}")))
        .insert_header(("If-Match", "\"1\""))
        .send_json(&budget_body("x"))
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(problem(&mut res).await["code"], "version_conflict");

    let mut res = app
        .client
        .delete(app.url(&format!("/api/v1/budgets/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deleted: Value = res.json().await.unwrap();
    assert_eq!(deleted["version"], 3);
    let pos = deleted["position"].as_i64().unwrap();
    let mut res = app
        .get(&format!("/api/v1/budgets/{id}?min_position={pos}"))
        .await;
    assert_eq!(res.status(), 404);
    assert_eq!(problem(&mut res).await["code"], "not_found");
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/budgets/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // The audit trail keeps everything.
    let mut res = app
        .get(&format!("/api/v1/streams/budget/{id}/events"))
        .await;
    assert_eq!(res.status(), 200);
    let trail: Value = res.json().await.unwrap();
    let types: Vec<&str> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["BudgetCreated", "BudgetUpdated", "BudgetDeleted"]);
    let first = &trail["events"][0];
    assert_eq!(first["version"], 1);
    assert_eq!(first["schema_version"], 2);
    assert!(first["metadata"]["command_id"].is_string());
    assert!(first["metadata"]["correlation_id"].is_string());
    assert_eq!(first["metadata"]["tenant_id"], "default");
}

/// A budget's JSON is stored in its row (`doc`, ADR 0032): what the reads serve must be
/// exactly the budget, fit the schema, and agree with the rendering of the migration that
/// filled `doc` for rows written before it (`cloudlens_budget_doc`).
#[actix_web::test]
async fn the_stored_budget_json_is_the_budget_and_agrees_with_the_migration() {
    let app = spawn_app().await;
    let mut odd = budget_body("预算 \"q\" \\ a\tb\nc \u{1}");
    odd["end_date"] = Value::Null;
    odd["account"] = Value::Null;
    odd["tag_filter"] = json!({"z": "1", "a": "é\"", "team": "x"});
    odd["alert_thresholds"] = json!([80, "100.5"]);
    let mut created = Vec::new();
    for body in [budget_body("plain"), odd] {
        let mut res = app.post_json("/api/v1/budgets", &body).await;
        assert_eq!(res.status(), 201);
        created.push((body, res.json::<Value>().await.unwrap()));
    }
    // An update keeps `created_at` and moves `version`, which the row's JSON leaves out.
    let id = created[0].1["id"].as_str().unwrap().to_owned();
    let mut changed = budget_body("plain, renamed");
    changed["amount"] = json!("99.000");
    let mut res = app
        .client
        .put(app.url(&format!("/api/v1/budgets/{id}")))
        .insert_header(("If-Match", "\"1\""))
        .send_json(&changed)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    created[0].0 = changed;

    let client = cloudlens::db::connect(&app.conn).await.unwrap();
    for (i, (sent, answer)) in created.iter().enumerate() {
        let id = answer["id"].as_str().unwrap();
        let answer = if i == 0 { &updated } else { answer };
        let mut res = app
            .get(&format!(
                "/api/v1/budgets/{id}?min_position={}",
                answer["position"]
            ))
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/json"
        );
        let text = res.body().await.unwrap();
        // The schema's type reads it, and it is the budget that was sent.
        let view: cloudlens::budgets::queries::BudgetView = serde_json::from_slice(&text).unwrap();
        assert_eq!(view.id.to_string(), id);
        assert_eq!(view.version, answer["version"].as_i64().unwrap());
        let got: Value = serde_json::from_slice(&text).unwrap();
        for field in [
            "name",
            "currency",
            "period",
            "type",
            "start_date",
            "end_date",
            "tag_filter",
            "service_filter",
            "account",
        ] {
            assert_eq!(got[field], sent[field], "{field} of budget {i}");
        }
        assert_eq!(got["amount"], sent["amount"]);
        let thresholds: Vec<String> = sent["alert_thresholds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().map_or_else(|| t.to_string(), str::to_owned))
            .collect();
        assert_eq!(got["alert_thresholds"], json!(thresholds));
        let row = client
            .query_one(
                "SELECT doc::jsonb = cloudlens_budget_doc(id, name, amount, currency, period,
                        budget_type, start_date, end_date, tag_filter, service_filter,
                        alert_thresholds, account, updated_at)::jsonb,
                        doc, created_at, updated_at, version
                   FROM budgets_view WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap();
        let doc: String = row.get(1);
        assert!(
            row.get::<_, bool>(0),
            "the migration renders budget {i} otherwise: {doc}"
        );
        let created_at: chrono::DateTime<chrono::Utc> = row.get(2);
        let updated_at: chrono::DateTime<chrono::Utc> = row.get(3);
        assert_eq!(got["created_at"], json!(created_at));
        assert_eq!(got["updated_at"], json!(updated_at));
        assert_eq!(got["version"], row.get::<_, i64>(4));
        if i == 0 {
            assert!(updated_at > created_at, "the update kept created_at");
        }
    }
    // The list serves the same JSON, its cursor included.
    let mut res = app.get("/api/v1/budgets?limit=1").await;
    assert_eq!(res.status(), 200);
    let page: cloudlens::budgets::queries::BudgetPage = res.json().await.unwrap();
    assert_eq!(page.items.len(), 1);
    let cursor = page.next_cursor.expect("a second page");
    let mut res = app
        .get(&format!("/api/v1/budgets?limit=5&cursor={cursor}"))
        .await;
    let second: cloudlens::budgets::queries::BudgetPage = res.json().await.unwrap();
    assert_eq!(second.items.len(), 1);
    assert!(second.next_cursor.is_none());
    assert_ne!(page.items[0].id, second.items[0].id);

    // Times as chrono writes them (0, 3 or 6 fractional digits, `Z`), for any row the
    // migration rendered.
    for t in [
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.100Z",
        "2026-01-02T03:04:05.123Z",
        "2026-01-02T03:04:05.000100Z",
        "2026-01-02T03:04:05.123456Z",
        "1999-12-31T23:59:59.999999Z",
    ] {
        let at: chrono::DateTime<chrono::Utc> = t.parse().unwrap();
        let row = client
            .query_one("SELECT cloudlens_json_time($1)", &[&at])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, String>(0),
            at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        );
    }
}

#[actix_web::test]
async fn bad_input_gets_problem_json_and_writes_nothing() {
    let app = spawn_app().await;
    let post = |body: Vec<u8>, ct: &'static str| {
        app.client
            .post(app.url("/api/v1/budgets"))
            .insert_header(("content-type", ct))
            .send_body(body)
    };
    let mut res = post(b"{not json".to_vec(), "application/json")
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(problem(&mut res).await["code"], "malformed_json");

    let mut res = post(b"{}".to_vec(), "text/plain").await.unwrap();
    assert_eq!(res.status(), 415);
    assert_eq!(problem(&mut res).await["code"], "unsupported_media_type");

    let big = vec![b' '; 3 * 1024 * 1024];
    let mut res = post(big, "application/json").await.unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(problem(&mut res).await["code"], "payload_too_large");

    let cases = [
        ("amount", json!({"amount": "0"})),
        ("amount", json!({"amount": "abc"})),
        ("amount", json!({"amount": true})),
        ("end_date", json!({"end_date": "2025-01-01"})),
        ("period", json!({"period": "weekly"})),
        ("type", json!({"type": "money"})),
        ("alert_thresholds", json!({"alert_thresholds": [0]})),
        ("alert_thresholds", json!({"alert_thresholds": [1001]})),
        ("start_date", json!({"start_date": "yesterday"})),
    ];
    for (field, patch) in cases {
        let mut body = budget_body("bad");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let mut res = app.post_json("/api/v1/budgets", &body).await;
        assert_eq!(res.status(), 422, "{patch}");
        let p = problem(&mut res).await;
        assert_eq!(p["code"], "validation_failed", "{patch}");
        assert_eq!(p["field"], field, "{patch}: {p}");
    }
    let mut body = budget_body("bad");
    body.as_object_mut().unwrap().remove("name");
    let mut res = app.post_json("/api/v1/budgets", &body).await;
    assert_eq!(res.status(), 422);
    assert_eq!(problem(&mut res).await["field"], "name");

    let mut res = app.get("/api/v1/budgets/not-a-uuid").await;
    assert_eq!(res.status(), 404);
    problem(&mut res).await;
    let res = app
        .client
        .get(app.url(&format!("/api/v1/budgets/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = app
        .client
        .put(app.url(&format!("/api/v1/budgets/{}", uuid::Uuid::now_v7())))
        .send_json(&budget_body("x"))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let mut res = app.get("/api/v1/budgets?limit=0").await;
    assert_eq!(res.status(), 422);
    assert_eq!(problem(&mut res).await["field"], "limit");
    let mut res = app.get("/api/v1/nothing-here").await;
    assert_eq!(res.status(), 404);
    problem(&mut res).await;

    assert_eq!(count(&app.conn, "SELECT count(*) FROM events").await, 0);
}

#[actix_web::test]
async fn idempotency_key_over_http() {
    let app = spawn_app().await;
    let send = |body: Value| {
        app.client
            .post(app.url("/api/v1/budgets"))
            .insert_header(("Idempotency-Key", "create-data-budget"))
            .send_json(&body)
    };
    let mut first = send(budget_body("A")).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let mut again = send(budget_body("A")).await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let mut other = send(budget_body("B")).await.unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(problem(&mut other).await["code"], "idempotency_key_reused");
    assert_eq!(count(&app.conn, "SELECT count(*) FROM events").await, 1);
}

#[actix_web::test]
async fn list_filters_and_keyset_pagination() {
    let app = spawn_app().await;
    let mut last = 0;
    for i in 0..7 {
        let mut body = budget_body(&format!("b{i}"));
        body["account"] = json!(if i % 2 == 0 { "even" } else { "odd" });
        body["tag_filter"] = json!({"team": if i < 3 { "data" } else { "web" }, "env": "prod"});
        let mut res = app.post_json("/api/v1/budgets", &body).await;
        last = res.json::<Value>().await.unwrap()["position"]
            .as_i64()
            .unwrap();
    }
    let get = |q: String| {
        let url = app.url(&format!("/api/v1/budgets?min_position={last}&{q}"));
        let client = app.client.clone();
        async move {
            let mut res = client.get(url).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Value>().limit(10 << 20).await.unwrap()
        }
    };
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&get("account=even".into()).await),
        ["b0", "b2", "b4", "b6"]
    );
    assert_eq!(
        names(&get("tag=team:data".into()).await),
        ["b0", "b1", "b2"]
    );
    assert_eq!(
        names(&get("tag=team:web&account=odd".into()).await),
        ["b3", "b5"]
    );
    // Pages of 3 cover everything once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=3&cursor={c}"),
            None => "limit=3".into(),
        };
        let page = get(q).await;
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["b0", "b1", "b2", "b3", "b4", "b5", "b6"]);
    // Tenants do not see each other.
    let mut res = app
        .client
        .get(app.url("/api/v1/budgets"))
        .insert_header(("X-Tenant-Id", "other"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["items"], json!([]));
}

#[actix_web::test]
async fn min_position_never_issued_is_422_and_one_in_flight_waits_then_503() {
    let conn = fresh_database().await;
    let settings = cloudlens::config::Settings {
        min_position_timeout: std::time::Duration::from_millis(300),
        ..test_settings()
    };
    let app = spawn_app_on(conn.clone(), settings).await;
    let mut res = app.post_json("/api/v1/budgets", &budget_body("a")).await;
    let pos = res.json::<Value>().await.unwrap()["position"]
        .as_i64()
        .unwrap();
    // A position beyond the last one handed out would never come: a client error.
    let mut res = app
        .get(&format!("/api/v1/budgets?min_position={}", pos + 1000))
        .await;
    assert_eq!(res.status(), 422);
    let p = problem(&mut res).await;
    assert_eq!(p["code"], "position_not_issued");
    assert_eq!(p["field"], "min_position");
    assert_eq!(p["last_position"], json!(pos));
    // Handed out to a writer that has not committed: the query waits, then 503.
    let mut writer = cloudlens::db::connect(&conn).await.unwrap();
    let tx = writer.transaction().await.unwrap();
    let in_flight: i64 = tx
        .query_one(
            "INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type, \
             schema_version, payload) VALUES ('default', 'budget', $1, 1, 'BudgetDeleted', 1, '{}') \
             RETURNING position",
            &[&uuid::Uuid::now_v7()],
        )
        .await
        .unwrap()
        .get(0);
    let mut res = app
        .get(&format!("/api/v1/budgets?min_position={in_flight}"))
        .await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    assert_eq!(problem(&mut res).await["code"], "read_model_behind");
    // Rolled back, the position is a gap: nothing to wait for.
    tx.rollback().await.unwrap();
    let res = app
        .get(&format!("/api/v1/budgets?min_position={in_flight}"))
        .await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn unsupported_method_on_a_known_path_is_405_with_allow() {
    let app = spawn_app().await;
    let mut res = app
        .client
        .delete(app.url("/api/v1/budgets"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers().get("allow").unwrap(), "GET, POST");
    assert_eq!(problem(&mut res).await["code"], "method_not_allowed");
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/budgets/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers().get("allow").unwrap(), "GET, PUT, DELETE");
    let mut res = app.get("/api/v1/nothing-here").await;
    assert_eq!(res.status(), 404);
    assert_eq!(problem(&mut res).await["code"], "not_found");
}

#[actix_web::test]
async fn operations_endpoints() {
    let app = spawn_app().await;
    let res = app.get("/healthz").await;
    assert_eq!(res.status(), 200);
    let ready = eventually(std::time::Duration::from_secs(10), || async {
        let r = app.client.get(app.url("/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "never ready");
    app.post_json("/api/v1/budgets", &budget_body("m")).await;
    let mut res = app.get("/api/v1/admin/projections").await;
    let v: Value = res.json().await.unwrap();
    let p = &v["projections"][0];
    assert_eq!(p["name"], "budgets");
    for key in ["position", "lag_events", "lag_seconds", "state"] {
        assert!(!p[key].is_null(), "missing {key}");
    }
    let mut res = app.get("/metrics").await;
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    for name in [
        "cloudlens_commands_total",
        "cloudlens_command_duration_seconds_bucket",
        "cloudlens_events_appended_total",
        "cloudlens_event_append_duration_seconds_bucket",
        "cloudlens_projector_position",
        "cloudlens_projector_lag_events",
        "cloudlens_projector_lag_seconds",
        "cloudlens_db_pool_size",
        "cloudlens_db_pool_available",
        "cloudlens_db_pool_waiting",
        "cloudlens_http_requests_total",
        "cloudlens_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "metric {name} missing");
    }
    assert!(text.contains(r#"route="/api/v1/budgets""#));
}

#[actix_web::test]
async fn openapi_describes_every_route() {
    let app = spawn_app().await;
    let mut res = app.get("/api/v1/openapi.json").await;
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().limit(10 << 20).await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    // Every route the code registers (its actix route attributes) is documented.
    let registered = route_attributes(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src")
            .as_path(),
    );
    assert!(registered.len() >= 12, "{registered:?}");
    for (method, path) in registered {
        assert!(
            documented.contains(&(method.clone(), path.clone())),
            "{method} {path} is not in openapi.json"
        );
    }
}

/// `(METHOD, path)` of every `#[get("…")]`-style attribute under `dir`.
fn route_attributes(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(route_attributes(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let line = line.trim();
                for m in ["get", "post", "put", "delete", "patch"] {
                    if let Some(rest) = line.strip_prefix(&format!("#[{m}(\"")) {
                        let route = rest.split('"').next().unwrap();
                        out.push((m.to_uppercase(), route.to_owned()));
                    }
                }
            }
        }
    }
    out
}

#[actix_web::test]
async fn tenants_cannot_change_each_others_budgets() {
    let app = spawn_app().await;
    let mut res = app
        .client
        .post(app.url("/api/v1/budgets"))
        .insert_header(("X-Tenant-Id", "acme"))
        .send_json(&budget_body("acme's"))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for tenant in ["default", "other"] {
        let res = app
            .client
            .put(app.url(&format!("/api/v1/budgets/{id}")))
            .insert_header(("X-Tenant-Id", tenant))
            .insert_header(("If-Match", "\"1\""))
            .send_json(&budget_body("hijacked"))
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "tenant {tenant} could update");
        let res = app
            .client
            .delete(app.url(&format!("/api/v1/budgets/{id}")))
            .insert_header(("X-Tenant-Id", tenant))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "tenant {tenant} could delete");
        let res = app
            .client
            .get(app.url(&format!("/api/v1/streams/budget/{id}/events")))
            .insert_header(("X-Tenant-Id", tenant))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    }
    let mut res = app
        .client
        .get(app.url(&format!("/api/v1/streams/budget/{id}/events")))
        .insert_header(("X-Tenant-Id", "acme"))
        .send()
        .await
        .unwrap();
    let trail: Value = res.json().await.unwrap();
    assert_eq!(trail["events"].as_array().map(Vec::len), Some(1), "{trail}");
    let mut res = app.get("/api/v1/budgets?min_position=-1").await;
    assert_eq!(res.status(), 422);
    assert_eq!(problem(&mut res).await["field"], "min_position");
}

/// Sends `req` twice at once and returns both answers (status and body).
async fn race(make: impl Fn() -> awc::ClientRequest, body: Option<Value>) -> [(u16, Value); 2] {
    let send = |r: awc::ClientRequest| {
        let body = body.clone();
        async move {
            let mut res = match body {
                Some(b) => r.send_json(&b).await.unwrap(),
                None => r.send().await.unwrap(),
            };
            let status = res.status().as_u16();
            let v: Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
            (status, v)
        }
    };
    let (a, b) = futures::join!(send(make()), send(make()));
    [a, b]
}

#[actix_web::test]
async fn racing_retries_with_one_key_get_one_answer_and_one_set_of_events() {
    let app = spawn_app().await;
    let mut changed = budget_body("changed");
    changed["amount"] = json!("99.5");
    for round in 0..60 {
        let mut res = app.post_json("/api/v1/budgets", &budget_body("race")).await;
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let url = app.url(&format!("/api/v1/budgets/{id}"));
        let key = format!("race-{round}");
        let (method, body) = if round % 2 == 0 {
            ("PUT", Some(changed.clone()))
        } else {
            ("DELETE", None)
        };
        let answers = race(
            || {
                let r = if method == "PUT" {
                    app.client.put(&url)
                } else {
                    app.client.delete(&url)
                };
                r.insert_header(("Idempotency-Key", key.as_str()))
                    .insert_header(("If-Match", "\"1\""))
            },
            body,
        )
        .await;
        assert_eq!(answers[0], answers[1], "{method} round {round}");
        assert_eq!(
            answers[0].0, 200,
            "{method} round {round}: {:?}",
            answers[0]
        );
        assert_eq!(answers[0].1["version"], 2);
        let id: uuid::Uuid = id.parse().unwrap();
        assert_eq!(stream_len(&app.conn, id).await, 2, "{method} round {round}");
    }
}

#[actix_web::test]
async fn the_same_key_with_another_if_match_is_another_request() {
    let app = spawn_app().await;
    let mut res = app.post_json("/api/v1/budgets", &budget_body("k")).await;
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = app.url(&format!("/api/v1/budgets/{id}"));
    let res = app
        .client
        .delete(&url)
        .insert_header(("Idempotency-Key", "del"))
        .insert_header(("If-Match", "\"1\""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut res = app
        .client
        .delete(&url)
        .insert_header(("Idempotency-Key", "del"))
        .insert_header(("If-Match", "\"7\""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(problem(&mut res).await["code"], "idempotency_key_reused");
}

#[actix_web::test]
async fn idempotency_keys_are_purged_after_their_retention() {
    let conn = fresh_database().await;
    let settings = cloudlens::config::Settings {
        idempotency_retention: std::time::Duration::from_secs(1),
        purge_interval: std::time::Duration::from_millis(200),
        ..test_settings()
    };
    let app = spawn_app_on(conn.clone(), settings).await;
    let create_with_old_key = || async {
        app.client
            .post(app.url("/api/v1/budgets"))
            .insert_header(("Idempotency-Key", "old"))
            .send_json(&budget_body("p"))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let first = create_with_old_key().await;
    assert_eq!(
        count(&conn, "SELECT count(*) FROM idempotency_keys").await,
        1
    );
    // The keys of collection writes (not events) go with the same retention.
    let res = app
        .client
        .post(app.url("/api/v1/collections/system_logs/items"))
        .insert_header(("Idempotency-Key", "old"))
        .send_json(&json!({"data": {"level": "INFO"}}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM collection_write_keys").await,
        1
    );
    let purged = eventually(std::time::Duration::from_secs(10), || async {
        (count(&conn, "SELECT count(*) FROM idempotency_keys").await == 0
            && count(&conn, "SELECT count(*) FROM collection_write_keys").await == 0)
            .then_some(())
    })
    .await;
    assert!(purged.is_some(), "the key was not purged");
    // After its retention a key is new again: the request runs as a new command.
    let second = create_with_old_key().await;
    assert_ne!(first["id"], second["id"]);
}

#[test]
fn domain_code_knows_no_transport_and_no_driver() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden = ["actix_web", "tokio_postgres", "deadpool_postgres", "awc"];
    let mut checked = 0;
    for context in std::fs::read_dir(&src).unwrap() {
        let dir = context.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in ["aggregate.rs", "commands.rs", "events.rs"] {
            let path = dir.join(file);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            checked += 1;
            for word in forbidden {
                assert!(
                    !text.contains(word),
                    "{} mentions {word}: domain code must not know HTTP or the database driver",
                    path.display()
                );
            }
        }
    }
    assert!(
        checked >= 3,
        "no domain files found under {}",
        src.display()
    );
}

/// Read-your-writes, many times over: every create is visible to a GET with its own
/// position, with eight clients at once. (A horizon that called a position settled while
/// its event still lay above the horizon answered 404 to some of these.)
#[actix_web::test]
async fn every_write_is_visible_to_a_read_with_its_position() {
    let app = spawn_app().await;
    let client = |k: usize| {
        let app = &app;
        async move {
            let mut misses = Vec::new();
            for i in 0..60 {
                let mut res = app
                    .post_json("/api/v1/budgets", &budget_body(&format!("ryw{k}-{i}")))
                    .await;
                let created = res.json::<Value>().await.unwrap();
                let res = app.read_own_write(&created).await;
                if res.status() != 200 {
                    misses.push((created["position"].clone(), res.status().as_u16()));
                }
            }
            misses
        }
    };
    let misses: Vec<_> = futures::future::join_all((0..8).map(client))
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        misses.is_empty(),
        "not visible after their own position: {misses:?}"
    );
}
