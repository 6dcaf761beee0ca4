//! A consumer that follows a consumer group (ADR 0029) and keeps no state of its own: the
//! group holds the position, so a restart (same member name) goes on from the last
//! acknowledged batch — at least once, never with a gap.
//!
//! ```sh
//! cargo run --example consumer -- http://127.0.0.1:8080 billing worker-1 [budget,bill_import]
//! ```
//! `CLOUDLENS_API_KEY` (optional) is sent as the bearer token, `CLOUDLENS_TENANT` as
//! `X-Tenant-Id`.

use std::time::Duration;

use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

struct Group {
    client: awc::Client,
    base: String,
    group: String,
    member: String,
}

impl Group {
    async fn call(
        &self,
        method: awc::http::Method,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), Error> {
        let mut res = self
            .client
            .request(
                method,
                format!("{}/api/v1/consumers/{}{path}", self.base, self.group),
            )
            .send_json(body)
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let value = res
            .json::<Value>()
            .limit(64 << 20)
            .await
            .unwrap_or(Value::Null);
        Ok((status, value))
    }
}

/// What the consumer does with an event: here, print it. Must be idempotent: an event
/// whose ack was lost comes again.
fn handle(event: &Value) {
    println!(
        "{} {} {} v{}",
        event["position"], event["stream_type"], event["event_type"], event["version"]
    );
}

#[actix_web::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, group, member, rest @ ..] = args.as_slice() else {
        return Err("usage: consumer BASE_URL GROUP MEMBER [STREAM_TYPES]".into());
    };
    let mut client = awc::Client::builder().timeout(Duration::from_secs(30));
    if let Ok(key) = std::env::var("CLOUDLENS_API_KEY") {
        client = client.bearer_auth(key);
    }
    if let Ok(tenant) = std::env::var("CLOUDLENS_TENANT") {
        client = client.add_default_header(("X-Tenant-Id", tenant));
    }
    let g = Group {
        client: client.finish(),
        base: base.trim_end_matches('/').to_owned(),
        group: group.clone(),
        member: member.clone(),
    };
    let stream_types: Vec<&str> = rest
        .first()
        .map(|s| s.split(',').collect())
        .unwrap_or_default();
    let (status, answer) = g
        .call(
            awc::http::Method::PUT,
            "",
            &json!({"filters": {"stream_types": stream_types}}),
        )
        .await?;
    if status >= 300 {
        return Err(format!("cannot declare the group: {status} {answer}").into());
    }
    loop {
        let (status, batch) = g
            .call(
                awc::http::Method::POST,
                "/poll",
                &json!({"member": g.member, "max": 500, "lease_seconds": 30}),
            )
            .await?;
        if status != 200 {
            eprintln!("poll: {status} {batch}; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let events = batch["events"].as_array().cloned().unwrap_or_default();
        events.iter().for_each(handle);
        match batch["cursor"].as_str() {
            Some(cursor) => {
                let (status, answer) = g
                    .call(
                        awc::http::Method::POST,
                        "/ack",
                        &json!({"member": g.member, "cursor": cursor}),
                    )
                    .await?;
                // 409: the lease ran out and another member has these events now.
                if status != 200 {
                    eprintln!("ack: {status} {answer}");
                }
            }
            // Caught up: the poll renewed the lease; look again shortly.
            None => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
