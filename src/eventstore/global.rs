//! The gap-free read of the global log (ADR 0001).
//!
//! Positions come from an identity column, so they are handed out in *start* order while
//! transactions *commit* in any order: reading `position > last` skips an event whose
//! writer committed after a higher position was already read. Instead the log is read in
//! `(transaction_id, position)` order and only below a **horizon**: the smallest
//! transaction id that an event writer still in flight may hold.
//!
//! Event writers take a shared advisory lock `(1668048001, 1..=16)` before their statement
//! is given a transaction id (`APPEND_SQL`). The horizon statement takes
//! `N = pg_snapshot_xmax(pg_current_snapshot())` (no transaction that starts after this
//! has an id below `N`), then reads who holds that lock (pg_locks) and their transaction
//! ids (pg_stat_activity): every writer with an id below `N` already held the advisory
//! lock, so if it is still running it shows up there and lowers the horizon. Transactions that hold no writer lock — a long report, an idle
//! session in another database, vacuum — are ignored, so they cannot stall projectors.
//! A writer that aborts or crashes releases its locks at once. The events are then read
//! with a *new* snapshot (the next statement), taken after every writer below the horizon
//! had finished, so all of them are visible.

use tokio_postgres::GenericClient;

use super::{recorded_event, RecordedEvent, StoreError, Xid8};

/// Smallest xid8 (as bigint) that an in-flight event writer may hold.
const HORIZON_SQL: &str = "\
WITH snap AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS nx),
holders AS MATERIALIZED (
    SELECT pid FROM pg_locks
     WHERE locktype = 'advisory' AND granted
       AND classid = 1668048001::oid AND objid BETWEEN 1 AND 16 AND objsubid = 2
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),
writers AS (
    -- backend_xid is published together with the transaction id itself (unlike the
    -- transaction's own lock in pg_locks, which comes a moment later).
    SELECT a.backend_xid::text::bigint AS x32
      FROM pg_stat_activity a JOIN holders h ON h.pid = a.pid
     WHERE a.backend_xid IS NOT NULL),
dist AS (
    SELECT s.nx, ((s.nx % 4294967296) - w.x32 + 4294967296) % 4294967296 AS d
      FROM snap s LEFT JOIN writers w ON true)
SELECT LEAST(min(nx), min(nx - d) FILTER (WHERE d BETWEEN 1 AND 2147483648))::text::xid8 FROM dist";

/// pg_stat_activity is read once per transaction and then cached; the horizon needs it
/// fresh every time (a rebuild's swap computes several horizons in one transaction).
const FRESH_ACTIVITY_SQL: &str = "SELECT pg_stat_clear_snapshot()";

/// Reads events after the cursor and below the horizon, in global order.
const READ_SQL: &str = "\
SELECT position, transaction_id, tenant_id, stream_type, stream_id, stream_version,
       event_type, schema_version, payload, metadata, recorded_at
  FROM events
 WHERE (transaction_id, position) > ($1, $2)
   AND transaction_id >= $1 -- redundant, but lets the planner see how few rows qualify
   AND transaction_id < $3
   -- `IS TRUE` keeps this a filter: with stale statistics the planner was seen scanning
   -- the stream index for every event of a type instead of walking the global order.
   AND (stream_type = ANY($4)) IS TRUE
 ORDER BY transaction_id, position
 LIMIT $5";

/// A place in the global order: the last event read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub transaction_id: Xid8,
    pub position: i64,
}

impl From<&RecordedEvent> for Cursor {
    fn from(e: &RecordedEvent) -> Self {
        Self {
            transaction_id: e.transaction_id,
            position: e.position,
        }
    }
}

/// The horizon: every event writer with a smaller transaction id has finished.
pub async fn horizon<C: GenericClient>(client: &C) -> Result<Xid8, StoreError> {
    client.execute(FRESH_ACTIVITY_SQL, &[]).await?;
    let row = client.query_one(HORIZON_SQL, &[]).await?;
    Ok(row.try_get(0)?)
}

/// Up to `limit` events of `stream_types` after `after`, none of which can ever be
/// preceded by an event committed later.
pub async fn read_batch<C: GenericClient>(
    client: &C,
    after: Cursor,
    stream_types: &[&str],
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let horizon = horizon(client).await?;
    let stmt = client.prepare(READ_SQL).await?;
    let rows = client
        .query(
            &stmt,
            &[
                &after.transaction_id,
                &after.position,
                &horizon,
                &stream_types,
                &limit,
            ],
        )
        .await?;
    rows.iter().map(recorded_event).collect()
}
