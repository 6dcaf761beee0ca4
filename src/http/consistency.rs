//! Read-your-writes: a query with `min_position` waits (bounded) until the read models
//! it reads reflect every event up to that position, then answers; otherwise 503.

use std::time::{Duration, Instant};

use super::error::ApiError;
use super::AppState;
use crate::projections::Projection;
use crate::telemetry::METRICS;

/// Reached when no event of the projection's streams lies between its checkpoint and the
/// event at `$1` in global order. Events of other streams never hold a projection back.
const REACHED_SQL: &str = "\
WITH p AS (SELECT transaction_id, position FROM events WHERE position = $1),
     c AS (SELECT last_xid, last_position FROM projection_checkpoints WHERE name = $2)
SELECT EXISTS (SELECT 1 FROM p),
       $1 <= coalesce((SELECT max(position) FROM events), 0),
       EXISTS (SELECT 1 FROM c) AND (
           -- the common case: the checkpoint is at or past the event (OR stops here)
           coalesce((SELECT (c.last_xid, c.last_position) >= (p.transaction_id, p.position) FROM p, c), false)
           OR NOT EXISTS (
               SELECT 1 FROM p, c, events e
                WHERE (e.stream_type = ANY($3)) IS TRUE -- a filter, never an index scan (global.rs)
                  AND (e.transaction_id, e.position) > (c.last_xid, c.last_position)
                  AND e.transaction_id >= c.last_xid AND e.transaction_id <= p.transaction_id
                  AND (e.transaction_id, e.position) <= (p.transaction_id, p.position)))";

/// Waits until `projection` has applied everything up to `min_position`.
pub async fn wait_for(
    state: &AppState,
    projection: &dyn Projection,
    min_position: Option<i64>,
) -> Result<(), ApiError> {
    let Some(target) = min_position else {
        return Ok(());
    };
    if target < 0 {
        return Err(ApiError::validation("min_position", "must not be negative"));
    }
    if target == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let deadline = started + state.settings.min_position_timeout;
    let mut progress = state.progress.subscribe();
    loop {
        progress.mark_unchanged();
        let client = state.store.pool().get().await?;
        let row = client
            .query_one(
                REACHED_SQL,
                &[&target, &projection.name(), &projection.stream_types()],
            )
            .await?;
        drop(client);
        let (known, within_log, reached): (bool, bool, bool) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        // A position inside the log with no event is a rolled-back gap: nothing to wait for.
        if (known && reached) || (!known && within_log) {
            METRICS
                .min_position_wait
                .observe(started.elapsed().as_secs_f64());
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ApiError::ReadModelBehind(target));
        }
        // Local projector batches wake us at once; projectors in other processes are
        // noticed by the short poll.
        let nap = (deadline - now).min(Duration::from_millis(20));
        let _ = tokio::time::timeout(nap, progress.changed()).await;
    }
}
