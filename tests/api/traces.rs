#![allow(clippy::unwrap_used, clippy::expect_used)]
//! OpenTelemetry traces: the real binary with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an
//! OTLP/HTTP receiver the test runs. Spans of requests (continuing the caller's
//! `traceparent`), commands, appends and projector batches arrive; the trace id is in the
//! problem body and in the request's log lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// An OTLP/HTTP receiver on plain threads: every body POSTed to `/v1/traces`, parsed.
fn otlp_receiver() -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut r = BufReader::new(stream);
                let mut line = String::new();
                // Keep-alive: several requests per connection.
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    let mut len = 0usize;
                    let mut h = String::new();
                    while r.read_line(&mut h).unwrap_or(0) > 0 && !h.trim_end().is_empty() {
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        h.clear();
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    if line.starts_with("POST /v1/traces") {
                        let _ = tx.send(serde_json::from_slice(&body).unwrap());
                    }
                    out.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                    )
                    .unwrap();
                    line.clear();
                }
            });
        }
    });
    (base, rx)
}

/// Every span of one export body.
fn spans(v: &Value) -> Vec<Value> {
    let arr = |v: &Value, k: &str| v[k].as_array().cloned().unwrap_or_default();
    arr(v, "resourceSpans")
        .iter()
        .flat_map(|r| arr(r, "scopeSpans"))
        .flat_map(|s| arr(&s, "spans"))
        .collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const TRACE_2: &str = "0af7651916cd43dd8448eb211c80319c";

#[actix_web::test]
async fn spans_of_requests_commands_appends_and_projector_batches_reach_the_collector() {
    let (endpoint, received) = otlp_receiver();
    let port = free_port();
    let log = test_root().join(format!("traces-{}.log", uuid::Uuid::new_v4().simple()));
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_cloudlens"))
            .arg("serve")
            .env("DATABASE_URL", fresh_database().await)
            .env("CLOUDLENS_LISTEN", format!("127.0.0.1:{port}"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("RUST_LOG", "info,cloudlens=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let ready = eventually(Duration::from_secs(60), || async {
        let r = client.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the server never became ready");

    // An error answers with the caller's trace id.
    let mut res = client
        .get(format!("{base}/api/v1/no-such-route"))
        .insert_header(("traceparent", format!("00-{TRACE}-{PARENT}-01")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["trace_id"], TRACE);

    // A command: request → command → append, then a projector batch applies the event.
    let res = client
        .post(format!("{base}/api/v1/budgets"))
        .insert_header(("traceparent", format!("00-{TRACE_2}-{PARENT}-01")))
        .send_json(&budget_body("traced"))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    let mut seen: Vec<Value> = Vec::new();
    let wanted = |seen: &[Value]| {
        let has = |f: &dyn Fn(&Value) -> bool| seen.iter().any(f);
        has(&|s| {
            s["traceId"] == TRACE && s["parentSpanId"] == PARENT && s["name"] == "GET unmatched"
        }) && has(&|s| {
            s["traceId"] == TRACE_2 && s["name"] == "POST /api/v1/budgets" && s["kind"] == 2
        }) && has(&|s| s["traceId"] == TRACE_2 && s["name"] == "command")
            && has(&|s| s["traceId"] == TRACE_2 && s["name"] == "store.append")
            && has(&|s| s["name"] == "projector.batch")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wanted(&seen) && Instant::now() < deadline {
        if let Ok(body) = received.recv_timeout(Duration::from_millis(500)) {
            let resource = body["resourceSpans"][0]["resource"]["attributes"].to_string();
            assert!(resource.contains("cloudlens"), "service.name: {resource}");
            seen.extend(spans(&body));
        }
    }
    let names: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s["traceId"], s["name"]))
        .collect();
    assert!(wanted(&seen), "spans received: {names:?}");
    // The append is a child of the command, the command of the request.
    let id_of = |name: &str| {
        seen.iter()
            .find(|s| s["traceId"] == TRACE_2 && s["name"] == name)
            .map(|s| s["spanId"].clone())
            .unwrap()
    };
    let parent_of = |name: &str| {
        seen.iter()
            .find(|s| s["traceId"] == TRACE_2 && s["name"] == name)
            .map(|s| s["parentSpanId"].clone())
            .unwrap()
    };
    assert_eq!(parent_of("store.append"), id_of("command"));
    assert_eq!(parent_of("command"), id_of("POST /api/v1/budgets"));

    Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(server.0.wait().unwrap().success());
    // The request's log line names its trace.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.lines()
            .any(|l| l.contains("http request") && l.contains(&format!("trace_id={TRACE_2}"))),
        "no request log line with the trace id in:\n{logs}"
    );
}
