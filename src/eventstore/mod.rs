//! The event store: one append-only `events` table for every aggregate.
//!
//! - [`EventStore::append`] writes all events of one command in a single statement, with
//!   optimistic concurrency per stream (unique `(stream_type, stream_id, stream_version)`)
//!   and, when the command carries an `Idempotency-Key`, the stored response in the same
//!   statement;
//! - [`EventStore::load_stream`] reads one stream for an aggregate;
//! - [`global`] is the gap-free read of the whole log used by projectors (ADR 0001);
//! - [`codec`] turns typed events into rows and back, upcasting old schema versions;
//! - [`signal`] wakes projectors when events are appended, here and in other processes.

pub mod archive;
mod batch;
mod bulk;
pub mod codec;
pub mod global;
pub mod signal;
mod xid8;

pub use bulk::StreamEvents;
pub use xid8::Xid8;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio_postgres::types::Json;
use uuid::Uuid;

use crate::telemetry::METRICS;

/// An event as stored, with its place in the stream and in the global log.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub position: i64,
    /// Ordering epoch (ADR 0005): first key of the global order.
    pub epoch: i32,
    /// Writer's top-level transaction id, the second key of the global order.
    pub transaction_id: Xid8,
    pub tenant_id: String,
    pub stream_type: String,
    pub stream_id: Uuid,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    /// Kept as raw JSON: decoding straight into the typed event is what makes replays fast.
    pub payload: Box<RawValue>,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// One event to append; version numbers are assigned by [`EventStore::append`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub schema_version: i32,
    /// The event's data as JSON text (written as is: no JSON tree is built per event).
    pub payload: Box<RawValue>,
}

impl NewEvent {
    /// An event from a JSON value (tests, tools); contexts use `codec::encode`.
    pub fn from_value(
        event_type: impl Into<String>,
        schema_version: i32,
        payload: &Value,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event_type: event_type.into(),
            schema_version,
            payload: serde_json::value::to_raw_value(payload)?,
        })
    }
}

/// An idempotency key and the hash of the request it stands for, recorded with the
/// events the request appended.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub key: String,
    pub request_hash: Vec<u8>,
}

/// What an earlier append under an idempotency key produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAppend {
    pub request_hash: Vec<u8>,
    pub stream_id: Uuid,
    pub appended: Appended,
}

pub struct AppendRequest<'a> {
    pub tenant_id: &'a str,
    pub stream_type: &'a str,
    pub stream_id: Uuid,
    /// Version the stream had when the command was decided; events get the next ones.
    pub expected_version: i64,
    pub events: Vec<NewEvent>,
    pub metadata: Value,
    pub idempotency: Option<&'a IdempotencyRecord>,
}

/// Result of a successful append: the stream's new version and the global position of
/// the last event written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub version: i64,
    pub position: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another command appended to the stream first; nothing was written.
    #[error("stream version conflict")]
    Conflict,
    /// A concurrent request with the same idempotency key won; nothing was written.
    #[error("idempotency key already used")]
    IdempotencyKeyTaken,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error")]
    Database(#[source] tokio_postgres::Error),
    /// PostgreSQL refused a value of the events (e.g. a NUL character in text).
    #[error("{0}")]
    BadValue(String),
    #[error("corrupt event {position}: {reason}")]
    Corrupt { position: i64, reason: String },
}

impl From<crate::db::QueryError> for StoreError {
    fn from(e: crate::db::QueryError) -> Self {
        match e {
            crate::db::QueryError::Unavailable(cause) => StoreError::Unavailable(cause),
            crate::db::QueryError::Failed(e) => StoreError::Database(e),
            crate::db::QueryError::BadValue(m) => StoreError::BadValue(m),
            crate::db::QueryError::Timeout => {
                StoreError::Unavailable("the statement was cancelled (statement_timeout)".into())
            }
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        crate::db::QueryError::from(e).into()
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        crate::db::QueryError::from(e).into()
    }
}

/// Appends all events of one command and its idempotency record atomically (one
/// statement, one round trip). The writer lock of the global order is taken by the
/// `events` statement trigger (ADR 0005); this must be the transaction's first write.
const APPEND_SQL: &str = "\
WITH ins AS (
    INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type,
                        schema_version, payload, metadata)
    SELECT $1, $2, $3, $4::bigint + u.ord, u.event_type, u.schema_version, u.payload, $8
      FROM unnest($5::text[], $6::int[], $7::jsonb[]) WITH ORDINALITY
               AS u(event_type, schema_version, payload, ord)
     ORDER BY u.ord
    RETURNING position, stream_version),
summary AS (SELECT max(position) AS position, max(stream_version) AS version FROM ins),
idem AS (
    INSERT INTO idempotency_keys (tenant_id, key, request_hash, stream_id, stream_version, position)
    SELECT $1, $9, $10, $3, s.version, s.position
      FROM summary s
     WHERE $9::text IS NOT NULL)
SELECT position, version FROM summary";

/// `APPEND_SQL` for one event without an idempotency key.
const APPEND_ONE_SQL: &str = "\
INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type,
                    schema_version, payload, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING position, stream_version";

/// A stream's events, archived ones (ADR 0020) included, unordered.
macro_rules! stream_events {
    () => {
        concat!(
            "SELECT ",
            global::event_columns!(),
            " FROM events WHERE stream_type = $1 AND stream_id = $2 UNION ALL SELECT ",
            global::event_columns!(),
            " FROM events_archive WHERE stream_type = $1 AND stream_id = $2"
        )
    };
}

const LOAD_STREAM_SQL: &str = concat!(stream_events!(), " ORDER BY stream_version");

const LAST_EVENT_SQL: &str = concat!(stream_events!(), " ORDER BY stream_version DESC LIMIT 1");

const FIND_IDEMPOTENT_SQL: &str = "\
SELECT request_hash, stream_id, stream_version, position FROM idempotency_keys
 WHERE tenant_id = $1 AND key = $2";

/// At most `$2` expired records per statement, so a long backlog is removed in short
/// transactions.
const PURGE_IDEMPOTENT_SQL: &str = "\
DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM idempotency_keys
     WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))";
const PURGE_BATCH: i64 = 10_000;

const CHECK_EPOCH_SQL: &str = "SELECT cloudlens_check_epoch()";

#[derive(Clone)]
pub struct EventStore {
    pool: Pool,
    signal: signal::EventSignal,
    batcher: batch::Batcher,
}

impl EventStore {
    /// Must be called inside a tokio runtime (it starts the group-commit task).
    pub fn new(pool: Pool, signal: signal::EventSignal) -> Self {
        let batcher = batch::Batcher::start(pool.clone());
        Self {
            pool,
            signal,
            batcher,
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The append wake-ups (the event feed's long polls wait on them).
    pub fn signal(&self) -> &signal::EventSignal {
        &self.signal
    }

    /// Appends the events of one command atomically. Fails with [`StoreError::Conflict`]
    /// when the stream moved past `expected_version`, writing nothing.
    #[tracing::instrument(name = "store.append", level = "debug", skip_all, fields(stream_type = req.stream_type, stream_id = %req.stream_id, events = req.events.len()))]
    pub async fn append(&self, req: AppendRequest<'_>) -> Result<Appended, StoreError> {
        let started = Instant::now();
        let appended = match (req.events.as_slice(), req.idempotency) {
            // The common command: one event, no idempotency key. Group-committed with
            // the ones arriving at the same time (`batch`).
            ([event], None) => {
                self.batcher
                    .append(batch::OneEvent {
                        tenant_id: req.tenant_id.to_owned(),
                        stream_type: req.stream_type.to_owned(),
                        stream_id: req.stream_id,
                        version: req.expected_version + 1,
                        event_type: event.event_type.clone(),
                        schema_version: event.schema_version,
                        payload: event.payload.clone(),
                        metadata: req.metadata.clone(),
                    })
                    .await?
            }
            (events, idempotency) => {
                let client = self.pool.get().await?;
                let stmt = client.prepare_cached(APPEND_SQL).await?;
                let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
                let versions: Vec<i32> = events.iter().map(|e| e.schema_version).collect();
                let payloads: Vec<Json<&RawValue>> =
                    events.iter().map(|e| Json(&*e.payload)).collect();
                let (key, hash) = match idempotency {
                    Some(r) => (Some(r.key.as_str()), Some(r.request_hash.as_slice())),
                    None => (None, None),
                };
                let row = client
                    .query_one(
                        &stmt,
                        &[
                            &req.tenant_id,
                            &req.stream_type,
                            &req.stream_id,
                            &req.expected_version,
                            &types,
                            &versions,
                            &payloads,
                            &req.metadata,
                            &key,
                            &hash,
                        ],
                    )
                    .await
                    .map_err(append_error)?;
                Appended {
                    position: row.try_get(0)?,
                    version: row.try_get(1)?,
                }
            }
        };
        METRICS
            .append_duration
            .observe(started.elapsed().as_secs_f64());
        METRICS
            .events_appended
            .with_label_values(&[req.stream_type])
            .inc_by(req.events.len() as u64);
        self.signal.appended(req.stream_type);
        Ok(appended)
    }

    /// All events of one stream, in version order.
    #[tracing::instrument(name = "store.load_stream", level = "debug", skip(self))]
    pub async fn load_stream(
        &self,
        stream_type: &str,
        stream_id: Uuid,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(LOAD_STREAM_SQL).await?;
        let rows = client.query(&stmt, &[&stream_type, &stream_id]).await?;
        rows.iter().map(recorded_event).collect()
    }

    /// The last event of a stream (its version and position tell where the stream is).
    pub async fn last_event(
        &self,
        stream_type: &str,
        stream_id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(LAST_EVENT_SQL).await?;
        let row = client.query_opt(&stmt, &[&stream_type, &stream_id]).await?;
        row.as_ref().map(recorded_event).transpose()
    }

    /// What an earlier append under this idempotency key produced, if any.
    pub async fn find_idempotent(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<StoredAppend>, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(FIND_IDEMPOTENT_SQL).await?;
        let row = client.query_opt(&stmt, &[&tenant_id, &key]).await?;
        row.map(|r| {
            Ok(StoredAppend {
                request_hash: r.try_get(0)?,
                stream_id: r.try_get(1)?,
                appended: Appended {
                    version: r.try_get(2)?,
                    position: r.try_get(3)?,
                },
            })
        })
        .transpose()
    }

    /// Removes idempotency records older than `retention`, in batches; returns how many.
    pub async fn purge_idempotency(&self, retention: Duration) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let mut purged = 0;
        loop {
            let n = client
                .execute(
                    PURGE_IDEMPOTENT_SQL,
                    &[&retention.as_secs_f64(), &PURGE_BATCH],
                )
                .await?;
            purged += n;
            if n < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }
}

/// A failed append statement: which unique key it hit decides the error.
fn append_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error().and_then(|d| d.constraint()) {
        Some("events_stream_version_unique") => StoreError::Conflict,
        Some("idempotency_keys_pkey") => StoreError::IdempotencyKeyTaken,
        _ => e.into(),
    }
}

/// Opens a new ordering epoch when this cluster's transaction ids lie below the stored
/// ones (the database was restored or moved, ADR 0005). Run at start, before projectors.
pub async fn check_epoch(client: &tokio_postgres::Client) -> Result<i32, StoreError> {
    Ok(client.query_one(CHECK_EPOCH_SQL, &[]).await?.try_get(0)?)
}

/// Maps a row selected with `global::event_columns!()`.
pub(crate) fn recorded_event(row: &tokio_postgres::Row) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        position: row.try_get(0)?,
        epoch: row.try_get(1)?,
        transaction_id: row.try_get(2)?,
        tenant_id: row.try_get(3)?,
        stream_type: row.try_get(4)?,
        stream_id: row.try_get(5)?,
        stream_version: row.try_get(6)?,
        event_type: row.try_get(7)?,
        schema_version: row.try_get(8)?,
        payload: row.try_get::<_, Json<Box<RawValue>>>(9)?.0,
        metadata: row.try_get(10)?,
        recorded_at: row.try_get(11)?,
    })
}
