//! Rebuilding a read model without taking the live one down.
//!
//! 1. Take the projector's rebuild lock (one rebuild at a time, across processes).
//! 2. Create schema `cl_rebuild_<name>` with empty copies (`LIKE … INCLUDING ALL`) of the
//!    projection's tables, and a checkpoint `<name>#rebuild` at the start of the log.
//! 3. Replay the whole log into the copies (`search_path` points at the shadow schema),
//!    batch by batch, while the live projector and queries carry on.
//! 4. Swap in one transaction: lock the live checkpoint row (this waits for a live batch
//!    in flight and holds back the next), apply the last events to the copies, drop the
//!    live tables, move the copies into `public` under the live index names, and move the
//!    rebuild's checkpoint onto the live one. Queries see the old tables or the new ones,
//!    never a mix or nothing.

use std::time::Instant;

use tokio_postgres::Client;

use super::{apply_batch, read_committed, Prefetch, Projection, ProjectionError, ASYNC_COMMIT_SQL};
use crate::telemetry::METRICS;

/// Session lock keeping two rebuilds of one projector apart (namespace, name).
const TRY_REBUILD_LOCK_SQL: &str = "SELECT pg_try_advisory_lock(1668048003, hashtext($1))";
const MARK_SQL: &str = "\
UPDATE projection_checkpoints
   SET rebuild_state = $2, rebuild_position = $3,
       rebuild_started_at = CASE WHEN $2 = 'running' THEN now() ELSE rebuild_started_at END,
       rebuild_finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE now() END
 WHERE name = $1";
const RESET_SHADOW_CHECKPOINT_SQL: &str = "\
INSERT INTO projection_checkpoints (name) VALUES ($1)
ON CONFLICT (name) DO UPDATE SET last_xid = '0'::xid8, last_position = 0, events_applied = 0";
const LOCK_LIVE_SQL: &str = "SELECT 1 FROM projection_checkpoints WHERE name = $1 FOR UPDATE";
const MOVE_CHECKPOINT_SQL: &str = "\
UPDATE projection_checkpoints l
   SET last_xid = s.last_xid, last_position = s.last_position, updated_at = now(),
       rebuild_state = 'done', rebuild_position = s.last_position, rebuild_finished_at = now()
  FROM projection_checkpoints s
 WHERE l.name = $1 AND s.name = $2";
const DELETE_CHECKPOINT_SQL: &str = "DELETE FROM projection_checkpoints WHERE name = $1";
/// Index names and their definitions without the name, to give the copies the live names.
const INDEXES_SQL: &str = "\
SELECT c.relname, regexp_replace(pg_get_indexdef(i.indexrelid), '^CREATE (UNIQUE )?INDEX \\S+ ON \\S+ ', '')
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE n.nspname = $1 AND t.relname = $2";

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a rebuild of {0} is already running")]
    InProgress(String),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

impl From<tokio_postgres::Error> for RebuildError {
    fn from(e: tokio_postgres::Error) -> Self {
        RebuildError::Projection(e.into())
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
    projection: std::sync::Arc<dyn Projection>,
}

impl Rebuild {
    /// Takes the rebuild lock on a dedicated connection, or reports one in progress.
    pub async fn begin(
        conn: &str,
        projection: std::sync::Arc<dyn Projection>,
    ) -> Result<Self, RebuildError> {
        // The name and table names go into DDL: hold them to the documented pattern.
        let plain =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if !plain(projection.name()) || !projection.tables().iter().all(|t| plain(t)) {
            return Err(RebuildError::Projection(ProjectionError::Apply {
                name: projection.name(),
                source: anyhow::anyhow!("projection and table names must match [a-z_]+"),
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

    /// Replays the log into the shadow tables and swaps them in.
    pub async fn run(mut self, batch_size: i64) -> Result<RebuildReport, RebuildError> {
        let result = self.replay_and_swap(batch_size).await;
        let name = self.projection.name();
        if let Err(e) = &result {
            tracing::error!(projector = name, error = %e, "rebuild failed");
            let _ = self
                .client
                .execute(MARK_SQL, &[&name, &"failed", &None::<i64>])
                .await;
        }
        METRICS.rebuild_position.with_label_values(&[name]).set(0);
        result
    }

    async fn replay_and_swap(&mut self, batch_size: i64) -> Result<RebuildReport, RebuildError> {
        let started = Instant::now();
        let p = self.projection.clone();
        let name = p.name();
        let shadow_schema = format!("cl_rebuild_{name}");
        let shadow_checkpoint = format!("{name}#rebuild");
        let client = &mut self.client;

        client
            .execute(super::ENSURE_CHECKPOINT_SQL, &[&name])
            .await?;
        client
            .execute(MARK_SQL, &[&name, &"running", &0_i64])
            .await?;
        // Names below come from the projection's own constants (`[a-z_]+`), never from users.
        let mut ddl = format!(
            "DROP SCHEMA IF EXISTS {shadow_schema} CASCADE; CREATE SCHEMA {shadow_schema};"
        );
        for t in p.tables() {
            ddl.push_str(&format!(
                "CREATE TABLE {shadow_schema}.{t} (LIKE public.{t} INCLUDING ALL);"
            ));
        }
        client.batch_execute(&ddl).await?;
        client
            .execute(RESET_SHADOW_CHECKPOINT_SQL, &[&shadow_checkpoint])
            .await?;
        tracing::info!(projector = name, "rebuild started");

        let search_path = format!("SET LOCAL search_path = {shadow_schema}, public");
        let mut prefetch = Prefetch::connect(&self.conn).await?;
        let mut events = 0_u64;
        loop {
            let tx = read_committed(client).await?;
            tx.batch_execute(&format!("{search_path}; {ASYNC_COMMIT_SQL}"))
                .await?;
            let outcome = apply_batch(
                &tx,
                &*p,
                &shadow_checkpoint,
                batch_size,
                Some(&mut prefetch),
            )
            .await?;
            tx.commit().await?;
            events += outcome.applied as u64;
            if let Some(pos) = outcome.last_position {
                METRICS.rebuild_position.with_label_values(&[name]).set(pos);
                client.execute(MARK_SQL, &[&name, &"running", &pos]).await?;
            }
            if (outcome.applied as i64) < batch_size {
                break;
            }
        }

        // The swap: everything from here commits together or not at all.
        let tx = read_committed(client).await?;
        tx.query_one(LOCK_LIVE_SQL, &[&name]).await?;
        tx.batch_execute(&search_path).await?;
        loop {
            let outcome = apply_batch(&tx, &*p, &shadow_checkpoint, batch_size, None).await?;
            events += outcome.applied as u64;
            if (outcome.applied as i64) < batch_size {
                break;
            }
        }
        tx.batch_execute("SET LOCAL search_path = public").await?;
        for t in p.tables() {
            let live = tx.query(INDEXES_SQL, &[&"public", t]).await?;
            let copies = tx.query(INDEXES_SQL, &[&shadow_schema, t]).await?;
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
        tx.execute(MOVE_CHECKPOINT_SQL, &[&name, &shadow_checkpoint])
            .await?;
        tx.execute(DELETE_CHECKPOINT_SQL, &[&shadow_checkpoint])
            .await?;
        tx.batch_execute(&format!("DROP SCHEMA {shadow_schema} CASCADE"))
            .await?;
        let position: i64 = tx
            .query_one(
                "SELECT last_position FROM projection_checkpoints WHERE name = $1",
                &[&name],
            )
            .await?
            .try_get(0)?;
        tx.commit().await?;
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
