//! The time-series benchmark (issue "Metrics time series"; seed 001's POC done properly).
//!
//! 1. Ingest: POINTS one-minute points over SERIES series as CSV bodies of up to
//!    1,000,000 points (`POST /api/v1/metrics:batch`, one request after another), timed
//!    from the first request until the `metric_points` projector has reached the last
//!    batch's position (every point visible to queries, rollups included). The first
//!    LONG series hold 90 days, the others share the rest (the most recent days). Then
//!    20 symbols × BAR_DAYS trading days of 1-minute bars (390 a day) the same way.
//! 2. Baseline: the same rows copied into `plain_points`, a plain PostgreSQL table with
//!    the same unique index, no TimescaleDB.
//! 3. Queries, REPS times each, round-robin over series: a 1-day 1-minute query of one
//!    series, a 90-day 1-hour query of one long series and a cross-series 1-hour group-by
//!    (by region) over the last day: over HTTP, as the server's SQL against the
//!    hypertable / rollup, and as the same query against the plain table.
//!
//! Numbers are printed, never asserted (loadtest/timeseries.sh, loadtest/RESULTS.md).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::stats::Samples;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8093")]
    pub url: String,
    /// Connection string of the server's database.
    #[arg(long)]
    pub conn: String,
    #[arg(long, default_value_t = 10_000_000)]
    pub points: usize,
    #[arg(long, default_value_t = 1_000)]
    pub series: usize,
    /// Series that hold 90 days of points.
    #[arg(long, default_value_t = 10)]
    pub long: usize,
    #[arg(long, default_value_t = 20)]
    pub symbols: usize,
    /// Trading days of bars per symbol (504: about two years).
    #[arg(long, default_value_t = 504)]
    pub bar_days: usize,
    #[arg(long, default_value_t = 50)]
    pub reps: usize,
    /// Only the queries, against data an earlier run left (server still up).
    #[arg(long)]
    pub queries_only: bool,
}

const PER_REQUEST: usize = 1_000_000;
const LONG_MINUTES: usize = 90 * 1440;

fn value(s: usize, m: usize) -> f64 {
    let x = (m as f64 / 90.0).sin() * 20.0 + 50.0;
    let noise = ((s * 7919 + m * 104_729) % 1000) as f64 / 100.0;
    ((x + noise) * 1000.0).round() / 1000.0
}

/// The CSV bodies of the points (each at most PER_REQUEST points) and how many there are.
fn point_bodies(a: &Args, end: DateTime<Utc>) -> (Vec<String>, usize) {
    let long_points = a.long * LONG_MINUTES;
    let short = (a.points.saturating_sub(long_points)) / (a.series - a.long).max(1);
    let mut bodies = Vec::new();
    let mut body = String::new();
    let mut in_body = 0;
    let mut total = 0;
    let header = "series,metric,time,value,region,resource_type\n";
    for s in 0..a.series {
        let n = if s < a.long { LONG_MINUTES } else { short };
        let region = ["cn-hangzhou", "cn-beijing", "eu-central", "us-east"][s % 4];
        for m in 0..n {
            if in_body == 0 {
                body.push_str(header);
            }
            let t = end - chrono::Duration::minutes((n - m) as i64);
            let _ = writeln!(
                body,
                "host-{s:04},cpu,{},{},{region},ecs",
                t.format("%Y-%m-%dT%H:%M:%SZ"),
                value(s, m)
            );
            in_body += 1;
            total += 1;
            if in_body == PER_REQUEST {
                bodies.push(std::mem::take(&mut body));
                in_body = 0;
            }
        }
    }
    if in_body > 0 {
        bodies.push(body);
    }
    (bodies, total)
}

/// Bars on weekdays from 09:30 for 390 minutes, ending before `end`.
fn bar_bodies(a: &Args, end: DateTime<Utc>) -> (Vec<String>, usize) {
    let mut days = Vec::new();
    let mut d = end.date_naive() - chrono::Duration::days(1);
    while days.len() < a.bar_days {
        use chrono::Datelike;
        if d.weekday().num_days_from_monday() < 5 {
            days.push(d);
        }
        d -= chrono::Duration::days(1);
    }
    days.reverse();
    let mut bodies = Vec::new();
    let mut body = String::new();
    let (mut in_body, mut total) = (0, 0);
    for s in 0..a.symbols {
        let mut price: i64 = 10_000 + s as i64 * 250; // cents
        for (di, day) in days.iter().enumerate() {
            let open_at = day.and_hms_opt(9, 30, 0).unwrap_or_default().and_utc();
            for m in 0..390 {
                if in_body == 0 {
                    body.push_str("symbol,time,open,high,low,close,volume\n");
                }
                let step = ((s * 31 + di * 17 + m * 13) % 21) as i64 - 10;
                let open = price;
                let close = (price + step).max(100);
                let high = open.max(close) + (m % 5) as i64;
                let low = open.min(close) - (m % 3) as i64;
                price = close;
                let t = open_at + chrono::Duration::minutes(m as i64);
                let _ = writeln!(
                    body,
                    "SYM{s:02},{},{}.{:02},{}.{:02},{}.{:02},{}.{:02},{}",
                    t.format("%Y-%m-%dT%H:%M:%SZ"),
                    open / 100,
                    open % 100,
                    high / 100,
                    high % 100,
                    low / 100,
                    low % 100,
                    close / 100,
                    close % 100,
                    100 + (m * 7 + di) % 900
                );
                in_body += 1;
                total += 1;
                if in_body == PER_REQUEST {
                    bodies.push(std::mem::take(&mut body));
                    in_body = 0;
                }
            }
        }
    }
    if in_body > 0 {
        bodies.push(body);
    }
    (bodies, total)
}

pub async fn reached(client: &awc::Client, url: &str, projection: &str) -> anyhow::Result<i64> {
    let mut res = client
        .get(format!("{url}/api/v1/admin/projections"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let v: Value = res.json().limit(16 << 20).await?;
    Ok(v["projections"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == projection))
        .and_then(|p| p["position"].as_i64())
        .unwrap_or(0))
}

/// Posts the bodies one after another, then waits for `projection`; returns
/// (seconds until the last answer, seconds until visible).
async fn ingest(
    client: &awc::Client,
    url: &str,
    path: &str,
    projection: &str,
    bodies: Vec<String>,
) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let mut last = 0;
    for b in bodies {
        let mut res = client
            .post(format!("{url}{path}"))
            .insert_header(("Content-Type", "text/csv"))
            .send_body(b)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let v: Value = res.json().await?;
        anyhow::ensure!(res.status() == 202, "ingest refused: {v}");
        last = v["position"].as_i64().unwrap_or(0);
    }
    let answered = started.elapsed().as_secs_f64();
    while reached(client, url, projection).await? < last {
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((answered, started.elapsed().as_secs_f64()))
}

fn line(what: &str, s: &mut Samples) {
    println!(
        "{what:<58} p50 {:>9.2} ms  p95 {:>9.2} ms  (n={})",
        s.percentile(50.0),
        s.percentile(95.0),
        s.len()
    );
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let end = {
        let now = Utc::now();
        now - chrono::Duration::seconds(now.timestamp().rem_euclid(60))
    };
    let (points, n_points, bars, n_bars) = if a.queries_only {
        (Vec::new(), 0, Vec::new(), 0)
    } else {
        println!(
            "== generating {} points over {} series ({} with 90 days)",
            a.points, a.series, a.long
        );
        let (points, n_points) = point_bodies(&a, end);
        let (bars, n_bars) = bar_bodies(&a, end);
        (points, n_points, bars, n_bars)
    };
    actix_rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(1800))
            .finish();
        let (db, conn) = tokio_postgres::connect(&a.conn, tokio_postgres::NoTls).await?;
        actix_rt::spawn(conn);

        let end = if a.queries_only {
            // The data's newest minute, as the run that wrote it saw it.
            let last: DateTime<Utc> = db
                .query_one("SELECT max(last_time) FROM metric_series", &[])
                .await?
                .get(0);
            last + chrono::Duration::minutes(1)
        } else {
            end
        };
        let n_points = if a.queries_only {
            let n: i64 = db.query_one("SELECT count(*) FROM metric_points", &[]).await?.get(0);
            n as usize
        } else {
            n_points
        };
        if !a.queries_only {
        println!("== ingest: {n_points} points in {} requests", points.len());
        let (answered, visible) =
            ingest(&client, &a.url, "/api/v1/metrics:batch", "metric_points", points).await?;
        println!(
            "points: requests answered after {answered:.1} s ({:.0} points/s); all visible after {visible:.1} s: {:.0} points/s end to end",
            n_points as f64 / answered,
            n_points as f64 / visible
        );
        println!("== ingest: {n_bars} bars ({} symbols × {} days × 390)", a.symbols, a.bar_days);
        let n_bodies = bars.len();
        let (answered, visible) =
            ingest(&client, &a.url, "/api/v1/bars:batch", "bars", bars).await?;
        println!(
            "bars: {n_bodies} requests answered after {answered:.1} s; visible after {visible:.1} s: {:.0} bars/s end to end",
            n_bars as f64 / visible
        );

        println!("== baseline: the same rows in a plain table");
        let t = Instant::now();
        for sql in [
            "DROP TABLE IF EXISTS plain_points",
            "CREATE TABLE plain_points (tenant_id text NOT NULL, series_id bigint NOT NULL,
                                        time timestamptz NOT NULL, value double precision NOT NULL)",
            "INSERT INTO plain_points SELECT tenant_id, series_id, time, value FROM metric_points",
            "CREATE UNIQUE INDEX plain_points_key ON plain_points (series_id, time DESC)",
            "VACUUM ANALYZE plain_points",
            "VACUUM ANALYZE metric_points",
            "VACUUM ANALYZE metric_points_1h",
            "VACUUM ANALYZE metric_series",
            "CHECKPOINT",
        ] {
            db.batch_execute(sql).await.map_err(|e| anyhow::anyhow!("{sql}: {e:?}"))?;
        }
        println!("plain_points loaded and indexed in {:.1} s", t.elapsed().as_secs_f64());
        }

        let ids: Vec<(i64, String)> = db
            .query("SELECT id, series FROM metric_series ORDER BY series", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let long: Vec<&(i64, String)> = ids.iter().take(a.long).collect();
        let day_from = end - chrono::Duration::days(1);
        let q_from = end - chrono::Duration::days(90);
        let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let hour = |t: DateTime<Utc>| t - chrono::Duration::seconds(t.timestamp().rem_euclid(3600));
        let (h_from, h_to) = (hour(q_from), hour(end) + chrono::Duration::hours(1));
        let (d_from, d_to) = (hour(day_from), hour(end) + chrono::Duration::hours(1));

        let day_hyper = db.prepare("SELECT time_bucket('1 minute', time) b, avg(value) FROM metric_points WHERE series_id = $1 AND time >= $2 AND time < $3 GROUP BY 1 ORDER BY 1").await?;
        let day_plain = db.prepare("SELECT date_trunc('minute', time) b, avg(value) FROM plain_points WHERE series_id = $1 AND time >= $2 AND time < $3 GROUP BY 1 ORDER BY 1").await?;
        let q90_rollup = db.prepare("SELECT bucket, sum / count FROM metric_points_1h WHERE series_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket").await?;
        let q90_hyper = db.prepare("SELECT time_bucket('1 hour', time) b, avg(value) FROM metric_points WHERE series_id = $1 AND time >= $2 AND time < $3 GROUP BY 1 ORDER BY 1").await?;
        let q90_plain = db.prepare("SELECT date_trunc('hour', time) b, avg(value) FROM plain_points WHERE series_id = $1 AND time >= $2 AND time < $3 GROUP BY 1 ORDER BY 1").await?;
        let grp_rollup = db.prepare("SELECT s.tags ->> 'region', h.bucket, sum(h.sum) / sum(h.count) FROM metric_points_1h h JOIN metric_series s ON s.id = h.series_id WHERE s.metric = 'cpu' AND h.bucket >= $1 AND h.bucket < $2 GROUP BY 1, 2").await?;
        let grp_hyper = db.prepare("SELECT s.tags ->> 'region', time_bucket('1 hour', p.time) b, avg(p.value) FROM metric_points p JOIN metric_series s ON s.id = p.series_id WHERE s.metric = 'cpu' AND p.time >= $1 AND p.time < $2 GROUP BY 1, 2").await?;
        let grp_plain = db.prepare("SELECT s.tags ->> 'region', date_trunc('hour', p.time) b, avg(p.value) FROM plain_points p JOIN metric_series s ON s.id = p.series_id WHERE s.metric = 'cpu' AND p.time >= $1 AND p.time < $2 GROUP BY 1, 2").await?;

        let http = awc::Client::builder().timeout(Duration::from_secs(120)).finish();
        let get = |path: String| {
            let http = http.clone();
            let url = a.url.clone();
            async move {
                let t = Instant::now();
                let mut res = http.get(format!("{url}{path}")).send().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let body = res.body().limit(256 << 20).await?;
                anyhow::ensure!(res.status() == 200, "{path}: {}", String::from_utf8_lossy(&body));
                Ok::<_, anyhow::Error>(t.elapsed())
            }
        };
        let mut s: Vec<Samples> = (0..9).map(|_| Samples::default()).collect();
        for i in 0..a.reps {
            let (id, name) = &ids[a.long + (i * 97) % (ids.len() - a.long)];
            let (lid, lname) = long[i % long.len()];
            // Interleaved so that all three see the same cache state.
            s[0].add(get(format!("/api/v1/metrics/{name}/cpu?from={}&to={}&bucket=1m&agg=avg", fmt(day_from), fmt(end))).await?);
            // Each pair runs in both orders, turn about.
            for k in 0..2 {
                if (i + k) % 2 == 0 {
                    let t = Instant::now(); db.query(&day_hyper, &[id, &day_from, &end]).await?; s[1].add(t.elapsed());
                } else {
                    let t = Instant::now(); db.query(&day_plain, &[id, &day_from, &end]).await?; s[2].add(t.elapsed());
                }
            }
            s[3].add(get(format!("/api/v1/metrics/{lname}/cpu?from={}&to={}&bucket=1h&agg=avg", fmt(q_from), fmt(end))).await?);
            for k in 0..2 {
                if (i + k) % 2 == 0 {
                    let t = Instant::now(); db.query(&q90_rollup, &[lid, &h_from, &h_to]).await?; s[4].add(t.elapsed());
                } else {
                    let t = Instant::now(); db.query(&q90_plain, &[lid, &h_from, &h_to]).await?; s[5].add(t.elapsed());
                }
            }
            if i % 5 == 0 {
                let t = Instant::now(); db.query(&q90_hyper, &[lid, &h_from, &h_to]).await?; s[6].add(t.elapsed());
            }
            s[7].add(get(format!("/api/v1/metrics?metric=cpu&group_by=tag:region&from={}&to={}&bucket=1h&agg=avg", fmt(day_from), fmt(end))).await?);
            let t = Instant::now(); db.query(&grp_rollup, &[&d_from, &d_to]).await?; s[8].add(t.elapsed());
        }
        let mut g = (Samples::default(), Samples::default());
        for _ in 0..a.reps.div_ceil(5) {
            let t = Instant::now(); db.query(&grp_hyper, &[&d_from, &d_to]).await?; g.0.add(t.elapsed());
            let t = Instant::now(); db.query(&grp_plain, &[&d_from, &d_to]).await?; g.1.add(t.elapsed());
        }
        println!("== queries ({} reps; HTTP includes JSON)", a.reps);
        line("1-day 1-minute, one series: HTTP (raw hypertable)", &mut s[0]);
        line("1-day 1-minute: SQL on the hypertable", &mut s[1]);
        line("1-day 1-minute: SQL on the plain table", &mut s[2]);
        line("90-day 1-hour, one long series: HTTP (rollup_1h)", &mut s[3]);
        line("90-day 1-hour: SQL on the 1h rollup", &mut s[4]);
        line("90-day 1-hour: SQL on the plain table", &mut s[5]);
        line("90-day 1-hour: SQL on the raw hypertable (no rollup)", &mut s[6]);
        line("1-day 1-hour group-by region, all series: HTTP (rollup)", &mut s[7]);
        line("group-by: SQL on the 1h rollup", &mut s[8]);
        line("group-by: SQL on the raw hypertable", &mut g.0);
        line("group-by: SQL on the plain table", &mut g.1);

        println!("== disk");
        let sizes = db
            .query(
                "SELECT 'events (metric_batch, bar_batch share)', pg_total_relation_size('events')
                 UNION ALL SELECT 'metric_points (hypertable)', hypertable_size('metric_points')
                 UNION ALL SELECT 'metric_points_1h', hypertable_size('metric_points_1h')
                 UNION ALL SELECT 'metric_points_1d', hypertable_size('metric_points_1d')
                 UNION ALL SELECT 'metric_series', pg_total_relation_size('metric_series')
                 UNION ALL SELECT 'bars_1m', hypertable_size('bars_1m')
                 UNION ALL SELECT 'plain_points (baseline)', pg_total_relation_size('plain_points')",
                &[],
            )
            .await?;
        for r in &sizes {
            let b: i64 = r.get(1);
            println!("{:<42} {:>8.1} MiB", r.get::<_, &str>(0), b as f64 / 1048576.0);
        }
        let ev: i64 = db
            .query_one(
                "SELECT coalesce(sum(pg_column_size(e.*)), 0)::bigint FROM events e WHERE stream_type = 'metric_batch'",
                &[],
            )
            .await?
            .get(0);
        let rm: i64 = db
            .query_one(
                "SELECT (hypertable_size('metric_points') + hypertable_size('metric_points_1h')
                        + hypertable_size('metric_points_1d') + pg_total_relation_size('metric_series'))::bigint",
                &[],
            )
            .await?
            .get(0);
        let per_m = |b: i64| b as f64 / 1048576.0 / (n_points as f64 / 1e6);
        println!(
            "per million points: events {:.1} MiB (row bytes of the metric_batch events), read model {:.1} MiB, together {:.1} MiB",
            per_m(ev), per_m(rm), per_m(ev + rm)
        );
        anyhow::Ok(())
    })
}
