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
        concat!(
            after!("$1", "$2", "$3"),
            "
   -- `IS TRUE` keeps this a filter: with stale statistics the planner was seen scanning
   -- the stream index for every event of a type instead of walking the global order.
   AND (stream_type = ANY($4) OR stream_type || '/' || event_type = ANY($4)) IS TRUE"
        )
    };
}

/// The event's place in the global order lies after the cursor `(epoch, transaction_id,
/// position)` given as three SQL expressions: the comparison [`after_cursor!`] and the
/// feed's queries are built from.
macro_rules! after {
    ($epoch:literal, $xid:literal, $position:literal) => {
        concat!(
            "(epoch, transaction_id, position) > (",
            $epoch,
            ", ",
            $xid,
            ", ",
            $position,
            ")"
        )
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

/// Where the event at `position` stands in the global order; `None` when no such event
/// is visible (in flight, rolled back, or never handed out).
pub async fn locate<C: GenericClient>(
    client: &C,
    position: i64,
) -> Result<Option<Cursor>, StoreError> {
    let row = client.query_one(LOCATE_SQL, &[&position]).await?;
    let located: Option<Vec<i64>> = row.try_get(0)?;
    Ok(match located.as_deref() {
        Some([epoch, xid]) => Some(Cursor {
            epoch: *epoch as i32,
            transaction_id: Xid8(*xid as u64),
            position,
        }),
        _ => None,
    })
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

// ---------------------------------------------------------------------------------------
// The feed (ADR 0029): one tenant's events, filtered by stream and event type, read in the
// same order and below the same horizon as projectors read them.

/// Partitions of a consumer group: a stream's events all fall in one.
pub const PARTITIONS: i32 = 16;

/// The partition of a stream: the last byte of its id, modulo [`PARTITIONS`]. Stable across
/// PostgreSQL versions (unlike `hashtext`) and uniform for random and name-based UUIDs.
macro_rules! partition_of {
    () => {
        "get_byte(uuid_send(stream_id), 15) % 16"
    };
}

/// The Rust twin of `partition_of!` (tests, clients).
pub fn partition(stream_id: uuid::Uuid) -> i32 {
    i32::from(stream_id.as_bytes()[15]) % PARTITIONS
}

/// The feed's filters, beside the tenant: `$7` stream types never shown (secrets),
/// `$8`/`$9` the stream and event types asked for (NULL: all). The `IS NULL OR` form is
/// harmless here: these are filters on the walk of the tenant's order index, never index
/// conditions, so a generic plan loses nothing.
macro_rules! feed_filters {
    () => {
        "tenant_id = $4
   AND stream_type <> ALL($7)
   AND ($8::text[] IS NULL OR stream_type = ANY($8))
   AND ($9::text[] IS NULL OR event_type = ANY($9))"
    };
}

/// A tenant's events after the cursor and below the horizon `($5, $6)`, in global order.
const FEED_SQL: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE ",
    feed_filters!(),
    " AND ",
    after!("$1", "$2", "$3"),
    " AND (epoch, transaction_id) < ($5, $6)
 ORDER BY epoch, transaction_id, position
 LIMIT $10"
);

/// The cursor of an event's partition among the group's per-partition cursors `$11`,
/// `$12`, `$13` (arrays indexed by partition + 1; NULL for partitions not read).
/// Must spell `partition_of!()` (checked by a unit test).
macro_rules! partition_cursor {
    () => {
        after!(
            "($11::integer[])[get_byte(uuid_send(stream_id), 15) % 16 + 1]",
            "($12::xid8[])[get_byte(uuid_send(stream_id), 15) % 16 + 1]",
            "($13::bigint[])[get_byte(uuid_send(stream_id), 15) % 16 + 1]"
        )
    };
}

/// The events of a consumer group's partitions, each after its own cursor, walked in
/// global order from the smallest of them `($1, $2, $3)`. The partition's cursor is a
/// filter on that walk (a NULL cursor: a partition not read), not a join: a join let the
/// planner hash the whole tail of the log and sort it for every poll.
const PARTITIONS_SQL: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events WHERE ",
    feed_filters!(),
    " AND ",
    after!("$1", "$2", "$3"),
    " AND ",
    partition_cursor!(),
    " AND (epoch, transaction_id) < ($5, $6)
 ORDER BY epoch, transaction_id, position
 LIMIT $10"
);

/// Readable events per partition after each partition's cursor, counted up to `$10`.
const PARTITIONS_LAG_SQL: &str = concat!(
    "SELECT part, count(*) FROM (SELECT ",
    partition_of!(),
    " AS part FROM events WHERE ",
    feed_filters!(),
    " AND ",
    after!("$1", "$2", "$3"),
    " AND ",
    partition_cursor!(),
    " AND (epoch, transaction_id) < ($5, $6) LIMIT $10) pending GROUP BY part"
);

/// What the feed shows of a tenant's log.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter<'a> {
    pub tenant: &'a str,
    /// Never shown, whatever is asked (streams that hold secrets).
    pub hidden: &'a [&'a str],
    pub stream_types: Option<Vec<String>>,
    pub event_types: Option<Vec<String>>,
}

/// Up to `limit` of the tenant's events after `after`, none of which can ever be preceded
/// by an event committed later, and the cursor to read on from. A page shorter than
/// `limit` holds every matching event below the horizon, so the next read starts at the
/// horizon: a sparse filter never walks the same stretch of the log twice.
pub async fn read_feed<C: GenericClient>(
    client: &C,
    filter: &FeedFilter<'_>,
    after: Cursor,
    limit: i64,
) -> Result<(Vec<RecordedEvent>, Cursor), StoreError> {
    let horizon = horizon(client).await?;
    let rows = client
        .query(
            FEED_SQL,
            &[
                &after.epoch,
                &after.transaction_id,
                &after.position,
                &filter.tenant,
                &horizon.epoch,
                &horizon.transaction_id,
                &filter.hidden,
                &filter.stream_types,
                &filter.event_types,
                &limit,
            ],
        )
        .await?;
    let events: Vec<RecordedEvent> = rows.iter().map(recorded_event).collect::<Result<_, _>>()?;
    let next = resume_after(after, &events, limit, horizon);
    Ok((events, next))
}

/// Where a reader goes on after reading `events` (up to `limit`) after `after` below
/// `horizon`. A full read goes on after its last event. A short one read everything below
/// the horizon, so it goes on at the horizon: a reader of a few types never walks the
/// same stretch of other types' events twice. The horizon's own transaction may hold any
/// position (positions are taken before transaction ids), hence position 0.
pub fn resume_after(
    after: Cursor,
    events: &[RecordedEvent],
    limit: i64,
    horizon: Horizon,
) -> Cursor {
    let last = events.last().map_or(after, Cursor::from);
    if events.len() as i64 >= limit {
        return last;
    }
    last.max(Cursor {
        epoch: horizon.epoch,
        transaction_id: horizon.transaction_id,
        position: 0,
    })
}

/// Up to `limit` events of the partitions, each after its own cursor, in global order and
/// below the horizon: for any partition, the events returned are all of its events up to
/// the last one returned.
pub async fn read_partitions<C: GenericClient>(
    client: &C,
    filter: &FeedFilter<'_>,
    partitions: &[(i32, Cursor)],
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = query_partitions(client, PARTITIONS_SQL, filter, partitions, limit).await?;
    rows.iter().map(recorded_event).collect()
}

/// Events pending per partition after its cursor (all of them counted up to `cap`).
pub async fn partitions_lag<C: GenericClient>(
    client: &C,
    filter: &FeedFilter<'_>,
    partitions: &[(i32, Cursor)],
    cap: i64,
) -> Result<Vec<(i32, i64)>, StoreError> {
    let rows = query_partitions(client, PARTITIONS_LAG_SQL, filter, partitions, cap).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Runs `sql` (`PARTITIONS_SQL` or `PARTITIONS_LAG_SQL`: the same parameters) over the
/// partitions' cursors below the horizon; no rows without partitions.
async fn query_partitions<C: GenericClient>(
    client: &C,
    sql: &str,
    filter: &FeedFilter<'_>,
    partitions: &[(i32, Cursor)],
    n: i64,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let Some(from) = partitions.iter().map(|(_, c)| *c).min() else {
        return Ok(Vec::new());
    };
    let horizon = horizon(client).await?;
    let (epochs, xids, positions) = by_partition(partitions);
    Ok(client
        .query(
            sql,
            &[
                &from.epoch,
                &from.transaction_id,
                &from.position,
                &filter.tenant,
                &horizon.epoch,
                &horizon.transaction_id,
                &filter.hidden,
                &filter.stream_types,
                &filter.event_types,
                &n,
                &epochs,
                &xids,
                &positions,
            ],
        )
        .await?)
}

type Columns = (Vec<Option<i32>>, Vec<Option<Xid8>>, Vec<Option<i64>>);

/// The cursors as arrays indexed by partition (NULL: not read).
fn by_partition(partitions: &[(i32, Cursor)]) -> Columns {
    let n = PARTITIONS as usize;
    let mut out: Columns = (vec![None; n], vec![None; n], vec![None; n]);
    for (p, c) in partitions {
        if let Ok(i) = usize::try_from(*p) {
            if i < n {
                out.0[i] = Some(c.epoch);
                out.1[i] = Some(c.transaction_id);
                out.2[i] = Some(c.position);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_partition_cursor_uses_the_partition_expression() {
        assert!(super::PARTITIONS_SQL.contains(&format!("[{} + 1]", partition_of!())));
        assert!(super::PARTITIONS_LAG_SQL.contains(partition_of!()));
        assert_eq!(
            super::partition(uuid::Uuid::from_u128(
                0x1234_5678_9abc_def0_1234_5678_9abc_de1f
            )),
            0x1f % 16
        );
    }
}
