//! Database access: the connection pool, migrations (refinery, from `sql/`) and the
//! self-managed local cluster.

pub mod cluster;
pub mod cursor;
pub mod reader;
pub mod replica;
pub mod stats;
pub mod tls;

pub use reader::{ReadConnection, Reader};

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use postgres_native_tls::MakeTlsConnector;

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Advisory lock (two-key form) that serialises migrations of concurrently starting servers.
const MIGRATION_LOCK_SQL: &str = "SELECT pg_advisory_lock(1668048000, 1)";
const MIGRATION_UNLOCK_SQL: &str = "SELECT pg_advisory_unlock(1668048000, 1)";

/// Connection settings shared by pooled and dedicated connections, and the TLS
/// connector for the string's `sslmode` (`tls`). TCP keepalives find a vanished server
/// within about 25 s instead of the system's two hours.
pub fn config(
    conn: &str,
) -> Result<(tokio_postgres::Config, MakeTlsConnector), tokio_postgres::Error> {
    let (conn, tls) = match tls::prepare(conn) {
        Ok(p) => p,
        // `app` prepares the configured string before it connects, so this is a string
        // nobody checked (a test's). tokio-postgres rejects what was wrong with it (an
        // unknown sslmode, or sslrootcert, which it does not know), with its own error.
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "invalid TLS options in the connection string");
            let rejected = match conn.parse::<tokio_postgres::Config>() {
                Err(rejected) => rejected,
                Ok(_) => match "sslmode=unusable".parse::<tokio_postgres::Config>() {
                    Err(rejected) => rejected,
                    Ok(_) => unreachable!("tokio-postgres accepted sslmode=unusable"),
                },
            };
            return Err(rejected);
        }
    };
    let mut cfg: tokio_postgres::Config = conn.parse()?;
    // As libpq: no TLS over a unix socket (the server would refuse it).
    if cfg
        .get_hosts()
        .iter()
        .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
    {
        cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    cfg.connect_timeout(Duration::from_secs(3))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3);
    Ok((cfg, tls))
}

/// Builds a pool; connections are made lazily, so this succeeds while the database is down.
pub fn pool(conn: &str, size: usize) -> anyhow::Result<Pool> {
    let (cfg, tls) = config(conn).context("invalid database connection string")?;
    build_pool(cfg, tls, size)
}

/// A pool whose statements are cancelled after `timeout` (`statement_timeout`): for
/// queries that scan, so that one runaway query cannot hold a connection for minutes.
pub fn scan_pool(conn: &str, size: usize, timeout: Duration) -> anyhow::Result<Pool> {
    let (mut cfg, tls) = config(conn).context("invalid database connection string")?;
    let limit = format!("-c statement_timeout={}", timeout.as_millis().max(1));
    let options = match cfg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {limit}"),
        _ => limit,
    };
    cfg.options(&options);
    build_pool(cfg, tls, size)
}

fn build_pool(
    cfg: tokio_postgres::Config,
    tls: MakeTlsConnector,
    size: usize,
) -> anyhow::Result<Pool> {
    let mgr = Manager::from_config(
        cfg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(3)))
        .recycle_timeout(Some(Duration::from_secs(3)))
        .build()
        .context("cannot build the connection pool")
}

/// Opens one connection outside the pool (projectors, LISTEN, leader locks), driving its
/// connection future on the runtime.
pub async fn connect(conn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (cfg, tls) = config(conn)?;
    let (client, connection) = cfg.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "dedicated database connection ended");
        }
    });
    Ok(client)
}

/// Fails with a clear message when the timescaledb extension cannot be created here.
pub async fn check_timescaledb(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let row = client
        .query_opt(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await?;
    if row.is_none() {
        anyhow::bail!(
            "the timescaledb extension is not available on this PostgreSQL server; install \
             TimescaleDB (scripts/setup.sh does it for the local cluster) and preload it with \
             shared_preload_libraries = 'timescaledb'"
        );
    }
    Ok(())
}

/// Creates the query role (`sql/V9`) unless the cluster has it, and lets the current
/// user switch to it (SET ROLE needs membership unless it is a superuser; a managed
/// database's admin user with CREATEROLE may grant it to itself). Roles are global to a
/// cluster, and servers of several databases may migrate at once. Runs at every start:
/// a restore into a new cluster, or a new login user, needs it again. The same for the
/// business dashboard's read-only role `cloudlens_grafana` (sql/V19; without login until
/// an operator gives it one): a dump's grants and policies name it.
pub const ENSURE_QUERY_ROLE_SQL: &str = "DO $$
BEGIN
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cloudlens_query') THEN
            CREATE ROLE cloudlens_query NOLOGIN NOSUPERUSER NOBYPASSRLS;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cloudlens_grafana') THEN
            CREATE ROLE cloudlens_grafana NOLOGIN NOSUPERUSER NOBYPASSRLS;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation OR insufficient_privilege THEN
        NULL;
    END;
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'cloudlens_query', 'MEMBER') THEN
        EXECUTE format('GRANT cloudlens_query TO %I', current_user);
    END IF;
END
$$";

/// A query's own conditions may run before a row-level security policy only when their
/// functions are LEAKPROOF. The jsonb containment and existence operators are not marked
/// so, which keeps tag filters (`tags @> …`) off their GIN indexes. They reveal nothing
/// about their arguments but their result, so where the owner may (a superuser, as on the
/// local cluster), mark them in this database; elsewhere tag filters still answer right,
/// by scanning the tenant's rows (ADR 0015). The mark is not part of a dump: this runs at
/// every start.
const LEAKPROOF_SQL: &str = "DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER FUNCTION jsonb_contains(jsonb, jsonb) LEAKPROOF;
        ALTER FUNCTION jsonb_exists(jsonb, text) LEAKPROOF;
        ALTER FUNCTION jsonb_exists_any(jsonb, text[]) LEAKPROOF;
        ALTER FUNCTION jsonb_exists_all(jsonb, text[]) LEAKPROOF;
        -- Full-text match and array containment: the search's GIN indexes (documents).
        ALTER FUNCTION ts_match_vq(tsvector, tsquery) LEAKPROOF;
        ALTER FUNCTION arraycontains(anyarray, anyarray) LEAKPROOF;
    ELSE
        RAISE NOTICE 'jsonb operators not marked LEAKPROOF (needs a superuser): tag filters scan the tenant';
    END IF;
END
$$";

pub async fn mark_operators_leakproof(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client
        .batch_execute(LEAKPROOF_SQL)
        .await
        .context("cannot mark the jsonb operators LEAKPROOF")
}

/// Applies pending migrations from `sql/`; safe when several servers start at once.
pub async fn migrate(conn: &str) -> anyhow::Result<()> {
    let mut client = connect(conn)
        .await
        .context("cannot connect to the database")?;
    check_timescaledb(&client).await?;
    client.batch_execute(MIGRATION_LOCK_SQL).await?;
    let result = async {
        client.batch_execute(ENSURE_QUERY_ROLE_SQL).await?;
        let report = embedded::migrations::runner()
            .run_async(&mut client)
            .await?;
        mark_operators_leakproof(&client).await?;
        anyhow::Ok(report)
    }
    .await;
    client.batch_execute(MIGRATION_UNLOCK_SQL).await?;
    let report = result.context("migrations failed")?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}

/// Number of migrations shipped with this binary (readiness compares it with the database).
pub fn migration_count() -> usize {
    embedded::migrations::runner().get_migrations().len()
}

/// How many migrations the database has applied (readiness compares with the binary's).
pub async fn migrations_applied(client: &tokio_postgres::Client) -> Result<usize, QueryError> {
    let n: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await?
        .try_get(0)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Creates `dbname` inside a cluster if missing (the local cluster starts with `postgres` only).
pub async fn ensure_database(maintenance_conn: &str, dbname: &str) -> anyhow::Result<()> {
    let client = connect(maintenance_conn).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])
        .await?
        .is_some();
    if !exists {
        // Identifiers cannot be parameters; the name is ours (local cluster, tests), but it
        // is still checked against a strict pattern before it reaches SQL.
        anyhow::ensure!(
            !dbname.is_empty()
                && dbname
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "invalid database name {dbname:?}"
        );
        client
            .batch_execute(&format!("CREATE DATABASE {dbname}"))
            .await?;
    }
    Ok(())
}

/// A failed read, already sorted into "the database is not there" and everything else,
/// so that no driver type reaches the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("query failed")]
    Failed(#[source] tokio_postgres::Error),
    /// PostgreSQL refused a value the request carried (SQLSTATE class 22, data
    /// exception: a NUL character in text, a number out of range, …).
    #[error("{0}")]
    BadValue(String),
    /// The statement ran past its `statement_timeout` (SQLSTATE 57014).
    #[error("the query ran too long and was cancelled")]
    Timeout,
}

impl From<tokio_postgres::Error> for QueryError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_unavailable(&e) {
            return QueryError::Unavailable(e.to_string());
        }
        match e.as_db_error() {
            Some(d) if d.code().code().starts_with("22") => {
                QueryError::BadValue(d.message().to_owned())
            }
            // A lock wait past `lock_timeout` (55P03) stays `Failed`: callers that retry
            // it (a rebuild's swap) tell it by its code.
            Some(d) if d.code() == &tokio_postgres::error::SqlState::QUERY_CANCELED => {
                QueryError::Timeout
            }
            // A deadlock or serialization failure (class 40) rolled the transaction back:
            // nothing was written, and a retry can succeed (503 with Retry-After).
            Some(d) if d.code().code().starts_with("40") => QueryError::Unavailable(format!(
                "the transaction was rolled back, retry: {}",
                d.message()
            )),
            _ => QueryError::Failed(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for QueryError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => QueryError::Unavailable(other.to_string()),
        }
    }
}

/// True when the error means the database could not be reached or the session was lost,
/// as opposed to an error in the statement itself.
pub fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            // 08: connection exception, 57P01-57P03: admin shutdown / crash / cannot connect now,
            // 53300: too many connections.
            c.starts_with("08") || c.starts_with("57P") || c == "53300"
        }
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}
