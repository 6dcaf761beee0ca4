//! The alerts benchmark (issue 12): evaluation cost of RULES metric rules over SERIES
//! series, and notification throughput to a local receiver.
//!
//! 1. Setup over HTTP: two webhook channels to a receiver this process runs; SERIES
//!    series of metric `cpu`, tagged `shard=s<i % SHARDS>`, with POINTS points each in
//!    the last minutes (uniform 0–100); RULES rules `max(cpu{shard=…}) over 10 min >
//!    THRESHOLD`, rule i on shard i % SHARDS, each notifying both channels.
//! 2. Baseline, the seed's way: one query per rule (what it ran when an endpoint was
//!    called), the same measurement, timed over the rules.
//! 3. cloudlens's evaluator (`alerts::evaluate::Evaluator::round`, the code the elected
//!    process runs): the first round, which opens an episode per breaching (rule, series)
//!    and appends its `AlertFired`; then ROUNDS steady rounds (nothing changes: no
//!    event). The server itself is started with evaluation off (one round a day), so only
//!    this process evaluates.
//! 4. Notifications: the first round's episodes queue one notification per channel in
//!    the outbox (in the events' transactions); the server's sender delivers them to the
//!    receiver. Throughput: delivered / (last delivery − first row queued).
//!
//! Numbers are printed, never asserted (loadtest/alerts.sh, loadtest/RESULTS.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::stats::Rounds;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8096")]
    pub url: String,
    /// Connection string of the server's database.
    #[arg(long)]
    pub conn: String,
    #[arg(long, default_value_t = 1_000)]
    pub rules: usize,
    #[arg(long, default_value_t = 10_000)]
    pub series: usize,
    #[arg(long, default_value_t = 6)]
    pub points: usize,
    #[arg(long, default_value_t = 100)]
    pub shards: usize,
    /// A series breaches when one of its points is above this.
    #[arg(long, default_value_t = 99.9)]
    pub threshold: f64,
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// One query per rule, as the seed evaluated an alert when its endpoint was called.
const PER_RULE_SQL: &str = "\
SELECT s.series, max(p.value)
  FROM metric_series s
  JOIN metric_points p ON p.tenant_id = s.tenant_id AND p.series_id = s.id
 WHERE s.tenant_id = $1 AND s.metric = $2 AND s.tags @> $3
   AND p.time > now() - make_interval(secs => $4)
 GROUP BY s.series";

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// A receiver on loopback that answers 200 and counts.
fn receiver(count: Arc<AtomicU64>) -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = actix_web::HttpServer::new(move || {
        let count = count.clone();
        actix_web::App::new().default_service(actix_web::web::to(
            move |_: actix_web::web::Bytes| {
                count.fetch_add(1, Ordering::Relaxed);
                async { actix_web::HttpResponse::Ok().finish() }
            },
        ))
    })
    .workers(2)
    .listen(listener)?
    .run();
    actix_rt::spawn(server);
    Ok(url)
}

async fn post(client: &awc::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let mut res = client.post(url).send_json(body).await.map_err(err)?;
    let v: Value = res.json().limit(16 << 20).await?;
    anyhow::ensure!(res.status().is_success(), "{url}: {} {v}", res.status());
    Ok(v)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    actix_rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(600))
            .finish();
        let delivered = Arc::new(AtomicU64::new(0));
        let hook = receiver(delivered.clone())?;
        let mut channels = Vec::new();
        for i in 0..2 {
            let v = post(
                &client,
                &format!("{}/api/v1/notification-channels", a.url),
                &json!({"name": format!("bench {i}"), "kind": "webhook",
                        "secret": "benchmark-secret-0123456789",
                        "config": {"url": format!("{hook}/hook/{i}")}}),
            )
            .await?;
            channels.push(v["id"].clone());
        }

        println!("== setup: {} series × {} points, {} rules", a.series, a.points, a.rules);
        let mut rng = StdRng::seed_from_u64(12);
        let now = chrono::Utc::now();
        let mut body = String::new();
        let mut bodies = Vec::new();
        for s in 0..a.series {
            for p in 0..a.points {
                let t = now - chrono::Duration::seconds((30 * (a.points - p)) as i64);
                body.push_str(
                    &json!({"series": format!("host-{s}"), "metric": "cpu",
                            "tags": {"shard": format!("s{}", s % a.shards)},
                            "time": t.to_rfc3339(), "value": rng.gen_range(0.0..100.0)})
                    .to_string(),
                );
                body.push('\n');
            }
            if body.len() > 4 << 20 {
                bodies.push(std::mem::take(&mut body));
            }
        }
        bodies.push(body);
        let started = Instant::now();
        let mut points_at = 0;
        for b in bodies {
            let mut res = client
                .post(format!("{}/api/v1/metrics:batch", a.url))
                .insert_header(("Content-Type", "application/x-ndjson"))
                .send_body(b)
                .await
                .map_err(err)?;
            anyhow::ensure!(res.status().is_success(), "points: {}", res.status());
            let v: Value = res.json().await?;
            points_at = points_at.max(v["position"].as_i64().unwrap_or(0));
        }
        // Until the points are in the read model.
        let mut res = client
            .get(format!("{}/api/v1/metrics/host-0/cpu/latest?min_position={points_at}", a.url))
            .send()
            .await
            .map_err(err)?;
        anyhow::ensure!(res.status().is_success(), "points read model: {}", res.status());
        let _ = res.body().await;
        println!("points posted in {:.1} s", started.elapsed().as_secs_f64());
        let rules: Vec<Value> = (0..a.rules)
            .map(|i| {
                json!({"name": format!("cpu shard {}", i % a.shards), "type": "metric_threshold",
                       "notify": channels, "cooldown": 0,
                       "condition": {"metric": "cpu", "tags": {"shard": format!("s{}", i % a.shards)},
                                     "aggregation": "max", "window_seconds": 600,
                                     "comparator": "gt", "threshold": a.threshold}})
            })
            .collect();
        let url = format!("{}/api/v1/alert-rules", a.url);
        let last: Vec<i64> = futures::stream::iter(rules.iter())
            .map(|r| {
                let (client, url) = (&client, &url);
                async move { post(client, url, r).await.map(|v| v["position"].as_i64().unwrap_or(0)) }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let position = last.into_iter().max().unwrap_or(0);
        // Until the rules' read model has them all.
        let mut res = client
            .get(format!("{}/api/v1/alert-rules?limit=1&min_position={position}", a.url))
            .send()
            .await
            .map_err(err)?;
        anyhow::ensure!(res.status().is_success(), "rules read model: {}", res.status());
        let _ = res.body().await;

        let db = cloudlens::db::connect(&a.conn).await?;
        let windows = 600.0_f64;
        let mut report = Rounds::default();
        println!("== baseline: one query per rule (the seed's way), {} rounds", a.rounds);
        for _ in 0..a.rounds {
            let t = Instant::now();
            let mut breaches = 0usize;
            let stmt = db.prepare(PER_RULE_SQL).await?;
            for i in 0..a.rules {
                let tags = json!({"shard": format!("s{}", i % a.shards)});
                for row in db.query(&stmt, &[&"default", &"cpu", &tags, &windows]).await? {
                    let max: f64 = row.try_get(1)?;
                    breaches += usize::from(max > a.threshold);
                }
            }
            report.add_with("baseline round (1 query per rule)", "ms", 1, t.elapsed().as_secs_f64() * 1e3);
            report.add("  breaching (rule, series) pairs", "", breaches as f64);
        }

        let store = cloudlens::eventstore::EventStore::new(
            cloudlens::db::pool(&a.conn, 8)?,
            cloudlens::eventstore::signal::EventSignal::default(),
        );
        let evaluator = cloudlens::alerts::evaluate::Evaluator::default();
        let t = Instant::now();
        let first = evaluator.round(&store).await?;
        let first_ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "== cloudlens first round: {first_ms:.0} ms, {} rules, {} (rule, series) measured, {} episodes fired",
            first.rules, first.measured, first.fired
        );
        for _ in 0..a.rounds {
            let t = Instant::now();
            let r = evaluator.round(&store).await?;
            anyhow::ensure!(r.fired == 0 && r.resolved == 0, "a steady round changed something: {r:?}");
            report.add_with("cloudlens steady round (one statement)", "ms", 1, t.elapsed().as_secs_f64() * 1e3);
        }
        report.print();

        println!("== notifications: {} queued by the first round", first.fired * channels.len());
        let expected = (first.fired * channels.len()) as i64;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let row = db
                .query_one(
                    "SELECT count(*) FILTER (WHERE state = 'delivered'), count(*),
                            extract(epoch FROM max(delivered_at) - min(created_at))::float8
                       FROM notification_outbox",
                    &[],
                )
                .await?;
            let (done, all): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            if done == expected && all == expected {
                let secs: f64 = row.try_get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN);
                println!(
                    "delivered {done} in {secs:.2} s: {:.0} notifications/s (receiver counted {})",
                    done as f64 / secs,
                    delivered.load(Ordering::Relaxed)
                );
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "only {done} of {expected} delivered ({all} queued)");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    })
}
