#![allow(clippy::unwrap_used, clippy::expect_used)]
//! API keys: open until the first key, then 401/403 by role and tenant on every
//! operation of the served OpenAPI document, the key's name as the actor, revocation.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// `method path` with `key` (and `X-Tenant-Id` when given): the status and the body.
async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    key: Option<&str>,
    tenant: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method.parse().unwrap(), app.url(path))
        .timeout(Duration::from_secs(30));
    if let Some(k) = key {
        req = req.insert_header(("Authorization", format!("Bearer {k}")));
    }
    if let Some(t) = tenant {
        req = req.insert_header(("X-Tenant-Id", t));
    }
    let mut res = match body {
        Some(b) => req.send_json(b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let bytes = res.body().limit(64 * 1024 * 1024).await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn issue(app: &TestApp, admin: Option<&str>, name: &str, role: &str, tenant: &str) -> Value {
    let (status, v) = call(
        app,
        "POST",
        "/api/v1/admin/api-keys",
        admin,
        None,
        Some(&json!({"name": name, "role": role, "tenant": tenant})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v
}

#[actix_web::test]
async fn keys_decide_who_may_do_what_in_which_tenant() {
    let app = spawn_app().await;
    // No key yet: open, as before.
    let (status, _) = call(&app, "GET", "/api/v1/budgets", None, None, None).await;
    assert_eq!(status, 200);
    let admin = issue(&app, None, "ops", "admin", "default").await;
    let admin = admin["key"].as_str().unwrap().to_owned();
    assert!(admin.starts_with("clk_"));
    // From now on a key is needed: 401 with WWW-Authenticate.
    let closed = eventually(Duration::from_secs(10), || async {
        let res = app.get("/api/v1/budgets").await;
        (res.status() == 401).then_some(res)
    })
    .await
    .expect("the server closes once a key exists");
    assert_eq!(closed.headers().get("www-authenticate").unwrap(), "Bearer");
    let problem = body(closed).await;
    assert_eq!(problem["code"], "unauthenticated");
    for (path, open) in [("/healthz", true), ("/readyz", true), ("/metrics", true)] {
        assert_eq!(app.get(path).await.status() != 401, open, "{path}");
    }
    // Counted by decision on /metrics (which stays public).
    let mut res = app.get("/metrics").await;
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(
        text.contains(r#"cloudlens_access_decisions_total{decision="unauthenticated"}"#),
        "{text}"
    );
    let bogus = format!("clk_0123456789ab_{}", "0".repeat(64));
    for bad in ["nonsense", bogus.as_str()] {
        let (status, v) = call(&app, "GET", "/api/v1/budgets", Some(bad), None, None).await;
        assert_eq!((status, v["code"].as_str()), (401, Some("unauthenticated")));
    }

    let writer_a = issue(&app, Some(&admin), "writer-a", "writer", "a").await;
    let writer_a = writer_a["key"].as_str().unwrap().to_owned();
    let reader_a = issue(&app, Some(&admin), "reader-a", "reader", "a").await;
    let reader_a = reader_a["key"].as_str().unwrap().to_owned();
    let writer_b = issue(&app, Some(&admin), "writer-b", "writer", "b").await;
    let writer_b = writer_b["key"].as_str().unwrap().to_owned();

    // A writer acts in its tenant; the actor is the key's name, not a header.
    let (status, created) = call(
        &app,
        "POST",
        "/api/v1/budgets",
        Some(&writer_a),
        None,
        Some(&budget_body("A's budget")),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let client = cloudlens::db::connect(&app.conn).await.unwrap();
    let row = client
        .query_one(
            "SELECT tenant_id, metadata->>'actor' FROM events WHERE stream_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "a");
    assert_eq!(row.get::<_, String>(1), "key:writer-a");
    let path = format!("/api/v1/budgets/{id}?min_position={}", created["position"]);
    // A reader of the same tenant reads it and may not write.
    assert_eq!(
        call(&app, "GET", &path, Some(&reader_a), None, None)
            .await
            .0,
        200
    );
    let (status, v) = call(
        &app,
        "POST",
        "/api/v1/budgets",
        Some(&reader_a),
        None,
        Some(&budget_body("x")),
    )
    .await;
    assert_eq!((status, v["code"].as_str()), (403, Some("forbidden")));
    // Another tenant's key does not see it, and cannot name tenant a.
    assert_eq!(
        call(&app, "GET", &path, Some(&writer_b), None, None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(&app, "GET", &path, Some(&writer_b), Some("a"), None)
            .await
            .0,
        403
    );
    // An admin reads any tenant it names.
    assert_eq!(
        call(&app, "GET", &path, Some(&admin), Some("a"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&app, "GET", &path, Some(&admin), None, None).await.0,
        404
    );
    // Escaped paths are the paths they decode to: still the admin API.
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/%61dmin/api-keys",
        Some(&writer_a),
        None,
        Some(&json!({"name": "sneaky", "role": "admin", "tenant": "a"})),
    )
    .await;
    assert_eq!(status, 403);
    // The admin API is for admin keys; the list never shows a secret or a hash.
    assert_eq!(
        call(
            &app,
            "GET",
            "/api/v1/admin/api-keys",
            Some(&writer_a),
            None,
            None
        )
        .await
        .0,
        403
    );
    let (status, list) = call(
        &app,
        "GET",
        "/api/v1/admin/api-keys",
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let text = list.to_string();
    assert!(
        !text.contains(&writer_a[17..]) && !text.contains("argon2"),
        "{text}"
    );
    assert_eq!(list["items"].as_array().unwrap().len(), 4);
    // Nor does the audit trail: key streams are not served.
    let some_key = list["items"][0]["id"].as_str().unwrap();
    let trail = format!("/api/v1/streams/api_key/{some_key}/events");
    assert_eq!(
        call(&app, "GET", &trail, Some(&admin), Some("default"), None)
            .await
            .0,
        404
    );
    // A retried issue under one Idempotency-Key cannot show the secret again: 409.
    let keyed_issue = || async {
        app.client
            .post(app.url("/api/v1/admin/api-keys"))
            .insert_header(("Authorization", format!("Bearer {admin}")))
            .insert_header(("Idempotency-Key", "issue-once"))
            .send_json(&json!({"name": "once", "role": "reader", "tenant": "a"}))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(keyed_issue().await, 201);
    assert_eq!(keyed_issue().await, 409);

    // Revoked: 401 from the next reload of the keys on.
    let writer_a_id = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "writer-a")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = call(
        &app,
        "DELETE",
        &format!("/api/v1/admin/api-keys/{writer_a_id}"),
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(10), || async {
        let (status, _) = call(&app, "GET", "/api/v1/budgets", Some(&writer_a), None, None).await;
        (status == 401).then_some(())
    })
    .await
    .expect("a revoked key is refused");
    assert_eq!(
        call(&app, "GET", "/api/v1/budgets", Some(&reader_a), None, None)
            .await
            .0,
        200
    );

    // The read model rebuilt from the log equals the live one (revocation included). The
    // command line rebuilds it: the HTTP admin API would need a key.
    let sql = "SELECT concat_ws('|', id, name, role, tenant, prefix, hash, created_at, \
               revoked_at, position) FROM api_keys";
    let live = snapshot(&app.conn, sql).await;
    assert_eq!(live.len(), 5);
    assert!(live.iter().any(|r| r.contains("writer-a")));
    cli_ok(&app.conn, &["projections", "rebuild", "api_keys"]);
    assert_eq!(snapshot(&app.conn, sql).await, live);
}

/// Every operation of the served document, with `{params}` filled in.
/// A documented path with its parameters filled in (`{id}:forget` keeps its suffix).
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| match (s.find('{'), s.find('}')) {
            (Some(a), Some(b)) => format!(
                "{}00000000-0000-7000-8000-000000000001{}",
                &s[..a],
                &s[b + 1..]
            ),
            _ => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = concrete(path);
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                out.push((method.to_uppercase(), concrete.clone()));
            }
        }
    }
    out
}

#[actix_web::test]
async fn every_documented_operation_refuses_a_missing_key_a_wrong_role_and_a_wrong_tenant() {
    let app = spawn_app().await;
    let admin = issue(&app, None, "ops", "admin", "default").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let reader = issue(&app, Some(&admin), "r", "reader", "a").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let writer = issue(&app, Some(&admin), "w", "writer", "a").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(Duration::from_secs(10), || async {
        (app.get("/api/v1/budgets").await.status() == 401).then_some(())
    })
    .await
    .expect("the server closes once a key exists");
    let (status, doc) = call(
        &app,
        "GET",
        "/api/v1/openapi.json",
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let ops = operations(&doc);
    assert!(ops.len() >= 40, "{} operations", ops.len());
    let public = ["/healthz", "/readyz", "/metrics"];
    let mut checked = 0;
    for (method, path) in &ops {
        if public.contains(&path.as_str()) {
            continue;
        }
        let what = format!("{method} {path}");
        // Nothing passes without a key, whatever the operation.
        assert_eq!(
            call(&app, method, path, None, None, None).await.0,
            401,
            "{what}"
        );
        let admin_api = path.starts_with("/api/v1/admin/");
        if method != "GET" || admin_api {
            let (status, v) = call(&app, method, path, Some(&reader), None, None).await;
            assert_eq!(
                (status, v["code"].as_str()),
                (403, Some("forbidden")),
                "reader {what}"
            );
        }
        if admin_api {
            assert_eq!(
                call(&app, method, path, Some(&writer), None, None).await.0,
                403,
                "writer {what}"
            );
        } else {
            // Naming another tenant than the key's.
            assert_eq!(
                call(&app, method, path, Some(&writer), Some("b"), None)
                    .await
                    .0,
                403,
                "writer {what} as b"
            );
        }
        // The document says so.
        let documented = &doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(p, item)| concrete(p) == *path && item.get(method.to_lowercase()).is_some())
            .unwrap()
            .1[method.to_lowercase()]["responses"];
        assert!(
            documented.get("401").is_some() && documented.get("403").is_some(),
            "{what}"
        );
        checked += 1;
    }
    assert!(checked >= 40, "{checked}");
}

#[actix_web::test]
async fn a_key_past_its_rate_limit_gets_429_with_retry_after() {
    let mut settings = test_settings();
    settings.rate_per_second = 2;
    settings.rate_burst = 5;
    let app = spawn_app_on(fresh_database().await, settings).await;
    let key = issue(&app, None, "ops", "admin", "default").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = issue(&app, Some(&key), "other", "reader", "default").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |k: String| {
        let app = &app;
        async move {
            let mut res = app
                .client
                .get(app.url("/api/v1/budgets"))
                .insert_header(("Authorization", format!("Bearer {k}")))
                .send()
                .await
                .unwrap();
            if res.status() == 429 {
                let retry: u64 = res
                    .headers()
                    .get("retry-after")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                let v: Value = res.json().await.unwrap();
                assert_eq!(v["code"], "rate_limited");
            }
            res.status().as_u16()
        }
    };
    // The rest of the burst passes, then the bucket is empty (2 a second refill it slowly).
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(key.clone()).await);
    }
    assert!(statuses[..3].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    // Another key has a bucket of its own.
    assert_eq!(get(other).await, 200);
}

#[actix_web::test]
async fn an_sse_stream_ends_when_its_key_is_revoked() {
    let app = spawn_app().await;
    let admin = issue(&app, None, "ops", "admin", "default").await;
    let admin = admin["key"].as_str().unwrap().to_owned();
    let reader = issue(&app, Some(&admin), "feed-reader", "reader", "default").await;
    let (reader_id, reader) = (
        reader["id"].as_str().unwrap().to_owned(),
        reader["key"].as_str().unwrap().to_owned(),
    );
    eventually(Duration::from_secs(10), || async {
        (app.get("/api/v1/feed").await.status() == 401).then_some(())
    })
    .await
    .expect("the server closes once a key exists");
    let mut sse = app
        .client
        .get(app.url("/api/v1/feed"))
        .timeout(Duration::from_secs(120))
        .insert_header(("Accept", "text/event-stream"))
        .insert_header(("Authorization", format!("Bearer {reader}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let (status, _) = call(
        &app,
        "DELETE",
        &format!("/api/v1/admin/api-keys/{reader_id}"),
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    // The stream ends by itself with a 401 problem as its last event.
    let mut text = String::new();
    while let Some(chunk) = futures::StreamExt::next(&mut sse).await {
        let chunk = chunk.unwrap_or_else(|e| panic!("SSE stream broke off: {e}; read {text:?}"));
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let data = last
        .strip_prefix("event: error\ndata: ")
        .unwrap_or_else(|| panic!("no error event at the end: {text:?}"));
    let problem: Value = serde_json::from_str(data).unwrap();
    assert_eq!(problem["code"], "unauthenticated", "{problem}");
    assert_eq!(problem["status"], 401, "{problem}");
}
