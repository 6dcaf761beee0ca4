//! The self-managed local PostgreSQL cluster used when `DATABASE_URL` is unset.
//!
//! The cluster is started with `pg_ctl`, so it outlives a SIGKILLed server; the next start
//! finds it still running and reuses it, or finds a stale `postmaster.pid` and starts it
//! again. It listens on its own unix socket only (no TCP), so several clusters (tests) never
//! collide. PostgreSQL refuses to run as root, so as root every server-side command runs
//! as an unprivileged OS user (`postgres` by default, `CLOUDLENS_PG_OS_USER` to change).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Where Debian's PostgreSQL 15 server binaries live.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Superuser and database created inside the local cluster.
pub const DB_USER: &str = "cloudlens";
pub const DB_NAME: &str = "cloudlens";

/// Settings written into the cluster at every start (`include_if_exists` from postgresql.conf).
const CLUSTER_CONF: &str = "\
listen_addresses = ''
unix_socket_permissions = 0700
shared_preload_libraries = 'timescaledb,pg_stat_statements'
timescaledb.telemetry_level = off
max_connections = 500
max_wal_size = '4GB'
checkpoint_timeout = '15min'
autovacuum_naptime = '10s'
log_min_messages = warning
log_line_prefix = '%m [%p] '
# A session idle inside a transaction, or a client whose connection vanished, must not
# hold locks (the event-writer lock freezes every projector) for long (ADR 0005).
idle_in_transaction_session_timeout = '60s'
tcp_keepalives_idle = 10
tcp_keepalives_interval = 5
tcp_keepalives_count = 3
";

/// `shared_buffers` of the local cluster: `CLOUDLENS_PG_SHARED_BUFFERS` (a size such as
/// `512MB` or `4GB`) when set, otherwise a quarter of the machine's memory (the usual
/// advice for a dedicated database host) between 128 MB and 8 GB. Reads of read models
/// larger than a fixed 512 MB came from the OS page cache, a system call per page
/// (`loadtest/RESULTS.md`, "Documents and search").
fn shared_buffers(set: Option<&str>, memory_mb: Option<u64>) -> anyhow::Result<String> {
    if let Some(v) = set {
        let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &v[digits.len()..];
        if digits.is_empty()
            || !digits.chars().all(|c| c.is_ascii_digit())
            || !["", "kB", "MB", "GB"].contains(&unit)
        {
            bail!("CLOUDLENS_PG_SHARED_BUFFERS: {v:?} is not a size such as 512MB or 4GB");
        }
        return Ok(v.to_owned());
    }
    let mb = memory_mb.map_or(512, |m| (m / 4).clamp(128, 8192));
    Ok(format!("{mb}MB"))
}

/// The machine's memory (`MemTotal`), in MB.
fn memory_mb() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}

#[derive(Debug, Clone)]
pub struct LocalCluster {
    base: PathBuf,
    port: u16,
    os_user: Option<String>,
}

impl LocalCluster {
    /// A cluster whose data lives under `base` (`pgdata/`, `run/`, `log/`).
    pub fn new(base: &Path, port: u16) -> anyhow::Result<Self> {
        fs::create_dir_all(base).with_context(|| format!("cannot create {}", base.display()))?;
        let base = fs::canonicalize(base)?;
        let os_user = if is_root() {
            Some(std::env::var("CLOUDLENS_PG_OS_USER").unwrap_or_else(|_| "postgres".into()))
        } else {
            None
        };
        Ok(Self {
            base,
            port,
            os_user,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base.join("pgdata")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.base.join("run")
    }

    fn log_file(&self) -> PathBuf {
        self.base.join("log").join("postgres.log")
    }

    /// libpq key/value connection string for the cluster's `cloudlens` database.
    pub fn connection_string(&self) -> String {
        self.connection_string_for(DB_NAME)
    }

    pub fn connection_string_for(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={DB_USER} dbname={dbname} application_name=cloudlens",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Initialises the cluster if needed and makes sure it is running. Idempotent; recovers
    /// from a stale pid file or a cluster left running by a killed server.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        if !Path::new(PG_BIN).join("postgres").exists() {
            bail!(
                "PostgreSQL 15 is not installed ({PG_BIN}/postgres missing): run scripts/setup.sh"
            );
        }
        for dir in [self.data_dir(), self.socket_dir(), self.base.join("log")] {
            fs::create_dir_all(&dir)?;
            self.give_to_os_user(&dir)?;
        }
        self.check_reachable()?;
        if !self.data_dir().join("PG_VERSION").exists() {
            self.initdb()?;
        }
        self.write_conf()?;
        if self.is_running()? {
            tracing::info!(data_dir = %self.data_dir().display(), "reusing the local cluster that is already running");
            return Ok(());
        }
        self.remove_stale_pid_file()?;
        tracing::info!(data_dir = %self.data_dir().display(), "starting the local PostgreSQL cluster");
        let data = self.data_dir();
        let log = self.log_file();
        let opts = format!("-k {} -p {}", self.socket_dir().display(), self.port);
        let status = self
            .pg_command("pg_ctl")
            .args([
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "120",
                "-o",
                &opts,
                "start",
            ])
            .status()
            .context("cannot run pg_ctl start")?;
        if !status.success() {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the local PostgreSQL cluster did not start ({status}); log tail:\n{}",
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// Makes this cluster, if it has no data yet, a streaming hot standby of `primary`
    /// (`pg_basebackup -R`: the copy and `primary_conninfo` + `standby.signal`), then starts
    /// it. Tests and the replica benchmark use it; production standbys come from the
    /// operator (k8s/overlays/cnpg).
    pub fn start_standby_of(&self, primary: &LocalCluster) -> anyhow::Result<()> {
        for dir in [self.data_dir(), self.socket_dir(), self.base.join("log")] {
            fs::create_dir_all(&dir)?;
            self.give_to_os_user(&dir)?;
        }
        if !self.data_dir().join("PG_VERSION").exists() {
            let data = self.data_dir();
            // pg_basebackup keeps the directory's mode; the server insists on 0700.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;
            let socket = primary.socket_dir();
            let status = self
                .pg_command("pg_basebackup")
                .args(["-D", path_str(&data)?, "-R", "-X", "stream", "-c", "fast"])
                .args(["-h", path_str(&socket)?, "-p", &primary.port.to_string()])
                .args(["-U", DB_USER])
                .status()
                .context("cannot run pg_basebackup")?;
            if !status.success() {
                bail!("pg_basebackup failed ({status})");
            }
        }
        self.ensure_running()
    }

    /// Stops the cluster (fast shutdown: active sessions are ended, data is flushed).
    pub fn stop(&self) -> anyhow::Result<()> {
        if !self.is_running()? {
            return Ok(());
        }
        let data = self.data_dir();
        let status = self
            .pg_command("pg_ctl")
            .args([
                "-D",
                path_str(&data)?,
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ])
            .status()
            .context("cannot run pg_ctl stop")?;
        if !status.success() {
            bail!("pg_ctl stop failed ({status})");
        }
        Ok(())
    }

    /// True when a postmaster of this data directory is alive.
    pub fn is_running(&self) -> anyhow::Result<bool> {
        Ok(self.live_postmaster_pid()?.is_some())
    }

    /// The pid recorded in `postmaster.pid`, if that process is alive and is a postgres.
    pub fn live_postmaster_pid(&self) -> anyhow::Result<Option<u32>> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let Ok(text) = fs::read_to_string(&pid_file) else {
            return Ok(None);
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        else {
            return Ok(None);
        };
        // A pid can be reused by an unrelated process after a crash: check it is postgres.
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        Ok(comm.trim().starts_with("postgres").then_some(pid))
    }

    fn remove_stale_pid_file(&self) -> anyhow::Result<()> {
        let pid_file = self.data_dir().join("postmaster.pid");
        if pid_file.exists() {
            tracing::warn!(file = %pid_file.display(), "removing a stale postmaster.pid left by a crash");
            fs::remove_file(&pid_file)?;
        }
        Ok(())
    }

    fn initdb(&self) -> anyhow::Result<()> {
        tracing::info!(data_dir = %self.data_dir().display(), "initialising a new local PostgreSQL cluster");
        let data = self.data_dir();
        let status = self
            .pg_command("initdb")
            .args([
                "-D",
                path_str(&data)?,
                "-U",
                DB_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot run initdb")?;
        if !status.success() {
            bail!("initdb failed ({status})");
        }
        let conf = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf)?;
        text.push_str("\ninclude_if_exists = 'cloudlens.conf'\n");
        fs::write(&conf, text)?;
        Ok(())
    }

    fn write_conf(&self) -> anyhow::Result<()> {
        let path = self.data_dir().join("cloudlens.conf");
        let buffers = shared_buffers(
            std::env::var("CLOUDLENS_PG_SHARED_BUFFERS").ok().as_deref(),
            memory_mb(),
        )?;
        fs::write(
            &path,
            format!("{CLUSTER_CONF}shared_buffers = '{buffers}'\n"),
        )?;
        self.give_to_os_user(&path)
    }

    /// The OS user must be able to reach the data directory through every parent.
    fn check_reachable(&self) -> anyhow::Result<()> {
        let Some(user) = &self.os_user else {
            return Ok(());
        };
        let ok = Command::new("runuser")
            .args(["-u", user, "--", "test", "-w", path_str(&self.data_dir())?])
            .status()
            .context("cannot run runuser")?
            .success();
        if !ok {
            bail!(
                "the OS user {user:?} cannot write {} (a parent directory is not traversable?): \
                 set CLOUDLENS_DATA_DIR to a directory under /var or /tmp, or run as a normal user",
                self.data_dir().display()
            );
        }
        Ok(())
    }

    fn give_to_os_user(&self, path: &Path) -> anyhow::Result<()> {
        let Some(user) = &self.os_user else {
            return Ok(());
        };
        let status = Command::new("chown")
            .args([&format!("{user}:"), path_str(path)?])
            .status()?;
        if !status.success() {
            bail!(
                "cannot chown {} to {user} (does the OS user exist?)",
                path.display()
            );
        }
        Ok(())
    }

    fn pg_command(&self, program: &str) -> Command {
        let bin = Path::new(PG_BIN).join(program);
        match &self.os_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }
}

fn is_root() -> bool {
    // No libc dependency for one call: the effective uid is in /proc/self/status.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_buffers_are_a_quarter_of_memory_within_bounds_or_the_setting() {
        assert_eq!(shared_buffers(None, Some(24_105)).unwrap(), "6026MB");
        assert_eq!(shared_buffers(None, Some(256)).unwrap(), "128MB");
        assert_eq!(shared_buffers(None, Some(131_072)).unwrap(), "8192MB");
        assert_eq!(shared_buffers(None, None).unwrap(), "512MB");
        assert_eq!(shared_buffers(Some("2GB"), Some(24_105)).unwrap(), "2GB");
        assert_eq!(shared_buffers(Some("65536"), None).unwrap(), "65536");
        for bad in ["", "MB", "1.5GB", "512mb", "1GB'\nfsync = off", "-1MB"] {
            assert!(shared_buffers(Some(bad), None).is_err(), "{bad:?}");
        }
    }
}
