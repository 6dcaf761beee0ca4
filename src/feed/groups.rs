//! Consumer groups (ADR 0029): durable positions for programs that follow the feed with
//! several members.
//!
//! A group's streams fall in 16 partitions (`global::partition`). Each partition has a
//! committed cursor, at most one owner holding a lease, and a **lease generation**: a
//! fencing token that goes up every time the partition changes owner. A poll:
//!
//! 1. under the group's row lock (5 s statement and lock limits: a stuck poll gives up
//!    instead of holding the lock): records the member as seen, lists the members seen
//!    recently, gives the member its fair share (`share`: `16 / n` each, one more for the
//!    first `16 % n` members in name order, so shares differ by at most one and nobody
//!    starves), and `assign`s it: it keeps its partitions (renewing their lease), claims
//!    free ones and ones whose owner's lease expired (re-checked under the row lock), and
//!    gives back surplus ones it has nothing unacknowledged in (so a new member gets
//!    partitions without waiting for anyone to die). A claim starts over from the
//!    committed cursor (the `delivered` cursor is reset) under a new generation;
//! 2. reads its partitions' events, each after its **committed** cursor, in global order
//!    and below the horizon (so a poll without an ack hands the same events again:
//!    at-least-once, and a restarted member loses nothing);
//! 3. records the end of the batch as the partitions' `delivered` cursor, **fenced**: only
//!    for partitions still the member's at the generation read in step 1, and their lease
//!    runs from then. Events of the other partitions (claimed by another member because
//!    this poll outlived its lease) are dropped from the batch: a partition's events are
//!    never handed to two members at once. The batch carries its `lease` token
//!    (partitions and generations).
//!
//! An ack (5 s limits too) moves partitions the member holds on a live lease to the
//! acknowledged cursor, but never past what was delivered to it under its current
//! ownership: a partition whose events were not all handed out cannot be committed over
//! them. With the batch's `lease` token, only the batch's partitions at the batch's
//! generations: an ack of a batch of an earlier ownership commits nothing (409), even if
//! the partition came back to the same member since.
//!
//! Because a stream lies in one partition and a partition has one owner at a time, the
//! events of one stream go to one member at a time, in order.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::metrics::{FEED, MAX_LAG_GROUPS};
use super::{cursor, params, FeedEvent};
use crate::db::QueryError;
use crate::eventstore::global::{self, Cursor, FeedFilter, PARTITIONS};
use crate::eventstore::Xid8;
use crate::http::error::ApiError;

/// Lag is counted up to this many events per group.
pub const LAG_CAP: i64 = 100_000;
const DEFAULT_LEASE: i64 = 30;
const MAX_LEASE: i64 = 300;
const DEFAULT_MAX: i64 = 100;
const MAX_BATCH: i64 = 1_000;

const PUT_GROUP_SQL: &str = "\
INSERT INTO consumer_groups (tenant_id, name, stream_types, event_types) VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, name) DO UPDATE
   SET stream_types = EXCLUDED.stream_types, event_types = EXCLUDED.event_types, updated_at = now()
RETURNING (xmax = 0)";

const PUT_PARTITIONS_SQL: &str = "\
INSERT INTO consumer_partitions (tenant_id, group_name, partition)
SELECT $1, $2, p FROM generate_series(0, $3 - 1) AS p
ON CONFLICT DO NOTHING";

const GROUP_SQL: &str = "\
SELECT stream_types, event_types, created_at, updated_at FROM consumer_groups
 WHERE tenant_id = $1 AND name = $2";

/// Every poll of a group takes this lock: assignments are decided one at a time.
const GROUP_FOR_UPDATE_SQL: &str = "\
SELECT stream_types, event_types FROM consumer_groups
 WHERE tenant_id = $1 AND name = $2 FOR UPDATE";

const MEMBER_SEEN_SQL: &str = "\
INSERT INTO consumer_members (tenant_id, group_name, member, seen_until)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
ON CONFLICT (tenant_id, group_name, member) DO UPDATE SET seen_until = EXCLUDED.seen_until";

/// Members not seen for a day are forgotten (names come and go with deployments).
const FORGET_MEMBERS_SQL: &str = "\
DELETE FROM consumer_members
 WHERE tenant_id = $1 AND group_name = $2 AND seen_until < now() - interval '1 day'";

/// The live members in name order: the order that decides who gets one partition more.
const LIVE_MEMBERS_SQL: &str = "\
SELECT member FROM consumer_members WHERE tenant_id = $1 AND group_name = $2 AND seen_until > now()
 ORDER BY member";

const SLOTS_SQL: &str = "\
SELECT partition, owner, coalesce(lease_until > now(), false),
       (delivered_epoch, delivered_transaction_id, delivered_position) > (epoch, transaction_id, position)
  FROM consumer_partitions WHERE tenant_id = $1 AND group_name = $2 ORDER BY partition";

/// Poll and ack transactions give up after this long (statement or lock wait): a stuck
/// statement must not hold the group's row lock, nor a pooled write connection.
const GROUP_TIMEOUTS_SQL: &str =
    "SET LOCAL statement_timeout = '5s'; SET LOCAL lock_timeout = '5s'";

/// The poll's read of events and its lag counts are scans: a longer limit, like other scans.
const READ_TIMEOUTS_SQL: &str =
    "SET LOCAL statement_timeout = '30s'; SET LOCAL lock_timeout = '5s'";

/// Gives back the member's surplus partitions, re-checked under the row lock (still its
/// own, nothing delivered and unacknowledged). A change of owner: a new generation.
const RELEASE_SQL: &str = "\
UPDATE consumer_partitions
   SET owner = NULL, lease_until = NULL, lease_generation = lease_generation + 1,
       delivered_epoch = epoch, delivered_transaction_id = transaction_id, delivered_position = position
 WHERE tenant_id = $1 AND group_name = $2 AND partition = ANY($3) AND owner = $4
   AND (delivered_epoch, delivered_transaction_id, delivered_position) <= (epoch, transaction_id, position)";

/// Claims and renews. The claim is re-checked under the row lock (free, the member's own,
/// or its owner's lease over), so a batch delivered meanwhile (which extends the lease)
/// keeps its partition. A partition changing hands gets a new generation and starts over
/// from its committed cursor.
const HOLD_SQL: &str = "\
UPDATE consumer_partitions
   SET lease_generation = CASE WHEN owner IS DISTINCT FROM $3 THEN lease_generation + 1 ELSE lease_generation END,
       delivered_epoch = CASE WHEN owner IS DISTINCT FROM $3 THEN epoch ELSE delivered_epoch END,
       delivered_transaction_id = CASE WHEN owner IS DISTINCT FROM $3 THEN transaction_id ELSE delivered_transaction_id END,
       delivered_position = CASE WHEN owner IS DISTINCT FROM $3 THEN position ELSE delivered_position END,
       owner = $3, lease_until = now() + make_interval(secs => $4)
 WHERE tenant_id = $1 AND group_name = $2 AND partition = ANY($5)
   AND (owner IS NULL OR owner = $3 OR lease_until IS NULL OR lease_until <= now())
RETURNING partition, epoch, transaction_id, position, lease_until, lease_generation";

/// Records a batch read up to `($4, $5, $6)` as delivered, fenced: only partitions still
/// the member's at the generation the poll read (`$8`/`$9`, partition and generation).
/// Their lease runs from now (the member has the batch only from now). The partitions
/// returned are those whose events the batch may carry; the others changed hands while
/// the poll was reading.
const DELIVERED_SQL: &str = "\
UPDATE consumer_partitions AS c
   SET (delivered_epoch, delivered_transaction_id, delivered_position) = (
         SELECT v.e, v.x, v.p FROM (VALUES (c.delivered_epoch, c.delivered_transaction_id, c.delivered_position),
                                           ($4::integer, $5::xid8, $6::bigint)) AS v(e, x, p)
          ORDER BY v.e DESC, v.x DESC, v.p DESC LIMIT 1),
       lease_until = greatest(c.lease_until, now() + make_interval(secs => $7))
  FROM unnest($8::integer[], $9::bigint[]) AS b(partition, generation)
 WHERE c.tenant_id = $1 AND c.group_name = $2 AND c.owner = $3
   AND c.partition = b.partition AND c.lease_generation = b.generation
RETURNING c.partition, c.lease_until";

/// Commits each partition the member holds on a live lease (with a lease token `$7`/`$8`:
/// only the batch's partitions, at the batch's generation) up to the smaller of the ack
/// and what was delivered to it under that ownership, when that moves it forward.
const ACK_SQL: &str = "\
UPDATE consumer_partitions
   SET (epoch, transaction_id, position) = (
         SELECT c.e, c.x, c.p FROM (VALUES (delivered_epoch, delivered_transaction_id, delivered_position),
                                           ($4::integer, $5::xid8, $6::bigint)) AS c(e, x, p)
          ORDER BY c.e, c.x, c.p LIMIT 1),
       acked_at = now()
 WHERE tenant_id = $1 AND group_name = $2 AND owner = $3 AND lease_until > now()
   AND ($7::integer[] IS NULL
        OR (partition, lease_generation) IN (SELECT * FROM unnest($7::integer[], $8::bigint[])))
   AND (epoch, transaction_id, position) < (delivered_epoch, delivered_transaction_id, delivered_position)
   AND (epoch, transaction_id, position) < ($4, $5, $6)
RETURNING partition";

/// Partitions the ack could apply to: held by the member on a live lease (and at the
/// token's generation).
const HELD_SQL: &str = "\
SELECT count(*) FROM consumer_partitions
 WHERE tenant_id = $1 AND group_name = $2 AND owner = $3 AND lease_until > now()
   AND ($4::integer[] IS NULL
        OR (partition, lease_generation) IN (SELECT * FROM unnest($4::integer[], $5::bigint[])))";

const LOCATE_SQL: &str = "\
SELECT epoch, transaction_id, position FROM events WHERE position = $1 AND tenant_id = $2";

const PARTITIONS_SQL: &str = "\
SELECT partition, epoch, transaction_id, position, owner, lease_until, acked_at
  FROM consumer_partitions WHERE tenant_id = $1 AND group_name = $2 ORDER BY partition";

const MEMBERS_SQL: &str = "\
SELECT member, seen_until FROM consumer_members
 WHERE tenant_id = $1 AND group_name = $2 ORDER BY member";

const ALL_GROUPS_SQL: &str = "\
SELECT tenant_id, name, stream_types, event_types FROM consumer_groups
 ORDER BY updated_at DESC LIMIT 500";

/// What a group reads. Empty lists: everything the feed shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupFilters {
    #[serde(default)]
    pub stream_types: Vec<String>,
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// `PUT /api/v1/consumers/{group}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupDraft {
    #[serde(default)]
    pub filters: GroupFilters,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionView {
    pub partition: i32,
    pub owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    /// Committed: everything of the partition up to here was acknowledged.
    pub cursor: String,
    /// Position of the last acknowledged event's place (0: none).
    pub position: i64,
    pub acked_at: Option<DateTime<Utc>>,
    /// Events not yet acknowledged (counted up to 100,000 per group).
    pub lag: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub member: String,
    pub seen_until: DateTime<Utc>,
    pub partitions: Vec<i32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    pub name: String,
    pub filters: GroupFilters,
    pub partitions: Vec<PartitionView>,
    pub members: Vec<MemberView>,
    /// Sum of the partitions' lag.
    pub lag: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST …/poll`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// The member's name (`[A-Za-z0-9_.-]{1,64}`), stable across its restarts.
    pub member: String,
    /// Most events in the batch (1–1000, default 100).
    pub max: Option<i64>,
    /// How long the member's partitions stay its own without another poll (1–300 s,
    /// default 30).
    pub lease_seconds: Option<i64>,
}

/// A batch: events of the member's partitions in global order, leased until `lease_until`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PollBatch {
    pub member: String,
    pub partitions: Vec<i32>,
    pub lease_until: Option<DateTime<Utc>>,
    pub events: Vec<FeedEvent>,
    /// Acknowledge this cursor once the batch is processed (`null`: nothing to ack).
    pub cursor: Option<String>,
    /// The batch's fencing token (its partitions and their lease generations; `null`
    /// without partitions). Send it back with the ack: the ack then commits only this
    /// batch's partitions, and none that changed hands since.
    pub lease: Option<String>,
}

/// `POST …/ack`: a cursor of the batch (usually its `cursor`), or an event's position.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub member: String,
    pub cursor: Option<String>,
    pub position: Option<i64>,
    /// The batch's `lease`. Without it the ack applies to every partition the member
    /// holds now, up to what was delivered to it since it got each one.
    pub lease: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Acked {
    /// The partitions whose committed cursor moved.
    pub partitions: Vec<i32>,
    pub cursor: String,
}

/// A failed statement of a poll, ack or view: a cancelled statement or lock wait (the
/// `SET LOCAL` limits) is 503 `consumer_group_busy`, the rest as every query error.
fn db(e: impl Into<QueryError>) -> ApiError {
    match e.into() {
        QueryError::Timeout => ApiError::GroupBusy,
        QueryError::Failed(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
        {
            ApiError::GroupBusy
        }
        other => ApiError::from(other),
    }
}

/// The lease token of a batch: its partitions and their generations.
fn encode_lease(parts: &[(i32, i64)]) -> Option<String> {
    (!parts.is_empty()).then(|| crate::db::cursor::encode(&parts))
}

/// A lease token this server gave, as (partitions, generations); 422 `lease` otherwise.
fn decode_lease(text: &str) -> Result<(Vec<i32>, Vec<i64>), ApiError> {
    let parts: Vec<(i32, i64)> = crate::db::cursor::decode(text.trim())
        .filter(|p: &Vec<(i32, i64)>| {
            !p.is_empty()
                && p.len() <= PARTITIONS as usize
                && p.iter().all(|(n, _)| (0..PARTITIONS).contains(n))
        })
        .ok_or_else(|| ApiError::validation("lease", "not a lease of a batch of this server"))?;
    Ok(parts.into_iter().unzip())
}

fn not_found(group: &str) -> ApiError {
    ApiError::NotFound(format!("consumer group {group:?}"))
}

/// A group name from the path, checked (422 `group`).
pub fn check_group(group: &str) -> Result<(), ApiError> {
    if params::is_name(group) {
        Ok(())
    } else {
        Err(ApiError::validation(
            "group",
            "must match [A-Za-z0-9_.-]{1,64}",
        ))
    }
}

fn check_member(member: &str) -> Result<(), ApiError> {
    if params::is_name(member) {
        Ok(())
    } else {
        Err(ApiError::validation(
            "member",
            "must match [A-Za-z0-9_.-]{1,64}",
        ))
    }
}

/// The filters, checked; `None` for an empty list.
/// Stream types and event types, each `None` for all.
type Names = (Option<Vec<String>>, Option<Vec<String>>);

fn filters(f: &GroupFilters) -> Result<Names, ApiError> {
    Ok((
        params::list(
            "filters.stream_types",
            f.stream_types.clone(),
            params::is_stream_type,
        )?,
        params::list(
            "filters.event_types",
            f.event_types.clone(),
            params::is_event_type,
        )?,
    ))
}

/// Creates the group or replaces its filters (positions stay). `true`: created.
pub async fn put(
    pool: &Pool,
    tenant: &str,
    group: &str,
    draft: &GroupDraft,
) -> Result<bool, ApiError> {
    let (stream_types, event_types) = filters(&draft.filters)?;
    let mut client = pool.get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    let created: bool = tx
        .query_one(
            PUT_GROUP_SQL,
            &[&tenant, &group, &stream_types, &event_types],
        )
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
    tx.execute(PUT_PARTITIONS_SQL, &[&tenant, &group, &PARTITIONS])
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(created)
}

/// One partition as a poll sees it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub partition: i32,
    pub owner: Option<String>,
    /// Its owner's lease has not expired.
    pub live: bool,
    /// Delivered to its owner and not all acknowledged.
    pub in_flight: bool,
}

/// The member's fair share of `partitions` among the live members (in name order): each
/// gets `partitions / n`, and the first `partitions % n` of them one more. So the shares
/// add up to the partitions and differ by at most one: nobody is starved while another
/// member has more than its share.
pub fn share(member: &str, live: &[String], partitions: usize) -> usize {
    let n = live.len().max(1);
    // The polling member was just recorded as live; if it somehow is not, it comes last.
    let rank = live.iter().position(|m| m == member).unwrap_or(n - 1);
    partitions / n + usize::from(rank < partitions % n)
}

/// The member's fair share of the partitions among the `live` members (`share`): the
/// partitions it holds after this poll, and those it gives back.
pub fn assign(member: &str, slots: &[Slot], live: &[String]) -> (Vec<i32>, Vec<i32>) {
    let target = share(member, live, slots.len());
    let mut mine: Vec<&Slot> = slots
        .iter()
        .filter(|s| s.owner.as_deref() == Some(member))
        .collect();
    let mut released = Vec::new();
    // Give back surplus partitions, highest first, but never one with a batch in flight:
    // its stream's next events must wait for this member's ack, not go to another member.
    while mine.len() > target {
        let Some(i) = mine.iter().rposition(|s| !s.in_flight) else {
            break;
        };
        released.push(mine.remove(i).partition);
    }
    let mut held: Vec<i32> = mine.iter().map(|s| s.partition).collect();
    for s in slots {
        if held.len() >= target {
            break;
        }
        let free = match &s.owner {
            None => true,
            Some(o) => o != member && !s.live,
        };
        if free {
            held.push(s.partition);
        }
    }
    held.sort_unstable();
    (held, released)
}

/// One poll of `member` (see the module's comment).
pub async fn poll(
    pool: &Pool,
    tenant: &str,
    group: &str,
    req: &PollRequest,
) -> Result<PollBatch, ApiError> {
    check_member(&req.member)?;
    let max = match req.max {
        None => DEFAULT_MAX,
        Some(m) if (1..=MAX_BATCH).contains(&m) => m,
        Some(_) => return Err(ApiError::validation("max", "must be from 1 to 1000")),
    };
    let lease = match req.lease_seconds {
        None => DEFAULT_LEASE,
        Some(l) if (1..=MAX_LEASE).contains(&l) => l,
        Some(_) => {
            return Err(ApiError::validation(
                "lease_seconds",
                "must be from 1 to 300",
            ))
        }
    };
    let lease_secs = lease as f64;
    let mut client = pool.get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(GROUP_TIMEOUTS_SQL).await.map_err(db)?;
    let Some(row) = tx
        .query_opt(GROUP_FOR_UPDATE_SQL, &[&tenant, &group])
        .await
        .map_err(db)?
    else {
        return Err(not_found(group));
    };
    let stream_types: Option<Vec<String>> = row.try_get(0).map_err(db)?;
    let event_types: Option<Vec<String>> = row.try_get(1).map_err(db)?;
    tx.execute(
        MEMBER_SEEN_SQL,
        &[&tenant, &group, &req.member, &lease_secs],
    )
    .await
    .map_err(db)?;
    tx.execute(FORGET_MEMBERS_SQL, &[&tenant, &group])
        .await
        .map_err(db)?;
    let live = tx
        .query(LIVE_MEMBERS_SQL, &[&tenant, &group])
        .await
        .map_err(db)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<String>, _>>()
        .map_err(db)?;
    let slots = tx
        .query(SLOTS_SQL, &[&tenant, &group])
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok(Slot {
                partition: r.try_get(0)?,
                owner: r.try_get(1)?,
                live: r.try_get(2)?,
                in_flight: r.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(db)?;
    let (held, released) = assign(&req.member, &slots, &live);
    if !released.is_empty() {
        tx.execute(RELEASE_SQL, &[&tenant, &group, &released, &req.member])
            .await
            .map_err(db)?;
    }
    let rows = tx
        .query(
            HOLD_SQL,
            &[&tenant, &group, &req.member, &lease_secs, &held],
        )
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    let mut parts = Vec::with_capacity(rows.len());
    let mut generations = Vec::with_capacity(rows.len());
    let mut lease_until: Option<DateTime<Utc>> = None;
    for r in &rows {
        let c = Cursor {
            epoch: r.try_get(1).map_err(db)?,
            transaction_id: r.try_get(2).map_err(db)?,
            position: r.try_get(3).map_err(db)?,
        };
        let partition: i32 = r.try_get(0).map_err(db)?;
        parts.push((partition, c));
        generations.push((partition, r.try_get::<_, i64>(5).map_err(db)?));
        let until: DateTime<Utc> = r.try_get(4).map_err(db)?;
        lease_until = Some(lease_until.map_or(until, |l| l.min(until)));
    }
    parts.sort_unstable_by_key(|(p, _)| *p);
    generations.sort_unstable();
    let hidden = super::hidden();
    let filter = FeedFilter {
        tenant,
        hidden: &hidden,
        stream_types,
        event_types,
    };
    // The read and the delivery record in a transaction of their own, with a scan's time
    // limit; the group's row lock was released with the assignment.
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(READ_TIMEOUTS_SQL).await.map_err(db)?;
    let mut events = global::read_partitions(&*tx, &filter, &parts, max).await?;
    if let Some(c) = events.last().map(Cursor::from) {
        // Fencing: the batch keeps the events of the partitions still held at the
        // generation read. A poll that outlived its lease while another member claimed a
        // partition hands none of that partition's events: one member at a time.
        let (ps, gs): (Vec<i32>, Vec<i64>) = generations.iter().copied().unzip();
        let kept = tx
            .query(
                DELIVERED_SQL,
                &[
                    &tenant,
                    &group,
                    &req.member,
                    &c.epoch,
                    &c.transaction_id,
                    &c.position,
                    &lease_secs,
                    &ps,
                    &gs,
                ],
            )
            .await
            .map_err(db)?;
        let mut still = Vec::with_capacity(kept.len());
        lease_until = None;
        for r in &kept {
            still.push(r.try_get::<_, i32>(0).map_err(db)?);
            let until: DateTime<Utc> = r.try_get(1).map_err(db)?;
            lease_until = Some(lease_until.map_or(until, |l| l.min(until)));
        }
        if still.len() < generations.len() {
            FEED.fenced.inc_by((generations.len() - still.len()) as u64);
            events.retain(|e| still.contains(&global::partition(e.stream_id)));
            generations.retain(|(p, _)| still.contains(p));
        }
    }
    tx.commit().await.map_err(db)?;
    let last = events.last().map(Cursor::from);
    let partitions: Vec<i32> = generations.iter().map(|(p, _)| *p).collect();
    let outcome = if events.is_empty() { "empty" } else { "events" };
    FEED.polls.with_label_values(&[outcome]).inc();
    FEED.delivered
        .with_label_values(&["group"])
        .inc_by(events.len() as u64);
    Ok(PollBatch {
        member: req.member.clone(),
        partitions,
        lease_until,
        events: events.into_iter().map(FeedEvent::from).collect(),
        cursor: last.map(cursor::encode),
        lease: encode_lease(&generations),
    })
}

/// The member's acknowledgement (see the module's comment). 409 when it holds no
/// partition any more (its lease expired and another member took them).
pub async fn ack(
    pool: &Pool,
    tenant: &str,
    group: &str,
    req: &AckRequest,
) -> Result<Acked, ApiError> {
    check_member(&req.member)?;
    let (lease_parts, lease_generations) = match &req.lease {
        Some(l) => {
            let (p, g) = decode_lease(l)?;
            (Some(p), Some(g))
        }
        None => (None, None),
    };
    let mut client = pool.get().await.map_err(db)?;
    let client = client.transaction().await.map_err(db)?;
    client.batch_execute(GROUP_TIMEOUTS_SQL).await.map_err(db)?;
    if client
        .query_opt(GROUP_SQL, &[&tenant, &group])
        .await
        .map_err(db)?
        .is_none()
    {
        return Err(not_found(group));
    }
    let at = match (&req.cursor, req.position) {
        (Some(c), _) => params::after("cursor", Some(c))?,
        (None, Some(p)) => {
            let row = client
                .query_opt(LOCATE_SQL, &[&p, &tenant])
                .await
                .map_err(db)?
                .ok_or_else(|| {
                    ApiError::validation("position", "no event of this tenant has it")
                })?;
            Cursor {
                epoch: row.try_get(0).map_err(db)?,
                transaction_id: row.try_get::<_, Xid8>(1).map_err(db)?,
                position: row.try_get(2).map_err(db)?,
            }
        }
        (None, None) => {
            return Err(ApiError::validation(
                "cursor",
                "give a cursor or a position",
            ))
        }
    };
    let rows = client
        .query(
            ACK_SQL,
            &[
                &tenant,
                &group,
                &req.member,
                &at.epoch,
                &at.transaction_id,
                &at.position,
                &lease_parts,
                &lease_generations,
            ],
        )
        .await
        .map_err(db)?;
    let mut partitions = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<Vec<i32>, _>>()
        .map_err(db)?;
    partitions.sort_unstable();
    if partitions.is_empty() {
        let held: i64 = client
            .query_one(
                HELD_SQL,
                &[
                    &tenant,
                    &group,
                    &req.member,
                    &lease_parts,
                    &lease_generations,
                ],
            )
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        if held == 0 {
            return Err(ApiError::Refused(format!(
                "member {:?} holds none of these partitions of group {group:?} on a live lease: its lease expired or they changed hands; their events go to their owner (poll again)",
                req.member
            )));
        }
    }
    client.commit().await.map_err(db)?;
    Ok(Acked {
        partitions,
        cursor: cursor::encode(at),
    })
}

/// Lag per partition of a group.
async fn lag<C: tokio_postgres::GenericClient>(
    client: &C,
    tenant: &str,
    stream_types: Option<Vec<String>>,
    event_types: Option<Vec<String>>,
    parts: &[(i32, Cursor)],
) -> Result<Vec<(i32, i64)>, ApiError> {
    let hidden = super::hidden();
    let filter = FeedFilter {
        tenant,
        hidden: &hidden,
        stream_types,
        event_types,
    };
    Ok(global::partitions_lag(client, &filter, parts, LAG_CAP).await?)
}

/// The group: filters, partitions with owners, cursors and lag, members.
pub async fn view(pool: &Pool, tenant: &str, group: &str) -> Result<GroupView, ApiError> {
    let mut client = pool.get().await.map_err(db)?;
    // Lag counting is a scan: a scan's time limit, and never a long wait for a lock.
    let client = client.transaction().await.map_err(db)?;
    client.batch_execute(READ_TIMEOUTS_SQL).await.map_err(db)?;
    let Some(row) = client
        .query_opt(GROUP_SQL, &[&tenant, &group])
        .await
        .map_err(db)?
    else {
        return Err(not_found(group));
    };
    let stream_types: Option<Vec<String>> = row.try_get(0).map_err(db)?;
    let event_types: Option<Vec<String>> = row.try_get(1).map_err(db)?;
    let filters = GroupFilters {
        stream_types: stream_types.clone().unwrap_or_default(),
        event_types: event_types.clone().unwrap_or_default(),
    };
    let rows = client
        .query(PARTITIONS_SQL, &[&tenant, &group])
        .await
        .map_err(db)?;
    let mut partitions = Vec::with_capacity(rows.len());
    let mut cursors = Vec::with_capacity(rows.len());
    for r in &rows {
        let c = Cursor {
            epoch: r.try_get(1).map_err(db)?,
            transaction_id: r.try_get(2).map_err(db)?,
            position: r.try_get(3).map_err(db)?,
        };
        let partition: i32 = r.try_get(0).map_err(db)?;
        cursors.push((partition, c));
        partitions.push(PartitionView {
            partition,
            owner: r.try_get(4).map_err(db)?,
            lease_until: r.try_get(5).map_err(db)?,
            cursor: cursor::encode(c),
            position: c.position,
            acked_at: r.try_get(6).map_err(db)?,
            lag: 0,
        });
    }
    let lags = lag(&*client, tenant, stream_types, event_types, &cursors).await?;
    for (p, n) in &lags {
        if let Some(v) = partitions.iter_mut().find(|v| v.partition == *p) {
            v.lag = *n;
        }
    }
    let members = client
        .query(MEMBERS_SQL, &[&tenant, &group])
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            let member: String = r.try_get(0)?;
            let held = partitions
                .iter()
                .filter(|p| p.owner.as_deref() == Some(member.as_str()))
                .map(|p| p.partition)
                .collect();
            Ok(MemberView {
                seen_until: r.try_get(1)?,
                member,
                partitions: held,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(db)?;
    Ok(GroupView {
        name: group.to_owned(),
        filters,
        lag: lags.iter().map(|(_, n)| n).sum(),
        partitions,
        members,
        created_at: row.try_get(2).map_err(db)?,
        updated_at: row.try_get(3).map_err(db)?,
    })
}

/// Measures every group's lag (the elected `consumer_group_lag` job) and exports the
/// [`MAX_LAG_GROUPS`] largest. `shown` holds the groups this job exported last time: it
/// removes those it no longer shows, and only those (another server instance in the same
/// process, as in the tests, keeps its own).
pub async fn refresh_lag(pool: &Pool, shown: &Mutex<Vec<String>>) -> Result<(), ApiError> {
    let client = pool.get().await.map_err(db)?;
    let groups = client.query(ALL_GROUPS_SQL, &[]).await.map_err(db)?;
    let mut measured = Vec::with_capacity(groups.len());
    for g in &groups {
        let tenant: String = g.try_get(0).map_err(db)?;
        let name: String = g.try_get(1).map_err(db)?;
        let cursors = client
            .query(PARTITIONS_SQL, &[&tenant, &name])
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Cursor {
                        epoch: r.try_get(1)?,
                        transaction_id: r.try_get(2)?,
                        position: r.try_get(3)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(db)?;
        let lags = lag(
            &**client,
            &tenant,
            g.try_get(2).map_err(db)?,
            g.try_get(3).map_err(db)?,
            &cursors,
        )
        .await?;
        measured.push((
            format!("{tenant}/{name}"),
            lags.iter().map(|(_, n)| n).sum::<i64>(),
        ));
    }
    measured.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    measured.truncate(MAX_LAG_GROUPS);
    let mut shown = shown
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for gone in shown
        .iter()
        .filter(|l| !measured.iter().any(|(m, _)| m == *l))
    {
        let _ = FEED.group_lag.remove_label_values(&[gone]);
    }
    for (label, n) in &measured {
        FEED.group_lag.with_label_values(&[label]).set(*n);
    }
    *shown = measured.into_iter().map(|(label, _)| label).collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(owners: &[(Option<&str>, bool, bool)]) -> Vec<Slot> {
        owners
            .iter()
            .enumerate()
            .map(|(i, (o, live, in_flight))| Slot {
                partition: i as i32,
                owner: o.map(str::to_owned),
                live: *live,
                in_flight: *in_flight,
            })
            .collect()
    }

    fn live(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn a_lone_member_takes_everything_and_a_second_gets_half_once_the_first_gives_back() {
        let free = slots(&[(None, false, false); 4]);
        assert_eq!(
            assign("a", &free, &live(&["a"])),
            (vec![0, 1, 2, 3], vec![])
        );
        // b arrives: a holds everything, b gets nothing yet…
        let held = slots(&[(Some("a"), true, false); 4]);
        let ab = live(&["a", "b"]);
        assert_eq!(assign("b", &held, &ab), (vec![], vec![]));
        // …a's next poll gives back its surplus, highest first…
        assert_eq!(assign("a", &held, &ab), (vec![0, 1], vec![3, 2]));
        // …but not a partition with a batch in flight.
        let busy = slots(&[
            (Some("a"), true, true),
            (Some("a"), true, false),
            (Some("a"), true, true),
            (Some("a"), true, true),
        ]);
        assert_eq!(assign("a", &busy, &ab), (vec![0, 2, 3], vec![1]));
    }

    #[test]
    fn expired_leases_are_taken_over_and_live_ones_are_not() {
        let s = slots(&[
            (Some("a"), false, true),
            (Some("a"), false, true),
            (Some("b"), true, false),
            (Some("b"), true, false),
        ]);
        assert_eq!(assign("b", &s, &live(&["b"])), (vec![0, 1, 2, 3], vec![]));
        assert_eq!(assign("c", &s, &live(&["b", "c"])), (vec![0, 1], vec![]));
        // A member whose own lease lapsed keeps its partitions while nobody took them.
        assert_eq!(assign("a", &s, &live(&["a", "b"])), (vec![0, 1], vec![]));
    }

    #[test]
    fn shares_add_up_to_the_partitions_and_differ_by_at_most_one() {
        for n in 1..=20usize {
            let names: Vec<String> = (0..n).map(|i| format!("m{i:02}")).collect();
            let shares: Vec<usize> = names.iter().map(|m| share(m, &names, 16)).collect();
            assert_eq!(shares.iter().sum::<usize>(), 16, "{n} members: {shares:?}");
            let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} members: {shares:?}");
            if n <= 16 {
                assert!(*lo >= 1, "{n} members: nobody starves: {shares:?}");
            }
        }
        // 16 partitions, 5 members: 4, 3, 3, 3, 3 (not 4, 4, 4, 4, 0).
        let five = live(&["a", "b", "c", "d", "e"]);
        let shares: Vec<usize> = five.iter().map(|m| share(m, &five, 16)).collect();
        assert_eq!(shares, vec![4, 3, 3, 3, 3]);
    }

    #[test]
    fn five_members_polling_in_turn_end_with_every_partition_shared_fairly() {
        // Members poll in turn and acknowledge at once (nothing stays in flight): the
        // assignment settles with each partition held once and shares of 4, 3, 3, 3, 3.
        let names = live(&["a", "b", "c", "d", "e"]);
        let mut s = slots(&[(None, false, false); 16]);
        for _ in 0..3 {
            for m in &names {
                let (held, released) = assign(m, &s, &names);
                for slot in s.iter_mut() {
                    if released.contains(&slot.partition) {
                        slot.owner = None;
                    }
                    if held.contains(&slot.partition) {
                        slot.owner = Some(m.clone());
                        slot.live = true;
                    }
                }
            }
        }
        let counts: Vec<usize> = names
            .iter()
            .map(|m| s.iter().filter(|x| x.owner.as_ref() == Some(m)).count())
            .collect();
        assert_eq!(counts, vec![4, 3, 3, 3, 3]);
    }
}
