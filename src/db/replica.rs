//! Queries on a streaming replica (`CLOUDLENS_REPLICA_URL`, ADR 0030).
//!
//! Commands, projectors, the event feed and consumer groups stay on the primary; the
//! queries of read models (`AppState::read_model`, `AppState::scan`) go to the replica
//! while it is up, and to the primary while it is not.
//!
//! Read-your-writes: a query with `min_position` first waits, as without a replica, until
//! the projectors on the primary reflect the position. A read model and its projector's
//! checkpoint are committed together, and the replica replays them together, so the query
//! then waits until the replica's copy of each checkpoint lies at or after the event's
//! place in the global order (located on the primary). A position without an event (a
//! rolled-back write) has no place; then it waits until the replica replayed the primary's
//! WAL as far as it reached at that moment (`pg_current_wal_insert_lsn()`, past any commit
//! record, even an asynchronous one). Past `min_position_timeout` the query answers 503
//! `read_model_behind` with `Retry-After`, like a projector that is behind.
//!
//! A monitor (`run_monitor`) measures the replica's lag each second (`/metrics`) and
//! notices when it is down or back. A connection that cannot be made marks it down at
//! once; queries then go to the primary until the monitor sees the replica answer again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{QueryError, ReadConnection, Reader};
use crate::eventstore::{global, StoreError};
use crate::telemetry::METRICS;

/// How often the monitor measures lag and health.
const MONITOR_EVERY: Duration = Duration::from_secs(1);
/// How often a read-your-writes wait looks at the replica again.
const REPLAY_POLL: Duration = Duration::from_millis(5);

/// Where the primary's WAL is now (bytes from `0/0`; a position the replica must replay).
const PRIMARY_LSN_SQL: &str = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint";
/// On the replica: whether each of the projectors `$4` has its checkpoint (every lane's)
/// at or after the place `($1, $2, $3)`.
const REACHED_SQL: &str = "\
SELECT count(DISTINCT projector) = cardinality($4::text[])
       AND coalesce(bool_and((last_epoch, last_xid, last_position) >= ($1, $2, $3)), true)
  FROM projection_checkpoints WHERE projector = ANY($4)";
/// What the replica replayed (bytes from `0/0`; NULL when it is not a standby) and the
/// commit time of the last transaction it replayed.
const REPLAYED_SQL: &str = "\
SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8";

/// The replica's handle: its shared connections and scan pool, and whether it is up.
#[derive(Clone)]
pub struct Replica {
    pub reads: Reader,
    pub scans: deadpool_postgres::Pool,
    up: Arc<AtomicBool>,
}

impl Replica {
    pub fn new(reads: Reader, scans: deadpool_postgres::Pool) -> Self {
        METRICS.replica_up.set(1);
        Self {
            reads,
            scans,
            up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether queries go to the replica now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Sends queries to the primary until the monitor finds the replica answering.
    pub fn mark_down(&self, cause: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %cause, "replica unavailable: queries go to the primary");
            METRICS.replica_up.set(0);
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("replica answering again: queries go to it");
            METRICS.replica_up.set(1);
        }
    }

    /// Waits until the replica's copies of `projections'` read models reflect the event
    /// at `position` (the primary's do: the caller waited for that). They are committed
    /// with their checkpoints, so the replica has them once its copy of each checkpoint
    /// lies at or after the event's place in the global order (located on the primary).
    /// A position without an event (a rolled-back write) has no place: then the replica
    /// must replay the primary's WAL as far as it reaches now. `Ok(false)`: not within
    /// `timeout`.
    pub async fn wait_reflected(
        &self,
        primary: &Reader,
        projections: &[&str],
        position: i64,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let place = {
            let conn = primary.get().await?;
            global::locate(conn.client(), position).await?
        };
        let wal = match place {
            Some(_) => 0,
            None => primary_wal(primary).await?,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let conn = self.reads.get().await?;
            let done = match place {
                Some(c) => conn
                    .query_opt(
                        REACHED_SQL,
                        &[&c.epoch, &c.transaction_id, &c.position, &projections],
                    )
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?
                    .unwrap_or(false),
                None => self.replay_position(&conn).await?.0 >= wal,
            };
            if done {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(REPLAY_POLL).await;
        }
    }

    /// The replica's replay position (0 when it is not a standby) and seconds since the
    /// commit of the last transaction it replayed.
    async fn replay_position(
        &self,
        conn: &ReadConnection,
    ) -> Result<(i64, Option<f64>), QueryError> {
        let row = conn.query_opt(REPLAYED_SQL, &[]).await?;
        let (position, age): (Option<i64>, Option<f64>) = match row {
            Some(r) => (r.try_get(0)?, r.try_get(1)?),
            None => (None, None),
        };
        Ok((position.unwrap_or(0), age))
    }

    /// One measurement: primary WAL position against the replica's replay, into
    /// `/metrics`; marks the replica up or down.
    async fn measure(&self, primary: &Reader) -> Result<(), QueryError> {
        let replica = match self.reads.get().await {
            Ok(c) => c,
            Err(e) => {
                self.mark_down(&e);
                return Ok(());
            }
        };
        let (replayed, age) = match self.replay_position(&replica).await {
            Ok(r) => r,
            Err(e) => {
                self.mark_down(&e);
                return Ok(());
            }
        };
        self.mark_up();
        let wal = primary_wal(primary).await?;
        let behind = (wal - replayed).max(0);
        METRICS.replica_lag_bytes.set(behind);
        // The age of the last replayed commit is the lag only while something is behind:
        // an idle primary commits nothing, and its replica is not late.
        METRICS.replica_lag_seconds.set(if behind == 0 {
            0.0
        } else {
            age.unwrap_or(0.0).max(0.0)
        });
        Ok(())
    }
}

/// The primary's WAL insert position, in bytes from `0/0`.
async fn primary_wal(primary: &Reader) -> Result<i64, QueryError> {
    let row = primary.get().await?.query_opt(PRIMARY_LSN_SQL, &[]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
}

/// Measures the replica every second until shutdown.
pub async fn run_monitor(replica: Replica, primary: Reader, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = replica.measure(&primary).await {
            tracing::debug!(error = %e, "replica lag not measured (primary unavailable)");
        }
        tokio::select! {
            _ = tokio::time::sleep(MONITOR_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
