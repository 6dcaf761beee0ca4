//! `cloudlens backup DEST` and `cloudlens restore SRC --verify` (ADR 0016).
//!
//! A backup is a directory: `cloudlens.dump` (pg_dump, custom format) and
//! `manifest.json`, written last. Both come from one snapshot: the manifest's transaction
//! exports it and pg_dump imports it (`--snapshot`), so a backup taken under load is
//! consistent and its manifest describes exactly what was dumped.
//!
//! The manifest holds the event count and last position, and per table of the `public`
//! schema its rows and an order-independent checksum (the sum of a 64-bit hash of each
//! row's text). A verify restores into a scratch database and checks, in this order: the
//! dump's SHA-256, every table against the manifest, and every projection rebuilt from the
//! restored events against the restored read model brought up to the end of the log.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_postgres::GenericClient;

use crate::db::{self, cluster::PG_BIN};

pub const DUMP_FILE: &str = "cloudlens.dump";
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub migrations: i64,
    pub events: i64,
    pub last_position: i64,
    /// SHA-256 of `cloudlens.dump`.
    pub dump_sha256: String,
    pub dump_bytes: u64,
    pub tables: BTreeMap<String, TableSum>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableSum {
    pub rows: i64,
    pub checksum: String,
}

/// Tables of the `public` schema (hypertables included, their chunks not).
const TABLES_SQL: &str = "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
                          ORDER BY tablename";

/// Rows and the order-independent checksum of one table (`{}`: a name from TABLES_SQL,
/// quoted).
const SUM_SQL: &str = "SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint::numeric), 0)::text FROM public.{} t";

const EVENTS_SQL: &str = "SELECT count(*), coalesce(max(position), 0) FROM events";

const MIGRATIONS_SQL: &str = "SELECT count(*) FROM refinery_schema_history";

/// A progress line on the terminal (stderr), for runs that take minutes.
fn progress(msg: impl std::fmt::Display) {
    eprintln!("{} {msg}", chrono::Utc::now().format("%H:%M:%S"));
}

async fn tables<C: GenericClient>(client: &C) -> anyhow::Result<Vec<String>> {
    Ok(client
        .query(TABLES_SQL, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

async fn sums<C: GenericClient>(
    client: &C,
    tables: &[String],
) -> anyhow::Result<BTreeMap<String, TableSum>> {
    let mut out = BTreeMap::new();
    for table in tables {
        out.insert(table.clone(), sum(client, table).await?);
    }
    Ok(out)
}

/// A table name as an SQL identifier.
fn quote(table: &str) -> String {
    format!("\"{}\"", table.replace('"', "\"\""))
}

async fn sum<C: GenericClient>(client: &C, table: &str) -> anyhow::Result<TableSum> {
    let row = client
        .query_one(&SUM_SQL.replace("{}", &quote(table)), &[])
        .await
        .with_context(|| format!("cannot sum table {table}"))?;
    Ok(TableSum {
        rows: row.get(0),
        checksum: row.get(1),
    })
}

async fn file_sha256(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0_u8; 1 << 20];
    let mut total = 0_u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((format!("{:x}", hasher.finalize()), total))
}

/// Runs a PostgreSQL client program, printing the dump's size while it runs.
async fn run_tool(tool: &str, args: &[&str], watch: Option<&Path>) -> anyhow::Result<()> {
    let mut child = Command::new(format!("{PG_BIN}/{tool}"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {PG_BIN}/{tool}"))?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let errors = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let started = Instant::now();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                let size = match watch {
                    Some(p) => tokio::fs::metadata(p).await.map(|m| m.len()).unwrap_or(0),
                    None => 0,
                };
                progress(format_args!(
                    "{tool}: {:.0} s{}",
                    started.elapsed().as_secs_f64(),
                    if watch.is_some() { format!(", {:.1} MiB written", size as f64 / 1048576.0) } else { String::new() }
                ));
            }
        }
    };
    let errors = errors.await.unwrap_or_default();
    anyhow::ensure!(
        status.success(),
        "{tool} failed ({status}): {}",
        errors.trim()
    );
    Ok(())
}

/// Takes a backup of `conn` into the directory `dest` (created; it must not hold a
/// backup already).
pub async fn backup(conn: &str, dest: &Path) -> anyhow::Result<Manifest> {
    tokio::fs::create_dir_all(dest)
        .await
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let dump = dest.join(DUMP_FILE);
    anyhow::ensure!(
        !dest.join(MANIFEST_FILE).exists() && !dump.exists(),
        "{} already holds a backup",
        dest.display()
    );
    let mut client = db::connect(conn).await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // Every table locked (ACCESS SHARE, as pg_dump takes) before the snapshot: a rebuild
    // swap that drops a table waits for the backup instead of slipping in between the
    // snapshot and the table's turn.
    let tables = tables(&tx).await?;
    if !tables.is_empty() {
        let list: Vec<String> = tables
            .iter()
            .map(|t| format!("public.{}", quote(t)))
            .collect();
        tx.batch_execute(&format!(
            "LOCK TABLE {} IN ACCESS SHARE MODE",
            list.join(", ")
        ))
        .await?;
    }
    let snapshot: String = tx
        .query_one("SELECT pg_export_snapshot()", &[])
        .await?
        .get(0);
    let dump_str = dump.to_str().context("the destination path is not UTF-8")?;
    progress(format_args!("dumping into {}", dump.display()));
    let args = [
        "--format=custom",
        "--snapshot",
        &snapshot,
        "--file",
        dump_str,
        "--dbname",
        conn,
    ];
    let dumped = run_tool("pg_dump", &args, Some(&dump));
    // The manifest is read in the exported snapshot while pg_dump runs.
    let described = async {
        progress("summing tables");
        let tables = sums(&tx, &tables).await?;
        let e = tx.query_one(EVENTS_SQL, &[]).await?;
        let migrations: i64 = tx.query_one(MIGRATIONS_SQL, &[]).await?.get(0);
        anyhow::Ok((tables, e.get::<_, i64>(0), e.get::<_, i64>(1), migrations))
    };
    let (dumped, described) = tokio::join!(dumped, described);
    dumped?;
    let (tables, events, last_position, migrations) = described?;
    tx.commit().await?;
    let (dump_sha256, dump_bytes) = file_sha256(&dump).await?;
    let manifest = Manifest {
        format: 1,
        created_at: chrono::Utc::now(),
        migrations,
        events,
        last_position,
        dump_sha256,
        dump_bytes,
        tables,
    };
    let tmp = dest.join(format!("{MANIFEST_FILE}.tmp"));
    tokio::fs::write(&tmp, serde_json::to_vec_pretty(&manifest)?).await?;
    tokio::fs::rename(&tmp, dest.join(MANIFEST_FILE)).await?;
    progress(format_args!(
        "backup done: {} events (last position {}), {} tables, {:.1} MiB",
        events,
        last_position,
        manifest.tables.len(),
        dump_bytes as f64 / 1048576.0
    ));
    Ok(manifest)
}

/// `conn` with its database replaced by `dbname` (a key=value string or a URI; a URI's
/// `dbname` parameter, which would win over its path, is dropped).
pub fn with_dbname(conn: &str, dbname: &str) -> String {
    if db::tls::is_uri(conn) {
        let scheme_end = conn.find("://").map_or(0, |i| i + 3);
        let rest = &conn[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let query: Vec<&str> = tail
            .split_once('?')
            .map_or("", |(_, q)| q)
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("dbname="))
            .collect();
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        format!("{}{authority}/{dbname}{query}", &conn[..scheme_end])
    } else {
        // libpq and tokio-postgres both take the last of a repeated keyword.
        format!("{conn} dbname={dbname}")
    }
}

/// Restores the backup in `src` into the new database `dbname` on the server of
/// `maintenance_conn` (a connection to another database there, e.g. `postgres`), and
/// returns the connection string of the restored database.
pub async fn restore_into(
    src: &Path,
    maintenance_conn: &str,
    dbname: &str,
) -> anyhow::Result<String> {
    let dump = src.join(DUMP_FILE);
    anyhow::ensure!(dump.exists(), "{} has no {DUMP_FILE}", src.display());
    let admin = db::connect(maintenance_conn).await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])
        .await?
        .is_some();
    anyhow::ensure!(
        !exists,
        "database {dbname:?} exists: restore only into a new one"
    );
    db::ensure_database(maintenance_conn, dbname).await?;
    // The role the read models' policies name is global to the cluster: a new cluster
    // does not have it yet.
    admin.batch_execute(db::ENSURE_QUERY_ROLE_SQL).await?;
    let target = with_dbname(maintenance_conn, dbname);
    let t = db::connect(&target).await?;
    t.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb; SELECT timescaledb_pre_restore()")
        .await?;
    progress(format_args!("restoring into database {dbname}"));
    let dump_str = dump.to_str().context("the backup path is not UTF-8")?;
    let restored = run_tool(
        "pg_restore",
        &["--no-owner", "--dbname", &target, dump_str],
        None,
    )
    .await;
    t.batch_execute("SELECT timescaledb_post_restore()").await?;
    restored?;
    db::mark_operators_leakproof(&t).await?;
    Ok(target)
}

/// What a verify found; `differences` is empty when the backup is good.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub database: String,
    pub tables_checked: usize,
    pub projections_rebuilt: Vec<String>,
    pub projections_skipped: Vec<String>,
    pub differences: Vec<String>,
}

/// Restores `src` into a scratch database next to `conn`'s and checks it (module docs).
/// The scratch database is dropped afterwards unless `keep`.
pub async fn verify(
    src: &Path,
    conn: &str,
    keep: bool,
    registry: &crate::projections::Registry,
) -> anyhow::Result<VerifyReport> {
    let manifest: Manifest = serde_json::from_slice(
        &tokio::fs::read(src.join(MANIFEST_FILE))
            .await
            .with_context(|| format!("{} has no {MANIFEST_FILE}", src.display()))?,
    )
    .context("the manifest is not valid")?;
    let mut report = VerifyReport::default();
    let (sha, _) = file_sha256(&src.join(DUMP_FILE)).await?;
    if sha != manifest.dump_sha256 {
        report.differences.push(format!(
            "{DUMP_FILE}: SHA-256 {sha}, the manifest says {}",
            manifest.dump_sha256
        ));
    }
    let maintenance = with_dbname(conn, "postgres");
    let scratch = format!("cloudlens_verify_{}", uuid::Uuid::new_v4().simple());
    report.database = scratch.clone();
    let result = async {
        let target = restore_into(src, &maintenance, &scratch).await?;
        check(&target, &manifest, registry, &mut report).await
    }
    .await;
    if !keep {
        let dropped = async {
            db::connect(&maintenance)
                .await?
                .batch_execute(&format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
                .await
        }
        .await;
        if let Err(e) = dropped {
            // The verification's own outcome matters more; say what is left behind.
            tracing::warn!(error = %e, database = %scratch, "the scratch database was not dropped");
        }
    }
    result?;
    Ok(report)
}

async fn check(
    target: &str,
    manifest: &Manifest,
    registry: &crate::projections::Registry,
    report: &mut VerifyReport,
) -> anyhow::Result<()> {
    let mut client = db::connect(target).await?;
    progress(format_args!(
        "checking {} tables against the manifest",
        manifest.tables.len()
    ));
    let restored = sums(&client, &tables(&client).await?).await?;
    report.tables_checked = restored.len();
    for (table, expected) in &manifest.tables {
        match restored.get(table) {
            None => report.differences.push(format!("{table}: missing")),
            Some(found) if found != expected => report.differences.push(format!(
                "{table}: {} rows, checksum {}; the manifest says {} rows, checksum {}",
                found.rows, found.checksum, expected.rows, expected.checksum
            )),
            Some(_) => {}
        }
    }
    for table in restored
        .keys()
        .filter(|t| !manifest.tables.contains_key(*t))
    {
        report
            .differences
            .push(format!("{table}: not in the manifest"));
    }
    let e = client.query_one(EVENTS_SQL, &[]).await?;
    let (events, last): (i64, i64) = (e.get(0), e.get(1));
    if (events, last) != (manifest.events, manifest.last_position) {
        report.differences.push(format!(
            "events: {events} up to position {last}; the manifest says {} up to {}",
            manifest.events, manifest.last_position
        ));
    }

    // Every projection: the restored read model brought to the end of the log equals one
    // rebuilt from the restored events. Projectors with outside effects (the jobs queue)
    // are not replayed: a replay would request their work again.
    crate::eventstore::check_epoch(&client).await?;
    let (_keep, never) = tokio::sync::watch::channel(false);
    for p in registry.iter() {
        let name = p.name();
        if p.options().durable_commit {
            report.projections_skipped.push(name.to_owned());
            continue;
        }
        progress(format_args!("catching up {name}"));
        crate::projections::catch_up(&mut client, &**p, 5000).await?;
        let mut live = BTreeMap::new();
        for t in p.tables() {
            live.insert(t, sum(&client, t).await?);
        }
        progress(format_args!("rebuilding {name}"));
        crate::projections::rebuild::Rebuild::begin(target, p.clone())
            .await?
            .run(5000, never.clone())
            .await?;
        for t in p.tables() {
            let rebuilt = sum(&client, t).await?;
            if live[t] != rebuilt {
                report.differences.push(format!(
                    "{t} (projection {name}): rebuilt from the events {} rows, checksum {}; \
                     restored {} rows, checksum {}",
                    rebuilt.rows, rebuilt.checksum, live[t].rows, live[t].checksum
                ));
            }
        }
        report.projections_rebuilt.push(name.to_owned());
    }
    Ok(())
}

/// The report as lines for the terminal.
pub fn render(report: &VerifyReport) -> String {
    let mut out = format!(
        "restored into {}; {} tables checked against the manifest; rebuilt: {}; not replayed (outside effects): {}\n",
        report.database,
        report.tables_checked,
        report.projections_rebuilt.join(", "),
        report.projections_skipped.join(", ")
    );
    if report.differences.is_empty() {
        out.push_str("OK: the backup restores to what the manifest describes\n");
    } else {
        out.push_str(&format!(
            "FAILED: {} differences\n",
            report.differences.len()
        ));
        for d in &report.differences {
            out.push_str(&format!("  {d}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_is_replaced_in_both_forms() {
        assert_eq!(
            with_dbname("host=/run port=5 user=u dbname=a", "b"),
            "host=/run port=5 user=u dbname=a dbname=b"
        );
        assert_eq!(
            with_dbname("postgres://u:p@h:5432/a?sslmode=require", "b"),
            "postgres://u:p@h:5432/b?sslmode=require"
        );
        assert_eq!(with_dbname("postgresql://h", "b"), "postgresql://h/b");
        assert_eq!(with_dbname("postgres://h?x=1", "b"), "postgres://h/b?x=1");
        assert_eq!(
            with_dbname("postgres://h/a?dbname=a&x=1", "b"),
            "postgres://h/b?x=1"
        );
    }
}
