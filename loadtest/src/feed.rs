//! The event feed benchmark (issue 13).
//!
//! 1. Seeds EVENTS events of the stream type `feed_bench` (10 per stream) straight into
//!    `events` through `--conn`, 100,000 per transaction (skipped with `--events 0`).
//! 2. Throughput: one consumer reads them all from the start through NDJSON pages of
//!    `--page` events (`stream_types=feed_bench`), events/s from the first request to the
//!    last page.
//! 3. Delivery latency at light load: an SSE stream open on `stream_types=budget`; REPS
//!    times, one budget is created and the time from its 201 to its event arriving on the
//!    stream is taken (p50/p99), with a pause between commands.
//!
//! Numbers are printed, never asserted (loadtest/feed.sh, loadtest/RESULTS.md).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::stats::Samples;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8096")]
    pub url: String,
    /// Connection string of the server's database (to seed the events).
    #[arg(long)]
    pub conn: Option<String>,
    #[arg(long, default_value_t = 1_000_000)]
    pub events: i64,
    /// Events per NDJSON page (at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub page: i64,
    /// Budgets created for the delivery latency.
    #[arg(long, default_value_t = 200)]
    pub reps: usize,
}

const SEED_SQL: &str = "\
INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type, schema_version, payload)
SELECT 'default', 'feed_bench',
       ('00000000-0000-4000-8000-' || lpad(to_hex(i / 10), 12, '0'))::uuid,
       i % 10 + 1, 'Ticked', 1, jsonb_build_object('n', i, 'note', 'feed benchmark event')
  FROM generate_series($1::bigint, $2::bigint - 1) AS i";

async fn seed(conn: &str, events: i64) -> anyhow::Result<()> {
    let client = cloudlens::db::connect(conn).await?;
    let started = Instant::now();
    let mut from = 0;
    while from < events {
        let to = (from + 100_000).min(events);
        client.execute(SEED_SQL, &[&from, &to]).await?;
        from = to;
    }
    println!(
        "seeded {events} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn read_all(client: &awc::Client, url: &str, events: i64, page: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut after = "0".to_owned();
    let mut read = 0_i64;
    let mut pages = 0;
    while read < events {
        let mut res = client
            .get(format!(
                "{url}/api/v1/feed?after={after}&stream_types=feed_bench&limit={page}"
            ))
            .insert_header(("Accept", "application/x-ndjson"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(res.status() == 200, "feed answered {}", res.status());
        let next = res
            .headers()
            .get("feed-next-cursor")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = res.body().limit(1 << 30).await?;
        let lines = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        if lines == 0 {
            break;
        }
        read += lines as i64;
        pages += 1;
        after = next;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "feed from the start: {read} events in {pages} pages, {secs:.2} s, {:.0} events/s",
        read as f64 / secs
    );
    Ok(())
}

async fn latency(client: &awc::Client, url: &str, reps: usize) -> anyhow::Result<()> {
    let end = client
        .get(format!(
            "{url}/api/v1/feed?stream_types=budget&limit=1000&after=0"
        ))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .json::<Value>()
        .limit(1 << 28)
        .await?;
    // Past every budget event there is: page to the end.
    let mut after = end["next"].as_str().unwrap_or("0").to_owned();
    loop {
        let page: Value = client
            .get(format!(
                "{url}/api/v1/feed?stream_types=budget&limit=1000&after={after}"
            ))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .json()
            .limit(1 << 28)
            .await?;
        let n = page["events"].as_array().map_or(0, Vec::len);
        after = page["next"].as_str().unwrap_or(&after).to_owned();
        if n == 0 {
            break;
        }
    }
    let mut stream = client
        .get(format!("{url}/api/v1/feed?stream_types=budget"))
        .insert_header(("Accept", "text/event-stream"))
        .insert_header(("Last-Event-ID", after.as_str()))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut buf = String::new();
    let mut samples = Samples::default();
    for i in 0..reps {
        let body = json!({"name": format!("feed-latency-{i}"), "amount": "100", "currency": "CNY",
            "period": "monthly", "type": "cost", "start_date": "2026-01-01", "end_date": "2026-12-31"});
        let mut res = client
            .post(format!("{url}/api/v1/budgets"))
            .send_json(&body)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let acknowledged = Instant::now();
        anyhow::ensure!(res.status() == 201, "create answered {}", res.status());
        let created: Value = res.json().await?;
        let id = created["id"].as_str().unwrap_or_default().to_owned();
        'wait: loop {
            let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("SSE stream ended"))?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            buf.push_str(std::str::from_utf8(&chunk)?);
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if block.contains(&id) {
                    samples.add(acknowledged.elapsed());
                    break 'wait;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "delivery over SSE after the command's answer ({} commands, light load): p50 {:.2} ms, p99 {:.2} ms",
        samples.len(),
        samples.percentile(50.0),
        samples.percentile(99.0)
    );
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    actix_rt::System::new().block_on(async move {
        if let (Some(conn), true) = (&a.conn, a.events > 0) {
            seed(conn, a.events).await?;
        }
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(3600))
            .finish();
        read_all(&client, &a.url, a.events, a.page.clamp(1, 10_000)).await?;
        latency(&client, &a.url, a.reps).await
    })
}
