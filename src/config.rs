//! Settings, read once from the environment at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the server can be configured with. See the table in README.md.
#[derive(Debug, Clone)]
pub struct Settings {
    /// When set, the server uses this database and manages no cluster of its own.
    pub database_url: Option<String>,
    /// A streaming replica of that database (`CLOUDLENS_REPLICA_URL`): read-model queries
    /// go there while it answers (`db::replica`).
    pub replica_url: Option<String>,
    /// Where the self-managed cluster keeps its data (`pgdata/`) and socket (`run/`).
    pub data_dir: PathBuf,
    /// Port of the self-managed cluster (it listens on its unix socket only).
    pub pg_port: u16,
    pub listen: SocketAddr,
    /// Connections for commands (the write side).
    pub pool_size: usize,
    /// Connections for queries (the read side), shared and pipelined (`db::Reader`).
    pub read_pool_size: usize,
    /// Connections per tenant for pages of lists (`db::Reader::tenant_pages`).
    pub read_page_pool_size: usize,
    /// Tenants with read connections of their own open at once (`db::Reader`): each has
    /// `read_pool_size` connections bound to it.
    pub read_tenants: usize,
    /// The largest JSON body (commands).
    pub body_limit: usize,
    /// The largest streamed body (bulk imports: bills, subjects).
    pub import_limit: u64,
    /// How long a query with `min_position` waits for the read models before 503.
    pub min_position_timeout: Duration,
    /// The longest a scanning query (cost breakdowns) may run (`statement_timeout`).
    pub scan_timeout: Duration,
    pub projector_batch_size: i64,
    /// Fallback poll interval of projectors when no notification arrives.
    pub projector_poll: Duration,
    pub log_json: bool,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_retention: Duration,
    /// How often the elected process purges expired idempotency keys.
    pub purge_interval: Duration,
    /// About how many lines one step of a virtual tag's recomputation rewrites (one
    /// transaction of the `cost_lines` projector).
    pub recompute_step_lines: i64,
    /// Whether `/metrics` answers without an API key once keys exist.
    pub metrics_public: bool,
    /// An admin API key to issue at start if it is not issued yet (a Kubernetes Secret).
    pub admin_key: Option<SecretKey>,
    /// Requests per second per API key (token bucket; 0: no limit), and the burst.
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// The master key that wraps the data keys of sensitive attributes (`crypto`); the
    /// local cluster's server makes one in `data_dir` when none is given.
    pub master_key: Option<crate::crypto::MasterKey>,
    /// OTLP/HTTP collector base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`): traces are exported
    /// there, and requests carry trace ids, only when it is set.
    pub otlp_endpoint: Option<String>,
    /// Streams are archived only once they ended at least this long ago, whatever the
    /// request asks: a command that loaded a stream before its end has long finished.
    pub archive_min_age: Duration,
    /// Days raw metric points are kept unless their metric says otherwise
    /// (`CLOUDLENS_METRICS_RETENTION_DAYS`, default 30).
    pub metrics_retention_days: i32,
    /// How often the elected process runs retention
    /// (`CLOUDLENS_METRICS_RETENTION_INTERVAL_SECONDS`, default 3600).
    pub metrics_retention_interval: Duration,
    /// Most points (buckets × series) one query may return
    /// (`CLOUDLENS_METRICS_MAX_POINTS`, default 100,000).
    pub metrics_max_points: i64,
    /// Dimensions of a document's `embedding` (`CLOUDLENS_EMBEDDING_DIMENSIONS`, default
    /// 384, at most 2,000: pgvector's HNSW limit). Fixed per deployment.
    pub embedding_dimensions: usize,
    /// Whether to serve vector search when pgvector is there (`CLOUDLENS_VECTOR_SEARCH`,
    /// `on` or `off`; default on).
    pub vector_search: bool,
    /// How often the elected process deletes expired collection items
    /// (`CLOUDLENS_COLLECTIONS_PURGE_INTERVAL_SECONDS`, default 60). Reads never return
    /// an expired item; the purge frees the space.
    pub collections_purge_interval: Duration,
    /// How often the elected process evaluates the window-based alert rules
    /// (`CLOUDLENS_ALERT_EVALUATION_INTERVAL_MS`, default 30,000).
    pub alert_evaluation_interval: Duration,
    /// How often the elected process looks for notifications due
    /// (`CLOUDLENS_NOTIFY_POLL_MS`, default 500).
    pub notify_poll: Duration,
    /// Attempts of one notification before it is marked dead
    /// (`CLOUDLENS_NOTIFY_MAX_ATTEMPTS`, default 10).
    pub notify_max_attempts: i32,
    /// First retry delay of a failed notification, doubled per attempt up to an hour,
    /// with jitter (`CLOUDLENS_NOTIFY_RETRY_BASE_MS`, default 2,000).
    pub notify_retry_base: Duration,
    /// The server's address as receivers should link to it (`CLOUDLENS_PUBLIC_URL`);
    /// links in notifications are relative without it.
    pub public_url: Option<String>,
    /// Whether notification channels may reach loopback, private and link-local
    /// addresses (`CLOUDLENS_NOTIFY_ALLOW_PRIVATE`, default false: a tenant's webhook must
    /// not probe the server's own network).
    pub notify_allow_private: bool,
}

/// A secret that `{:?}` does not print (settings end up in logs and error reports).
#[derive(Clone)]
pub struct SecretKey(pub String);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            replica_url: None,
            data_dir: PathBuf::from("./var"),
            pg_port: 54329,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            pool_size: 48,
            // One per core: more connections only add backends competing for the cores
            // (measured in loadtest/RESULTS.md).
            read_pool_size: std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            // Two per core: a page costs PostgreSQL more than the server, and with one
            // backend per core it gets too small a share of them (ADR 0032).
            read_page_pool_size: std::thread::available_parallelism()
                .map_or(4, |n| 2 * n.get().max(2)),
            read_tenants: 16,
            body_limit: 2 * 1024 * 1024,
            import_limit: 4 * 1024 * 1024 * 1024,
            min_position_timeout: Duration::from_secs(5),
            scan_timeout: Duration::from_secs(30),
            projector_batch_size: 5000,
            projector_poll: Duration::from_millis(500),
            log_json: false,
            idempotency_retention: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(600),
            recompute_step_lines: 200_000,
            metrics_public: true,
            admin_key: None,
            rate_per_second: 1000,
            rate_burst: 2000,
            master_key: None,
            otlp_endpoint: None,
            archive_min_age: Duration::from_secs(3600),
            metrics_retention_days: 30,
            metrics_retention_interval: Duration::from_secs(3600),
            metrics_max_points: 100_000,
            embedding_dimensions: 384,
            vector_search: true,
            collections_purge_interval: Duration::from_secs(60),
            alert_evaluation_interval: Duration::from_secs(30),
            notify_poll: Duration::from_millis(500),
            notify_max_attempts: 10,
            notify_retry_base: Duration::from_secs(2),
            public_url: None,
            notify_allow_private: false,
        }
    }
}

impl Settings {
    /// The vault of the configured master key (none: sensitive values are refused).
    pub fn vault(&self) -> crate::crypto::Vault {
        crate::crypto::Vault::new(self.master_key.clone())
    }

    /// The local cluster's master key (`data_dir/master.key`, made on first use) unless
    /// one is given: sensitive attributes work out of the box on a development machine.
    pub fn with_local_master_key(mut self) -> anyhow::Result<Self> {
        if self.database_url.is_none() && self.master_key.is_none() {
            let path = self.data_dir.join("master.key");
            self.master_key = Some(crate::crypto::MasterKey::from_file(&path, true)?);
        }
        Ok(self)
    }

    /// Reads `DATABASE_URL` and the `CLOUDLENS_*` variables; unset ones keep their defaults.
    pub fn from_env() -> anyhow::Result<Self> {
        let mut s = Self::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        s.database_url = var("DATABASE_URL");
        s.replica_url = var("CLOUDLENS_REPLICA_URL");
        if let Some(v) = var("CLOUDLENS_DATA_DIR") {
            s.data_dir = PathBuf::from(v);
        }
        if let Some(v) = var("CLOUDLENS_PG_PORT") {
            s.pg_port = parse("CLOUDLENS_PG_PORT", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_LISTEN") {
            s.listen = parse("CLOUDLENS_LISTEN", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_POOL_SIZE") {
            s.pool_size = parse("CLOUDLENS_POOL_SIZE", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_READ_POOL_SIZE") {
            s.read_pool_size = parse("CLOUDLENS_READ_POOL_SIZE", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_READ_PAGE_POOL_SIZE") {
            s.read_page_pool_size = parse("CLOUDLENS_READ_PAGE_POOL_SIZE", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_READ_TENANTS") {
            s.read_tenants = parse("CLOUDLENS_READ_TENANTS", &v)?;
            anyhow::ensure!(
                s.read_tenants >= 1,
                "CLOUDLENS_READ_TENANTS={v:?} is not valid: at least 1"
            );
        }
        if let Some(v) = var("CLOUDLENS_IDEMPOTENCY_RETENTION_HOURS") {
            let hours: u64 = parse("CLOUDLENS_IDEMPOTENCY_RETENTION_HOURS", &v)?;
            anyhow::ensure!(
                hours >= 1,
                "CLOUDLENS_IDEMPOTENCY_RETENTION_HOURS={v:?} is not valid: at least 1 (hour)"
            );
            s.idempotency_retention = Duration::from_secs(hours * 3600);
        }
        if let Some(v) = var("CLOUDLENS_BODY_LIMIT") {
            s.body_limit = parse("CLOUDLENS_BODY_LIMIT", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_IMPORT_LIMIT") {
            s.import_limit = parse("CLOUDLENS_IMPORT_LIMIT", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_MIN_POSITION_TIMEOUT_MS") {
            s.min_position_timeout =
                Duration::from_millis(parse("CLOUDLENS_MIN_POSITION_TIMEOUT_MS", &v)?);
        }
        if let Some(v) = var("CLOUDLENS_SCAN_TIMEOUT_MS") {
            s.scan_timeout = Duration::from_millis(parse("CLOUDLENS_SCAN_TIMEOUT_MS", &v)?);
        }
        if let Some(v) = var("CLOUDLENS_RECOMPUTE_STEP_LINES") {
            s.recompute_step_lines = parse("CLOUDLENS_RECOMPUTE_STEP_LINES", &v)?;
            anyhow::ensure!(
                s.recompute_step_lines >= 1,
                "CLOUDLENS_RECOMPUTE_STEP_LINES={v:?} is not valid: at least 1"
            );
        }
        if let Some(v) = var("CLOUDLENS_ADMIN_KEY") {
            anyhow::ensure!(
                crate::access::keys::prefix_of(v.trim()).is_some(),
                "CLOUDLENS_ADMIN_KEY is not valid: a key reads clk_<12 hex digits>_<64 hex digits> \
                 (`cloudlens api-keys generate` prints one)"
            );
            s.admin_key = Some(SecretKey(v.trim().to_owned()));
        }
        if let Some(v) = var("CLOUDLENS_RATE_LIMIT_PER_SECOND") {
            s.rate_per_second = parse("CLOUDLENS_RATE_LIMIT_PER_SECOND", &v)?;
            s.rate_burst = s.rate_per_second.saturating_mul(2);
        }
        if let Some(v) = var("CLOUDLENS_RATE_LIMIT_BURST") {
            s.rate_burst = parse("CLOUDLENS_RATE_LIMIT_BURST", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_METRICS_PUBLIC") {
            s.metrics_public = parse("CLOUDLENS_METRICS_PUBLIC", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_MASTER_KEY") {
            s.master_key = Some(
                crate::crypto::MasterKey::parse(&v)
                    .map_err(|e| anyhow::anyhow!("CLOUDLENS_MASTER_KEY is not valid: {e}"))?,
            );
        } else if let Some(v) = var("CLOUDLENS_MASTER_KEY_FILE") {
            s.master_key = Some(crate::crypto::MasterKey::from_file(
                std::path::Path::new(&v),
                false,
            )?);
        }
        s.otlp_endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(v) = var("CLOUDLENS_ARCHIVE_MIN_AGE_SECONDS") {
            s.archive_min_age =
                Duration::from_secs(parse("CLOUDLENS_ARCHIVE_MIN_AGE_SECONDS", &v)?);
        }
        if let Some(v) = var("CLOUDLENS_METRICS_RETENTION_DAYS") {
            s.metrics_retention_days = parse("CLOUDLENS_METRICS_RETENTION_DAYS", &v)?;
            anyhow::ensure!(
                (1..=crate::timeseries::aggregate::MAX_RETENTION_DAYS)
                    .contains(&s.metrics_retention_days),
                "CLOUDLENS_METRICS_RETENTION_DAYS must be from 1 to {}",
                crate::timeseries::aggregate::MAX_RETENTION_DAYS
            );
        }
        if let Some(v) = var("CLOUDLENS_METRICS_RETENTION_INTERVAL_SECONDS") {
            let secs: u64 = parse("CLOUDLENS_METRICS_RETENTION_INTERVAL_SECONDS", &v)?;
            anyhow::ensure!(
                secs >= 1,
                "CLOUDLENS_METRICS_RETENTION_INTERVAL_SECONDS must be at least 1"
            );
            s.metrics_retention_interval = Duration::from_secs(secs);
        }
        if let Some(v) = var("CLOUDLENS_METRICS_MAX_POINTS") {
            s.metrics_max_points = parse("CLOUDLENS_METRICS_MAX_POINTS", &v)?;
            anyhow::ensure!(
                s.metrics_max_points >= 1,
                "CLOUDLENS_METRICS_MAX_POINTS must be at least 1"
            );
        }
        if let Some(v) = var("CLOUDLENS_EMBEDDING_DIMENSIONS") {
            s.embedding_dimensions = parse("CLOUDLENS_EMBEDDING_DIMENSIONS", &v)?;
            anyhow::ensure!(
                (1..=2000).contains(&s.embedding_dimensions),
                "CLOUDLENS_EMBEDDING_DIMENSIONS must be from 1 to 2000"
            );
        }
        if let Some(v) = var("CLOUDLENS_VECTOR_SEARCH") {
            s.vector_search = match v.as_str() {
                "on" => true,
                "off" => false,
                _ => anyhow::bail!("CLOUDLENS_VECTOR_SEARCH must be on or off"),
            };
        }
        if let Some(v) = var("CLOUDLENS_COLLECTIONS_PURGE_INTERVAL_SECONDS") {
            let secs: u64 = parse("CLOUDLENS_COLLECTIONS_PURGE_INTERVAL_SECONDS", &v)?;
            anyhow::ensure!(
                secs >= 1,
                "CLOUDLENS_COLLECTIONS_PURGE_INTERVAL_SECONDS must be at least 1"
            );
            s.collections_purge_interval = Duration::from_secs(secs);
        }
        for (name, field) in [
            (
                "CLOUDLENS_ALERT_EVALUATION_INTERVAL_MS",
                &mut s.alert_evaluation_interval,
            ),
            ("CLOUDLENS_NOTIFY_POLL_MS", &mut s.notify_poll),
            ("CLOUDLENS_NOTIFY_RETRY_BASE_MS", &mut s.notify_retry_base),
        ] {
            if let Some(v) = var(name) {
                let ms: u64 = parse(name, &v)?;
                anyhow::ensure!(
                    (10..=86_400_000).contains(&ms),
                    "{name} must be between 10 and 86400000"
                );
                *field = Duration::from_millis(ms);
            }
        }
        if let Some(v) = var("CLOUDLENS_NOTIFY_MAX_ATTEMPTS") {
            s.notify_max_attempts = parse("CLOUDLENS_NOTIFY_MAX_ATTEMPTS", &v)?;
            anyhow::ensure!(
                (1..=100).contains(&s.notify_max_attempts),
                "CLOUDLENS_NOTIFY_MAX_ATTEMPTS must be between 1 and 100"
            );
        }
        if let Some(v) = var("CLOUDLENS_NOTIFY_ALLOW_PRIVATE") {
            s.notify_allow_private = parse("CLOUDLENS_NOTIFY_ALLOW_PRIVATE", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_PUBLIC_URL") {
            anyhow::ensure!(
                v.starts_with("http://") || v.starts_with("https://"),
                "CLOUDLENS_PUBLIC_URL must start with http:// or https://"
            );
            s.public_url = Some(v.trim_end_matches('/').to_owned());
        }
        if let Some(v) = var("CLOUDLENS_PROJECTOR_BATCH") {
            s.projector_batch_size = parse("CLOUDLENS_PROJECTOR_BATCH", &v)?;
        }
        if let Some(v) = var("CLOUDLENS_LOG_FORMAT") {
            s.log_json = v == "json";
        }
        Ok(s)
    }
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| anyhow::anyhow!("{name}={value:?} is not valid: {e}"))
}
