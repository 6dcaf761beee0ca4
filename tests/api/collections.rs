#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TTL collections end to end (ADR 0023): the seed's collections without a declaration,
//! declarations as events with a rebuildable read model, single and NDJSON batch writes,
//! containment filters, time ranges, sorts and keyset pages, expiry at read and the purge
//! (admin run and elected job), bad input, tenant isolation, and `collection_items` kept
//! out of the rebuild machinery but in backups.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// A path segment percent-encoded.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn items_url(collection: &str) -> String {
    format!("/api/v1/collections/{collection}/items")
}

fn item_url(collection: &str, key: &str) -> String {
    format!("/api/v1/collections/{collection}/items/{}", seg(key))
}

async fn declare(app: &TestApp, tenant: &str, name: &str, body: Value) -> Response {
    app.client
        .put(app.url(&format!("/api/v1/collections/{name}")))
        .insert_header(("X-Tenant-Id", tenant))
        .send_json(&body)
        .await
        .unwrap()
}

async fn post_item(app: &TestApp, tenant: &str, collection: &str, body: Value) -> Response {
    app.client
        .post(app.url(&items_url(collection)))
        .insert_header(("X-Tenant-Id", tenant))
        .send_json(&body)
        .await
        .unwrap()
}

async fn put_item(
    app: &TestApp,
    tenant: &str,
    collection: &str,
    key: &str,
    body: Value,
) -> Response {
    app.client
        .put(app.url(&item_url(collection, key)))
        .insert_header(("X-Tenant-Id", tenant))
        .send_json(&body)
        .await
        .unwrap()
}

async fn get_as(app: &TestApp, tenant: &str, path: &str) -> Response {
    app.client
        .get(app.url(path))
        .insert_header(("X-Tenant-Id", tenant))
        .send()
        .await
        .unwrap()
}

async fn batch(app: &TestApp, tenant: &str, collection: &str, ndjson: String) -> Response {
    app.client
        .post(app.url(&items_url(collection)))
        .insert_header(("X-Tenant-Id", tenant))
        .insert_header(("Content-Type", "application/x-ndjson"))
        .send_body(ndjson)
        .await
        .unwrap()
}

fn ndjson(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// A page of items with the query pairs given.
async fn page(app: &TestApp, tenant: &str, collection: &str, query: &[(&str, &str)]) -> Value {
    let q = serde_urlencoded::to_string(query).unwrap();
    let res = get_as(app, tenant, &format!("{}?{q}", items_url(collection))).await;
    assert_eq!(res.status(), 200, "{q}");
    body(res).await
}

/// Every item of a listing, following the cursors; the keys in the order given.
async fn all_keys(
    app: &TestApp,
    tenant: &str,
    collection: &str,
    query: &[(&str, &str)],
) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q: Vec<(&str, &str)> = query.to_vec();
        if let Some(c) = &cursor {
            q.push(("cursor", c));
        }
        let p = page(app, tenant, collection, &q).await;
        keys.extend(
            p["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["key"].as_str().unwrap().to_owned()),
        );
        match p["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return keys,
        }
    }
}

async fn problem(res: Response, status: u16) -> Value {
    assert_eq!(res.status(), status);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    body(res).await
}

fn secs(v: &Value) -> f64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_micros() as f64
        / 1e6
}

#[actix_web::test]
async fn seed_collections_take_items_without_a_declaration() {
    let app = spawn_app().await;
    let list = body(get_as(&app, "default", "/api/v1/collections").await).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["configurations", "system_logs", "task_status_cache"]
    );
    let cache = body(get_as(&app, "default", "/api/v1/collections/task_status_cache").await).await;
    assert_eq!(
        cache,
        json!({"name": "task_status_cache", "ttl_seconds": 86400,
               "indexes": ["task_id", "status", "task_type"], "declared": false, "version": 0})
    );

    // A log line without a key gets a UUIDv7 and never expires.
    let res = app
        .client
        .post(app.url(&items_url("system_logs")))
        .insert_header(("Content-Type", "application/json"))
        .send_body(
            r#"{"data": {"level": "INFO", "service": "api", "message": "started", "n": 1.50}}"#,
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let location = res
        .headers()
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let created = body(res).await;
    let key = created["key"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(key).unwrap().get_version_num(), 7);
    assert_eq!(location, item_url("system_logs", key));
    assert!(created["expires_at"].is_null());
    // Numbers keep their text.
    assert_eq!(created["data"]["n"].to_string(), "1.50");
    let read = body(app.get(&location).await).await;
    assert_eq!(read, created);

    // A status with a key: the seed's 24 h TTL from each write; a write refreshes it.
    let res = put_item(
        &app,
        "default",
        "task_status_cache",
        "task-1",
        json!({"data": {"task_id": "task-1", "status": "running"}}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let first = body(res).await;
    assert_eq!(
        secs(&first["expires_at"]) - secs(&first["updated_at"]),
        86_400.0
    );
    let res = put_item(
        &app,
        "default",
        "task_status_cache",
        "task-1",
        json!({"data": {"task_id": "task-1", "status": "done"}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let second = body(res).await;
    assert_eq!(second["created_at"], first["created_at"]);
    assert!(secs(&second["updated_at"]) > secs(&first["updated_at"]));
    assert_eq!(
        secs(&second["expires_at"]) - secs(&second["updated_at"]),
        86_400.0
    );
    let read = body(app.get(&item_url("task_status_cache", "task-1")).await).await;
    assert_eq!(read["data"]["status"], "done");

    // POST with a key writes it anew too.
    let res = post_item(
        &app,
        "default",
        "configurations",
        json!({"key": "db/pool", "data": {}}),
    )
    .await;
    assert_eq!(problem(res, 422).await["field"], "key");
    for key in ["db.pool", "with space", "50%?#&=+", "日志:1", "x"] {
        let res = post_item(
            &app,
            "default",
            "configurations",
            json!({"key": key, "data": {"component": "db", "is_active": true}}),
        )
        .await;
        assert_eq!(res.status(), 201, "{key}");
        let loc = res
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let read = body(app.get(&loc).await).await;
        assert_eq!(read["key"], key, "{loc}");
        assert_eq!(
            body(app.get(&item_url("configurations", key)).await).await["key"],
            key
        );
    }

    // Delete: 204, then 404 for the item and for the delete.
    let del = |key: &'static str| {
        let app = &app;
        async move {
            app.client
                .delete(app.url(&item_url("configurations", key)))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(del("x").await.status(), 204);
    assert_eq!(
        problem(app.get(&item_url("configurations", "x")).await, 404).await["code"],
        "not_found"
    );
    assert_eq!(problem(del("x").await, 404).await["code"], "not_found");
    app.handle.stop(true).await;
}

#[actix_web::test]
async fn declarations_are_events_and_the_read_model_rebuilds_equal_to_live() {
    let app = spawn_app().await;
    let res = declare(
        &app,
        "default",
        "sessions",
        json!({"ttl_seconds": 3600, "indexes": ["user"]}),
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers().get("etag").unwrap(), "\"1\"");
    let first = body(res).await;
    // Items are taken at once, with the TTL: the write side reads the stream, not the
    // read model.
    let res = post_item(
        &app,
        "default",
        "sessions",
        json!({"key": "s1", "data": {"user": "ann"}}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let s1 = body(res).await;
    assert_eq!(secs(&s1["expires_at"]) - secs(&s1["updated_at"]), 3600.0);

    // The same declaration again appends nothing (still version 1, the same position:
    // answered like the first, as `http::extract::saved` does); a change is version 2.
    let res = declare(
        &app,
        "default",
        "sessions",
        json!({"ttl_seconds": 3600, "indexes": ["user"]}),
    )
    .await;
    assert_eq!(body(res).await, first);
    let res = app
        .client
        .put(app.url("/api/v1/collections/sessions"))
        .insert_header(("If-Match", "\"1\""))
        .send_json(&json!({"ttl_seconds": 60, "indexes": ["user", "ip"]}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let second = body(res).await;
    assert_eq!(second["version"], 2);
    assert_eq!(second["id"], first["id"]);
    let res = app
        .client
        .put(app.url("/api/v1/collections/sessions"))
        .insert_header(("If-Match", "\"1\""))
        .send_json(&json!({"indexes": []}))
        .await
        .unwrap();
    assert_eq!(problem(res, 409).await["code"], "version_conflict");

    // A TTL change applies to items written afterwards.
    let s2 = body(
        post_item(
            &app,
            "default",
            "sessions",
            json!({"key": "s2", "data": {"user": "bo"}}),
        )
        .await,
    )
    .await;
    assert_eq!(secs(&s2["expires_at"]) - secs(&s2["updated_at"]), 60.0);
    let s1_again = body(app.get(&item_url("sessions", "s1")).await).await;
    assert_eq!(s1_again["expires_at"], s1["expires_at"]);

    // A seed collection overridden: no TTL → 120 s, for new writes only.
    let old = body(
        post_item(
            &app,
            "default",
            "system_logs",
            json!({"data": {"level": "INFO"}}),
        )
        .await,
    )
    .await;
    let res = declare(
        &app,
        "default",
        "system_logs",
        json!({"ttl_seconds": 120, "indexes": ["level"]}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let overridden = body(res).await;
    let new = body(
        post_item(
            &app,
            "default",
            "system_logs",
            json!({"data": {"level": "WARN"}}),
        )
        .await,
    )
    .await;
    assert!(old["expires_at"].is_null());
    assert_eq!(secs(&new["expires_at"]) - secs(&new["updated_at"]), 120.0);

    let view = body(
        app.get(&format!(
            "/api/v1/collections/system_logs?min_position={}",
            overridden["position"]
        ))
        .await,
    )
    .await;
    assert_eq!(
        view,
        json!({"name": "system_logs", "ttl_seconds": 120, "indexes": ["level"], "declared": true, "version": 1})
    );
    // Its sorts follow the declaration: `service` is no longer one.
    let q = "sort=service";
    let res = app.get(&format!("{}?{q}", items_url("system_logs"))).await;
    assert_eq!(problem(res, 422).await["field"], "sort");
    let list = body(
        app.get(&format!(
            "/api/v1/collections?min_position={}",
            second["position"]
        ))
        .await,
    )
    .await;
    let listed: Vec<(String, bool)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["declared"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("configurations".to_owned(), false),
            ("sessions".to_owned(), true),
            ("system_logs".to_owned(), true),
            ("task_status_cache".to_owned(), false)
        ]
    );

    // The read model is a read model; the items are not (ADR 0023).
    let tables: Vec<&str> = cloudlens::context::projections(&test_settings())
        .iter()
        .flat_map(|p| p.tables())
        .collect();
    assert!(tables.contains(&"collections"));
    assert!(!tables.contains(&"collection_items"), "{tables:?}");

    let sql = "SELECT format('%s %s %s %s %s %s %s', tenant_id, name, ttl_seconds, indexes, version, declared_at, updated_at) FROM collections";
    let items_sql = "SELECT format('%s %s %s %s %s', collection, key, data, created_at, expires_at) FROM collection_items";
    let live = snapshot(&app.conn, sql).await;
    let items = snapshot(&app.conn, items_sql).await;
    assert_eq!(live.len(), 2);
    rebuild_and_wait(&app, "collections").await;
    assert_eq!(snapshot(&app.conn, sql).await, live);
    assert_eq!(snapshot(&app.conn, items_sql).await, items);
    app.handle.stop(true).await;
}

fn log_line(i: usize) -> Value {
    let level = ["DEBUG", "INFO", "WARN", "ERROR"][i % 4];
    let service = ["api", "billing", "auth"][i % 3];
    json!({"key": format!("k{i:05}"), "data": {"level": level, "service": service, "i": i,
           "ctx": {"region": if i.is_multiple_of(5) { "cn" } else { "us" }}}})
}

#[actix_web::test]
async fn batches_filters_ranges_sorts_and_pages() {
    let app = spawn_app().await;
    // 12,000 lines in one batch (three statements), a blank line, and k00000 again at
    // the end: the last line of a key wins.
    let mut lines: Vec<Value> = (0..12_000).map(log_line).collect();
    lines.push(
        json!({"key": "k00000", "data": {"level": "ERROR", "service": "auth", "last": true}}),
    );
    let mut text = ndjson(&lines);
    text.insert(0, '\n');
    let res = batch(&app, "default", "system_logs", text).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        body(res).await,
        json!({"collection": "system_logs", "written": 12_001})
    );
    let total = count(
        &app.conn,
        "SELECT count(*) FROM collection_items WHERE collection = 'system_logs'",
    )
    .await;
    assert_eq!(total, 12_000);
    let k0 = body(app.get(&item_url("system_logs", "k00000")).await).await;
    assert_eq!(k0["data"]["last"], true);

    // Containment on several fields, and nested.
    let mut expect: Vec<String> = (1..12_000)
        .filter(|i| i % 4 == 3 && i % 3 == 1)
        .map(|i| format!("k{i:05}"))
        .collect();
    expect.sort();
    expect.reverse();
    let f = r#"{"level":"ERROR","service":"billing"}"#;
    let got = all_keys(
        &app,
        "default",
        "system_logs",
        &[("filter", f), ("sort", "-key"), ("limit", "1000")],
    )
    .await;
    assert_eq!(got, expect);
    let cn = page(
        &app,
        "default",
        "system_logs",
        &[("filter", r#"{"ctx":{"region":"cn"}}"#), ("limit", "1000")],
    )
    .await;
    assert_eq!(cn["items"].as_array().unwrap().len(), 1000);
    assert!(cn["next_cursor"].is_string());
    let none = page(
        &app,
        "default",
        "system_logs",
        &[("filter", r#"{"level":"FATAL"}"#)],
    )
    .await;
    assert_eq!(none, json!({"items": [], "next_cursor": null}));

    // Key order, both ways, in pages that end exactly at the last item.
    let mut keys: Vec<String> = (0..12_000).map(|i| format!("k{i:05}")).collect();
    let asc = all_keys(
        &app,
        "default",
        "system_logs",
        &[("sort", "key"), ("limit", "1000")],
    )
    .await;
    assert_eq!(asc, keys);
    keys.reverse();
    let desc = all_keys(
        &app,
        "default",
        "system_logs",
        &[("sort", "-key"), ("limit", "1000")],
    )
    .await;
    assert_eq!(desc, keys);

    // A second batch later: newest first by default, and time ranges on created_at.
    let later: Vec<Value> = (0..30)
        .map(|i| json!({"key": format!("z{i:02}"), "data": {"level": "INFO", "service": "api"}}))
        .collect();
    assert_eq!(
        batch(&app, "default", "system_logs", ndjson(&later))
            .await
            .status(),
        200
    );
    let newest = page(&app, "default", "system_logs", &[("limit", "31")]).await;
    let got: Vec<&str> = newest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    let mut want: Vec<String> = (0..30).rev().map(|i| format!("z{i:02}")).collect();
    want.push("k11999".into());
    assert_eq!(got, want);
    let cut = newest["items"][0]["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let from = all_keys(
        &app,
        "default",
        "system_logs",
        &[("from", &cut), ("sort", "key")],
    )
    .await;
    assert_eq!(from.len(), 30);
    assert!(from.iter().all(|k| k.starts_with('z')));
    let before = page(
        &app,
        "default",
        "system_logs",
        &[
            ("to", &cut),
            ("filter", r#"{"service":"api"}"#),
            ("limit", "1"),
        ],
    )
    .await;
    assert_eq!(before["items"][0]["key"], "k11997");

    // A declared index field, ascending with paging: (level as text, key).
    let mut by_level: Vec<(String, String)> = (0..12_000)
        .map(|i| {
            let l = log_line(i);
            let level = if i == 0 {
                "ERROR".to_owned()
            } else {
                l["data"]["level"].as_str().unwrap().to_owned()
            };
            (level, format!("k{i:05}"))
        })
        .chain((0..30).map(|i| ("INFO".to_owned(), format!("z{i:02}"))))
        .collect();
    by_level.sort();
    let got = all_keys(
        &app,
        "default",
        "system_logs",
        &[("sort", "level"), ("limit", "997")],
    )
    .await;
    assert_eq!(
        got,
        by_level.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>()
    );
    // Descending by service within a filter, and by updated_at.
    let got = all_keys(
        &app,
        "default",
        "system_logs",
        &[
            ("sort", "-service"),
            ("filter", r#"{"level":"WARN"}"#),
            ("limit", "500"),
        ],
    )
    .await;
    let mut want: Vec<(String, String)> = (1..12_000)
        .filter(|i| i % 4 == 2)
        .map(|i| {
            (
                log_line(i)["data"]["service"].as_str().unwrap().to_owned(),
                format!("k{i:05}"),
            )
        })
        .collect();
    want.sort();
    want.reverse();
    assert_eq!(got, want.into_iter().map(|(_, k)| k).collect::<Vec<_>>());
    let upd = page(
        &app,
        "default",
        "system_logs",
        &[("sort", "-updated_at"), ("limit", "2")],
    )
    .await;
    assert_eq!(upd["items"][0]["key"], "z29");

    // Items without a sort field come first, as the empty text.
    assert_eq!(
        post_item(
            &app,
            "default",
            "system_logs",
            json!({"key": "bare", "data": {}})
        )
        .await
        .status(),
        201
    );
    let first = page(
        &app,
        "default",
        "system_logs",
        &[("sort", "level"), ("limit", "1")],
    )
    .await;
    assert_eq!(first["items"][0]["key"], "bare");

    // A cursor belongs to its sort.
    let p = page(
        &app,
        "default",
        "system_logs",
        &[("sort", "key"), ("limit", "5")],
    )
    .await;
    let c = p["next_cursor"].as_str().unwrap();
    let q = serde_urlencoded::to_string([("sort", "-key"), ("cursor", c)]).unwrap();
    let res = app.get(&format!("{}?{q}", items_url("system_logs"))).await;
    assert_eq!(problem(res, 422).await["field"], "cursor");
    app.handle.stop(true).await;
}

#[actix_web::test]
async fn expired_items_are_never_returned_and_the_purge_deletes_them() {
    let conn = fresh_database().await;
    // The elected job would run again only in an hour: the admin run purges here.
    let settings = cloudlens::config::Settings {
        collections_purge_interval: Duration::from_secs(3600),
        ..test_settings()
    };
    let app = spawn_app_on(conn, settings).await;
    assert_eq!(
        declare(&app, "default", "short", json!({"ttl_seconds": 1}))
            .await
            .status(),
        201
    );
    let one = body(
        post_item(
            &app,
            "default",
            "short",
            json!({"key": "one", "data": {"a": 1}}),
        )
        .await,
    )
    .await;
    assert_eq!(secs(&one["expires_at"]) - secs(&one["updated_at"]), 1.0);
    let lines: Vec<Value> = (0..50)
        .map(|i| json!({"key": format!("b{i}"), "data": {"a": i}}))
        .collect();
    assert_eq!(
        batch(&app, "default", "short", ndjson(&lines))
            .await
            .status(),
        200
    );
    assert_eq!(
        post_item(
            &app,
            "default",
            "system_logs",
            json!({"key": "keep", "data": {"a": 1}})
        )
        .await
        .status(),
        201
    );
    // (Whether it is still live right now depends on the clock: not asserted.)
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(app.get(&item_url("short", "one")).await.status(), 404);
    assert_eq!(app.get(&item_url("short", "b7")).await.status(), 404);
    let p = page(&app, "default", "short", &[("filter", r#"{"a":7}"#)]).await;
    assert_eq!(p["items"], json!([]));
    assert_eq!(
        page(&app, "default", "short", &[("sort", "key")]).await["items"],
        json!([])
    );
    // Still stored until the purge; a delete of an expired item finds nothing.
    let stored = "SELECT count(*) FROM collection_items WHERE collection = 'short'";
    assert_eq!(count(&app.conn, stored).await, 51);
    let res = app
        .client
        .delete(app.url(&item_url("short", "b1")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(count(&app.conn, stored).await, 50);

    // An expired item written again is a new item; with the TTL changed to an hour, it
    // outlives the purge.
    assert_eq!(
        declare(&app, "default", "short", json!({"ttl_seconds": 3600}))
            .await
            .status(),
        200
    );
    let again = put_item(&app, "default", "short", "b2", json!({"data": {"a": 2}})).await;
    assert_eq!(again.status(), 201);
    let again = body(again).await;
    assert!(secs(&again["created_at"]) > secs(&one["created_at"]));
    assert_eq!(
        secs(&again["expires_at"]) - secs(&again["updated_at"]),
        3600.0
    );

    let mut res = app
        .client
        .post(app.url("/api/v1/admin/collections/purge:run"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let run: Value = res.json().await.unwrap();
    assert_eq!(run["purged"], 49);
    assert_eq!(count(&app.conn, stored).await, 1);
    assert_eq!(app.get(&item_url("short", "b2")).await.status(), 200);
    assert_eq!(
        app.get(&item_url("system_logs", "keep")).await.status(),
        200
    );
    app.handle.stop(true).await;
}

#[actix_web::test]
async fn the_elected_job_purges_on_its_own() {
    let conn = fresh_database().await;
    let settings = cloudlens::config::Settings {
        collections_purge_interval: Duration::from_secs(1),
        ..test_settings()
    };
    let app = spawn_app_on(conn, settings).await;
    assert_eq!(
        declare(&app, "default", "blink", json!({"ttl_seconds": 1}))
            .await
            .status(),
        201
    );
    let lines: Vec<Value> = (0..20).map(|i| json!({"data": {"i": i}})).collect();
    assert_eq!(
        batch(&app, "default", "blink", ndjson(&lines))
            .await
            .status(),
        200
    );
    assert_eq!(
        post_item(
            &app,
            "default",
            "configurations",
            json!({"key": "c", "data": {}})
        )
        .await
        .status(),
        201
    );
    let gone = eventually(Duration::from_secs(60), || async {
        (count(
            &app.conn,
            "SELECT count(*) FROM collection_items WHERE collection = 'blink'",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
    assert!(gone.is_some(), "the purge job deleted the expired items");
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM collection_items").await,
        1
    );
    app.handle.stop(true).await;
}

#[actix_web::test]
async fn bad_input_is_refused_with_its_code_and_field() {
    let app = spawn_app().await;
    // Declarations.
    for (name, body, field) in [
        ("Logs", json!({}), "name"),
        ("a-b", json!({}), "name"),
        ("c", json!({"ttl_seconds": 0}), "ttl_seconds"),
        ("c", json!({"ttl_seconds": "1"}), "ttl_seconds"),
        ("c", json!({"indexes": ["a b"]}), "indexes"),
        ("c", json!({"indexes": ["created_at"]}), "indexes"),
        (
            "c",
            json!({"indexes": (0..17).map(|i| format!("f{i}")).collect::<Vec<_>>()}),
            "indexes",
        ),
        ("c", json!({"indexes": ["x"], "unique": true}), "unique"),
    ] {
        let p = problem(declare(&app, "default", name, body.clone()).await, 422).await;
        assert_eq!(p["field"], field, "{name} {body}");
        assert_eq!(p["code"], "validation_failed");
    }
    let res = app
        .client
        .put(app.url("/api/v1/collections/c"))
        .insert_header(("Content-Type", "application/json"))
        .send_body("{\"ttl_seconds\": ")
        .await
        .unwrap();
    assert_eq!(problem(res, 400).await["code"], "malformed_json");
    let p = problem(app.get("/api/v1/collections/nope").await, 404).await;
    assert_eq!(p["code"], "not_found");

    // Unknown collections, for every item route.
    let p = problem(
        post_item(&app, "default", "nope", json!({"data": {}})).await,
        404,
    )
    .await;
    assert_eq!(p["code"], "not_found");
    assert_eq!(
        problem(
            batch(&app, "default", "nope", "{\"data\":{}}\n".into()).await,
            404
        )
        .await["code"],
        "not_found"
    );
    assert_eq!(
        problem(app.get(&items_url("nope")).await, 404).await["code"],
        "not_found"
    );
    assert_eq!(
        problem(app.get(&items_url("BadName")).await, 404).await["code"],
        "not_found"
    );
    let p = problem(app.get(&item_url("nope", "k")).await, 404).await;
    assert!(p["detail"].as_str().unwrap().contains("collection"), "{p}");
    let p = problem(app.get(&item_url("system_logs", "k")).await, 404).await;
    assert!(p["detail"].as_str().unwrap().contains("item"), "{p}");
    assert_eq!(
        problem(
            put_item(&app, "default", "nope", "k", json!({"data": {}})).await,
            404
        )
        .await["code"],
        "not_found"
    );

    // Keys and data.
    let long = "k".repeat(201);
    for (key, field) in [(long.as_str(), "key"), ("tab\there", "key")] {
        let p = problem(
            put_item(&app, "default", "system_logs", key, json!({"data": {}})).await,
            422,
        )
        .await;
        assert_eq!(p["field"], field);
    }
    for data in [
        json!([1]),
        json!("text"),
        json!(null),
        json!({"a": "nul\u{0}"}),
    ] {
        let p = problem(
            post_item(&app, "default", "system_logs", json!({"data": data})).await,
            422,
        )
        .await;
        assert_eq!(p["field"], "data", "{data}");
    }
    let p = problem(
        post_item(&app, "default", "system_logs", json!({"key": "k"})).await,
        422,
    )
    .await;
    assert_eq!(p["field"], "data");
    let big = "x".repeat(1024 * 1024);
    let p = problem(
        put_item(
            &app,
            "default",
            "system_logs",
            "big",
            json!({"data": {"x": big}}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(p["field"], "data");
    let res = app
        .client
        .post(app.url(&items_url("system_logs")))
        .insert_header(("Content-Type", "text/plain"))
        .send_body("{}")
        .await
        .unwrap();
    assert_eq!(problem(res, 415).await["code"], "unsupported_media_type");

    // A bad line refuses the whole batch and names its line and field.
    let before = count(&app.conn, "SELECT count(*) FROM collection_items").await;
    let mut lines: Vec<String> = (0..7_000).map(|i| format!("{}\n", log_line(i))).collect();
    lines[6_500] = "{\"key\": \"ok\", \"data\": [\"not an object\"]}\n".into();
    let p = problem(
        batch(&app, "default", "system_logs", lines.concat()).await,
        422,
    )
    .await;
    assert_eq!(
        (p["code"].as_str(), p["row"].as_i64(), p["field"].as_str()),
        (Some("invalid_row"), Some(6_501), Some("data"))
    );
    for (text, row, field) in [
        ("{\"data\": {}}\n\n{\"data\": {}, \"ttl\": 1}\n", 3, "ttl"),
        ("{\"data\": {}}\n{\"data\": {\n", 2, ""),
        ("{\"key\": \"a/b\", \"data\": {}}\n", 1, "key"),
        ("[1, 2]\n", 1, ""),
    ] {
        let p = problem(
            batch(&app, "default", "system_logs", text.into()).await,
            422,
        )
        .await;
        assert_eq!(
            (p["row"].as_i64(), p["field"].as_str()),
            (Some(row), Some(field)),
            "{text}"
        );
    }
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM collection_items").await,
        before
    );

    // Reads.
    for (query, field) in [
        ("filter=%7Bnot%20json", "filter"),
        ("filter=%5B1%5D", "filter"),
        ("filter=%22x%22", "filter"),
        ("sort=host", "sort"),
        ("sort=data", "sort"),
        ("sort=-", "sort"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("cursor=abc", "cursor"),
        ("min_position=-1", "min_position"),
    ] {
        let p = problem(
            app.get(&format!("{}?{query}", items_url("system_logs")))
                .await,
            422,
        )
        .await;
        assert_eq!(p["field"], field, "{query}");
    }
    let p = problem(
        app.get(&format!("{}?limit=abc", items_url("system_logs")))
            .await,
        422,
    )
    .await;
    assert_eq!(p["code"], "validation_failed");
    app.handle.stop(true).await;
}

#[actix_web::test]
async fn tenants_see_and_touch_only_their_own_items() {
    let app = spawn_app().await;
    for (tenant, level) in [("acme", "INFO"), ("globex", "ERROR")] {
        let res = put_item(
            &app,
            tenant,
            "system_logs",
            "same-key",
            json!({"data": {"level": level}}),
        )
        .await;
        assert_eq!(res.status(), 201, "{tenant}");
        let lines: Vec<Value> = (0..10)
            .map(|i| json!({"key": format!("{tenant}-{i}"), "data": {"level": level}}))
            .collect();
        assert_eq!(
            batch(&app, tenant, "system_logs", ndjson(&lines))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        declare(&app, "acme", "private", json!({})).await.status(),
        201
    );
    let acme = body(get_as(&app, "acme", &item_url("system_logs", "same-key")).await).await;
    assert_eq!(acme["data"]["level"], "INFO");
    let all = page(&app, "globex", "system_logs", &[("limit", "1000")]).await;
    let levels: BTreeMap<String, usize> =
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .fold(BTreeMap::new(), |mut m, i| {
                *m.entry(i["data"]["level"].as_str().unwrap().to_owned())
                    .or_default() += 1;
                m
            });
    assert_eq!(levels, BTreeMap::from([("ERROR".to_owned(), 11)]));
    assert_eq!(
        get_as(&app, "globex", &item_url("system_logs", "acme-1"))
            .await
            .status(),
        404
    );
    assert_eq!(
        get_as(&app, "globex", &items_url("private")).await.status(),
        404
    );
    assert_eq!(
        post_item(&app, "globex", "private", json!({"data": {}}))
            .await
            .status(),
        404
    );
    let res = app
        .client
        .delete(app.url(&item_url("system_logs", "acme-1")))
        .insert_header(("X-Tenant-Id", "globex"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        get_as(&app, "acme", &item_url("system_logs", "acme-1"))
            .await
            .status(),
        200
    );

    // Row-level security below the API: the query role bound to a tenant reads only its
    // items whatever the SQL says, and cannot write another tenant's.
    let reader = cloudlens::db::Reader::new(&app.conn, 1, 4);
    let bound = reader.tenant("acme").await.unwrap();
    let others: i64 = bound
        .client()
        .query_one(
            "SELECT count(*) FROM collection_items WHERE tenant_id <> 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(others, 0);
    let mut owner = cloudlens::db::connect(&app.conn).await.unwrap();
    let tx = owner.transaction().await.unwrap();
    tx.execute(
        "SELECT set_config('role', 'cloudlens_query', true), set_config('app.tenant', 'acme', true)",
        &[],
    )
    .await
    .unwrap();
    let changed = tx
        .execute(
            "UPDATE collection_items SET data = '{}' WHERE tenant_id = 'globex'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(changed, 0);
    let refused = tx
        .execute(
            "INSERT INTO collection_items VALUES ('globex', 'system_logs', 'x', '{}', now(), now(), NULL)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused:?}"
    );
    drop(tx);
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM collection_items WHERE tenant_id = 'globex'"
        )
        .await,
        11
    );
    app.handle.stop(true).await;
}

#[actix_web::test]
async fn backups_carry_the_items_and_verify_without_replaying_them() {
    let app = spawn_app().await;
    let res = declare(
        &app,
        "default",
        "cache",
        json!({"ttl_seconds": 3600, "indexes": ["k"]}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let declared = body(res).await;
    // The declaration in the read model before the backup (the manifest counts rows).
    let res = app
        .get(&format!(
            "/api/v1/collections/cache?min_position={}",
            declared["position"]
        ))
        .await;
    assert_eq!(res.status(), 200);
    let lines: Vec<Value> = (0..100).map(|i| json!({"data": {"k": i}})).collect();
    assert_eq!(
        batch(&app, "default", "cache", ndjson(&lines))
            .await
            .status(),
        200
    );
    let dir = test_root().join(format!("backup-{}", uuid::Uuid::new_v4().simple()));
    let manifest = cloudlens::ops::backup::backup(&app.conn, &dir)
        .await
        .unwrap();
    assert_eq!(manifest.tables["collection_items"].rows, 100);
    assert_eq!(manifest.tables["collections"].rows, 1);
    let report = cloudlens::ops::backup::verify(
        &dir,
        &app.conn,
        false,
        &cloudlens::context::projections(&test_settings()),
    )
    .await
    .unwrap();
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    assert!(
        report
            .projections_rebuilt
            .iter()
            .any(|p| p == "collections"),
        "{report:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    app.handle.stop(true).await;
}

/// `batch` (NDJSON) or one JSON item under an Idempotency-Key.
async fn keyed(app: &TestApp, tenant: &str, key: &str, body: String, ndjson: bool) -> Response {
    app.client
        .post(app.url(&items_url("system_logs")))
        .insert_header(("X-Tenant-Id", tenant))
        .insert_header(("Idempotency-Key", key))
        .insert_header((
            "Content-Type",
            if ndjson {
                "application/x-ndjson"
            } else {
                "application/json"
            },
        ))
        .send_body(body)
        .await
        .unwrap()
}

#[actix_web::test]
async fn retries_under_an_idempotency_key_write_once() {
    let app = spawn_app().await;
    let count = |tenant: &'static str| {
        let app = &app;
        async move {
            page(app, tenant, "system_logs", &[("limit", "1000")]).await["items"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    let lines = ndjson(&[log_line(1), log_line(2), log_line(3)]);
    // A keyless batch retried under its key: one write, the same answer.
    for _ in 0..2 {
        let res = keyed(&app, "acme", "batch-1", lines.clone(), true).await;
        let status = res.status();
        let v = body(res).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["written"], 3);
    }
    assert_eq!(count("acme").await, 3);
    // The key with another request: refused, nothing written.
    let other = ndjson(&[log_line(4)]);
    let p = problem(
        keyed(&app, "acme", "batch-1", other.clone(), true).await,
        422,
    )
    .await;
    assert_eq!(p["code"], "idempotency_key_reused");
    let p = problem(
        keyed(&app, "acme", "batch-1", log_line(5).to_string(), false).await,
        422,
    )
    .await;
    assert_eq!(p["code"], "idempotency_key_reused");
    assert_eq!(count("acme").await, 3);
    // A keyless single item: the retry gets the item the first request stored.
    let item = json!({"data": {"level": "INFO", "message": "once"}}).to_string();
    let first = keyed(&app, "acme", "item-1", item.clone(), false).await;
    assert_eq!(first.status(), 201);
    let location = first.headers().get("location").unwrap().clone();
    let first = body(first).await;
    let again = keyed(&app, "acme", "item-1", item.clone(), false).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers().get("location").unwrap(), &location);
    assert_eq!(body(again).await, first);
    assert_eq!(count("acme").await, 4);
    // Racing retries of one batch: every one answers as the first, one write.
    let racing = ndjson(&[log_line(6), log_line(7)]);
    let answers = futures::future::join_all(
        (0..8).map(|_| keyed(&app, "acme", "batch-race", racing.clone(), true)),
    )
    .await;
    for res in answers {
        assert_eq!(res.status(), 200);
        assert_eq!(body(res).await["written"], 2);
    }
    assert_eq!(count("acme").await, 6);
    // A key belongs to its tenant: the same key elsewhere is another write.
    let res = keyed(&app, "globex", "batch-1", other, true).await;
    assert_eq!(res.status(), 200);
    assert_eq!(count("globex").await, 1);
    assert_eq!(count("acme").await, 6);
}
