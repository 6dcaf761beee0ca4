//! Database-side benchmarks: the event store against raw INSERTs, and projection
//! catch-up against raw COPY. Each measured run and its raw baseline run in the same
//! database of the same cluster, back to back in one round, and rounds repeat: the
//! summary is the median and the min–max spread over the rounds, never one sample.

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

use crate::stats::Rounds;

#[derive(clap::Args, Clone)]
pub struct Db {
    /// Use this server (a fresh database is created in it); default: a local cluster.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Data directory of the local cluster used when no URL is given.
    #[arg(long, default_value = "var/bench")]
    pub data_dir: PathBuf,
    /// Keep the benchmark database afterwards (default: dropped at the end).
    #[arg(long)]
    pub keep: bool,
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
    /// Rounds; each runs every phase once, raw baselines interleaved with the store.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Rows per statement of the batched raw baseline; 0: the mean number of events per
    /// transaction the store's group commit wrote in the same round (rounded).
    #[arg(long, default_value_t = 0)]
    pub batch_rows: usize,
}

#[derive(clap::Args)]
pub struct CatchupArgs {
    #[command(flatten)]
    pub db: Db,
    /// Events in the log (approximately, for `--mix realistic`).
    #[arg(long, default_value_t = 300_000)]
    pub events: i64,
    #[arg(long, default_value_t = 5000)]
    pub batch: i64,
    /// Rounds; each replays the whole log, then COPYs as many rows.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// `realistic`: ≈60 % creates, 30 % updates, 10 % deletes over 0.6 × events streams;
    /// `creates`: one BudgetCreated on each of `events` streams.
    #[arg(long, default_value = "realistic")]
    pub mix: String,
}

#[derive(clap::Args)]
pub struct RawInsertArgs {
    /// Database to write `raw_events` into (created if missing, shaped like its `events`),
    /// e.g. a running server's own database, so HTTP writes and this baseline share the
    /// cluster.
    #[arg(long)]
    pub conn: String,
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// A fresh, migrated database for one benchmark run.
struct BenchDb {
    conn: String,
    maintenance: String,
    name: String,
    keep: bool,
}

impl BenchDb {
    async fn create(db: &Db) -> anyhow::Result<Self> {
        let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let (maintenance, conn) = match &db.database_url {
            Some(url) => (url.clone(), url_with_db(url, &name)),
            None => {
                let data_dir = db.data_dir.clone();
                let cluster =
                    tokio::task::spawn_blocking(move || -> anyhow::Result<LocalCluster> {
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
        Ok(Self {
            conn,
            maintenance,
            name,
            keep: db.keep,
        })
    }

    /// Drops the database (unless `--keep`); every connection to it must be closed.
    async fn finish(self) -> anyhow::Result<()> {
        if self.keep {
            println!("database kept: {}", self.name);
            return Ok(());
        }
        let c = db::connect(&self.maintenance).await?;
        // The name is ours: bench_ and 32 hex digits.
        c.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await?;
        Ok(())
    }
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

/// What the raw baselines write into, said in the output next to the figures.
const RAW_TABLE_NOTE: &str = "\
raw baselines write `raw_events (LIKE events INCLUDING ALL)` with the storage parameters of
`events`: same columns and defaults (identity position, transaction_id, epoch), CHECKs,
primary key, unique (stream_id, stream_type, stream_version), global-order index.
No triggers: the store's figures include the writer-lock statement trigger of `events`
(sql/V4), the raw ones do not; raw statements have no RETURNING (the store's have).";

const RAW_ONE_SQL: &str =
    "INSERT INTO raw_events (tenant_id, stream_type, stream_id, stream_version, event_type, \
     schema_version, payload, metadata) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// 100 events of one stream in one statement (as the store writes a 100-event command).
const RAW_MANY_SQL: &str =
    "INSERT INTO raw_events (tenant_id, stream_type, stream_id, stream_version, event_type, \
     schema_version, payload, metadata) SELECT $1, $2, $3, u.v, $5, $6, u.p, $7 \
     FROM unnest($4::bigint[], $8::jsonb[]) AS u(v, p)";
/// N single-event commands (N streams, own metadata each) in one statement: the shape of
/// the store's group commit (`APPEND_MANY_SQL` in src/eventstore/batch.rs).
const RAW_BATCHED_SQL: &str = "\
INSERT INTO raw_events (tenant_id, stream_type, stream_id, stream_version, event_type,
                        schema_version, payload, metadata)
SELECT u.tenant_id, u.stream_type, u.stream_id, u.stream_version, u.event_type,
       u.schema_version, u.payload, u.metadata
  FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], $6::int[],
              $7::jsonb[], $8::jsonb[])
           AS u(tenant_id, stream_type, stream_id, stream_version, event_type, schema_version,
                payload, metadata)";

/// One figure of a round, aligned.
fn line(label: &str, value: f64, unit: &str, note: &str) {
    println!("  {label:<82} {value:>9.0} {unit}{note}");
}

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

async fn raw_one(conn: &str, n: usize, secs: u64, seed: u64) -> anyhow::Result<f64> {
    phase(n, secs, |i, until| {
        let conn = conn.to_owned();
        async move {
            let c = db::connect(&conn).await?;
            let stmt = c.prepare(RAW_ONE_SQL).await?;
            let mut rows = 0u64;
            while Instant::now() < until {
                let p = payload(seed + i as u64 * 1_000_000 + rows);
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
    .await
}

async fn raw_batched(
    conn: &str,
    n: usize,
    rows_per_stmt: usize,
    secs: u64,
    seed: u64,
) -> anyhow::Result<f64> {
    phase(n, secs, |i, until| {
        let conn = conn.to_owned();
        async move {
            let c = db::connect(&conn).await?;
            let stmt = c.prepare(RAW_BATCHED_SQL).await?;
            let k = rows_per_stmt;
            let tenants = vec!["default"; k];
            let types = vec!["budget"; k];
            let versions = vec![1_i64; k];
            let event_types = vec!["BudgetCreated"; k];
            let schema_versions = vec![2_i32; k];
            let mut rows = 0u64;
            while Instant::now() < until {
                let ids: Vec<uuid::Uuid> = (0..k).map(|_| uuid::Uuid::now_v7()).collect();
                let payloads: Vec<Value> = (0..k as u64)
                    .map(|j| payload(seed + i as u64 * 1_000_000 + rows + j))
                    .collect();
                let metadata: Vec<Value> = (0..k).map(|_| metadata()).collect();
                c.execute(
                    &stmt,
                    &[
                        &tenants,
                        &types,
                        &ids,
                        &versions,
                        &event_types,
                        &schema_versions,
                        &payloads,
                        &metadata,
                    ],
                )
                .await?;
                rows += k as u64;
            }
            Ok(rows)
        }
    })
    .await
}

async fn raw_many(conn: &str, n: usize, secs: u64, seed: u64) -> anyhow::Result<f64> {
    phase(n, secs, |i, until| {
        let conn = conn.to_owned();
        async move {
            let c = db::connect(&conn).await?;
            let stmt = c.prepare(RAW_MANY_SQL).await?;
            let versions: Vec<i64> = (1..=100).collect();
            let mut rows = 0u64;
            while Instant::now() < until {
                let payloads: Vec<Value> = (0..100)
                    .map(|k| payload(seed + i as u64 * 1_000_000 + rows + k))
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
    .await
}

/// Appends commands of `per_command` events each, one new stream per command.
async fn store_append(
    store: &EventStore,
    n: usize,
    per_command: u64,
    secs: u64,
    seed: u64,
) -> anyhow::Result<f64> {
    phase(n, secs, |i, until| {
        let store = store.clone();
        async move {
            let mut rows = 0u64;
            while Instant::now() < until {
                let events = (0..per_command)
                    .map(|k| {
                        let p = payload(seed + i as u64 * 1_000_000 + rows + k);
                        NewEvent::from_value("BudgetCreated", 2, &p)
                    })
                    .collect::<Result<_, _>>()?;
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
                rows += per_command;
            }
            Ok(rows)
        }
    })
    .await
}

/// `raw_events (LIKE events INCLUDING ALL)` with the storage parameters of `events`.
async fn create_raw_events(admin: &tokio_postgres::Client) -> anyhow::Result<()> {
    admin
        .batch_execute("CREATE TABLE IF NOT EXISTS raw_events (LIKE events INCLUDING ALL)")
        .await?;
    let reloptions: Option<Vec<String>> = admin
        .query_one(
            "SELECT reloptions FROM pg_class WHERE oid = 'events'::regclass",
            &[],
        )
        .await?
        .get(0);
    if let Some(opts) = reloptions.filter(|o| !o.is_empty()) {
        // Values from the catalog of our own table, e.g. autovacuum_analyze_scale_factor=0.02.
        admin
            .batch_execute(&format!("ALTER TABLE raw_events SET ({})", opts.join(", ")))
            .await?;
    }
    Ok(())
}

/// One raw baseline run (1 row per transaction) in a given database: the baseline of
/// `POST /api/v1/budgets`, run by loadtest/run.sh in the server's own database, between
/// its HTTP write runs.
pub fn raw_insert(args: RawInsertArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let admin = db::connect(&args.conn).await?;
        create_raw_events(&admin).await?;
        let seed = uuid::Uuid::new_v4().as_u128() as u64 % 1_000_000_000;
        let rate = raw_one(&args.conn, args.connections, args.seconds, seed).await?;
        println!(
            "raw INSERT, 1 row/txn, {} connections, {} s: {rate:.0} rows/s",
            args.connections, args.seconds
        );
        println!("(raw_events: LIKE events INCLUDING ALL, no triggers, no RETURNING)");
        anyhow::Ok(())
    })
}

pub fn store(args: StoreArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds >= 1 && args.connections >= 1,
        "rounds and connections must be at least 1"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let bench = BenchDb::create(&args.db).await?;
        let conn = bench.conn.clone();
        let admin = db::connect(&conn).await?;
        create_raw_events(&admin).await?;
        let n = args.connections;
        let secs = args.seconds;
        println!(
            "store benchmark: {n} connections, {secs} s per phase, {} rounds; every phase of a round \
             runs in the same database, back to back",
            args.rounds
        );
        println!("{RAW_TABLE_NOTE}");
        let store = EventStore::new(db::pool(&conn, n)?, EventSignal::default());
        let mut all = Rounds::default();
        for round in 1..=args.rounds {
            let seed = round as u64 * 100_000_000;
            println!("-- round {round}/{}", args.rounds);
            let r1 = raw_one(&conn, n, secs, seed).await?;
            line(&format!("raw INSERT, 1 row/txn, {n} connections"), r1, "rows/s", "");

            let before: i64 = admin
                .query_one("SELECT coalesce(max(position), 0) FROM events", &[])
                .await?
                .get(0);
            let s1 = store_append(&store, n, 1, secs, seed).await?;
            let row = admin
                .query_one(
                    "SELECT count(*), count(DISTINCT transaction_id) FROM events WHERE position > $1",
                    &[&before],
                )
                .await?;
            let (written, txns): (i64, i64) = (row.get(0), row.get(1));
            let mean_batch = written as f64 / txns.max(1) as f64;
            line(
                &format!("store append, 1 event/command, {n} callers (group commit)"),
                s1,
                "events/s",
                &format!(" (mean {mean_batch:.2} events per transaction)"),
            );

            // The group commit's batch, measured just now, sets the raw batch; as many rows
            // in flight as the store had callers (connections × rows per statement ≈ n).
            let k = if args.batch_rows > 0 {
                args.batch_rows
            } else {
                (mean_batch.round() as usize).max(1)
            };
            let c = n.div_ceil(k);
            let rb = raw_batched(&conn, c, k, secs, seed).await?;
            line(
                &format!("raw INSERT, {k} one-event streams/statement (like the group commit), {c} connections"),
                rb,
                "rows/s",
                "",
            );

            let r100 = raw_many(&conn, n, secs, seed).await?;
            line(&format!("raw INSERT, 100 rows/txn (unnest), {n} connections"), r100, "rows/s", "");
            let s100 = store_append(&store, n, 100, secs, seed).await?;
            line(&format!("store append, 100 events/command, {n} callers"), s100, "events/s", "");
            println!(
                "  ratios: store 1/cmd vs raw 1 row/txn {:.0} %, vs raw batched {:.0} %; store 100/cmd vs raw 100 rows/txn {:.0} %",
                100.0 * s1 / r1,
                100.0 * s1 / rb,
                100.0 * s100 / r100
            );
            all.add("raw INSERT 1 row/txn", "rows/s", r1);
            all.add("store 1 event/command (group commit)", "events/s", s1);
            all.add_with("group commit: events per transaction", "", 2, mean_batch);
            all.add("raw INSERT batched like the group commit", "rows/s", rb);
            all.add("raw INSERT 100 rows/txn", "rows/s", r100);
            all.add("store 100 events/command", "events/s", s100);
            all.add("store 1/cmd : raw 1 row/txn", "%", 100.0 * s1 / r1);
            all.add("store 1/cmd : raw batched", "%", 100.0 * s1 / rb);
            all.add("store 100/cmd : raw 100 rows/txn", "%", 100.0 * s100 / r100);
        }
        println!("== store: median [min–max] over {} rounds", args.rounds);
        all.print();
        println!("peak RSS of this process: {} kB", peak_rss_kb());
        drop(store);
        drop(admin);
        bench.finish().await
    })
}

/// Every event of the log in the order they are written: stream g gets BudgetCreated at
/// slot g, its j-th BudgetUpdated at g + j·D and its BudgetDeleted (one stream in six)
/// after the updates; updates per stream cycle through 0,0,0,1,0,1,2,0 (0.5 on average).
/// So ≈60 % creates, 30 % updates, 10 % deletes, with later changes of a budget far from
/// its creation (D slots, at least two projector batches of slots; near the end of the log,
/// where slots hold only later changes, fewer events lie between). The slots $1..=$2 are written,
/// in slot order; $3 = streams, $4 = D.
const GENERATE_MIX_SQL: &str = "\
WITH s AS (
    SELECT g, (ARRAY[0, 0, 0, 1, 0, 1, 2, 0])[g % 8 + 1] AS u, g % 6 = 0 AS del
      FROM generate_series(greatest(1, $1::bigint - 3 * $4::bigint), least($3::bigint, $2::bigint)) g
), e AS (
    SELECT s.g, 1 AS v, 'BudgetCreated' AS et, s.g AS t FROM s
    UNION ALL
    SELECT s.g, 1 + j, 'BudgetUpdated', s.g + j * $4::bigint FROM s, generate_series(1, s.u) j
    UNION ALL
    SELECT s.g, 2 + s.u, 'BudgetDeleted', s.g + (s.u + 1) * $4::bigint FROM s WHERE s.del
)
INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT 'default', 'budget', ('0193c000-0000-7000-8000-' || lpad(to_hex(e.g), 12, '0'))::uuid, e.v, e.et,
       CASE WHEN e.et = 'BudgetDeleted' THEN 1 ELSE 2 END,
       CASE WHEN e.et = 'BudgetDeleted' THEN '{}'::jsonb ELSE
       jsonb_build_object('name', 'budget ' || e.g || ' v' || e.v, 'amount', (1100 + 100 * e.v) || '.50',
           'currency', 'CNY', 'period', 'monthly', 'budget_type', 'cost',
           'start_date', '2026-01-01', 'end_date', '2026-12-31',
           'tag_filter', jsonb_build_object('team', 'team-' || ((e.g + e.v - 1) % 16), 'env', 'prod'),
           'service_filter', '[\"ecs\", \"oss\"]'::jsonb, 'alert_thresholds', '[\"80\", \"100\", \"120\"]'::jsonb,
           'account', 'account-' || (e.g % 8)) END,
       '{}'::jsonb
  FROM e
 WHERE e.t BETWEEN $1 AND $2
 ORDER BY e.t, e.v";

/// One BudgetCreated per stream, streams $1..=$2 (the mix before: creates only).
const GENERATE_CREATES_SQL: &str = "\
INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT 'default', 'budget', ('0193c000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 1, 'BudgetCreated', 2,
       jsonb_build_object('name', 'budget ' || g, 'amount', '1200.50', 'currency', 'CNY', 'period', 'monthly',
           'budget_type', 'cost', 'start_date', '2026-01-01', 'end_date', '2026-12-31',
           'tag_filter', jsonb_build_object('team', 'team-' || (g % 16), 'env', 'prod'),
           'service_filter', '[\"ecs\", \"oss\"]'::jsonb, 'alert_thresholds', '[\"80\", \"100\", \"120\"]'::jsonb,
           'account', 'account-' || (g % 8)),
       '{}'::jsonb
  FROM generate_series($1::bigint, $2::bigint) g";

const COPY_COLUMNS: &str =
    "id, tenant_id, version, name, amount, currency, period, budget_type, start_date, end_date, \
     tag_filter, service_filter, alert_thresholds, account, created_at, updated_at, last_position, \
     doc";

/// `n` rows for the COPY baseline, built before the clock starts, in ~1 MiB chunks.
fn copy_data(n: i64) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut buf = String::with_capacity(1 << 20);
    for g in 1..=n {
        let id = uuid::Uuid::new_v4();
        let (team, account) = (g % 16, g % 8);
        // `doc` as the projector writes it (ADR 0032); nothing in it needs COPY escaping.
        let doc = format!(
            "{{\"id\":\"{id}\",\"name\":\"budget {g}\",\"amount\":\"1200.50\",\"currency\":\"CNY\",\
             \"period\":\"monthly\",\"type\":\"cost\",\"start_date\":\"2026-01-01\",\
             \"end_date\":\"2026-12-31\",\"tag_filter\":{{\"env\":\"prod\",\"team\":\"team-{team}\"}},\
             \"service_filter\":[\"ecs\",\"oss\"],\"alert_thresholds\":[\"80\",\"100\",\"120\"],\
             \"account\":\"account-{account}\",\"updated_at\":\"2026-11-22T00:00:00Z\"}}"
        );
        buf.push_str(&format!(
            "{id}\tdefault\t1\tbudget {g}\t1200.50\tCNY\tmonthly\tcost\t2026-01-01\t2026-12-31\t\
             {{\"env\": \"prod\", \"team\": \"team-{team}\"}}\t[\"ecs\", \"oss\"]\t[\"80\", \"100\", \"120\"]\t\
             account-{account}\t2026-11-22 00:00:00+00\t2026-11-22 00:00:00+00\t{g}\t{doc}\n"
        ));
        if buf.len() > (1 << 20) - 512 {
            chunks.push(Bytes::from(std::mem::take(&mut buf)));
            buf.reserve(1 << 20);
        }
    }
    if !buf.is_empty() {
        chunks.push(Bytes::from(buf));
    }
    chunks
}

/// Writes the log: `(events by type, total)`.
async fn generate(
    admin: &mut tokio_postgres::Client,
    mix: &str,
    n: i64,
    batch: i64,
) -> anyhow::Result<(Vec<(String, i64)>, i64)> {
    let chunk = 100_000_i64;
    // Each INSERT is its own transaction: the statement trigger takes the writer lock.
    match mix {
        "creates" => {
            let mut from = 1;
            while from <= n {
                let to = (from + chunk - 1).min(n);
                admin.execute(GENERATE_CREATES_SQL, &[&from, &to]).await?;
                from = to + 1;
            }
        }
        _ => {
            let streams = (n * 3).div_euclid(5).max(1);
            let gap = (streams / 10).max(2 * batch);
            let last_slot = streams + 3 * gap;
            let mut from = 1;
            while from <= last_slot {
                let to = from + chunk - 1;
                admin
                    .execute(GENERATE_MIX_SQL, &[&from, &to, &streams, &gap])
                    .await?;
                from = to + 1;
            }
        }
    }
    admin.batch_execute("VACUUM ANALYZE events").await?;
    let by_type = admin
        .query(
            "SELECT event_type, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    let total = by_type.iter().map(|(_, c)| c).sum();
    Ok((by_type, total))
}

pub fn catchup(args: CatchupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.mix == "realistic" || args.mix == "creates",
        "--mix must be realistic or creates"
    );
    anyhow::ensure!(
        args.rounds >= 1 && args.events >= 1,
        "rounds and events must be at least 1"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let bench = BenchDb::create(&args.db).await?;
        let conn = bench.conn.clone();
        let mut admin = db::connect(&conn).await?;
        let started = Instant::now();
        let (by_type, n) = generate(&mut admin, &args.mix, args.events, args.batch).await?;
        let streams: i64 = admin
            .query_one("SELECT count(DISTINCT stream_id) FROM events", &[])
            .await?
            .get(0);
        let mix = by_type
            .iter()
            .map(|(t, c)| format!("{c} {t} ({:.0} %)", 100.0 * *c as f64 / n as f64))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "catch-up benchmark: {n} events on {streams} streams: {mix}; generated in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        println!(
            "each round: a rebuild of `budgets` replays all {n} events into fresh shadow tables \
             (projector batch {}) and swaps them in; then a raw COPY of {n} rows (as many rows as \
             events, identical BudgetCreated rows, built before the clock starts) into a fresh \
             `raw_budgets_view (LIKE budgets_view INCLUDING ALL)`, same indexes incl. GIN",
            args.batch
        );
        let mut all = Rounds::default();
        let mut data: Option<Vec<Bytes>> = None;
        let mut replay_rss = 0;
        for round in 1..=args.rounds {
            println!("-- round {round}/{}", args.rounds);
            let report = Rebuild::begin(&conn, Arc::new(Typed(BudgetsProjector)))
                .await?
                .run(args.batch, tokio::sync::watch::channel(false).1)
                .await?;
            let replay_rate = report.events as f64 / report.seconds;
            let rows: i64 = admin
                .query_one("SELECT count(*) FROM budgets_view", &[])
                .await?
                .get(0);
            println!(
                "  projection replay: {} events in {:.2} s = {replay_rate:>8.0} events/s ({rows} rows in budgets_view)",
                report.events, report.seconds
            );
            if data.is_none() {
                // Measured before the COPY data below exists.
                replay_rss = peak_rss_kb();
            }
            let chunks = data.get_or_insert_with(|| copy_data(n));

            admin
                .batch_execute(
                    "DROP TABLE IF EXISTS raw_budgets_view; \
                     CREATE TABLE raw_budgets_view (LIKE budgets_view INCLUDING ALL)",
                )
                .await?;
            let started = Instant::now();
            let sink = admin
                .copy_in::<_, Bytes>(&format!("COPY raw_budgets_view ({COPY_COLUMNS}) FROM STDIN"))
                .await?;
            futures::pin_mut!(sink);
            for c in chunks.iter() {
                sink.send(c.clone()).await?;
            }
            let copied = sink.finish().await?;
            let secs = started.elapsed().as_secs_f64();
            let copy_rate = copied as f64 / secs;
            println!("  raw COPY: {copied} rows in {secs:.2} s = {copy_rate:>8.0} rows/s");
            println!("  replay / COPY: {:.0} %", 100.0 * replay_rate / copy_rate);
            all.add("projection replay", "events/s", replay_rate);
            all.add("raw COPY", "rows/s", copy_rate);
            all.add("replay : COPY", "%", 100.0 * replay_rate / copy_rate);
        }
        println!("== catch-up: median [min–max] over {} rounds", args.rounds);
        all.print();
        println!("peak RSS of this process during the first replay (it runs the projector): {replay_rss} kB");
        drop(admin);
        bench.finish().await
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
