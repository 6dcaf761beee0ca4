//! The gap-free read of the global log (ADR 0001, ADR 0005).
//!
//! Positions come from an identity column, so they are handed out in *start* order while
//! transactions *commit* in any order: reading `position > last` skips an event whose
//! writer committed after a higher position was already read. Instead the log is read in
//! `(epoch, transaction_id, position)` order and only below a **horizon**: the smallest
//! transaction id that an event writer still in flight may hold.
//!
//! The protocol lives in the database (`sql/V4__ordering_protocol.sql`): a statement
//! trigger on `events` takes the shared writer lock before the writing statement gets a
//! transaction id, whoever writes, and `cloudlens_event_horizon()` finds the writers in
//! flight through that lock. Transactions that hold no writer lock — a long report, an
//! idle session in another database, vacuum — are ignored, so they cannot stall
//! projectors. The events are then read with a *new* snapshot (the next statement), taken
//! after every writer below the horizon had finished, so all of them are visible.
//!
//! `epoch` changes only when the database is moved to a cluster whose transaction ids are
//! below the stored ones (`cloudlens_check_epoch()` at start): older epochs are complete.
//!
//! Every query that compares events with a cursor is built here from [`after_cursor!`], so
//! the order cannot be spelled two ways.

use tokio_postgres::GenericClient;

use super::{recorded_event, RecordedEvent, StoreError, Xid8};

/// Events after the cursor `($1, $2, $3)` = (epoch, transaction_id, position), of the
/// kinds in `$4`: a stream type (`budget`: all its events) or one event type of a stream
/// type (`bill_import/BillImportCompleted`: a reader that needs only that one never reads
/// the large batch events beside it). The one definition of "after" in the global order.
macro_rules! after_cursor {
    () => {
        "(epoch, transaction_id, position) > ($1, $2, $3)
   -- `IS TRUE` keeps this a filter: with stale statistics the planner was seen scanning
   -- the stream index for every event of a type instead of walking the global order.
   AND (stream_type = ANY($4) OR stream_type || '/' || event_type = ANY($4)) IS TRUE"
    };
}

/// Column list mapped by `eventstore::recorded_event`.
macro_rules! event_columns {
    () => {
        "position, epoch, transaction_id, tenant_id, stream_type, stream_id, stream_version,
       event_type, schema_version, payload, metadata, recorded_at"
    };
}
pub(crate) use event_columns;

const HORIZON_SQL: &str = "SELECT epoch, horizon, settled FROM cloudlens_event_horizon()";

/// Events after the cursor and below the horizon `($5, $6)`, in global order.
const READ_SQL: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE ",
    after_cursor!(),
    " AND (epoch, transaction_id) < ($5, $6)
 ORDER BY epoch, transaction_id, position
 LIMIT $7"
);

/// Pending events after the cursor, counted up to `$5` (lag must stay cheap to compute).
const PENDING_SQL: &str = concat!(
    "SELECT count(*), min(recorded_at) FROM (SELECT recorded_at FROM events WHERE ",
    after_cursor!(),
    " ORDER BY epoch, transaction_id, position LIMIT $5) p"
);

/// Where the event at position `$1` stands in the global order, and the last position
/// ever handed out.
const LOCATE_SQL: &str = "\
SELECT (SELECT ARRAY[epoch::bigint, transaction_id::text::bigint] FROM events WHERE position = $1),
       (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_position_seq)";

/// Whether an event of the types lies after the cursor and at or before `($5, $6, $7)`.
const ANY_BETWEEN_SQL: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM events WHERE ",
    after_cursor!(),
    " AND (epoch, transaction_id, position) <= ($5, $6, $7))"
);

/// A place in the global order: the last event read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub epoch: i32,
    pub transaction_id: Xid8,
    pub position: i64,
}

impl From<&RecordedEvent> for Cursor {
    fn from(e: &RecordedEvent) -> Self {
        Self {
            epoch: e.epoch,
            transaction_id: e.transaction_id,
            position: e.position,
        }
    }
}

/// How far the log can be read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub epoch: i32,
    /// Every event writer with a smaller transaction id (in `epoch`) has finished.
    pub transaction_id: Xid8,
    /// With no writer in flight: the last position handed out, all of them settled.
    pub settled: Option<i64>,
}

pub async fn horizon<C: GenericClient>(client: &C) -> Result<Horizon, StoreError> {
    let row = client.query_one(HORIZON_SQL, &[]).await?;
    Ok(Horizon {
        epoch: row.try_get(0)?,
        transaction_id: row.try_get(1)?,
        settled: row.try_get(2)?,
    })
}

/// A batch of the log: the events, and the horizon they were read below.
pub struct Batch {
    pub events: Vec<RecordedEvent>,
    pub horizon: Horizon,
}

/// Up to `limit` events of `stream_types` after `after`, none of which can ever be
/// preceded by an event committed later.
pub async fn read_batch<C: GenericClient>(
    client: &C,
    after: Cursor,
    stream_types: &[&str],
    limit: i64,
) -> Result<Batch, StoreError> {
    let horizon = horizon(client).await?;
    let rows = client
        .query(
            READ_SQL,
            &[
                &after.epoch,
                &after.transaction_id,
                &after.position,
                &stream_types,
                &horizon.epoch,
                &horizon.transaction_id,
                &limit,
            ],
        )
        .await?;
    let events = rows.iter().map(recorded_event).collect::<Result<_, _>>()?;
    Ok(Batch { events, horizon })
}

/// Events of `stream_types` after `after` (counted up to `cap`) and the time the oldest
/// of them was recorded.
pub async fn pending<C: GenericClient>(
    client: &C,
    after: Cursor,
    stream_types: &[&str],
    cap: i64,
) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>), StoreError> {
    let row = client
        .query_one(
            PENDING_SQL,
            &[
                &after.epoch,
                &after.transaction_id,
                &after.position,
                &stream_types,
                &cap,
            ],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Whether a reader at `cursor` has seen the event at `position`, as far as events of
/// `stream_types` go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    Yes,
    No,
    /// No position this high was ever handed out; the last one is given.
    NeverIssued {
        last: i64,
    },
}

pub async fn reached<C: GenericClient>(
    client: &C,
    cursor: Cursor,
    stream_types: &[&str],
    position: i64,
) -> Result<Reached, StoreError> {
    let locate = || async {
        let row = client.query_one(LOCATE_SQL, &[&position]).await?;
        let located: Option<Vec<i64>> = row.try_get(0)?;
        let last: i64 = row.try_get(1)?;
        Ok::<_, StoreError>((located, last))
    };
    let (mut located, last) = locate().await?;
    if located.is_none() {
        // Handed out but not visible: in flight, or rolled back. Once every writer that
        // could hold it has finished (the horizon's `settled` covers it), look again: a
        // position still without an event is a rolled-back gap. (Looking again matters:
        // the writer may have committed between the first look and the horizon.)
        if position > last {
            return Ok(Reached::NeverIssued { last });
        }
        let h = horizon(client).await?;
        if h.settled.is_none_or(|s| position > s) {
            return Ok(Reached::No);
        }
        located = locate().await?.0;
    }
    let Some(located) = located else {
        return Ok(Reached::Yes);
    };
    let (epoch, xid) = match located.as_slice() {
        [e, x] => (*e as i32, Xid8(*x as u64)),
        _ => {
            return Err(StoreError::Corrupt {
                position,
                reason: "cannot locate the event".into(),
            })
        }
    };
    let target = Cursor {
        epoch,
        transaction_id: xid,
        position,
    };
    if cursor >= target {
        return Ok(Reached::Yes);
    }
    let row = client
        .query_one(
            ANY_BETWEEN_SQL,
            &[
                &cursor.epoch,
                &cursor.transaction_id,
                &cursor.position,
                &stream_types,
                &target.epoch,
                &target.transaction_id,
                &target.position,
            ],
        )
        .await?;
    let waiting: bool = row.try_get(0)?;
    Ok(if waiting { Reached::No } else { Reached::Yes })
}
