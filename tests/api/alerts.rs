#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Alert rules, episodes and notifications end to end, with real receivers the tests
//! start: an HTTP server that fails the first attempts, and an SMTP sink.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use cloudlens::config::Settings;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::helpers::*;

/// `test_settings` evaluates and delivers fast, with short retries (4 attempts).
fn settings() -> Settings {
    test_settings()
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    signature: Option<String>,
    delivery: Option<String>,
    body: Vec<u8>,
    answered: u16,
}

/// An HTTP receiver on loopback: answers 500 to the first `fail_first` requests (all of
/// them with `u32::MAX`), then 200 (DingTalk/WeCom style `{"errcode": 0}`).
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(fail_first: u32) -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = got.clone();
        let server = HttpServer::new(move || {
            let state = state.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let state = state.clone();
                async move {
                    let mut got = state.lock().unwrap();
                    let failing = (got.len() as u64) < u64::from(fail_first);
                    let header =
                        |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                    got.push(Received {
                        path: req.uri().to_string(),
                        signature: header("x-cloudlens-signature"),
                        delivery: header("x-cloudlens-delivery"),
                        body: body.to_vec(),
                        answered: if failing { 500 } else { 200 },
                    });
                    if failing {
                        HttpResponse::InternalServerError().body("try later")
                    } else {
                        HttpResponse::Ok().json(json!({"errcode": 0, "errmsg": "ok"}))
                    }
                }
            }))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        Self { url, got }
    }

    fn accepted(&self) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.answered == 200)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// A minimal SMTP server that takes every mail (no TLS: the channel says `security:
/// none`) and keeps each message's text.
async fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = mails.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = &mut data {
                        if line == "." {
                            sink.lock().unwrap().push(std::mem::take(d));
                            data = None;
                            write.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            write.write_all(b"221 bye\r\n").await.unwrap();
                            break;
                        }
                        _ => b"250 OK\r\n",
                    };
                    write.write_all(answer).await.unwrap();
                }
            });
        }
    });
    (port, mails)
}

const SECRET: &str = "0123456789abcdef-secret";

async fn created(res: Response, what: &str) -> String {
    assert_eq!(res.status(), 201, "{what}");
    body(res).await["id"].as_str().unwrap().to_owned()
}

async fn webhook(app: &TestApp, url: &str) -> String {
    let res = app
        .post_json(
            "/api/v1/notification-channels",
            &json!({"name": "ops hook", "kind": "webhook", "secret": SECRET,
                    "config": {"url": format!("{url}/hook"), "timeout_ms": 2000}}),
        )
        .await;
    created(res, "webhook channel").await
}

fn cpu_rule(name: &str, channel: &str, cooldown: u32) -> Value {
    json!({"name": name, "type": "metric_threshold", "notify": [channel], "severity": "critical",
           "cooldown": cooldown,
           "condition": {"metric": "cpu", "tags": {"env": "prod"}, "aggregation": "avg",
                         "window_seconds": 30, "comparator": "gt", "threshold": 80}})
}

async fn points(app: &TestApp, series: &str, values: &[f64]) {
    let now = chrono::Utc::now();
    let pts: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({"series": series, "metric": "cpu", "value": v, "tags": {"env": "prod"},
                   "time": (now - chrono::Duration::milliseconds(10 * (values.len() - i) as i64))
                       .to_rfc3339()})
        })
        .collect();
    let res = app
        .post_json("/api/v1/metrics:batch", &json!({"points": pts}))
        .await;
    assert!(res.status().is_success(), "points: {}", res.status());
}

/// The rule's episodes (`GET /api/v1/alerts?rule=`), newest first.
async fn episodes(app: &TestApp, rule: &str) -> Vec<Value> {
    body(app.get(&format!("/api/v1/alerts?rule={rule}")).await).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the rule has `n` episodes and the newest is in `state`.
async fn wait_episodes(app: &TestApp, rule: &str, n: usize, state: &str) -> Vec<Value> {
    let got = eventually(Duration::from_secs(30), || async {
        let e = episodes(app, rule).await;
        (e.len() == n && e[0]["state"] == state).then_some(e)
    })
    .await;
    got.unwrap_or_else(|| panic!("rule {rule}: {n} episodes, newest {state}"))
}

fn verify(r: &Received) -> Value {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&r.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        r.signature.as_deref(),
        Some(format!("sha256={hex}").as_str())
    );
    serde_json::from_slice(&r.body).unwrap()
}

#[actix_web::test]
async fn a_metric_rule_fires_once_per_episode_resolves_cools_down_and_notifies_once() {
    let app = spawn_app_on(fresh_database().await, settings()).await;
    // The receiver fails the first two attempts: the third delivers.
    let hook = Receiver::start(2);
    let channel = webhook(&app, &hook.url).await;
    let rule = created(
        app.post_json("/api/v1/alert-rules", &cpu_rule("cpu high", &channel, 0))
            .await,
        "rule",
    )
    .await;
    let sticky = created(
        app.post_json(
            "/api/v1/alert-rules",
            &cpu_rule("cpu high, cooling down", &channel, 3600),
        )
        .await,
        "rule with cooldown",
    )
    .await;

    // Breach: one episode per rule, however many rounds evaluate it.
    points(&app, "web-1", &[95.0, 97.0]).await;
    let fired = wait_episodes(&app, &rule, 1, "firing").await;
    assert_eq!(fired[0]["key"], "series:web-1");
    assert_eq!(fired[0]["value"], "96");
    assert_eq!(fired[0]["threshold"], "80");
    assert_eq!(fired[0]["severity"], "critical");
    tokio::time::sleep(Duration::from_millis(1000)).await; // five more rounds
    assert_eq!(episodes(&app, &rule).await.len(), 1);

    // One notification per episode and rule, delivered on the third attempt, signed.
    let delivered = eventually(Duration::from_secs(30), || async {
        let a = hook.accepted();
        (a.len() == 2).then_some(a)
    })
    .await
    .expect("two notifications delivered (one per rule)");
    let msg = verify(&delivered[0]);
    assert_eq!(msg["state"], "firing");
    assert_eq!(msg["threshold"], "80");
    assert!(msg["links"]["alerts"]
        .as_str()
        .unwrap()
        .contains("/api/v1/alerts?rule="));
    assert_eq!(hook.all().len(), 4, "two failures, then two deliveries");
    let log = body(
        app.get(&format!(
            "/api/v1/notifications?channel={channel}&state=delivered"
        ))
        .await,
    )
    .await;
    let log = log["items"].as_array().unwrap();
    assert_eq!(log.len(), 2);
    let attempts: i64 = log.iter().map(|n| n["attempts"].as_i64().unwrap()).sum();
    assert_eq!(attempts, 4, "{log:?}");

    // Cleared: the average over the window falls under 80.
    points(&app, "web-1", &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).await;
    let resolved = wait_episodes(&app, &rule, 1, "resolved").await;
    assert!(resolved[0]["resolved_at"].is_string());
    assert_eq!(
        resolved[0]["details"]["resolved_reason"],
        "condition_cleared"
    );
    wait_episodes(&app, &sticky, 1, "resolved").await;

    // Breached again: a second episode of the rule without cooldown only.
    points(&app, "web-1", &[1000.0; 12]).await;
    let again = wait_episodes(&app, &rule, 2, "firing").await;
    assert_eq!(again[0]["episode"], 2);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(episodes(&app, &sticky).await.len(), 1, "cooling down");
    assert!(eventually(Duration::from_secs(30), || async {
        (hook.accepted().len() == 3).then_some(())
    })
    .await
    .is_some());

    // Rebuilding the read models equals the live ones and sends nothing again.
    let sql = "SELECT concat_ws('|', tenant_id, rule_id, episode, key, rule_name, type, severity, state, value, threshold, window_start, window_end, fired_at, resolved_at, resolved_value, details) FROM alerts";
    let rules_sql = "SELECT concat_ws('|', tenant_id, id, version, name, type, condition, notify, severity, enabled, cooldown_seconds, notify_resolved, firing, created_at, updated_at) FROM alert_rules";
    let channels_sql = "SELECT concat_ws('|', tenant_id, id, version, name, kind, config, has_secret, created_at, updated_at) FROM notification_channels";
    let channels = snapshot(&app.conn, channels_sql).await;
    rebuild_and_wait(&app, "notification_channels").await;
    assert_eq!(channels, snapshot(&app.conn, channels_sql).await);
    let before = (
        snapshot(&app.conn, sql).await,
        snapshot(&app.conn, rules_sql).await,
    );
    let outbox = count(&app.conn, "SELECT count(*) FROM notification_outbox").await;
    rebuild_and_wait(&app, "alert_rules").await;
    assert_eq!(
        before,
        (
            snapshot(&app.conn, sql).await,
            snapshot(&app.conn, rules_sql).await
        )
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&app.conn, "SELECT count(*) FROM notification_outbox").await,
        outbox
    );
    assert_eq!(hook.accepted().len(), 3);

    // Deleting the rule resolves its open episode and keeps its history.
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/alert-rules/{rule}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let after = wait_episodes(&app, &rule, 2, "resolved").await;
    assert_eq!(after[0]["details"]["resolved_reason"], "rule_deleted");
}

#[actix_web::test]
async fn a_notification_committed_before_a_crash_is_sent_once_by_the_next_server() {
    let conn = fresh_database().await;
    let hook = Receiver::start(0);
    // The first server, a process of its own, never gets to send (its sender polls once
    // a day) and is killed (SIGKILL) once the episode is committed.
    let port = free_port();
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_cloudlens"))
        .arg("serve")
        .env("DATABASE_URL", &conn)
        .env("CLOUDLENS_LISTEN", format!("127.0.0.1:{port}"))
        .env("CLOUDLENS_NOTIFY_POLL_MS", "86400000")
        .env("CLOUDLENS_ALERT_EVALUATION_INTERVAL_MS", "200")
        .env("CLOUDLENS_NOTIFY_ALLOW_PRIVATE", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let ready = eventually(Duration::from_secs(60), || async {
        let r = client.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the first server never became ready");
    let post = |path: &str, body: Value| {
        let request = client.post(format!("{base}{path}"));
        async move {
            let mut res = request.send_json(&body).await.unwrap();
            assert!(res.status().is_success(), "{}", res.status());
            res.json::<Value>().await.unwrap()
        }
    };
    let channel = post(
        "/api/v1/notification-channels",
        json!({"name": "ops hook", "kind": "webhook", "secret": SECRET,
               "config": {"url": format!("{}/hook", hook.url)}}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rule = post("/api/v1/alert-rules", cpu_rule("cpu", &channel, 0)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    post(
        "/api/v1/metrics:batch",
        json!({"points": [{"series": "db-1", "metric": "cpu", "value": 99, "tags": {"env": "prod"},
                           "time": chrono::Utc::now().to_rfc3339()}]}),
    )
    .await;
    let queued = eventually(Duration::from_secs(30), || async {
        (count(
            &conn,
            "SELECT count(*) FROM notification_outbox WHERE state = 'pending'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    assert!(
        queued.is_some(),
        "the episode's notification is committed with it"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(hook.all().is_empty(), "the killed server sent nothing");

    let second = spawn_app_on(conn.clone(), settings()).await;
    let sent = eventually(Duration::from_secs(30), || async {
        (!hook.accepted().is_empty()).then_some(())
    })
    .await;
    assert!(sent.is_some(), "the next server delivers it");
    // Several more polls of the sender: nothing is sent again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hook.all().len(), 1, "exactly once");
    let r = &hook.all()[0];
    let outbox_id = count(&conn, "SELECT id FROM notification_outbox").await;
    assert_eq!(r.delivery.as_deref(), Some(outbox_id.to_string().as_str()));
    assert_eq!(verify(r)["rule"]["id"], rule.as_str());
    assert_eq!(episodes(&second, &rule).await.len(), 1);
    second.handle.stop(true).await;
}

#[actix_web::test]
async fn a_receiver_that_keeps_failing_gets_retries_then_a_dead_letter() {
    let app = spawn_app_on(fresh_database().await, settings()).await;
    let hook = Receiver::start(u32::MAX);
    let channel = webhook(&app, &hook.url).await;
    let rule = created(
        app.post_json("/api/v1/alert-rules", &cpu_rule("cpu", &channel, 0))
            .await,
        "rule",
    )
    .await;
    points(&app, "web-9", &[99.0]).await;
    wait_episodes(&app, &rule, 1, "firing").await;
    let dead = eventually(Duration::from_secs(30), || async {
        let v = body(app.get("/api/v1/notifications?state=dead").await).await;
        let items = v["items"].as_array().unwrap().clone();
        (items.len() == 1).then_some(items)
    })
    .await
    .expect("a dead letter");
    assert_eq!(dead[0]["attempts"], 4);
    assert_eq!(dead[0]["last_status"], 500);
    assert!(dead[0]["last_error"].as_str().unwrap().contains("HTTP 500"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.all().len(), 4, "no attempt after the last");
}

#[actix_web::test]
async fn cost_and_budget_rules_fire_on_bills_and_resolve() {
    use chrono::Datelike;
    let app = spawn_app_on(fresh_database().await, settings()).await;
    crate::costs::open_account(&app, "prod", "CNY").await;
    let hook = Receiver::start(0);
    let channel = webhook(&app, &hook.url).await;
    let cost_rule = created(
        app.post_json(
            "/api/v1/alert-rules",
            &json!({"name": "prod spend", "type": "cost_threshold", "notify": [channel],
                    "condition": {"window_days": 3, "account": "prod", "service": "ecs",
                                  "comparator": "gte", "threshold": "5"}}),
        )
        .await,
        "cost rule",
    )
    .await;
    let budget_rule = created(
        app.post_json(
            "/api/v1/alert-rules",
            &json!({"name": "budget over", "type": "budget_threshold", "notify": [channel],
                    "condition": {"min_percent": 100}}),
        )
        .await,
        "budget rule",
    )
    .await;
    let today = chrono::Utc::now().date_naive();
    let month = today.format("%Y-%m").to_string();
    let bill = |amount: &str| {
        let mut csv =
            String::from("billing_cycle,billing_date,product_code,pretax_amount,currency\n");
        for d in 1..=today.day() {
            csv.push_str(&format!("{month},{month}-{d:02},ecs,{amount},CNY\n"));
        }
        csv
    };
    // A budget this month's bill exceeds: 10 a day against 5.
    let res = app
        .post_json(
            "/api/v1/budgets",
            &json!({"name": "tight", "amount": "5", "currency": "CNY", "period": "monthly",
                    "type": "cost", "start_date": "2024-01-01", "account": "prod",
                    "alert_thresholds": ["50", "100"]}),
        )
        .await;
    let budget = created(res, "budget").await;
    crate::costs::import_ok(&app, "prod", "cloudlens", &bill("10.00")).await;

    let cost = wait_episodes(&app, &cost_rule, 1, "firing").await;
    let days = today.day().min(3);
    assert_eq!(cost[0]["value"], format!("{}.00", 10 * days));
    // Every crossing of 100 % (actual, maybe forecast) is an episode of its own.
    let done = eventually(Duration::from_secs(60), || async {
        let jobs = count(
            &app.conn,
            "SELECT count(*) FROM jobs WHERE kind IN ('costs.budget_thresholds', \
             'costs.budget_thresholds_on_change') AND state = 'succeeded'",
        )
        .await;
        (jobs == 2).then_some(())
    })
    .await;
    assert!(done.is_some(), "the budget threshold job ran");
    let crossings = count(
        &app.conn,
        "SELECT count(*) FROM events WHERE event_type = 'BudgetThresholdCrossed' AND (payload->>'percent')::numeric >= 100",
    )
    .await as usize;
    assert!(crossings >= 1);
    let over = eventually(Duration::from_secs(30), || async {
        let e = episodes(&app, &budget_rule).await;
        (e.len() == crossings).then_some(e)
    })
    .await
    .expect("the budget rule fires once per crossing");
    for e in &over {
        assert_eq!(e["details"]["budget_id"], budget.as_str());
        assert!(e["key"].as_str().unwrap().ends_with(":100"), "{e}");
        assert_eq!(e["state"], "firing");
    }

    // The bill restated to nothing: the cost rule's condition clears.
    crate::costs::import_ok(&app, "prod", "cloudlens", &bill("0.00")).await;
    let cleared = wait_episodes(&app, &cost_rule, 1, "resolved").await;
    let zero: rust_decimal::Decimal = cleared[0]["resolved_value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(zero.is_zero());
    // The budget deleted: its episodes end.
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/budgets/{budget}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let n = over.len();
    let done = eventually(Duration::from_secs(30), || async {
        let e = episodes(&app, &budget_rule).await;
        (e.len() == n && e.iter().all(|x| x["state"] == "resolved")).then_some(())
    })
    .await;
    assert!(done.is_some(), "budget episodes resolved");
    // One notification per episode opened (resolutions are not notified by default).
    let expected = 1 + n;
    assert!(eventually(Duration::from_secs(30), || async {
        (hook.accepted().len() == expected).then_some(())
    })
    .await
    .is_some());
}

#[actix_web::test]
async fn anomaly_rules_follow_the_anomaly_episodes() {
    let app = spawn_app_on(fresh_database().await, settings()).await;
    let rule = created(
        app.post_json(
            "/api/v1/alert-rules",
            &json!({"name": "anomalies", "type": "cost_anomaly",
                    "condition": {"min_severity": "medium", "service": "ecs"}}),
        )
        .await,
        "rule",
    )
    .await;
    // The costs context's anomaly episodes, as its detector records them.
    let store = store(&app.conn, 2);
    let append = |stream: uuid::Uuid, version: i64, events: Vec<(&str, Value)>| {
        let store = store.clone();
        let events: Vec<_> = events
            .into_iter()
            .map(|(t, p)| cloudlens::eventstore::NewEvent::from_value(t, 1, &p).unwrap())
            .collect();
        async move {
            store
                .append(cloudlens::eventstore::AppendRequest {
                    tenant_id: "default",
                    stream_type: "cost_anomaly",
                    stream_id: stream,
                    expected_version: version,
                    events,
                    metadata: json!({}),
                    idempotency: None,
                })
                .await
                .unwrap()
        }
    };
    let anomaly = |id: uuid::Uuid, day: &str, severity: &str, actual: &str| {
        json!({"anomaly_id": id, "account_id": "prod", "service": "ecs", "day": day,
               "actual": actual, "expected": "100", "deviation": 9.0, "severity": severity,
               "contributors": [{"dimension": "region", "value": "cn-hangzhou", "delta": "800"}]})
    };
    let ended = |id: uuid::Uuid, day: &str| {
        json!({"anomaly_id": id, "account_id": "prod", "service": "ecs", "day": day,
               "last_day": day, "restated": false})
    };
    // An anomaly below the rule's severity fires nothing until it grows worse.
    let (first, growing) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    append(
        first,
        0,
        vec![(
            "CostAnomalyDetected",
            anomaly(growing, "2026-11-20", "low", "120"),
        )],
    )
    .await;
    append(
        first,
        1,
        vec![(
            "CostAnomalyUpdated",
            anomaly(growing, "2026-11-21", "critical", "900"),
        )],
    )
    .await;
    let fired = wait_episodes(&app, &rule, 1, "firing").await;
    assert_eq!(fired[0]["key"], format!("anomaly:{growing}"));
    assert_eq!(fired[0]["value"], "900");
    assert_eq!(
        fired[0]["details"]["contributors"][0]["value"],
        "cn-hangzhou"
    );
    append(
        first,
        2,
        vec![("CostAnomalyEnded", ended(growing, "2026-11-23"))],
    )
    .await;
    let resolved = wait_episodes(&app, &rule, 1, "resolved").await;
    assert_eq!(resolved[0]["details"]["resolved_reason"], "anomaly_ended");
    // Found and over in one append (a bill of several days): fired, then resolved.
    let (second, past) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    append(
        second,
        0,
        vec![
            (
                "CostAnomalyDetected",
                anomaly(past, "2026-10-02", "high", "700"),
            ),
            ("CostAnomalyEnded", ended(past, "2026-10-03")),
        ],
    )
    .await;
    let both = wait_episodes(&app, &rule, 2, "resolved").await;
    assert_eq!(both[0]["key"], format!("anomaly:{past}"));
    // Each event had its reaction.
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM jobs WHERE kind LIKE 'alerts.cost_anomaly%' AND state = 'succeeded'"
        )
        .await,
        5
    );
}

#[actix_web::test]
async fn channels_send_robot_and_email_test_messages() {
    let app = spawn_app().await;
    let hook = Receiver::start(0);
    let (smtp, mails) = smtp_sink().await;
    let ding = created(
        app.post_json(
            "/api/v1/notification-channels",
            &json!({"name": "ding", "kind": "dingtalk", "secret": "SECxyz",
                    "config": {"url": format!("{}/robot/send?access_token=t", hook.url)}}),
        )
        .await,
        "dingtalk",
    )
    .await;
    let wecom = created(
        app.post_json(
            "/api/v1/notification-channels",
            &json!({"name": "wecom", "kind": "wecom",
                    "config": {"url": format!("{}/cgi-bin/webhook/send?key=k", hook.url)}}),
        )
        .await,
        "wecom",
    )
    .await;
    let email = created(
        app.post_json(
            "/api/v1/notification-channels",
            &json!({"name": "mail", "kind": "email",
                    "config": {"host": "127.0.0.1", "port": smtp, "security": "none",
                               "from": "cloudlens@example.com", "to": ["ops@example.com"]}}),
        )
        .await,
        "email",
    )
    .await;
    for id in [&ding, &wecom, &email] {
        let res = app
            .client
            .post(app.url(&format!("/api/v1/notification-channels/{id}:test")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let v = body(res).await;
        assert_eq!(v["delivered"], true, "{v}");
    }
    let got = hook.all();
    assert_eq!(got.len(), 2);
    let ding_req = got.iter().find(|r| r.path.starts_with("/robot")).unwrap();
    assert!(ding_req.path.contains("timestamp=") && ding_req.path.contains("sign="));
    let ding_body: Value = serde_json::from_slice(&ding_req.body).unwrap();
    assert_eq!(ding_body["msgtype"], "markdown");
    assert!(ding_body["markdown"]["title"]
        .as_str()
        .unwrap()
        .contains("TEST"));
    let wecom_body: Value = serde_json::from_slice(
        &got.iter()
            .find(|r| r.path.starts_with("/cgi-bin"))
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(wecom_body["markdown"]["content"].is_string());
    let mails = mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("To: ops@example.com"), "{}", mails[0]);
    assert!(mails[0].contains("cloudlens test message"));
    // Never the secret: not in the read model, not in an event.
    let v = body(
        app.get(&format!("/api/v1/notification-channels/{ding}"))
            .await,
    )
    .await;
    assert_eq!(v["has_secret"], true);
    assert!(!v.to_string().contains("SECxyz"));
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE payload::text LIKE '%SECxyz%'"
        )
        .await,
        0
    );
    // A receiver that is not there: delivered false, logged.
    let gone = created(
        app.post_json(
            "/api/v1/notification-channels",
            &json!({"name": "gone", "kind": "wecom",
                    "config": {"url": format!("http://127.0.0.1:{}/x", free_port()), "timeout_ms": 500}}),
        )
        .await,
        "gone",
    )
    .await;
    let res = app
        .client
        .post(app.url(&format!("/api/v1/notification-channels/{gone}:test")))
        .send()
        .await
        .unwrap();
    let v = body(res).await;
    assert_eq!(v["delivered"], false);
    assert!(v["error"].as_str().unwrap().contains("connection"), "{v}");
    let log = body(app.get("/api/v1/notifications?state=dead").await).await;
    assert_eq!(log["items"][0]["kind"], "test");
}

#[actix_web::test]
async fn bad_rules_and_channels_get_their_field_and_write_nothing() {
    let app = spawn_app().await;
    let hook = Receiver::start(0);
    let channel = webhook(&app, &hook.url).await;
    let events = || {
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE stream_type = 'alert_rule'",
        )
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"name": "x", "type": "disk_full", "condition": {}}),
            "type",
        ),
        (
            json!({"name": "x", "type": "metric_threshold", "condition": {"metric": "cpu",
                   "aggregation": "avg", "window_seconds": 60, "comparator": "bigger", "threshold": 1}}),
            "condition.comparator",
        ),
        (
            json!({"name": "x", "type": "metric_threshold", "condition": {"metric": "cpu",
                   "aggregation": "avg", "window_seconds": 0, "comparator": "gt", "threshold": 1}}),
            "condition.window_seconds",
        ),
        (
            json!({"name": "x", "type": "cost_threshold", "notify": [uuid::Uuid::now_v7()],
                   "condition": {"window_days": 7, "comparator": "gt", "threshold": 1}}),
            "notify[0]",
        ),
        (
            json!({"name": "x", "type": "cost_threshold", "notify": [channel, channel],
                   "condition": {"window_days": 7, "comparator": "gt", "threshold": 1}}),
            "notify[1]",
        ),
        (
            json!({"name": " ", "type": "cost_anomaly", "condition": {}}),
            "name",
        ),
        (
            json!({"name": "x", "type": "cost_anomaly", "condition": {}, "cooldown": 99999999}),
            "cooldown",
        ),
        (
            json!({"name": "x", "type": "cost_threshold",
                   "condition": {"window_days": 7, "comparator": "gt"}}),
            "condition.threshold",
        ),
    ];
    for (draft, field) in cases {
        let res = app.post_json("/api/v1/alert-rules", &draft).await;
        assert_eq!(res.status(), 422, "{draft}");
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/problem+json"
        );
        let v = body(res).await;
        assert_eq!(v["field"], field, "{v}");
    }
    assert_eq!(events().await, 0);
    let channels: Vec<(Value, &str)> = vec![
        (
            json!({"name": "h", "kind": "webhook", "config": {"url": "http://x.example/h"}}),
            "secret",
        ),
        (
            json!({"name": "h", "kind": "webhook", "secret": SECRET, "config": {"url": "file:///etc"}}),
            "config.url",
        ),
        (
            json!({"name": "h", "kind": "email", "config": {"host": "smtp.example", "from": "a@b.example", "to": []}}),
            "config.to",
        ),
        (json!({"name": "h", "kind": "pager", "config": {}}), "kind"),
        (
            json!({"name": "h", "kind": "email", "secret": "pw", "config": {"host": "smtp.example",
                   "security": "none", "username": "u", "from": "a@b.example", "to": ["c@d.example"]}}),
            "config.security",
        ),
    ];
    for (draft, field) in channels {
        let res = app.post_json("/api/v1/notification-channels", &draft).await;
        assert_eq!(res.status(), 422, "{draft}");
        let v = body(res).await;
        assert_eq!(v["field"], field, "{v}");
    }
    assert_eq!(
        count(
            &app.conn,
            "SELECT count(*) FROM events WHERE stream_type = 'notification_channel'"
        )
        .await,
        1
    );
    for q in ["state=open", "from=yesterday", "cursor=zzz", "limit=0"] {
        let res = app.get(&format!("/api/v1/alerts?{q}")).await;
        assert_eq!(res.status(), 422, "{q}");
    }
    let res = app.get("/api/v1/notifications?state=lost").await;
    assert_eq!(res.status(), 422);
    // If-Match on a rule: a stale write is refused.
    let rule = created(
        app.post_json("/api/v1/alert-rules", &cpu_rule("r", &channel, 0))
            .await,
        "rule",
    )
    .await;
    let res = app
        .client
        .put(app.url(&format!("/api/v1/alert-rules/{rule}")))
        .insert_header(("If-Match", "\"7\""))
        .send_json(&cpu_rule("r2", &channel, 0))
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    let res = app
        .client
        .put(app.url(&format!("/api/v1/alert-rules/{rule}")))
        .insert_header(("If-Match", "\"1\""))
        .send_json(&cpu_rule("r2", &channel, 0))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("etag").unwrap(), "\"2\"");
    let position = body(res).await["position"].clone();
    // A rule as read can be sent back as it is: nothing changes, no event.
    let v = body(
        app.get(&format!(
            "/api/v1/alert-rules/{rule}?min_position={position}"
        ))
        .await,
    )
    .await;
    assert_eq!(v["condition"]["comparator"], "gt", "{v}");
    let back = json!({"name": v["name"], "type": v["type"], "condition": v["condition"],
                      "notify": v["notify"], "severity": v["severity"], "enabled": v["enabled"],
                      "cooldown": v["cooldown"], "notify_resolved": v["notify_resolved"]});
    let res = app
        .client
        .put(app.url(&format!("/api/v1/alert-rules/{rule}")))
        .insert_header(("If-Match", "\"2\""))
        .send_json(&back)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("etag").unwrap(), "\"2\"");
    // Another tenant sees none of it.
    let other = |path: String| {
        app.client
            .get(app.url(&path))
            .insert_header(("X-Tenant-Id", "other"))
            .send()
    };
    assert_eq!(
        other(format!("/api/v1/alert-rules/{rule}"))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        other(format!("/api/v1/notification-channels/{channel}"))
            .await
            .unwrap()
            .status(),
        404
    );
    let mut res = other("/api/v1/alert-rules".to_owned()).await.unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["items"], json!([]));
    let res = app
        .client
        .post(app.url(&format!("/api/v1/notification-channels/{channel}:test")))
        .insert_header(("X-Tenant-Id", "other"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[actix_web::test]
async fn channels_may_not_reach_private_addresses_by_default() {
    let app = spawn_app_on(
        fresh_database().await,
        Settings {
            notify_allow_private: false,
            ..settings()
        },
    )
    .await;
    let hook = Receiver::start(0);
    let channel = webhook(&app, &hook.url).await;
    let res = app
        .client
        .post(app.url(&format!("/api/v1/notification-channels/{channel}:test")))
        .send()
        .await
        .unwrap();
    let v = body(res).await;
    assert_eq!(v["delivered"], false);
    assert!(
        v["error"].as_str().unwrap().contains("private address"),
        "{v}"
    );
    assert!(
        hook.all().is_empty(),
        "nothing reached the loopback receiver"
    );
}
