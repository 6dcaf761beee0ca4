#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The event feed and consumer groups (issue 13, ADR 0029) against the real server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

/// Creates a budget in `tenant` and updates it `updates` times; its stream id.
async fn budget(app: &TestApp, tenant: &str, name: &str, updates: usize) -> String {
    let mut res = app
        .client
        .post(app.url("/api/v1/budgets"))
        .insert_header(("X-Tenant-Id", tenant))
        .send_json(&budget_body(name))
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{:?}", res.body().await);
    let id = body(res).await["id"].as_str().unwrap().to_owned();
    for i in 0..updates {
        let res = app
            .client
            .put(app.url(&format!("/api/v1/budgets/{id}")))
            .insert_header(("X-Tenant-Id", tenant))
            .send_json(&budget_body(&format!("{name}-{i}")))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    id
}

async fn feed(app: &TestApp, tenant: &str, query: &str) -> Value {
    let mut res = app
        .client
        .get(app.url(&format!("/api/v1/feed?{query}")))
        .insert_header(("X-Tenant-Id", tenant))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.body().await);
    body(res).await
}

/// The positions of a tenant's events of a stream type, in the global order.
async fn log_order(conn: &str, tenant: &str, stream_type: &str) -> Vec<i64> {
    let c = cloudlens::db::connect(conn).await.unwrap();
    c.query(
        "SELECT position FROM events WHERE tenant_id = $1 AND stream_type = $2
          ORDER BY epoch, transaction_id, position",
        &[&tenant, &stream_type],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[actix_web::test]
async fn pages_follow_the_global_order_without_gaps_or_duplicates_while_writers_append() {
    let app = spawn_app().await;
    let writers = futures::future::join_all((0..4).map(|w| {
        let app = &app;
        async move {
            for i in 0..15 {
                budget(app, "default", &format!("w{w}-{i}"), i % 2).await;
            }
        }
    }));
    let expected = 4 * (15 + 7);
    let reader = async {
        let mut seen = Vec::new();
        let mut after = "0".to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < expected && Instant::now() < deadline {
            let page = feed(
                &app,
                "default",
                &format!("after={after}&stream_types=budget&limit=7&wait=1"),
            )
            .await;
            for e in page["events"].as_array().unwrap() {
                seen.push(e["position"].as_i64().unwrap());
                assert_eq!(e["stream_type"], "budget");
            }
            after = page["next"].as_str().unwrap().to_owned();
        }
        seen
    };
    let (_, seen) = futures::join!(writers, reader);
    assert_eq!(seen.len(), expected);
    assert_eq!(seen, log_order(&app.conn, "default", "budget").await);
    // Nothing more after the end, and NDJSON gives the same events with the cursor in a
    // header.
    let mut res = app
        .client
        .get(app.url("/api/v1/feed?after=0&stream_types=budget&limit=5000"))
        .insert_header(("Accept", "application/x-ndjson"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/x-ndjson"
    );
    let next = res
        .headers()
        .get("feed-next-cursor")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let text = res.body().limit(64 << 20).await.unwrap();
    let lines: Vec<Value> = std::str::from_utf8(&text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|e| e["position"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        seen
    );
    // A page shorter than its limit holds everything below the horizon: the next cursor
    // is there, not before the last event.
    let last = lines.last().unwrap()["cursor"].as_str().unwrap();
    assert!(place(&next) >= place(last), "{next} before {last}");
    let rest = feed(
        &app,
        "default",
        &format!("after={next}&stream_types=budget"),
    )
    .await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 0);
    assert!(place(rest["next"].as_str().unwrap()) >= place(&next));
}

/// A cursor's place in the global order: (epoch, transaction id, position).
fn place(cursor: &str) -> (i64, i64, i64) {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[actix_web::test]
async fn a_long_poll_returns_when_an_event_arrives() {
    let app = spawn_app().await;
    budget(&app, "default", "first", 0).await;
    let all = feed(&app, "default", "after=0&limit=1000").await;
    let next = all["next"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let query = format!("after={next}&wait=20");
    let (page, id) = futures::join!(feed(&app, "default", &query), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        budget(&app, "default", "second", 0).await
    });
    let waited = started.elapsed();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["stream_id"], id.as_str());
    assert_eq!(events[0]["event_type"], "BudgetCreated");
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(15), "not woken: {waited:?}");
    // Nothing arrives: the wait runs out with an empty page and a cursor not before it.
    let next = page["next"].as_str().unwrap();
    let empty = feed(&app, "default", &format!("after={next}&wait=0.3")).await;
    assert_eq!(empty["events"], json!([]));
    assert!(place(empty["next"].as_str().unwrap()) >= place(next));
}

/// Reads an SSE stream until `n` events came; their (id, data).
async fn sse_events(res: &mut Response, n: usize) -> Vec<(String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(20), res.next())
            .await
            .expect("SSE stream stalled")
            .expect("SSE stream ended")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(v).unwrap());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
            }
        }
    }
    out
}

#[actix_web::test]
async fn server_sent_events_stream_arrivals_and_resume_after_the_last_event_id() {
    let app = spawn_app().await;
    for i in 0..3 {
        budget(&app, "sse", &format!("b{i}"), 0).await;
    }
    let mut res = app
        .client
        .get(app.url("/api/v1/feed"))
        .insert_header(("Accept", "text/event-stream"))
        .insert_header(("X-Tenant-Id", "sse"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let first = sse_events(&mut res, 3).await;
    for (id, data) in &first {
        assert_eq!(data["cursor"].as_str().unwrap(), id);
    }
    // An event appended now arrives on the open stream.
    let id = budget(&app, "sse", "live", 0).await;
    let live = sse_events(&mut res, 1).await;
    assert_eq!(live[0].1["stream_id"], id.as_str());
    drop(res);
    // Reconnecting after the second event gets the third and the live one, nothing else.
    let mut res = app
        .client
        .get(app.url("/api/v1/feed"))
        .insert_header(("Accept", "text/event-stream"))
        .insert_header(("X-Tenant-Id", "sse"))
        .insert_header(("Last-Event-ID", first[1].0.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let resumed = sse_events(&mut res, 2).await;
    assert_eq!(resumed[0].0, first[2].0);
    assert_eq!(resumed[1].0, live[0].0);
}

#[actix_web::test]
async fn a_tenant_sees_only_its_own_events() {
    let app = spawn_app().await;
    let mine: BTreeSet<String> = [
        budget(&app, "acme", "a1", 1).await,
        budget(&app, "acme", "a2", 0).await,
    ]
    .into();
    budget(&app, "globex", "g1", 2).await;
    let page = feed(&app, "acme", "after=0&limit=1000").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    for e in events {
        assert!(mine.contains(e["stream_id"].as_str().unwrap()), "{e}");
    }
    let other = feed(
        &app,
        "globex",
        "after=0&limit=1000&event_types=BudgetUpdated",
    )
    .await;
    assert_eq!(other["events"].as_array().unwrap().len(), 2);
    // A cursor of one tenant read by another shows nothing of the first.
    let next = page["next"].as_str().unwrap();
    let globex = feed(&app, "globex", &format!("after={next}")).await;
    for e in globex["events"].as_array().unwrap() {
        assert!(!mine.contains(e["stream_id"].as_str().unwrap()));
    }
    // Consumer groups are per tenant too.
    let res = app
        .client
        .put(app.url("/api/v1/consumers/g"))
        .insert_header(("X-Tenant-Id", "acme"))
        .send_json(&json!({}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = app
        .client
        .get(app.url("/api/v1/consumers/g"))
        .insert_header(("X-Tenant-Id", "globex"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

async fn expect_422(res: Response, field: &str) {
    assert_eq!(res.status(), 422);
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    let p = body(res).await;
    assert_eq!(p["field"], field, "{p}");
}

#[actix_web::test]
async fn bad_input_is_refused_with_the_field_named() {
    let app = spawn_app().await;
    for (query, field) in [
        ("after=nonsense", "after"),
        ("after=12", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("wait=31", "wait"),
        ("wait=-1", "wait"),
        ("stream_types=Budget", "stream_types"),
        ("stream_types=budget,a;b", "stream_types"),
        ("event_types=1Created", "event_types"),
    ] {
        expect_422(app.get(&format!("/api/v1/feed?{query}")).await, field).await;
    }
    let res = app
        .client
        .get(app.url("/api/v1/feed"))
        .insert_header(("Accept", "text/event-stream"))
        .insert_header(("Last-Event-ID", "garbage"))
        .send()
        .await
        .unwrap();
    expect_422(res, "Last-Event-ID").await;
    let res = app
        .client
        .put(app.url("/api/v1/consumers/g"))
        .send_json(&json!({"filters": {"stream_types": ["Not A Type"]}}))
        .await
        .unwrap();
    expect_422(res, "filters.stream_types").await;
    let res = app
        .client
        .put(app.url("/api/v1/consumers/g"))
        .send_json(&json!({"filters": {"stream_types": ["budget"]}}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    for (body, field) in [
        (json!({"member": "a", "max": 0}), "max"),
        (
            json!({"member": "a", "lease_seconds": 301}),
            "lease_seconds",
        ),
        (json!({"member": "a/b"}), "member"),
        (json!({"max": 1}), "member"),
    ] {
        expect_422(
            app.post_json("/api/v1/consumers/g/poll", &body).await,
            field,
        )
        .await;
    }
    expect_422(
        app.post_json(
            "/api/v1/consumers/g/ack",
            &json!({"member": "a", "cursor": "x"}),
        )
        .await,
        "cursor",
    )
    .await;
    expect_422(
        app.post_json(
            "/api/v1/consumers/g/ack",
            &json!({"member": "a", "position": 999_999}),
        )
        .await,
        "position",
    )
    .await;
    let res = app
        .post_json("/api/v1/consumers/nope/poll", &json!({"member": "a"}))
        .await;
    assert_eq!(res.status(), 404);
}

async fn poll(app: &TestApp, member: &str, max: i64) -> Value {
    let mut res = app
        .post_json(
            "/api/v1/consumers/orders/poll",
            &json!({"member": member, "max": max, "lease_seconds": 2}),
        )
        .await;
    assert_eq!(res.status(), 200, "{:?}", res.body().await);
    body(res).await
}

async fn ack(app: &TestApp, member: &str, cursor: &str) -> u16 {
    app.post_json(
        "/api/v1/consumers/orders/ack",
        &json!({"member": member, "cursor": cursor}),
    )
    .await
    .status()
    .as_u16()
}

#[actix_web::test]
async fn a_group_delivers_every_event_in_stream_order_and_hands_a_dead_members_events_over() {
    let app = spawn_app().await;
    for i in 0..24 {
        budget(&app, "default", &format!("o{i}"), i % 3).await;
    }
    let res = app
        .client
        .put(app.url("/api/v1/consumers/orders"))
        .send_json(&json!({"filters": {"stream_types": ["budget"]}}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // Two members take turns; each acknowledges its batches. `a` comes first and holds
    // everything until `b` shows up, then gives half back.
    let mut delivered: Vec<(String, Value)> = Vec::new();
    let mut empty_rounds = 0;
    let mut owners: HashMap<i64, BTreeSet<String>> = HashMap::new();
    while empty_rounds < 3 {
        let mut got = 0;
        for m in ["a", "b"] {
            let batch = poll(&app, m, 5).await;
            for p in batch["partitions"].as_array().unwrap() {
                owners
                    .entry(p.as_i64().unwrap())
                    .or_default()
                    .insert(m.into());
            }
            let events = batch["events"].as_array().unwrap();
            got += events.len();
            for e in events {
                delivered.push((m.to_owned(), e.clone()));
            }
            if let Some(c) = batch["cursor"].as_str() {
                assert_eq!(ack(&app, m, c).await, 200);
            }
        }
        empty_rounds = if got == 0 { empty_rounds + 1 } else { 0 };
    }
    let positions: Vec<i64> = delivered
        .iter()
        .map(|(_, e)| e["position"].as_i64().unwrap())
        .collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    let mut expected = log_order(&app.conn, "default", "budget").await;
    expected.sort_unstable();
    assert_eq!(
        sorted, expected,
        "every event exactly once (all were acknowledged)"
    );
    let mut streams: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for (m, e) in &delivered {
        streams
            .entry(e["stream_id"].as_str().unwrap().to_owned())
            .or_default()
            .push((m.clone(), e["version"].as_i64().unwrap()));
    }
    for (id, seen) in &streams {
        let versions: Vec<i64> = seen.iter().map(|(_, v)| *v).collect();
        assert_eq!(
            versions,
            (1..=versions.len() as i64).collect::<Vec<_>>(),
            "{id}"
        );
    }
    let both: BTreeSet<&str> = delivered.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(both.len(), 2, "both members got events");
    let view = body(app.get("/api/v1/consumers/orders").await).await;
    assert_eq!(view["partitions"].as_array().unwrap().len(), 16);
    assert_eq!(view["lag"], 0, "{view}");

    // `a` takes a batch and dies without acknowledging it.
    for i in 0..12 {
        budget(&app, "default", &format!("late{i}"), 0).await;
    }
    let batch = poll(&app, "a", 100).await;
    let lost: BTreeSet<i64> = batch["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(!lost.is_empty(), "{batch}");
    let lost_cursor = batch["cursor"].as_str().unwrap().to_owned();
    // While `a`'s lease runs, `b` does not get `a`'s events.
    let early = poll(&app, "b", 100).await;
    for e in early["events"].as_array().unwrap() {
        assert!(!lost.contains(&e["position"].as_i64().unwrap()));
        ack(&app, "b", e["cursor"].as_str().unwrap()).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // After the lease, `b` holds every partition and gets `a`'s unacknowledged events.
    let mut redelivered = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let batch = poll(&app, "b", 100).await;
        for e in batch["events"].as_array().unwrap() {
            redelivered.insert(e["position"].as_i64().unwrap());
        }
        if let Some(c) = batch["cursor"].as_str() {
            assert_eq!(ack(&app, "b", c).await, 200);
        }
        if batch["partitions"].as_array().unwrap().len() == 16 && lost.is_subset(&redelivered) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lost {lost:?}, redelivered {redelivered:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The dead member's late ack is refused: its partitions belong to `b`.
    assert_eq!(ack(&app, "a", &lost_cursor).await, 409);
    let view = body(app.get("/api/v1/consumers/orders").await).await;
    assert_eq!(view["lag"], 0, "{view}");
    assert!(view["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["owner"] == "b"));
}
