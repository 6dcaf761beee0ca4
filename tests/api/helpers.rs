#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
//! Test harness: clusters, fresh databases, the app on port 0, and a counting projection.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloudlens::config::Settings;
use cloudlens::db::{self, cluster::LocalCluster};
use cloudlens::eventstore::{signal::EventSignal, EventStore, RecordedEvent};
use cloudlens::projections::{Lane, Projection};
use serde_json::Value;
use tokio_postgres::Transaction;

pub fn test_root() -> PathBuf {
    let root = std::env::var("CLOUDLENS_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("cloudlens-tests"));
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// A cluster of its own under the test root (for tests that stop or kill it).
pub fn own_cluster(name: &str) -> LocalCluster {
    let dir = test_root().join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    let c = LocalCluster::new(&dir, 5432).unwrap();
    c.ensure_running().unwrap();
    c
}

static SHARED: OnceLock<LocalCluster> = OnceLock::new();

pub fn shared_cluster() -> &'static LocalCluster {
    SHARED.get_or_init(|| {
        let dir = test_root().join(format!("shared-{}", std::process::id()));
        let c = LocalCluster::new(&dir, 5432).unwrap();
        c.ensure_running().unwrap();
        c
    })
}

/// A new, migrated database in `cluster`; returns its connection string.
pub async fn fresh_database_in(cluster: &LocalCluster) -> String {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    db::ensure_database(&cluster.connection_string_for("postgres"), &name)
        .await
        .unwrap();
    let conn = cluster.connection_string_for(&name);
    db::migrate(&conn).await.unwrap();
    conn
}

/// A fresh database with the `test_seen` table of `CountingProjection`.
pub async fn fresh_counting_database() -> String {
    let conn = fresh_database().await;
    db::connect(&conn)
        .await
        .unwrap()
        .batch_execute(COUNTING_TABLE_SQL)
        .await
        .unwrap();
    conn
}

pub async fn fresh_database() -> String {
    let cluster = tokio::task::spawn_blocking(shared_cluster).await.unwrap();
    fresh_database_in(cluster).await
}

pub fn store(conn: &str, pool_size: usize) -> EventStore {
    EventStore::new(db::pool(conn, pool_size).unwrap(), EventSignal::default())
}

/// The master key of every test server (sensitive attributes).
pub fn test_vault() -> cloudlens::crypto::Vault {
    test_settings().vault()
}

pub fn test_settings() -> Settings {
    Settings {
        master_key: Some(
            cloudlens::crypto::MasterKey::parse("dGVzdHMtb25seS1tYXN0ZXIta2V5LTMyLWJ5dGVzISE=")
                .unwrap(),
        ),
        projector_poll: Duration::from_millis(100),
        // Streams deleted a moment ago may be archived.
        archive_min_age: Duration::ZERO,
        // Small steps, so a test's few hundred lines are recomputed in several.
        recompute_step_lines: 300,
        // Alert rules evaluated and notifications sent within a test's patience.
        alert_evaluation_interval: Duration::from_millis(250),
        notify_poll: Duration::from_millis(100),
        notify_retry_base: Duration::from_millis(50),
        notify_max_attempts: 4,
        // The tests' receivers listen on loopback.
        notify_allow_private: true,
        ..Settings::default()
    }
}

pub struct TestApp {
    pub base: String,
    pub conn: String,
    pub handle: actix_web::dev::ServerHandle,
    pub background: cloudlens::app::Background,
    pub client: awc::Client,
}

pub type Response = awc::ClientResponse<actix_web::dev::Decompress<actix_web::dev::Payload>>;

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// GET of the budget a command answered with, waiting for its own position.
    pub async fn read_own_write(&self, created: &Value) -> Response {
        self.get(&format!(
            "/api/v1/budgets/{}?min_position={}",
            created["id"].as_str().unwrap(),
            created["position"]
        ))
        .await
    }

    /// Starts a rebuild of `projection` over HTTP (202 expected).
    pub async fn start_rebuild(&self, projection: &str) {
        let res = self
            .client
            .post(self.url(&format!("/api/v1/admin/projections/{projection}/rebuild")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .send_json(body)
            .await
            .unwrap()
    }
}

/// The real server on a random port against `conn`.
pub async fn spawn_app_on(conn: String, settings: Settings) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let cloudlens::app::Running {
        port,
        server,
        background,
        ..
    } = cloudlens::app::start(settings, conn.clone(), listener).unwrap();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        conn,
        handle,
        background,
        client: awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish(),
    }
}

pub async fn spawn_app() -> TestApp {
    let conn = fresh_database().await;
    spawn_app_on(conn, test_settings()).await
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn budget_body(name: &str) -> Value {
    serde_json::json!({
        "name": name, "amount": "1200.50", "currency": "CNY", "period": "monthly", "type": "cost",
        "start_date": "2026-01-01", "end_date": "2026-12-31", "tag_filter": {"team": "data"},
        "service_filter": ["ecs", "oss"], "alert_thresholds": [80, 100, 120], "account": "aliyun-main"
    })
}

/// Records every event it sees in `test_seen` (no unique key, so a duplicate would show).
/// Can be told to stall once mid-batch, after writing, so a test can kill its session.
pub struct CountingProjection {
    pub stall_once: AtomicBool,
    pub stalled: tokio::sync::Notify,
}

pub const COUNTING_TABLE_SQL: &str =
    "CREATE TABLE IF NOT EXISTS test_seen (position bigint NOT NULL, stream_id uuid NOT NULL)";

impl CountingProjection {
    pub fn new(stall_once: bool) -> Arc<Self> {
        Arc::new(Self {
            stall_once: AtomicBool::new(stall_once),
            stalled: tokio::sync::Notify::new(),
        })
    }
}

#[async_trait]
impl Projection for CountingProjection {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn stream_types(&self) -> &[&'static str] {
        &["counter"]
    }
    fn tables(&self) -> Vec<&'static str> {
        vec!["test_seen"]
    }
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: &[RecordedEvent],
        _lane: Lane,
    ) -> anyhow::Result<()> {
        let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.stream_id).collect();
        tx.execute(
            "INSERT INTO test_seen SELECT * FROM unnest($1::bigint[], $2::uuid[])",
            &[&positions, &ids],
        )
        .await?;
        if self.stall_once.swap(false, Ordering::SeqCst) {
            self.stalled.notify_one();
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok(())
    }
}

/// One command appending `events` `Counted` events to stream `counter`/`id`.
pub fn counter_command(
    id: uuid::Uuid,
    expected_version: i64,
    events: i64,
) -> cloudlens::eventstore::AppendRequest<'static> {
    cloudlens::eventstore::AppendRequest {
        tenant_id: "default",
        stream_type: "counter",
        stream_id: id,
        expected_version,
        events: (1..=events)
            .map(|k| {
                let n = serde_json::json!({"n": expected_version + k});
                cloudlens::eventstore::NewEvent::from_value("Counted", 1, &n).unwrap()
            })
            .collect(),
        metadata: serde_json::json!({}),
        idempotency: None,
    }
}

/// Appends `n` events of stream type `counter` to stream `id`, one command each.
pub async fn append_counter_events(store: &EventStore, id: uuid::Uuid, from_version: i64, n: i64) {
    for v in from_version..from_version + n {
        store.append(counter_command(id, v, 1)).await.unwrap();
    }
}

/// Number of events in stream `id`.
pub async fn stream_len(conn: &str, id: uuid::Uuid) -> i64 {
    let c = db::connect(conn).await.unwrap();
    c.query_one("SELECT count(*) FROM events WHERE stream_id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

pub async fn count(conn: &str, sql: &str) -> i64 {
    let c = db::connect(conn).await.unwrap();
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// A response body as JSON (up to 64 MiB).
pub async fn body(mut res: Response) -> Value {
    res.json::<Value>().limit(64 << 20).await.unwrap()
}

/// Rows of a query (one text column) sorted, for comparing a rebuilt read model with the
/// live one.
pub async fn snapshot(conn: &str, sql: &str) -> Vec<String> {
    let client = db::connect(conn).await.unwrap();
    let mut rows: Vec<String> = client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    rows.sort();
    rows
}

/// Rebuilds `name` over HTTP and waits until the rebuild is done.
pub async fn rebuild_and_wait(app: &TestApp, name: &str) {
    app.start_rebuild(name).await;
    let done = eventually(Duration::from_secs(60), || async {
        let v = body(app.get("/api/v1/admin/projections").await).await;
        let p = v["projections"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)?
            .clone();
        (p["rebuild"]["state"] == "done").then_some(())
    })
    .await;
    assert!(done.is_some(), "rebuild of {name} finished");
}

/// The `cloudlens` binary run with `args` against the database `conn`.
pub fn cli(conn: &str, args: &[&str]) -> std::process::Output {
    cli_with(conn, &[], args)
}

/// `cli` with more environment variables.
pub fn cli_with(conn: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cloudlens"))
        .args(args)
        .env("DATABASE_URL", conn)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `cli` that must succeed: its standard output.
pub fn cli_ok(conn: &str, args: &[&str]) -> String {
    cli_ok_with(conn, &[], args)
}

/// `cli_with` that must succeed: its standard output.
pub fn cli_ok_with(conn: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = cli_with(conn, env, args);
    assert!(
        out.status.success(),
        "cloudlens {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A server process, killed if the test fails half-way, so none outlives the test run.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A port nothing listens on now (for a server the test starts itself).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
