//! Rebuilding a read model without taking the live one down.
//!
//! 1. Take the projector's rebuild lock (one rebuild at a time, across processes).
//! 2. Create schema `cl_rebuild_<name>` with empty copies (`LIKE … INCLUDING ALL`) of the
//!    projection's tables, let the projection prepare them (`prepare_shadow`, e.g. to make
//!    a copy a hypertable), and a checkpoint `<name>#rebuild` at the start of the log (one
//!    per lane: `<name>#rebuild#<i>`, ADR 0031).
//! 3. Replay the whole log into the copies (`search_path` points at the shadow schema),
//!    batch by batch, each lane on its own connection, while the live projector and
//!    queries carry on. A server that stops meanwhile ends the replay between batches and
//!    marks it `interrupted`; so does the next start for a rebuild whose process died. It
//!    is not resumed: start it again.
//! 4. Swap in one transaction: lock the live checkpoint rows (this waits for live batches
//!    in flight and holds back the next), apply the last events to the copies, drop the
//!    live tables, move the copies into `public` under the live index names, and move the
//!    rebuild's checkpoints onto the live ones (leaving exactly the lanes the projector
//!    has now). Queries see the old tables or the new ones, never a mix or nothing. The
//!    swap waits for its locks at most `SWAP_LOCK_TIMEOUT` per attempt (readers queue
//!    behind a waiting `DROP`, so it must not wait long) and tries again after a pause,
//!    up to `SWAP_ATTEMPTS` times.
//! 5. If the live tables changed shape while the replay ran (a migration, manual DDL),
//!    the swap would silently undo that change: it refuses, and the rebuild fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, Transaction};

use super::readmodel::is_identifier;
use super::{
    apply_batch, read_committed, Lane, Prefetch, Projection, ProjectionError, ASYNC_COMMIT_SQL,
};
use crate::eventstore::StoreError;
use crate::telemetry::METRICS;

/// Session lock keeping two rebuilds of one projector apart (namespace, name).
const TRY_REBUILD_LOCK_SQL: &str = "SELECT pg_try_advisory_lock(1668048003, hashtext($1))";
const REBUILD_UNLOCK_SQL: &str = "SELECT pg_advisory_unlock(1668048003, hashtext($1))";
const MARK_SQL: &str = "\
UPDATE projection_checkpoints
   SET rebuild_state = $2, rebuild_position = $3,
       rebuild_started_at = CASE WHEN $2 = 'running' THEN now() ELSE rebuild_started_at END,
       rebuild_finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE now() END
 WHERE name = $1";
/// A running rebuild's progress: only its position moves (`MARK_SQL` with `running` would
/// also move its start time).
const PROGRESS_SQL: &str =
    "UPDATE projection_checkpoints SET rebuild_position = $2 WHERE name = $1";
const RUNNING_SQL: &str = "SELECT name FROM projection_checkpoints WHERE rebuild_state = 'running'";
const RESET_SHADOW_CHECKPOINT_SQL: &str = "\
INSERT INTO projection_checkpoints (name) VALUES ($1)
ON CONFLICT (name) DO UPDATE SET last_epoch = 0, last_xid = '0'::xid8, last_position = 0,
                                 position_seen = 0, events_applied = 0";
/// Every live lane's row (ADR 0031).
const LOCK_LIVE_SQL: &str = "SELECT 1 FROM projection_checkpoints WHERE projector = $1 FOR UPDATE";
/// Lanes a new lane count no longer has.
const DROP_LANES_SQL: &str =
    "DELETE FROM projection_checkpoints WHERE projector = $1 AND name <> ALL($2)";
const MOVE_CHECKPOINT_SQL: &str = "\
UPDATE projection_checkpoints l
   SET last_epoch = s.last_epoch, last_xid = s.last_xid, last_position = s.last_position,
       position_seen = s.position_seen, updated_at = now(), rebuild_state = 'done',
       rebuild_position = s.position_seen, rebuild_finished_at = now()
  FROM projection_checkpoints s
 WHERE l.name = $1 AND s.name = $2
RETURNING l.position_seen";
const DELETE_CHECKPOINT_SQL: &str = "DELETE FROM projection_checkpoints WHERE name = $1";
/// Index names and their definitions without the name, to give the copies the live names.
const INDEXES_SQL: &str = "\
SELECT quote_ident(c.relname), regexp_replace(pg_get_indexdef(i.indexrelid), '^CREATE (UNIQUE )?INDEX \\S+ ON \\S+ ', '')
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE n.nspname = $1 AND t.relname = $2";
/// The shape of a live table: columns with types and defaults, and index definitions.
const SHAPE_SQL: &str = "\
SELECT coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
                                   || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), ''),
                                   ', ' ORDER BY a.attnum)
                   FROM pg_attribute a
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
    || ' | ' ||
       coalesce((SELECT string_agg(pg_get_indexdef(i.indexrelid), ', ' ORDER BY pg_get_indexdef(i.indexrelid))
                   FROM pg_index i WHERE i.indrelid = t.oid), '')
  FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE n.nspname = 'public' AND t.relname = $1";

/// How long one swap attempt waits for a lock, and how often it is tried.
pub const SWAP_LOCK_TIMEOUT: Duration = Duration::from_millis(200);
pub const SWAP_ATTEMPTS: u32 = 300;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a rebuild of {0} is already running")]
    InProgress(String),
    #[error("the rebuild of {0} was interrupted by a shutdown")]
    Interrupted(String),
    #[error("table {0} changed shape during the rebuild (a migration?); start the rebuild again")]
    ShapeChanged(String),
    #[error("the swap of {0} could not get its locks in {1} attempts")]
    SwapTimedOut(String, u32),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

impl From<tokio_postgres::Error> for RebuildError {
    fn from(e: tokio_postgres::Error) -> Self {
        RebuildError::Projection(e.into())
    }
}

impl RebuildError {
    fn lock_timed_out(&self) -> bool {
        matches!(
            self,
            RebuildError::Projection(ProjectionError::Store(StoreError::Database(e)))
                if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
        )
    }

    fn state(&self) -> &'static str {
        match self {
            RebuildError::Interrupted(_) => "interrupted",
            _ => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RebuildReport {
    pub events: u64,
    pub seconds: f64,
    pub position: i64,
}

/// A rebuild that holds its lock and can be run now or handed to a task.
pub struct Rebuild {
    client: Client,
    conn: String,
    projection: Arc<dyn Projection>,
}

/// Marks rebuilds left `running` by a process that is gone as `interrupted` (their lock
/// is free). Run at start.
pub async fn mark_abandoned(client: &Client) -> Result<(), tokio_postgres::Error> {
    for row in client.query(RUNNING_SQL, &[]).await? {
        let name: String = row.try_get(0)?;
        let free: bool = client
            .query_one(TRY_REBUILD_LOCK_SQL, &[&name])
            .await?
            .try_get(0)?;
        if free {
            client
                .execute(MARK_SQL, &[&name, &"interrupted", &None::<i64>])
                .await?;
            client.query_one(REBUILD_UNLOCK_SQL, &[&name]).await?;
            tracing::warn!(projector = %name, "a rebuild was left running by a stopped process; marked interrupted");
        }
    }
    Ok(())
}

impl Rebuild {
    /// Takes the rebuild lock on a dedicated connection, or reports one in progress.
    pub async fn begin(conn: &str, projection: Arc<dyn Projection>) -> Result<Self, RebuildError> {
        // The name and table names go into DDL: hold them to the documented pattern.
        let shadow_ok = is_identifier(&format!("cl_rebuild_{}", projection.name()));
        if !shadow_ok || !projection.tables().iter().all(|t| is_identifier(t)) {
            return Err(RebuildError::Projection(ProjectionError::Apply {
                name: projection.name(),
                source: anyhow::anyhow!("projection and table names must match [a-z][a-z0-9_]*"),
            }));
        }
        let client = crate::db::connect(conn)
            .await
            .map_err(ProjectionError::from)?;
        let got: bool = client
            .query_one(TRY_REBUILD_LOCK_SQL, &[&projection.name()])
            .await?
            .try_get(0)?;
        if !got {
            return Err(RebuildError::InProgress(projection.name().to_owned()));
        }
        Ok(Self {
            client,
            conn: conn.to_owned(),
            projection,
        })
    }

    /// Replays the log into the shadow tables and swaps them in; ends early (state
    /// `interrupted`) when `stop` turns true.
    pub async fn run(
        mut self,
        batch_size: i64,
        stop: watch::Receiver<bool>,
    ) -> Result<RebuildReport, RebuildError> {
        let result = self.replay_and_swap(batch_size, stop).await;
        let name = self.projection.name();
        if let Err(e) = &result {
            tracing::error!(projector = name, error = %e, "rebuild ended without a swap");
            let _ = self
                .client
                .execute(MARK_SQL, &[&name, &e.state(), &None::<i64>])
                .await;
            // The half-built copy goes: it may hold values erased since (a forgotten
            // subject's attributes), which nothing would erase there.
            let _ = self
                .client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS cl_rebuild_{name} CASCADE"))
                .await;
        }
        METRICS.rebuild_position.with_label_values(&[name]).set(0);
        // Released here, not when the connection closes (that happens some time after
        // this returns, and a rebuild started at once would be refused meanwhile).
        let _ = self.client.query_one(REBUILD_UNLOCK_SQL, &[&name]).await;
        result
    }

    async fn shapes(&self) -> Result<Vec<String>, RebuildError> {
        let mut out = Vec::new();
        for t in self.projection.tables() {
            out.push(shape(&self.client, t).await?);
        }
        Ok(out)
    }

    async fn replay_and_swap(
        &mut self,
        batch_size: i64,
        stop: watch::Receiver<bool>,
    ) -> Result<RebuildReport, RebuildError> {
        let started = Instant::now();
        let p = self.projection.clone();
        let name = p.name();
        let batch_size = super::batch_size(&*p, batch_size);
        let shadow_schema = format!("cl_rebuild_{name}");
        let shadow_checkpoint = format!("{name}#rebuild");
        let shapes_before = self.shapes().await?;
        let lane_count = p.options().lane_count();
        let conn = self.conn.clone();
        let client = &mut self.client;

        client
            .execute(super::ENSURE_CHECKPOINT_SQL, &[&name])
            .await?;
        client
            .execute(MARK_SQL, &[&name, &"running", &0_i64])
            .await?;
        // Names below come from the projection's own constants (checked in `begin`).
        let mut ddl = format!(
            "DROP SCHEMA IF EXISTS {shadow_schema} CASCADE; CREATE SCHEMA {shadow_schema};"
        );
        for t in p.tables() {
            ddl.push_str(&format!(
                "CREATE TABLE {shadow_schema}.{t} (LIKE public.{t} INCLUDING ALL);"
            ));
        }
        let tx = client.transaction().await?;
        tx.batch_execute(&ddl).await?;
        for t in p.tables() {
            let options: String = tx
                .query_one(STORAGE_OPTIONS_SQL, &[&format!("public.{t}")])
                .await?
                .try_get(0)?;
            if !options.is_empty() {
                tx.batch_execute(&format!("ALTER TABLE {shadow_schema}.{t} SET ({options})"))
                    .await?;
            }
        }
        p.prepare_shadow(&tx, &shadow_schema)
            .await
            .map_err(|source| ProjectionError::Apply { name, source })?;
        // Row-level security, its policy and the query role's grant (sql/V9), which LIKE
        // does not copy: the copy is swapped in secured.
        for t in p.tables() {
            tx.execute(SECURE_SQL, &[&format!("{shadow_schema}.{t}")])
                .await?;
        }
        for lane in Lane::all(lane_count) {
            tx.execute(
                RESET_SHADOW_CHECKPOINT_SQL,
                &[&lane.checkpoint(&shadow_checkpoint)],
            )
            .await?;
        }
        tx.commit().await?;
        tracing::info!(projector = name, "rebuild started");

        // Lane 0 replays on this connection, which holds the rebuild lock; the others on
        // their own.
        let mut others = Vec::new();
        for _ in 1..lane_count {
            others.push(
                crate::db::connect(&conn)
                    .await
                    .map_err(ProjectionError::from)?,
            );
        }
        let replays = std::iter::once(&mut *client)
            .chain(others.iter_mut())
            .zip(Lane::all(lane_count))
            .map(|(c, lane)| {
                replay(
                    c,
                    &*p,
                    lane,
                    &shadow_schema,
                    &shadow_checkpoint,
                    batch_size,
                    &conn,
                    &stop,
                )
            });
        // Every lane goes through every event: the events replayed are lane 0's count (as
        // in the swap below).
        let mut events: u64 = futures::future::try_join_all(replays)
            .await?
            .first()
            .copied()
            .unwrap_or(0);
        drop(others);

        let mut attempt = 0;
        let position = loop {
            attempt += 1;
            let tx = read_committed(client).await?;
            let swapped = swap(
                &tx,
                &*p,
                &shadow_schema,
                &shadow_checkpoint,
                batch_size,
                &shapes_before,
            )
            .await;
            match swapped {
                Ok((applied, position)) => {
                    tx.commit().await?;
                    events += applied;
                    break position;
                }
                Err(e) if e.lock_timed_out() && attempt < SWAP_ATTEMPTS => {
                    drop(tx);
                    if *stop.borrow() {
                        return Err(RebuildError::Interrupted(name.to_owned()));
                    }
                    tracing::debug!(
                        projector = name,
                        attempt,
                        "swap waited too long for a lock; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20))))
                        .await;
                }
                Err(e) if e.lock_timed_out() => {
                    return Err(RebuildError::SwapTimedOut(name.to_owned(), attempt))
                }
                Err(e) => return Err(e),
            }
        };
        // The copies were made with LIKE: they start without planner statistics.
        for t in p.tables() {
            client.batch_execute(&format!("ANALYZE public.{t}")).await?;
        }
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(projector = name, events, seconds, "rebuild swapped in");
        Ok(RebuildReport {
            events,
            seconds,
            position,
        })
    }
}

/// Replays `lane` of the log into the shadow tables, batch by batch, until it has read
/// everything; returns the events it went through. Lane 0 reports the progress.
#[allow(clippy::too_many_arguments)]
async fn replay(
    client: &mut Client,
    p: &dyn Projection,
    lane: Lane,
    shadow_schema: &str,
    shadow_checkpoint: &str,
    batch_size: i64,
    conn: &str,
    stop: &watch::Receiver<bool>,
) -> Result<u64, RebuildError> {
    let name = p.name();
    let checkpoint = lane.checkpoint(shadow_checkpoint);
    let setup = format!("SET LOCAL search_path = {shadow_schema}, public; {ASYNC_COMMIT_SQL}");
    let mut prefetch = Prefetch::connect(conn).await?;
    let mut events = 0_u64;
    loop {
        if *stop.borrow() {
            return Err(RebuildError::Interrupted(name.to_owned()));
        }
        let tx = read_committed(client).await?;
        tx.batch_execute(&setup).await?;
        let outcome =
            apply_batch(&tx, p, &checkpoint, lane, batch_size, Some(&mut prefetch)).await?;
        tx.commit().await?;
        events += outcome.applied as u64;
        if let (Some(pos), true) = (outcome.last_position, lane.is_first()) {
            METRICS.rebuild_position.with_label_values(&[name]).set(pos);
            client.execute(PROGRESS_SQL, &[&name, &pos]).await?;
        }
        if (outcome.applied as i64) < batch_size {
            return Ok(events);
        }
    }
}

/// The shape of live table `table` (empty if it does not exist).
async fn shape<C: GenericClient>(client: &C, table: &str) -> Result<String, RebuildError> {
    Ok(match client.query_opt(SHAPE_SQL, &[&table]).await? {
        Some(r) => r.try_get(0)?,
        None => String::new(),
    })
}

/// The live table's storage parameters (`fillfactor`, autovacuum settings) as the list of
/// an `ALTER TABLE … SET (…)`, quoted from the catalog: `LIKE … INCLUDING ALL` copies the
/// indexes with theirs, not the table's.
const STORAGE_OPTIONS_SQL: &str = "\
SELECT coalesce(string_agg(format('%I = %L', split_part(o, '=', 1), substr(o, strpos(o, '=') + 1)),
                           ', '), '')
  FROM pg_class c, unnest(c.reloptions) o WHERE c.oid = $1::text::regclass";

/// Secures a read-model table as every read model is (`sql/V9`).
const SECURE_SQL: &str = "SELECT cloudlens_secure_read_model($1::text::regclass)";

/// One attempt at the swap inside `tx` (the caller commits): returns the events applied
/// in the final catch-up and the live checkpoint's new position. Fails with
/// `ShapeChanged` (before dropping anything) if a live table no longer has the shape it
/// had when the rebuild started.
async fn swap(
    tx: &Transaction<'_>,
    p: &dyn Projection,
    shadow_schema: &str,
    shadow_checkpoint: &str,
    batch_size: i64,
    shapes_before: &[String],
) -> Result<(u64, i64), RebuildError> {
    let name = p.name();
    let lanes: Vec<Lane> = Lane::all(p.options().lane_count()).collect();
    // Waits for live batches in flight (no reader waits on these row locks).
    tx.query(LOCK_LIVE_SQL, &[&name]).await?;
    tx.batch_execute(&format!("SET LOCAL search_path = {shadow_schema}, public"))
        .await?;
    let mut events = 0;
    for lane in &lanes {
        let checkpoint = lane.checkpoint(shadow_checkpoint);
        loop {
            let outcome = apply_batch(tx, p, &checkpoint, *lane, batch_size, None).await?;
            if lane.is_first() {
                events += outcome.applied as u64;
            }
            if (outcome.applied as i64) < batch_size {
                break;
            }
        }
    }
    tx.batch_execute("SET LOCAL search_path = public").await?;
    // From here on, readers of the live tables queue behind each lock this waits for.
    let timeout = SWAP_LOCK_TIMEOUT.as_millis();
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{timeout}ms'"))
        .await?;
    for (t, before) in p.tables().into_iter().zip(shapes_before) {
        // Lock first, then read the shape: nothing can change it until the commit.
        tx.batch_execute(&format!("LOCK TABLE public.{t} IN ACCESS EXCLUSIVE MODE"))
            .await?;
        if shape(tx, t).await? != *before {
            return Err(RebuildError::ShapeChanged(t.to_owned()));
        }
        let live = tx.query(INDEXES_SQL, &[&"public", &t]).await?;
        let copies = tx.query(INDEXES_SQL, &[&shadow_schema, &t]).await?;
        tx.batch_execute(&format!(
            "DROP TABLE public.{t}; ALTER TABLE {shadow_schema}.{t} SET SCHEMA public;"
        ))
        .await?;
        for copy in &copies {
            let (copy_name, shape): (String, String) = (copy.try_get(0)?, copy.try_get(1)?);
            let original = live
                .iter()
                .find(|l| l.try_get::<_, String>(1).ok().as_deref() == Some(&shape));
            if let Some(original) = original {
                let original: String = original.try_get(0)?;
                if original != copy_name {
                    tx.batch_execute(&format!(
                        "ALTER INDEX public.{copy_name} RENAME TO {original}"
                    ))
                    .await?;
                }
            }
        }
    }
    let mut position = i64::MAX;
    let mut live_lanes = Vec::new();
    for lane in &lanes {
        let (live, shadow) = (lane.checkpoint(name), lane.checkpoint(shadow_checkpoint));
        tx.execute(super::ENSURE_CHECKPOINT_SQL, &[&live]).await?;
        let moved: i64 = tx
            .query_one(MOVE_CHECKPOINT_SQL, &[&live, &shadow])
            .await?
            .try_get(0)?;
        position = position.min(moved);
        tx.execute(DELETE_CHECKPOINT_SQL, &[&shadow]).await?;
        live_lanes.push(live);
    }
    tx.execute(DROP_LANES_SQL, &[&name, &live_lanes]).await?;
    tx.batch_execute(&format!("DROP SCHEMA {shadow_schema} CASCADE"))
        .await?;
    Ok((events, position))
}
