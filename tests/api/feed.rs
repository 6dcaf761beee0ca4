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

// ---------------------------------------------------------------------------------------
// Consumer groups: shares, leases, fencing, and members dying while writers append.

async fn put_group(app: &TestApp, group: &str, stream_type: &str) {
    let res = app
        .client
        .put(app.url(&format!("/api/v1/consumers/{group}")))
        .send_json(&json!({"filters": {"stream_types": [stream_type]}}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

async fn poll_group(app: &TestApp, group: &str, member: &str, max: i64, lease: i64) -> Value {
    let mut res = app
        .post_json(
            &format!("/api/v1/consumers/{group}/poll"),
            &json!({"member": member, "max": max, "lease_seconds": lease}),
        )
        .await;
    assert_eq!(res.status(), 200, "{:?}", res.body().await);
    body(res).await
}

/// Acknowledges a batch the way a client does: its cursor and its lease token.
async fn ack_batch(app: &TestApp, group: &str, member: &str, batch: &Value) -> (u16, Value) {
    let res = app
        .post_json(
            &format!("/api/v1/consumers/{group}/ack"),
            &json!({"member": member, "cursor": batch["cursor"], "lease": batch["lease"]}),
        )
        .await;
    let status = res.status().as_u16();
    (status, body(res).await)
}

async fn group_view(app: &TestApp, group: &str) -> Value {
    let res = app.get(&format!("/api/v1/consumers/{group}")).await;
    assert_eq!(res.status(), 200);
    body(res).await
}

/// Partition owners from the group's view: partition → owner (None: free).
fn owners(view: &Value) -> Vec<Option<String>> {
    view["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["owner"].as_str().map(str::to_owned))
        .collect()
}

fn positions(batch: &Value) -> BTreeSet<i64> {
    batch["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect()
}

/// Every partition held by exactly one of `members`, shares differing by at most one, and
/// each member's last batch naming exactly the partitions the view gives it.
fn assert_fair(view: &Value, members: &[&str], last: &HashMap<&'static str, Value>) {
    let owners = owners(view);
    assert_eq!(owners.len(), 16, "{view}");
    let mut shares: BTreeMap<&str, Vec<i64>> = members.iter().map(|m| (*m, vec![])).collect();
    for (p, o) in owners.iter().enumerate() {
        let o = o
            .as_deref()
            .unwrap_or_else(|| panic!("partition {p} free: {view}"));
        shares
            .get_mut(o)
            .unwrap_or_else(|| panic!("partition {p} held by {o}, not a live member: {view}"))
            .push(p as i64);
    }
    let sizes: Vec<usize> = shares.values().map(Vec::len).collect();
    let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
    assert!(hi - lo <= 1, "shares {shares:?}");
    assert!(*lo >= 1, "a member starves: {shares:?}");
    for (m, held) in &shares {
        let said: Vec<i64> = last[m]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_i64().unwrap())
            .collect();
        assert_eq!(&said, held, "{m}'s last batch against the view");
    }
}

/// Each member polls and acknowledges in turn (so nothing stays in flight and surplus
/// partitions can be given back); three rounds settle any assignment. Each one's last
/// batch.
async fn share_rounds(app: &TestApp, members: &[&'static str]) -> HashMap<&'static str, Value> {
    let mut last = HashMap::new();
    for _ in 0..3 {
        for m in members {
            let batch = poll_group(app, "share", m, 4, 30).await;
            if batch["cursor"].is_string() {
                assert_eq!(ack_batch(app, "share", m, &batch).await.0, 200);
            }
            last.insert(*m, batch);
        }
    }
    last
}

#[actix_web::test]
async fn live_members_share_the_partitions_one_owner_each_differing_by_at_most_one() {
    let app = spawn_app().await;
    for i in 0..10 {
        budget(&app, "default", &format!("s{i}"), i % 2).await;
    }
    put_group(&app, "share", "budget").await;
    let two = share_rounds(&app, &["a", "b"]).await;
    let view = group_view(&app, "share").await;
    assert_fair(&view, &["a", "b"], &two);
    let three = share_rounds(&app, &["a", "b", "c"]).await;
    let view = group_view(&app, "share").await;
    assert_fair(&view, &["a", "b", "c"], &three);
    let mut sizes: Vec<usize> = ["a", "b", "c"]
        .iter()
        .map(|m| three[m]["partitions"].as_array().unwrap().len())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![5, 5, 6]);
    // Every event went out and was acknowledged.
    assert_eq!(view["lag"], 0, "{view}");
}

#[actix_web::test]
async fn a_member_whose_lease_expired_cannot_ack_and_another_member_gets_its_events() {
    let app = spawn_app().await;
    for i in 0..8 {
        budget(&app, "default", &format!("l{i}"), i % 3).await;
    }
    put_group(&app, "lapse", "budget").await;
    let a = poll_group(&app, "lapse", "a", 1000, 1).await;
    let held = positions(&a);
    let written: BTreeSet<i64> = log_order(&app.conn, "default", "budget")
        .await
        .into_iter()
        .collect();
    assert_eq!(held, written, "{a}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // a's lease is over: b, the only live member, takes every partition and gets a's
    // unacknowledged events.
    let b = poll_group(&app, "lapse", "b", 1000, 30).await;
    assert_eq!(b["partitions"].as_array().unwrap().len(), 16, "{b}");
    assert_eq!(positions(&b), held);
    // a's late acks are refused, by batch and by position, and commit nothing.
    let (status, problem) = ack_batch(&app, "lapse", "a", &a).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "command_refused");
    let last = a["events"].as_array().unwrap().last().unwrap()["position"].clone();
    let res = app
        .post_json(
            "/api/v1/consumers/lapse/ack",
            &json!({"member": "a", "position": last}),
        )
        .await;
    assert_eq!(res.status(), 409);
    let view = group_view(&app, "lapse").await;
    assert_eq!(view["lag"], held.len() as i64, "{view}");
    assert!(owners(&view).iter().all(|o| o.as_deref() == Some("b")));
    // b's ack commits them.
    assert_eq!(ack_batch(&app, "lapse", "b", &b).await.0, 200);
    assert_eq!(group_view(&app, "lapse").await["lag"], 0);
}

#[actix_web::test]
async fn a_stale_ack_after_ownership_moved_commits_nothing() {
    let app = spawn_app().await;
    for i in 0..6 {
        budget(&app, "default", &format!("t{i}"), 1).await;
    }
    put_group(&app, "stale", "budget").await;
    let a1 = poll_group(&app, "stale", "a", 1000, 1).await;
    let all = positions(&a1);
    let written: BTreeSet<i64> = log_order(&app.conn, "default", "budget")
        .await
        .into_iter()
        .collect();
    assert_eq!(all, written);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = poll_group(&app, "stale", "b", 1000, 1).await;
    assert_eq!(positions(&b), all);
    // a's ack of its batch, the partitions now b's: nothing moves.
    assert_eq!(ack_batch(&app, "stale", "a", &a1).await.0, 409);
    assert_eq!(group_view(&app, "stale").await["lag"], all.len() as i64);
    // b dies too; a comes back and takes every partition again, under a new lease.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a2 = poll_group(&app, "stale", "a", 1000, 30).await;
    assert_eq!(a2["partitions"].as_array().unwrap().len(), 16, "{a2}");
    assert_eq!(positions(&a2), all);
    assert_ne!(a2["lease"], a1["lease"]);
    // Acks of batches of earlier ownerships commit nothing: a's first batch (its lease
    // token names generations since replaced) and b's.
    assert_eq!(ack_batch(&app, "stale", "a", &a1).await.0, 409);
    assert_eq!(ack_batch(&app, "stale", "b", &b).await.0, 409);
    let view = group_view(&app, "stale").await;
    assert_eq!(view["lag"], all.len() as i64, "{view}");
    // The batch of the current ownership commits.
    let (status, acked) = ack_batch(&app, "stale", "a", &a2).await;
    assert_eq!(status, 200, "{acked}");
    assert!(!acked["partitions"].as_array().unwrap().is_empty());
    assert_eq!(group_view(&app, "stale").await["lag"], 0);
}

/// One batch as a member got it.
struct Delivery {
    member: &'static str,
    /// When the response arrived (after the server handed the batch out).
    received: chrono::DateTime<chrono::Utc>,
    lease_until: chrono::DateTime<chrono::Utc>,
    /// (stream id, version, position, partition)
    events: Vec<(String, i64, i64, i64)>,
    /// When the ack's answer (200) arrived, and the partitions it committed.
    acked: Option<(chrono::DateTime<chrono::Utc>, BTreeSet<i64>)>,
}

/// A member's loop: poll, ack, until `done`; `killed`: it stops for good, without acking,
/// after its first batch with events.
async fn member_loop(
    app: &TestApp,
    member: &'static str,
    killed: bool,
    done: &std::sync::atomic::AtomicBool,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        let batch = poll_group(app, "live", member, 25, 3).await;
        let received = chrono::Utc::now();
        let events: Vec<(String, i64, i64, i64)> = batch["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let id = e["stream_id"].as_str().unwrap().to_owned();
                let partition = cloudlens::eventstore::global::partition(id.parse().unwrap());
                (
                    id,
                    e["version"].as_i64().unwrap(),
                    e["position"].as_i64().unwrap(),
                    i64::from(partition),
                )
            })
            .collect();
        let held: BTreeSet<i64> = batch["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_i64().unwrap())
            .collect();
        for (_, _, _, p) in &events {
            assert!(
                held.contains(p),
                "{member} got an event of partition {p} it does not hold"
            );
        }
        let mut d = Delivery {
            member,
            received,
            lease_until: match batch["lease_until"].as_str() {
                Some(t) => t.parse().unwrap(),
                None => received,
            },
            events,
            acked: None,
        };
        if killed && !d.events.is_empty() {
            out.push(d);
            return out;
        }
        if batch["cursor"].is_string() {
            let (status, acked) = ack_batch(app, "live", member, &batch).await;
            // 409: the lease ran out meanwhile (a slow machine); the events come again.
            assert!(status == 200 || status == 409, "{status} {acked}");
            if status == 200 {
                let parts = acked["partitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_i64().unwrap())
                    .collect();
                d.acked = Some((chrono::Utc::now(), parts));
            }
        }
        let idle = d.events.is_empty();
        out.push(d);
        if idle {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

#[actix_web::test]
async fn members_polling_while_writers_append_and_one_is_killed_account_for_every_event() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = spawn_app().await;
    put_group(&app, "live", "counter").await;
    let writer_store = store(&app.conn, 2);
    let done = AtomicBool::new(false);
    let writers = futures::future::join_all((0..2).map(|_| {
        let s = &writer_store;
        async move {
            let ids: Vec<uuid::Uuid> = (0..20).map(|_| uuid::Uuid::new_v4()).collect();
            for v in 0..8 {
                for id in &ids {
                    append_counter_events(s, *id, v, 1).await;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    }));
    let coordinator = async {
        writers.await;
        // Members go on until the group has acknowledged everything (the killed member's
        // partitions included, once its lease ran out and another member took them).
        let settled = eventually(Duration::from_secs(180), || async {
            (group_view(&app, "live").await["lag"] == 0).then_some(())
        })
        .await;
        done.store(true, Ordering::SeqCst);
        assert!(settled.is_some(), "{}", group_view(&app, "live").await);
    };
    let members = futures::future::join_all(
        [
            ("m1", false),
            ("m2", false),
            ("m3", false),
            ("killed", true),
        ]
        .into_iter()
        .map(|(m, killed)| member_loop(&app, m, killed, &done)),
    );
    let ((), runs) = futures::join!(coordinator, members);
    let deliveries: Vec<Delivery> = runs.into_iter().flatten().collect();

    // The killed member did take a batch and never acknowledged it.
    let last_of_killed = deliveries.iter().rfind(|d| d.member == "killed").unwrap();
    assert!(!last_of_killed.events.is_empty() && last_of_killed.acked.is_none());

    // Every event was delivered and acknowledged at least once: it lies in a batch whose
    // ack committed its partition.
    let written: BTreeSet<i64> = log_order(&app.conn, "default", "counter")
        .await
        .into_iter()
        .collect();
    assert_eq!(written.len(), 2 * 20 * 8);
    let mut acked = BTreeSet::new();
    for d in &deliveries {
        if let Some((_, parts)) = &d.acked {
            for (_, _, pos, p) in &d.events {
                if parts.contains(p) {
                    acked.insert(*pos);
                }
            }
        }
    }
    let missing: Vec<&i64> = written.difference(&acked).collect();
    assert!(missing.is_empty(), "never acknowledged: {missing:?}");
    assert!(
        deliveries
            .iter()
            .filter(|d| d.member != "killed")
            .any(|d| d.events.iter().any(|e| last_of_killed.events.contains(e))),
        "the killed member's events went to another member"
    );

    // Within a batch, each stream's events come in version order.
    for d in &deliveries {
        let mut last: HashMap<&str, i64> = HashMap::new();
        for (id, v, _, _) in &d.events {
            if let Some(prev) = last.insert(id, *v) {
                assert!(*v > prev, "{id}: version {v} after {prev} in one batch");
            }
        }
    }
    // One member at a time per stream: a batch with events of a stream reaches another
    // member only after the earlier member's lease ran out or its ack (which let it give
    // the partition back) came back.
    let mut by_stream: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for d in &deliveries {
        let streams: BTreeSet<&str> = d.events.iter().map(|(id, ..)| id.as_str()).collect();
        for s in streams {
            by_stream.entry(s).or_default().push(d);
        }
    }
    for (stream, mut ds) in by_stream {
        ds.sort_by_key(|d| d.received);
        for (i, later) in ds.iter().enumerate() {
            for earlier in &ds[..i] {
                if earlier.member == later.member {
                    continue;
                }
                let over = later.received > earlier.lease_until
                    || earlier
                        .acked
                        .as_ref()
                        .is_some_and(|(at, _)| *at < later.received);
                assert!(
                    over,
                    "stream {stream}: {} got a batch at {} while {}'s lease ran until {} (acked: {:?})",
                    later.member,
                    later.received,
                    earlier.member,
                    earlier.lease_until,
                    earlier.acked.as_ref().map(|(at, _)| at)
                );
            }
        }
    }
}

/// The lag job removes only the groups it exported itself: a second server in the same
/// process (a database without groups, as other tests run beside this one) leaves them,
/// and a group that falls out of the job's view goes.
#[actix_web::test]
async fn the_lag_gauge_keeps_the_groups_of_other_servers_in_the_process() {
    use cloudlens::feed::groups::refresh_lag;
    use cloudlens::feed::metrics::FEED;
    use std::sync::Mutex;

    let app = spawn_app().await;
    let group = format!("lag{}", uuid::Uuid::now_v7().simple());
    let res = app
        .client
        .put(app.url(&format!("/api/v1/consumers/{group}")))
        .send_json(&json!({"filters": {"stream_types": ["budget"]}}))
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    budget(&app, "default", "lagging", 0).await;
    let label = format!("default/{group}");
    let exported = || {
        use prometheus::core::Collector;
        FEED.group_lag.collect()[0]
            .get_metric()
            .iter()
            .any(|m| m.get_label().iter().any(|l| l.get_value() == label))
    };

    let ours = Mutex::new(Vec::new());
    let pool = cloudlens::db::pool(&app.conn, 2).unwrap();
    refresh_lag(&pool, &ours).await.unwrap();
    assert!(exported(), "the group's lag is exported");
    assert!(FEED.group_lag.with_label_values(&[&label]).get() >= 1);

    let other_db = fresh_database().await;
    let other_pool = cloudlens::db::pool(&other_db, 2).unwrap();
    refresh_lag(&other_pool, &Mutex::new(Vec::new()))
        .await
        .unwrap();
    assert!(exported(), "another server's job left it");

    // Seen by this job last time and gone from its database now: removed.
    let stale = Mutex::new(vec![label.clone()]);
    refresh_lag(&other_pool, &stale).await.unwrap();
    assert!(!exported(), "the job removed the group it no longer sees");
    assert!(stale.lock().unwrap().is_empty());
}
