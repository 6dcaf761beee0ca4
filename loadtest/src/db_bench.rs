//! Database-side benchmarks: the event store against raw INSERTs, and projection
//! catch-up against raw COPY, each pair measured in the same run on the same database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudlens::budgets::projection::BudgetsProjector;
use cloudlens::db::{self, cluster::LocalCluster};
use cloudlens::eventstore::{signal::EventSignal, AppendRequest, EventStore, NewEvent};
use cloudlens::projections::rebuild::Rebuild;
use cloudlens::projections::Typed;
use futures::SinkExt;
use serde_json::{json, Value};

#[derive(clap::Args, Clone)]
pub struct Db {
    /// Use this server (a fresh database is created in it); default: a local cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Data directory of the local cluster used when no URL is given.
    #[arg(long, default_value = "var/bench")]
    pub data_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub db: Db,
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

#[derive(clap::Args)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub db: Db,
    #[arg(long, default_value_t = 1_000_000)]
    pub events: i64,
    #[arg(long, default_value_t = 5000)]
    pub batch: i64,
}

/// A fresh, migrated database for one benchmark run.
async fn fresh_database(db: &Db) -> anyhow::Result<String> {
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let (maintenance, conn) = match &db.database_url {
        Some(url) => (url.clone(), url_with_db(url, &name)),
        None => {
            let data_dir = db.data_dir.clone();
            let cluster = tokio::task::spawn_blocking(move || -> anyhow::Result<LocalCluster> {
                let c = LocalCluster::new(&data_dir, 5432)?;
                c.ensure_running()?;
                Ok(c)
            })
            .await??;
            (
                cluster.connection_string_for("postgres"),
                cluster.connection_string_for(&name),
            )
        }
    };
    db::ensure_database(&maintenance, &name).await?;
    db::migrate(&conn).await?;
    Ok(conn)
}

/// Key/value connection strings take a trailing `dbname=` override; URLs get it as a path.
fn url_with_db(url: &str, name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = url
            .split_once('?')
            .map_or((url, None), |(b, q)| (b, Some(q)));
        let base = match base.rfind('/') {
            Some(i) if i > "postgresql://".len() => &base[..i],
            _ => base,
        };
        match query {
            Some(q) => format!("{base}/{name}?{q}"),
            None => format!("{base}/{name}"),
        }
    } else {
        format!("{url} dbname={name}")
    }
}

fn payload(i: u64) -> Value {
    json!({
        "name": format!("budget {i}"), "amount": "1200.50", "currency": "CNY", "period": "monthly",
        "budget_type": "cost", "start_date": "2026-01-01", "end_date": "2026-12-31",
        "tag_filter": {"team": format!("team-{}", i % 16), "env": "prod"},
        "service_filter": ["ecs", "oss"], "alert_thresholds": ["80", "100", "120"],
        "account": format!("account-{}", i % 8)
    })
}

fn metadata() -> Value {
    let id = uuid::Uuid::now_v7();
    json!({"command_id": id, "correlation_id": id, "causation_id": id, "actor": "bench", "tenant_id": "default"})
}

const RAW_ONE_SQL: &str =
    "INSERT INTO raw_events (tenant_id, stream_type, stream_id, stream_version, event_type, \
     schema_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const RAW_MANY_SQL: &str =
    "INSERT INTO raw_events (tenant_id, stream_type, stream_id, stream_version, event_type, \
     schema_version, payload, metadata) SELECT $1, $2, $3, u.v, $5, $6, u.p, $7 \
     FROM unnest($4::bigint[], $8::jsonb[]) AS u(v, p)";

/// Runs `per_conn` on `n` tasks for `seconds`; returns rows written per second.
async fn phase<F, Fut>(n: usize, seconds: u64, per_conn: F) -> anyhow::Result<f64>
where
    F: Fn(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(per_conn(i, until))).collect();
    let mut rows = 0;
    for t in tasks {
        rows += t.await??;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

pub fn store(args: StoreArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let conn = fresh_database(&args.db).await?;
        let admin = db::connect(&conn).await?;
        admin
            .batch_execute("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
            .await?;
        let n = args.connections;
        let secs = args.seconds;
        println!("store benchmark: {n} connections, {secs} s per phase, same database, same run");

        let raw_one = phase(n, secs, |i, until| {
            let conn = conn.clone();
            async move {
                let c = db::connect(&conn).await?;
                let stmt = c.prepare(RAW_ONE_SQL).await?;
                let mut rows = 0u64;
                while Instant::now() < until {
                    let p = payload(i as u64 * 1_000_000 + rows);
                    c.execute(
                        &stmt,
                        &[
                            &"default",
                            &"budget",
                            &uuid::Uuid::now_v7(),
                            &1_i64,
                            &"BudgetCreated",
                            &2_i32,
                            &p,
                            &metadata(),
                        ],
                    )
                    .await?;
                    rows += 1;
                }
                Ok(rows)
            }
        })
        .await?;
        println!("raw INSERT, 1 row/txn:            {raw_one:>10.0} rows/s");

        let store = EventStore::new(db::pool(&conn, n)?, EventSignal::default());
        let store_one = phase(n, secs, |i, until| {
            let store = store.clone();
            async move {
                let mut rows = 0u64;
                while Instant::now() < until {
                    let events = vec![NewEvent {
                        event_type: "BudgetCreated".into(),
                        schema_version: 2,
                        payload: payload(i as u64 * 1_000_000 + rows),
                    }];
                    store
                        .append(AppendRequest {
                            tenant_id: "default",
                            stream_type: "budget",
                            stream_id: uuid::Uuid::now_v7(),
                            expected_version: 0,
                            events,
                            metadata: metadata(),
                            idempotency: None,
                        })
                        .await?;
                    rows += 1;
                }
                Ok(rows)
            }
        })
        .await?;
        println!(
            "store append, 1 event/command:    {store_one:>10.0} events/s  ({:.0} % of raw)",
            100.0 * store_one / raw_one
        );

        let raw_many = phase(n, secs, |i, until| {
            let conn = conn.clone();
            async move {
                let c = db::connect(&conn).await?;
                let stmt = c.prepare(RAW_MANY_SQL).await?;
                let versions: Vec<i64> = (1..=100).collect();
                let mut rows = 0u64;
                while Instant::now() < until {
                    let payloads: Vec<Value> = (0..100)
                        .map(|k| payload(i as u64 * 1_000_000 + rows + k))
                        .collect();
                    c.execute(
                        &stmt,
                        &[
                            &"default",
                            &"budget",
                            &uuid::Uuid::now_v7(),
                            &versions,
                            &"BudgetCreated",
                            &2_i32,
                            &metadata(),
                            &payloads,
                        ],
                    )
                    .await?;
                    rows += 100;
                }
                Ok(rows)
            }
        })
        .await?;
        println!("raw INSERT, 100 rows/txn (unnest): {raw_many:>10.0} rows/s");

        let store_many = phase(n, secs, |i, until| {
            let store = store.clone();
            async move {
                let mut rows = 0u64;
                while Instant::now() < until {
                    let events = (0..100)
                        .map(|k| NewEvent {
                            event_type: "BudgetCreated".into(),
                            schema_version: 2,
                            payload: payload(i as u64 * 1_000_000 + rows + k),
                        })
                        .collect();
                    store
                        .append(AppendRequest {
                            tenant_id: "default",
                            stream_type: "budget",
                            stream_id: uuid::Uuid::now_v7(),
                            expected_version: 0,
                            events,
                            metadata: metadata(),
                            idempotency: None,
                        })
                        .await?;
                    rows += 100;
                }
                Ok(rows)
            }
        })
        .await?;
        println!(
            "store append, 100 events/command:  {store_many:>10.0} events/s  ({:.0} % of raw)",
            100.0 * store_many / raw_many
        );
        println!("peak RSS of this process: {} kB", peak_rss_kb());
        anyhow::Ok(())
    })
}

const GENERATE_SQL: &str = "\
INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT 'default', 'budget', gen_random_uuid(), 1, 'BudgetCreated', 2,
       jsonb_build_object('name', 'budget ' || g, 'amount', '1200.50', 'currency', 'CNY', 'period', 'monthly',
           'budget_type', 'cost', 'start_date', '2026-01-01', 'end_date', '2026-12-31',
           'tag_filter', jsonb_build_object('team', 'team-' || (g % 16), 'env', 'prod'),
           'service_filter', '[\"ecs\", \"oss\"]'::jsonb, 'alert_thresholds', '[\"80\", \"100\", \"120\"]'::jsonb,
           'account', 'account-' || (g % 8)),
       '{}'::jsonb
  FROM generate_series($1::bigint, $2::bigint) g";

const COPY_COLUMNS: &str =
    "id, tenant_id, version, name, amount, currency, period, budget_type, start_date, end_date, \
     tag_filter, service_filter, alert_thresholds, account, created_at, updated_at, last_position";

pub fn catchup(args: CatchupArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let conn = fresh_database(&args.db).await?;
        let mut admin = db::connect(&conn).await?;
        let n = args.events;
        println!("catch-up benchmark: {n} BudgetCreated events, projector batch {}", args.batch);
        let started = Instant::now();
        let chunk = 100_000;
        let mut from = 1;
        while from <= n {
            let to = (from + chunk - 1).min(n);
            let tx = admin.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock_shared(1668048001, 1)", &[]).await?;
            tx.execute(GENERATE_SQL, &[&from, &to]).await?;
            tx.commit().await?;
            from = to + 1;
        }
        admin.batch_execute("VACUUM ANALYZE events").await?;
        println!("generated in {:.1} s", started.elapsed().as_secs_f64());

        // Replay into a fresh read model: a rebuild of `budgets` (shadow tables, swap).
        let report = Rebuild::begin(&conn, Arc::new(Typed(BudgetsProjector)))
            .await?
            .run(args.batch, tokio::sync::watch::channel(false).1)
            .await?;
        let replay_rate = report.events as f64 / report.seconds;
        let rows: i64 = admin.query_one("SELECT count(*) FROM budgets_view", &[]).await?.get(0);
        println!(
            "projection replay: {} events in {:.2} s = {replay_rate:>10.0} events/s ({rows} rows in budgets_view)",
            report.events, report.seconds
        );

        // Raw COPY of as many identical rows into an identically shaped table.
        admin.batch_execute("CREATE TABLE raw_budgets_view (LIKE budgets_view INCLUDING ALL)").await?;
        let started = Instant::now();
        let sink = admin.copy_in::<_, Bytes>(&format!("COPY raw_budgets_view ({COPY_COLUMNS}) FROM STDIN")).await?;
        futures::pin_mut!(sink);
        let mut buf = String::with_capacity(1 << 20);
        for g in 1..=n {
            buf.push_str(&format!(
                "{}\tdefault\t1\tbudget {g}\t1200.50\tCNY\tmonthly\tcost\t2026-01-01\t2026-12-31\t\
                 {{\"env\": \"prod\", \"team\": \"team-{}\"}}\t[\"ecs\", \"oss\"]\t[\"80\", \"100\", \"120\"]\t\
                 account-{}\t2026-11-22 00:00:00+00\t2026-11-22 00:00:00+00\t{g}\n",
                uuid::Uuid::new_v4(),
                g % 16,
                g % 8
            ));
            if buf.len() > (1 << 20) - 512 {
                sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
                buf.reserve(1 << 20);
            }
        }
        if !buf.is_empty() {
            sink.send(Bytes::from(buf)).await?;
        }
        let copied = sink.finish().await?;
        let copy_rate = copied as f64 / started.elapsed().as_secs_f64();
        println!("raw COPY:          {copied} rows in {:.2} s = {copy_rate:>10.0} rows/s", started.elapsed().as_secs_f64());
        println!("replay / COPY: {:.0} %", 100.0 * replay_rate / copy_rate);
        println!("peak RSS of this process (runs the projector): {} kB", peak_rss_kb());
        anyhow::Ok(())
    })
}

/// VmHWM of this process, from /proc.
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
