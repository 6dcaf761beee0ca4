//! The TTL collections benchmark (issue 11, the MongoDB/Redis replacement).
//!
//! 1. Writes: ITEMS generated log lines (level INFO 70 %, WARN 15 %, ERROR 10 %, DEBUG
//!    5 %; SERVICES services; a host, a message, a duration; no key, so each gets a
//!    UUIDv7) to the seed collection `system_logs`, as NDJSON bodies of PER_REQUEST lines,
//!    CONCURRENCY requests at a time; items/s from the first request to the last answer
//!    (an answer means committed and readable), and the request latencies.
//! 2. Reads over HTTP, REPS each: `filter={"level":"ERROR","service":"svc-N"}` newest
//!    first, limit 100 (a different service each time); the same with the level only;
//!    the newest 100 without a filter; one item by key.
//! 3. The table's size per million items (with `--conn`).
//!
//! Numbers are printed, never asserted (loadtest/collections.sh, loadtest/RESULTS.md).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::stats::Samples;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8095")]
    pub url: String,
    /// Connection string of the server's database (for the table's size; optional).
    #[arg(long)]
    pub conn: Option<String>,
    #[arg(long, default_value_t = 1_000_000)]
    pub items: usize,
    /// Items per request (NDJSON lines).
    #[arg(long, default_value_t = 10_000)]
    pub per_request: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    #[arg(long, default_value_t = 200)]
    pub reps: usize,
}

const COLLECTION: &str = "system_logs";
const WORDS: [&str; 12] = [
    "request",
    "served",
    "cache",
    "miss",
    "retry",
    "timeout",
    "user",
    "order",
    "payment",
    "queue",
    "flushed",
    "connection",
];

fn level(rng: &mut StdRng) -> &'static str {
    match rng.gen_range(0..100) {
        0..=69 => "INFO",
        70..=84 => "WARN",
        85..=94 => "ERROR",
        _ => "DEBUG",
    }
}

/// The NDJSON bodies, generated before the clock starts.
fn bodies(a: &Args) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(42);
    let mut out = Vec::with_capacity(a.items / a.per_request.max(1) + 1);
    let mut body = String::new();
    for i in 0..a.items {
        let message: Vec<&str> = (0..6)
            .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
            .collect();
        let _ = writeln!(
            body,
            r#"{{"data":{{"level":"{}","service":"svc-{}","host":"host-{}","message":"{}","duration_ms":{},"seq":{i}}}}}"#,
            level(&mut rng),
            rng.gen_range(0..a.services),
            rng.gen_range(0..200),
            message.join(" "),
            rng.gen_range(0..5_000),
        );
        if (i + 1) % a.per_request == 0 {
            out.push(std::mem::take(&mut body));
        }
    }
    if !body.is_empty() {
        out.push(body);
    }
    out
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn line(what: &str, s: &mut Samples) {
    println!(
        "{what:<58} p50 {:>8.2} ms  p95 {:>8.2} ms  (n={})",
        s.percentile(50.0),
        s.percentile(95.0),
        s.len()
    );
}

/// Posts the bodies, `concurrency` at a time: (seconds to the last answer, latencies).
async fn write(
    client: &awc::Client,
    url: &str,
    bodies: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<(f64, Samples, i64)> {
    use futures::StreamExt;
    let started = Instant::now();
    let answers: Vec<anyhow::Result<(Duration, i64)>> = futures::stream::iter(bodies)
        .map(|b| async move {
            let t = Instant::now();
            let mut res = client
                .post(format!("{url}/api/v1/collections/{COLLECTION}/items"))
                .insert_header(("Content-Type", "application/x-ndjson"))
                .send_body(b)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let v: Value = res.json().await?;
            anyhow::ensure!(res.status() == 200, "batch refused: {v}");
            Ok((t.elapsed(), v["written"].as_i64().unwrap_or(0)))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut s = Samples::default();
    let mut written = 0;
    for a in answers {
        let (d, n) = a?;
        s.add(d);
        written += n;
    }
    Ok((elapsed, s, written))
}

/// Times GETs of `paths`; returns the samples and the mean number of items answered.
async fn time_reads(
    client: &awc::Client,
    url: &str,
    paths: &[String],
) -> anyhow::Result<(Samples, f64)> {
    let mut s = Samples::default();
    let mut items = 0;
    for p in paths {
        let t = Instant::now();
        let mut res = client
            .get(format!("{url}{p}"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let v: Value = res.json().limit(64 << 20).await?;
        s.add(t.elapsed());
        anyhow::ensure!(res.status() == 200, "read refused: {p}: {v}");
        items += v["items"].as_array().map_or(1, Vec::len);
    }
    Ok((s, items as f64 / paths.len().max(1) as f64))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    println!("== generating {} log lines", a.items);
    let bodies = bodies(&a);
    let bytes: usize = bodies.iter().map(String::len).sum();
    let mut rng = StdRng::seed_from_u64(7);
    let base = format!("/api/v1/collections/{COLLECTION}/items");
    let filtered: Vec<String> = (0..a.reps)
        .map(|_| {
            let f = format!(
                r#"{{"level":"ERROR","service":"svc-{}"}}"#,
                rng.gen_range(0..a.services)
            );
            format!("{base}?filter={}&sort=-created_at&limit=100", encode(&f))
        })
        .collect();
    let by_level: Vec<String> = (0..a.reps)
        .map(|i| {
            let l = ["ERROR", "WARN", "DEBUG"][i % 3];
            format!(
                "{base}?filter={}&limit=100",
                encode(&format!(r#"{{"level":"{l}"}}"#))
            )
        })
        .collect();
    let newest: Vec<String> = (0..a.reps).map(|_| format!("{base}?limit=100")).collect();

    actix_rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(3600))
            .finish();
        println!(
            "== writes: {} items to {COLLECTION}, {} requests of {} lines, {} at a time, {:.0} MiB of NDJSON",
            a.items,
            bodies.len(),
            a.per_request,
            a.concurrency,
            bytes as f64 / 1048576.0
        );
        let (secs, mut lat, written) = write(&client, &a.url, bodies, a.concurrency).await?;
        println!(
            "written: {written} items in {secs:.1} s: {:.0} items/s ({:.1} MiB/s of NDJSON)",
            written as f64 / secs,
            bytes as f64 / 1048576.0 / secs
        );
        line("batch request", &mut lat);

        println!("== reads over HTTP, {} each", a.reps);
        let (mut s, n) = time_reads(&client, &a.url, &filtered).await?;
        line(
            &format!("filter level=ERROR & service, newest 100 (~{n:.0} items)"),
            &mut s,
        );
        let (mut s, n) = time_reads(&client, &a.url, &by_level).await?;
        line(&format!("filter level only, newest 100 (~{n:.0} items)"), &mut s);
        let (mut s, n) = time_reads(&client, &a.url, &newest).await?;
        line(&format!("no filter, newest 100 (~{n:.0} items)"), &mut s);
        // Keys from the newest pages, one GET each.
        let mut res = client
            .get(format!("{}{base}?limit=1000", a.url))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let page: Value = res.json().limit(64 << 20).await?;
        let keys: Vec<String> = page["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["key"].as_str())
                    .cycle()
                    .take(a.reps)
                    .map(|k| format!("{base}/{k}"))
                    .collect()
            })
            .unwrap_or_default();
        let (mut s, _) = time_reads(&client, &a.url, &keys).await?;
        line("one item by key", &mut s);

        if let Some(conn) = &a.conn {
            let (db, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
            actix_rt::spawn(connection);
            let r = db
                .query_one(
                    "SELECT count(*), pg_total_relation_size('collection_items'),
                            pg_relation_size('collection_items_data')
                       FROM collection_items",
                    &[],
                )
                .await?;
            let (rows, total, gin): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
            let per_m = |b: i64| b as f64 / 1048576.0 / (rows.max(1) as f64 / 1e6);
            println!(
                "collection_items: {rows} rows, {:.0} MiB with indexes ({:.0} MiB per million items; GIN over data {:.0} MiB per million)",
                total as f64 / 1048576.0,
                per_m(total),
                per_m(gin)
            );
        }
        anyhow::Ok(())
    })
}
