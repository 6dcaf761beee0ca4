//! Read-your-writes: wait (bounded) until a projector reflects every event up to a
//! position.
//!
//! The fast path answers from memory: a local runner publishes, after each batch that
//! reached the end of the readable log with no writer in flight, the last position handed
//! out (`Progress::reached`); everything at or below it is reflected, and stays so. Only
//! a position above that asks the database, where the global order decides: positions
//! are handed out in start order but read in commit order, so position 100 may be
//! projected after 101, and the check compares places in the order, not numbers.

use std::time::{Duration, Instant};

use super::{lanes, Progress, Projection};
use crate::db::Reader;
use crate::eventstore::global::{self, Reached};
use crate::eventstore::StoreError;
use crate::telemetry::METRICS;

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The position was not reached within the timeout.
    #[error("read model has not reached position {0} yet")]
    Behind(i64),
    /// No such position was ever handed out: waiting would never end.
    #[error("position {requested} was never handed out (the last is {last})")]
    NeverIssued { requested: i64, last: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Waits until `projection` reflects every event up to `target` (of the streams it reads).
pub async fn wait_for(
    reads: &Reader,
    progress: &Progress,
    projection: &dyn Projection,
    target: i64,
    timeout: Duration,
) -> Result<(), WaitError> {
    let name = projection.name();
    if target <= progress.reached(name) {
        return Ok(());
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let mut changed = progress.subscribe();
    loop {
        changed.mark_unchanged();
        if target <= progress.reached(name) {
            break;
        }
        let state = {
            let conn = reads.get().await.map_err(StoreError::from)?;
            let at = lanes::least(conn.client(), name).await?;
            global::reached(conn.client(), at, projection.stream_types(), target).await?
        };
        match state {
            Reached::Yes => break,
            Reached::NeverIssued { last } => {
                return Err(WaitError::NeverIssued {
                    requested: target,
                    last,
                })
            }
            Reached::No => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitError::Behind(target));
        }
        // Local projector batches wake us at once; projectors in other processes are
        // noticed by the short poll.
        let nap = (deadline - now).min(Duration::from_millis(20));
        let _ = tokio::time::timeout(nap, changed.changed()).await;
    }
    METRICS
        .min_position_wait
        .observe(started.elapsed().as_secs_f64());
    Ok(())
}
