//! Wiring: the local cluster (when `DATABASE_URL` is unset), migrations, the pool, the
//! projector runners and the HTTP server, and their orderly shutdown.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::web;
use anyhow::Context;
use tokio::sync::watch;

use crate::access::{self, events::Role};
use crate::config::Settings;
use crate::context;
use crate::db::{self, cluster::LocalCluster};
use crate::eventstore::{self, signal::EventSignal, EventStore, StoreError};
use crate::http::{self, AppState};
use crate::jobs::{self, JobEnv};
use crate::pipeline::CommandError;
use crate::projections::{self, rebuild::Rebuild, Progress, RunnerConfig};
use crate::scheduled::{self, Job};

/// Background work that requests start (rebuilds): each task gets a stop signal and is
/// awaited on shutdown.
#[derive(Clone)]
pub struct Tasks {
    handles: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    stop: watch::Receiver<bool>,
}

impl Tasks {
    pub fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(work(self.stop.clone()));
        if let Ok(mut handles) = self.handles.lock() {
            handles.retain(|h| !h.is_finished());
            handles.push(handle);
        }
    }

    fn take(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.handles
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default()
    }
}

/// Staged events older than this belong to requests that died before committing.
const STAGED_EVENTS_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The database to use: `DATABASE_URL`, or the local cluster (started if needed).
pub fn database(settings: &Settings) -> anyhow::Result<(String, Option<LocalCluster>)> {
    match &settings.database_url {
        Some(url) => {
            // sslmode / sslrootcert checked (and the certificate read) before any connect.
            db::tls::prepare(url).context("DATABASE_URL")?;
            Ok((url.clone(), None))
        }
        None => {
            let cluster = LocalCluster::new(&settings.data_dir, settings.pg_port)?;
            cluster.ensure_running()?;
            Ok((cluster.connection_string(), Some(cluster)))
        }
    }
}

/// Prepares the database (local cluster: creates the `cloudlens` database), migrates,
/// opens a new ordering epoch if the database was moved to another cluster (ADR 0005) and
/// marks rebuilds that a stopped process left running as interrupted.
pub async fn prepare(conn: &str, cluster: Option<&LocalCluster>) -> anyhow::Result<()> {
    if let Some(c) = cluster {
        db::ensure_database(&c.connection_string_for("postgres"), db::cluster::DB_NAME).await?;
    }
    db::migrate(conn).await?;
    let client = db::connect(conn).await?;
    let epoch = eventstore::check_epoch(&client).await?;
    tracing::info!(epoch, "event store ready");
    projections::rebuild::mark_abandoned(&client).await?;
    Ok(())
}

/// A started server and its background tasks.
pub struct Running {
    pub port: u16,
    pub server: actix_web::dev::Server,
    pub state: web::Data<AppState>,
    pub background: Background,
    /// Send `true` before stopping the HTTP server gracefully (`AppState::stopping`).
    pub stopping: watch::Sender<bool>,
}

/// Projector runners, periodic jobs, the NOTIFY/LISTEN tasks and request-started work.
pub struct Background {
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Tasks,
}

impl Background {
    /// Stops everything in the background and waits for it: projectors finish their
    /// batch, a rebuild stops between batches (and is marked interrupted).
    pub async fn stop_background(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.into_iter().chain(self.started.take()) {
            let _ = t.await;
        }
    }
}

/// Starts projectors and the HTTP server on `listener` against a migrated database.
pub fn start(settings: Settings, conn: String, listener: TcpListener) -> anyhow::Result<Running> {
    let port = listener.local_addr()?.port();
    let pool = db::pool(&conn, settings.pool_size)?;
    let reads = db::Reader::new(&conn, settings.read_pool_size, settings.read_tenants)
        .with_page_connections(settings.read_page_pool_size);
    let signal = EventSignal::default();
    let store = EventStore::new(pool.clone(), signal.clone());
    let vault = settings.vault();
    let registry = context::projections(&settings);
    eventstore::archive::init_metrics(&context::ended_streams());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let progress = Progress::of(&registry);
    let mut tasks = Vec::new();
    let purge = {
        let store = store.clone();
        let retention = settings.idempotency_retention;
        Job::new("idempotency_purge", settings.purge_interval, move || {
            let store = store.clone();
            async move {
                // The keys of collection writes (not events, `collections::store`) too.
                let purged = store.purge_idempotency(retention).await?
                    + crate::collections::store::purge_keys(store.pool(), retention).await?;
                crate::telemetry::METRICS
                    .idempotency_keys_purged
                    .inc_by(purged);
                Ok(())
            }
        })
    };
    tasks.push(tokio::spawn(scheduled::run(
        conn.clone(),
        purge,
        shutdown_rx.clone(),
    )));
    let purge_staged = {
        let store = store.clone();
        Job::new("staged_events_purge", settings.purge_interval, move || {
            let store = store.clone();
            // A request stages for as long as its body streams in; a day is far beyond that.
            async move {
                Ok(store
                    .purge_staged(STAGED_EVENTS_RETENTION)
                    .await
                    .map(|_| ())?)
            }
        })
    };
    tasks.push(tokio::spawn(scheduled::run(
        conn.clone(),
        purge_staged,
        shutdown_rx.clone(),
    )));
    let env = scheduled::Env {
        settings: settings.clone(),
        conn: conn.clone(),
        store: store.clone(),
    };
    for job in context::scheduled(&env) {
        tasks.push(tokio::spawn(scheduled::run(
            conn.clone(),
            job,
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(jobs::run(
        JobEnv {
            store: store.clone(),
            conn: conn.clone(),
            progress: progress.clone(),
            reads: reads.clone(),
            projections: registry.clone(),
            settings: settings.clone(),
        },
        context::jobs(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(
        signal.clone().run_notifier(pool, shutdown_rx.clone()),
    ));
    tasks.push(tokio::spawn(
        signal
            .clone()
            .run_listener(conn.clone(), shutdown_rx.clone()),
    ));
    let owner = format!("{}:{}:{}", hostname(), std::process::id(), port);
    for p in registry.iter() {
        let cfg = RunnerConfig {
            conn: conn.clone(),
            batch_size: settings.projector_batch_size,
            poll: settings.projector_poll,
            owner: owner.clone(),
            progress: progress.clone(),
        };
        tasks.push(tokio::spawn(projections::run(
            p.clone(),
            cfg,
            signal.subscribe(p.stream_types()),
            shutdown_rx.clone(),
        )));
    }
    let started = Tasks {
        handles: Arc::default(),
        stop: shutdown_rx,
    };
    let scans = db::scan_pool(&conn, settings.read_pool_size.max(2), settings.scan_timeout)?;
    let replica = match &settings.replica_url {
        Some(url) => {
            let replica = db::replica::Replica::new(
                db::Reader::new(url, settings.read_pool_size, settings.read_tenants)
                    .with_page_connections(settings.read_page_pool_size),
                db::scan_pool(url, settings.read_pool_size.max(2), settings.scan_timeout)?,
            );
            tasks.push(tokio::spawn(db::replica::run_monitor(
                replica.clone(),
                reads.clone(),
                started.stop.clone(),
            )));
            Some(replica)
        }
        None => None,
    };
    let keyring = http::auth::Keyring::new(&settings);
    let vector = std::sync::Arc::new(crate::documents::vector::VectorIndex::default());
    // Not one of the background tasks that shutdown waits for: an index build may be
    // long, and it is simply done again (or found done) at the next start.
    tokio::spawn({
        let (conn, vector) = (conn.clone(), vector.clone());
        let (dimensions, enabled) = (settings.embedding_dimensions, settings.vector_search);
        async move { crate::documents::vector::prepare(&conn, dimensions, enabled, &vector).await }
    });
    let (stopping, stopping_rx) = watch::channel(false);
    let state = web::Data::new(AppState {
        settings,
        store,
        reads,
        scans,
        replica,
        projections: registry,
        conn,
        progress,
        tasks: started.clone(),
        keyring,
        vault,
        vector,
        stopping: stopping_rx,
    });
    let server = http::server(listener, state.clone())?;
    Ok(Running {
        port,
        server,
        state,
        background: Background {
            shutdown,
            tasks,
            started,
        },
        stopping,
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// `cloudlens serve`: runs until SIGINT/SIGTERM, then drains requests, finishes projector
/// batches and stops the local cluster.
pub fn serve(settings: Settings) -> anyhow::Result<()> {
    let (conn, cluster) = database(&settings)?;
    let result = actix_web::rt::System::new().block_on(async {
        prepare(&conn, cluster.as_ref()).await?;
        if let Some(key) = &settings.admin_key {
            bootstrap_admin_key(&conn, &key.0).await?;
        }
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        tracing::info!(listen = %settings.listen, "cloudlens is serving");
        let running = start(settings.clone(), conn.clone(), listener)?;
        let handle = running.server.handle();
        let stopping = running.stopping.clone();
        actix_web::rt::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested; finishing in-flight requests");
            let _ = stopping.send(true);
            handle.stop(true).await;
        });
        running.server.await?;
        tracing::info!("HTTP server stopped; stopping projectors");
        running.background.stop_background().await;
        anyhow::Ok(())
    });
    if let Some(c) = cluster {
        tracing::info!("stopping the local PostgreSQL cluster");
        c.stop()?;
    }
    result
}

/// Runs `f` against the database of `settings`; a local cluster started only for this
/// command is stopped again afterwards.
fn with_database<F, Fut>(settings: &Settings, f: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let was_running = match &settings.database_url {
        None => LocalCluster::new(&settings.data_dir, settings.pg_port)?.is_running()?,
        Some(_) => true,
    };
    let (conn, cluster) = database(settings)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        prepare(&conn, cluster.as_ref()).await?;
        f(conn).await
    });
    if let (Some(c), false) = (cluster, was_running) {
        c.stop()?;
    }
    result
}

/// Issues `key` as the admin key `bootstrap-admin` of tenant `default` unless it is issued
/// already (`CLOUDLENS_ADMIN_KEY`).
async fn bootstrap_admin_key(conn: &str, key: &str) -> anyhow::Result<()> {
    let outcome = issue_api_key(conn, "bootstrap-admin", Role::Admin, "default", key).await;
    match outcome {
        Ok(_) => {
            tracing::info!("issued the admin key given in CLOUDLENS_ADMIN_KEY");
            Ok(())
        }
        Err(CommandError::Conflict { .. }) => Ok(()), // issued at an earlier start
        Err(e) => Err(anyhow::anyhow!("cannot issue CLOUDLENS_ADMIN_KEY: {e}")),
    }
}

async fn issue_api_key(
    conn: &str,
    name: &str,
    role: Role,
    tenant: &str,
    key: &str,
) -> Result<
    (uuid::Uuid, crate::pipeline::CommandResult),
    CommandError<access::aggregate::AccessError>,
> {
    let pool = db::pool(conn, 1)
        .map_err(|e| CommandError::Store(StoreError::Unavailable(format!("{e:#}"))))?;
    let store = EventStore::new(pool, EventSignal::default());
    let mut ctx = crate::pipeline::CommandContext::new(tenant.to_owned());
    ctx.actor = "cloudlens:command-line".into();
    let draft = access::routes::KeyDraft {
        name: name.to_owned(),
        role,
        tenant: tenant.to_owned(),
    };
    access::issue(&store, &ctx, &draft, key).await
}

/// `cloudlens api-keys create`: issues a new key and prints it (the only time it is shown).
pub fn api_key_create(
    settings: Settings,
    name: String,
    role: Role,
    tenant: String,
) -> anyhow::Result<()> {
    with_database(&settings, |conn| async move {
        let new = access::keys::generate();
        let (id, _) = issue_api_key(&conn, &name, role, &tenant, &new.key)
            .await
            .map_err(|e| anyhow::anyhow!("cannot issue the key: {e}"))?;
        println!("{}", new.key);
        eprintln!(
            "issued API key {id} ({name}, {}, tenant {tenant}); it is shown only this once",
            role.as_str()
        );
        Ok(())
    })
}

/// `cloudlens assess`: the assessment as tables, or as JSON.
pub fn assess(settings: Settings, json: bool) -> anyhow::Result<()> {
    with_database(&settings, |conn| async move {
        let client = db::connect(&conn).await?;
        let report = crate::ops::assessment::assess(&client).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", crate::ops::assessment::render(&report));
        }
        Ok(())
    })
}

/// `cloudlens archive --ended-days-ago DAYS [--dry-run]`.
pub fn archive(settings: Settings, ended_days_ago: u32, dry_run: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        ended_days_ago <= eventstore::archive::MAX_DAYS,
        "--ended-days-ago is at most {}",
        eventstore::archive::MAX_DAYS
    );
    let registry = context::projections(&settings);
    let cutoff = eventstore::archive::Cutoff {
        ended_days_ago,
        min_age: settings.archive_min_age,
    };
    with_database(&settings, |conn| async move {
        let report = eventstore::archive::archive_ended(
            &conn,
            &context::ended_streams(),
            &registry,
            cutoff,
            dry_run,
        )
        .await?;
        println!(
            "{} {} events of {} streams that ended before {}",
            if dry_run { "would archive" } else { "archived" },
            report.events,
            report.streams,
            report.ended_before
        );
        Ok(())
    })
}

/// `cloudlens backup DEST`.
pub fn backup(settings: Settings, dest: std::path::PathBuf) -> anyhow::Result<()> {
    with_database(&settings, |conn| async move {
        crate::ops::backup::backup(&conn, &dest).await?;
        println!("backup written to {}", dest.display());
        Ok(())
    })
}

/// `cloudlens restore SRC --verify [--keep]` or `cloudlens restore SRC --into NAME`.
pub fn restore(
    settings: Settings,
    src: std::path::PathBuf,
    verify: bool,
    keep: bool,
    into: Option<String>,
) -> anyhow::Result<()> {
    use crate::ops::backup;
    let registry = context::projections(&settings);
    with_database(&settings, |conn| async move {
        if verify {
            let report = backup::verify(&src, &conn, keep, &registry).await?;
            print!("{}", backup::render(&report));
            anyhow::ensure!(
                report.differences.is_empty(),
                "the backup in {} did not verify: {} differences",
                src.display(),
                report.differences.len()
            );
        } else if let Some(name) = into {
            let maintenance = backup::with_dbname(&conn, "postgres");
            let target = backup::restore_into(&src, &maintenance, &name).await?;
            prepare(&target, None).await?;
            println!("restored into database {name}");
        }
        Ok(())
    })
}

/// `cloudlens migrate`.
pub fn migrate(settings: Settings) -> anyhow::Result<()> {
    with_database(&settings, |_| async { Ok(()) })
}

/// `cloudlens projections status`: one line per projector.
pub fn projections_status(settings: Settings) -> anyhow::Result<()> {
    let registry = context::projections(&settings);
    with_database(&settings, |conn| async move {
        let client = db::connect(&conn).await?;
        println!(
            "{:<16} {:>12} {:>12} {:>12}  {:<10} rebuild",
            "NAME", "POSITION", "LAG_EVENTS", "LAG_SECONDS", "STATE"
        );
        for p in registry.iter() {
            let s = projections::status::of(&client, &**p).await?;
            let rebuild = s.rebuild.map(|r| r.state).unwrap_or_else(|| "-".into());
            println!(
                "{:<16} {:>12} {:>12} {:>12.3}  {:<10} {}",
                s.name, s.position, s.lag_events, s.lag_seconds, s.state, rebuild
            );
        }
        Ok(())
    })
}

/// `cloudlens projections rebuild NAME`: runs the rebuild here and reports it.
pub fn projections_rebuild(settings: Settings, name: String) -> anyhow::Result<()> {
    let registry = context::projections(&settings);
    let batch = settings.projector_batch_size;
    with_database(&settings, |conn| async move {
        let p = registry
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .with_context(|| format!("no projection named {name:?}"))?;
        // Ctrl-C is left to end the process; the next start marks the rebuild interrupted.
        let (_keep, never) = watch::channel(false);
        let report = Rebuild::begin(&conn, p).await?.run(batch, never).await?;
        println!(
            "rebuilt {name}: {} events in {:.2} s ({:.0} events/s), position {}",
            report.events,
            report.seconds,
            report.events as f64 / report.seconds.max(1e-9),
            report.position
        );
        Ok(())
    })
}
