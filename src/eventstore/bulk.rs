//! Bulk appends (ADR 0007): many events, possibly to many streams, all or nothing.
//!
//! - [`EventStore::append_streams`] writes the events of several streams in one statement;
//!   a version conflict on any stream writes nothing.
//! - Staged appends are for requests too large to hold in memory (a million-row import):
//!   the request stages its events in `staged_events` while its body streams in, each in a
//!   short transaction of its own, then [`EventStore::commit_staged`] moves them into
//!   `events` in one statement. The writer lock (ADR 0005) is held for that move only, not
//!   for the upload, so a slow client never holds back the projectors; a request that
//!   fails half-way discards its staged events and nothing reaches the log.

use serde_json::value::RawValue;
use serde_json::Value;
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::{append_error, Appended, EventStore, IdempotencyRecord, NewEvent, StoreError};
use crate::telemetry::METRICS;

/// The events one stream gets in a bulk append.
#[derive(Debug, Clone)]
pub struct StreamEvents {
    pub stream_type: &'static str,
    pub stream_id: Uuid,
    /// The version the stream had when the caller decided; events get the next ones.
    pub expected_version: i64,
    pub events: Vec<NewEvent>,
}

/// With an idempotency key (`$9`, `$10`), the key is recorded in the same statement
/// against the first stream (`$11`, `$12`) and the last position of the whole append.
const APPEND_STREAMS_SQL: &str = "\
WITH ins AS (
    INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type,
                        schema_version, payload, metadata)
    SELECT $1, u.stream_type, u.stream_id, u.stream_version, u.event_type, u.schema_version,
           u.payload, $2
      FROM unnest($3::text[], $4::uuid[], $5::bigint[], $6::text[], $7::int[], $8::jsonb[])
               WITH ORDINALITY AS u(stream_type, stream_id, stream_version, event_type,
                                    schema_version, payload, ord)
     ORDER BY u.ord
    RETURNING stream_type, stream_id, stream_version, position),
idem AS (
    INSERT INTO idempotency_keys (tenant_id, key, request_hash, stream_id, stream_version, position)
    SELECT $1, $9, $10, $11,
           max(stream_version) FILTER (WHERE stream_type = $12 AND stream_id = $11),
           max(position)
      FROM ins
    HAVING $9::text IS NOT NULL)
SELECT stream_type, stream_id, stream_version, position FROM ins";

const STAGE_SQL: &str = "\
INSERT INTO staged_events (batch_id, seq, event_type, schema_version, payload)
SELECT $1, $2::int + u.ord::int, u.event_type, u.schema_version, u.payload
  FROM unnest($3::text[], $4::int[], $5::jsonb[]) WITH ORDINALITY
           AS u(event_type, schema_version, payload, ord)";

/// Staged events of a batch, then the tail, in order, as the next versions of one stream.
const COMMIT_STAGED_SQL: &str = "\
WITH ins AS (
    INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type,
                        schema_version, payload, metadata)
    SELECT $1, $2, $3, $4::bigint + row_number() OVER (ORDER BY e.seq), e.event_type,
           e.schema_version, e.payload, $6
      FROM (SELECT seq, event_type, schema_version, payload
              FROM staged_events WHERE batch_id = $5
            UNION ALL
            SELECT 2147483647::bigint + t.ord, t.event_type, t.schema_version, t.payload
              FROM unnest($7::text[], $8::int[], $9::jsonb[]) WITH ORDINALITY
                       AS t(event_type, schema_version, payload, ord)) e
     ORDER BY e.seq
    RETURNING position, stream_version),
summary AS (SELECT max(position) AS position, max(stream_version) AS version,
                   count(*) AS n FROM ins),
idem AS (
    INSERT INTO idempotency_keys (tenant_id, key, request_hash, stream_id, stream_version, position)
    SELECT $1, $10, $11, $3, s.version, s.position FROM summary s WHERE $10::text IS NOT NULL)
SELECT position, version, n FROM summary";

const DISCARD_STAGED_SQL: &str = "DELETE FROM staged_events WHERE batch_id = $1";

/// Staged events older than this many seconds belong to requests that died.
const PURGE_STAGED_SQL: &str =
    "DELETE FROM staged_events WHERE created_at < now() - make_interval(secs => $1)";

/// Column arrays of a list of events.
fn columns<'a>(events: &[&'a NewEvent]) -> (Vec<&'a str>, Vec<i32>, Vec<Json<&'a RawValue>>) {
    (
        events.iter().map(|e| e.event_type.as_str()).collect(),
        events.iter().map(|e| e.schema_version).collect(),
        events.iter().map(|e| Json(&*e.payload)).collect(),
    )
}

impl EventStore {
    /// Appends to several streams at once: every event or none. Returns each stream's
    /// new version and last position, in the order given. A conflict on any stream (it
    /// moved past its expected version, or a new stream exists) writes nothing. With an
    /// idempotency key, the key is recorded against the first stream (its new version,
    /// the append's last position) in the same statement; a key already taken writes
    /// nothing ([`StoreError::IdempotencyKeyTaken`]).
    #[tracing::instrument(name = "store.append_streams", level = "debug", skip_all, fields(streams = streams.len()))]
    pub async fn append_streams(
        &self,
        tenant_id: &str,
        metadata: &Value,
        streams: &[StreamEvents],
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<Vec<Appended>, StoreError> {
        let first = streams
            .first()
            .map(|s| (s.stream_type, s.stream_id))
            .unwrap_or(("", Uuid::nil()));
        let mut types = Vec::new();
        let mut ids = Vec::new();
        let mut versions = Vec::new();
        let mut all = Vec::new();
        for s in streams {
            for (i, e) in s.events.iter().enumerate() {
                types.push(s.stream_type);
                ids.push(s.stream_id);
                versions.push(s.expected_version + 1 + i as i64);
                all.push(e);
            }
        }
        let (event_types, schema_versions, payloads) = columns(&all);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(APPEND_STREAMS_SQL).await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &tenant_id,
                    metadata,
                    &types,
                    &ids,
                    &versions,
                    &event_types,
                    &schema_versions,
                    &payloads,
                    &idempotency.map(|i| i.key.as_str()),
                    &idempotency.map(|i| i.request_hash.as_slice()),
                    &first.1,
                    &first.0,
                ],
            )
            .await
            .map_err(append_error)?;
        // Each stream's new version is known; its position is that of its last event.
        let mut last: std::collections::HashMap<(String, Uuid), i64> = Default::default();
        for r in &rows {
            let position: i64 = r.try_get(3)?;
            let p = last
                .entry((r.try_get(0)?, r.try_get(1)?))
                .or_insert(position);
            *p = (*p).max(position);
        }
        let result = streams
            .iter()
            .map(|s| Appended {
                version: s.expected_version + s.events.len() as i64,
                position: last
                    .get(&(s.stream_type.to_owned(), s.stream_id))
                    .copied()
                    .unwrap_or(0),
            })
            .collect();
        for s in streams {
            METRICS
                .events_appended
                .with_label_values(&[s.stream_type])
                .inc_by(s.events.len() as u64);
            self.signal.appended(s.stream_type);
        }
        Ok(result)
    }

    /// Stages events of batch `batch_id` as numbers `first_seq + 1 …`; nothing reaches
    /// the log until [`EventStore::commit_staged`].
    pub async fn stage(
        &self,
        batch_id: Uuid,
        first_seq: i32,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        let all: Vec<&NewEvent> = events.iter().collect();
        let (event_types, schema_versions, payloads) = columns(&all);
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(STAGE_SQL).await?;
        client
            .execute(
                &stmt,
                &[
                    &batch_id,
                    &first_seq,
                    &event_types,
                    &schema_versions,
                    &payloads,
                ],
            )
            .await?;
        Ok(())
    }

    /// Moves the staged events of `batch_id`, then `tail`, into the stream as its next
    /// versions, in one statement (with the idempotency key, if any). Fails with [`StoreError::Conflict`] (writing nothing)
    /// when the stream moved past `expected_version`. Returns the stream's new version and
    /// position and how many events were appended.
    pub async fn commit_staged(
        &self,
        tenant_id: &str,
        stream: (&'static str, Uuid, i64),
        batch_id: Uuid,
        tail: &[NewEvent],
        metadata: &Value,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<(Appended, i64), StoreError> {
        let (stream_type, stream_id, expected_version) = stream;
        let all: Vec<&NewEvent> = tail.iter().collect();
        let (event_types, schema_versions, payloads) = columns(&all);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                COMMIT_STAGED_SQL,
                &[
                    &tenant_id,
                    &stream_type,
                    &stream_id,
                    &expected_version,
                    &batch_id,
                    metadata,
                    &event_types,
                    &schema_versions,
                    &payloads,
                    &idempotency.map(|i| i.key.as_str()),
                    &idempotency.map(|i| i.request_hash.as_slice()),
                ],
            )
            .await
            .map_err(append_error)?;
        tx.execute(DISCARD_STAGED_SQL, &[&batch_id]).await?;
        tx.commit().await?;
        let count: i64 = row.try_get(2)?;
        let appended = Appended {
            position: row.try_get::<_, Option<i64>>(0)?.unwrap_or(0),
            version: row
                .try_get::<_, Option<i64>>(1)?
                .unwrap_or(expected_version),
        };
        METRICS
            .events_appended
            .with_label_values(&[stream_type])
            .inc_by(count as u64);
        self.signal.appended(stream_type);
        Ok((appended, count))
    }

    /// Drops the staged events of a batch that will not be committed.
    pub async fn discard_staged(&self, batch_id: Uuid) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.execute(DISCARD_STAGED_SQL, &[&batch_id]).await?;
        Ok(())
    }

    /// Removes staged events older than `age` (requests that died before committing).
    pub async fn purge_staged(&self, age: std::time::Duration) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(PURGE_STAGED_SQL, &[&age.as_secs_f64()])
            .await?)
    }
}
