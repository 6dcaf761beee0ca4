//! Writes of `collection_items`: items go straight to the table, not through the event
//! log (ADR 0023).
//!
//! Every write runs in a transaction on the write pool that first becomes the query role
//! bound to the request's tenant (`SET LOCAL ROLE` through `set_config`), so row-level
//! security (`sql/V17`) holds for writes as for reads. A batch is one transaction: its
//! chunks are upserted set-wise (`unnest` of two arrays, one statement per chunk) while
//! the next chunk is read from the body, and nothing is visible before the commit; the
//! first bad line rolls everything back. `expires_at` is set from the collection's TTL at
//! each write (`now()` + TTL: a write refreshes it, like Redis `SET … EX`).
//!
//! The purge (the elected `collection_items_purge` job and the admin endpoint) deletes
//! expired items as the owner, across tenants, in batches of [`PURGE_BATCH`] rows, each
//! its own short statement.
//!
//! A write under an `Idempotency-Key` records what it did ([`Outcome`]) in
//! `collection_write_keys` in its own transaction (`sql/V25`): a retry finds the record
//! and is answered from it; of two concurrent writes under one key, the second fails on
//! the key's primary key and writes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::AsyncRead;
use tokio_postgres::types::Json;

use super::aggregate::Declaration;
use super::items::{Batch, Chunk, Item};
use super::metrics::COLLS;
use crate::eventstore::{IdempotencyRecord, StoreError};
use crate::imports::{ImportError, StreamedKey};

/// The transaction becomes the query role bound to the tenant. A batch whose client
/// stalls must not keep its transaction (and row locks) for long: 60 s idle at most.
const BIND_SQL: &str = "SELECT set_config('role', 'cloudlens_query', true),
        set_config('app.tenant', $1, true),
        set_config('idle_in_transaction_session_timeout', '60s', true)";

/// The upsert of both writes. A write replaces the data and starts the TTL again; it
/// keeps `created_at` unless the stored item had expired (then it is a new item).
macro_rules! upsert {
    ($rows:literal) => {
        concat!(
            "INSERT INTO collection_items AS c
     (tenant_id, collection, key, data, created_at, updated_at, expires_at)
",
            $rows,
            "
ON CONFLICT (tenant_id, collection, key) DO UPDATE
SET data = EXCLUDED.data, updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at,
    created_at = CASE WHEN c.expires_at <= now() THEN EXCLUDED.created_at ELSE c.created_at END"
        )
    };
}

/// One item, answered with what was stored.
const PUT_SQL: &str = concat!(
    upsert!(
        "VALUES ($1, $2, $3, $4::text::jsonb, now(), now(), now() + $5::int * interval '1 second')"
    ),
    "
RETURNING key, data, created_at, updated_at, expires_at"
);

/// A chunk of a batch: keys and data as two arrays.
const CHUNK_SQL: &str = upsert!(
    "SELECT $1, $2, t.key, t.data::jsonb, now(), now(), now() + $5::int * interval '1 second'
  FROM unnest($3::text[], $4::text[]) AS t(key, data)"
);

/// Deletes the item; says whether it was still live (an expired one is gone already).
const DELETE_SQL: &str = "DELETE FROM collection_items
 WHERE tenant_id = $1 AND collection = $2 AND key = $3
 RETURNING expires_at IS NULL OR expires_at > now()";

/// The oldest expired items, at most `$1` of them (rows another transaction holds are
/// left for the next run).
const PURGE_SQL: &str = "DELETE FROM collection_items
 WHERE ctid = ANY (ARRAY(SELECT ctid FROM collection_items
                          WHERE expires_at <= now()
                          ORDER BY expires_at LIMIT $1
                          FOR UPDATE SKIP LOCKED))
   AND expires_at <= now()";

const FIND_KEY_SQL: &str = "SELECT request_hash, result FROM collection_write_keys
 WHERE tenant_id = $1 AND key = $2";
const RECORD_KEY_SQL: &str = "INSERT INTO collection_write_keys
 (tenant_id, key, request_hash, collection, result) VALUES ($1, $2, $3, $4, $5)";
/// The oldest write keys past the retention (`$1` seconds), at most `$2` of them.
const PURGE_KEYS_SQL: &str = "DELETE FROM collection_write_keys
 WHERE ctid = ANY (ARRAY(SELECT ctid FROM collection_write_keys
                          WHERE created_at < now() - $1 * interval '1 second'
                          ORDER BY created_at LIMIT $2))";

/// Rows per purge statement.
pub const PURGE_BATCH: i64 = 10_000;
/// Statements per purge run (the rest waits for the next run).
pub const PURGE_MAX_BATCHES: usize = 100;

/// An item as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stored {
    pub key: String,
    /// As PostgreSQL stores it (keys in `jsonb` order), sent on as it is.
    pub data: Box<serde_json::value::RawValue>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What a write under an Idempotency-Key did, as its key keeps it (written with the item
/// borrowed, read back owned).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome<S = Stored> {
    /// A batch: the number of items (lines) it carried.
    Batch(i64),
    /// One item, as it was stored.
    Item(S),
}

/// An earlier write under a key: the hash of its request and what it did.
pub struct Earlier {
    pub request_hash: Vec<u8>,
    pub outcome: Outcome,
}

/// The write recorded under `key` for `tenant`, if any.
pub async fn find_key(pool: &Pool, tenant: &str, key: &str) -> Result<Option<Earlier>, StoreError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(FIND_KEY_SQL).await?;
    client
        .query_opt(&stmt, &[&tenant, &key])
        .await?
        .map(|r| {
            Ok(Earlier {
                request_hash: r.try_get(0)?,
                outcome: r.try_get::<_, Json<Outcome>>(1)?.0,
            })
        })
        .transpose()
}

/// Records `outcome` under `key` in the write's transaction; a key taken meanwhile by a
/// concurrent write is `IdempotencyKeyTaken` (the caller rolls back).
async fn record_key(
    tx: &Transaction<'_>,
    tenant: &str,
    collection: &str,
    key: &IdempotencyRecord,
    outcome: Outcome<&Stored>,
) -> Result<(), StoreError> {
    let stmt = tx.prepare_cached(RECORD_KEY_SQL).await?;
    tx.execute(
        &stmt,
        &[
            &tenant,
            &key.key,
            &key.request_hash,
            &collection,
            &Json(&outcome),
        ],
    )
    .await
    .map_err(|e| match e.as_db_error().and_then(|d| d.constraint()) {
        Some("collection_write_keys_pkey") => StoreError::IdempotencyKeyTaken,
        _ => StoreError::from(e),
    })?;
    Ok(())
}

/// Removes write keys older than `retention`, in batches; how many.
pub async fn purge_keys(pool: &Pool, retention: Duration) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(PURGE_KEYS_SQL).await?;
    let mut purged = 0;
    loop {
        let n = client
            .execute(&stmt, &[&retention.as_secs_f64(), &PURGE_BATCH])
            .await?;
        purged += n;
        if n < PURGE_BATCH.unsigned_abs() {
            return Ok(purged);
        }
    }
}

impl Stored {
    /// Whether the write created the item (it did not exist, or had expired).
    pub fn created(&self) -> bool {
        self.created_at == self.updated_at
    }
}

async fn bound<'a>(
    client: &'a mut deadpool_postgres::Object,
    tenant: &str,
) -> Result<Transaction<'a>, StoreError> {
    let tx = client.transaction().await?;
    let bind = tx.prepare_cached(BIND_SQL).await?;
    tx.execute(&bind, &[&tenant]).await?;
    Ok(tx)
}

/// Writes one item of `collection`.
#[tracing::instrument(name = "collections.put", level = "debug", skip_all, fields(collection = %collection.name))]
pub async fn put(
    pool: &Pool,
    tenant: &str,
    collection: &Declaration,
    item: &Item,
    key: Option<&IdempotencyRecord>,
) -> Result<Stored, StoreError> {
    let mut client = pool.get().await?;
    let tx = bound(&mut client, tenant).await?;
    let stmt = tx.prepare_cached(PUT_SQL).await?;
    let row = tx
        .query_one(
            &stmt,
            &[
                &tenant,
                &collection.name,
                &item.key,
                &item.data,
                &collection.ttl_seconds,
            ],
        )
        .await?;
    let stored = Stored {
        key: row.try_get(0)?,
        data: row.try_get::<_, Json<Box<RawValue>>>(1)?.0,
        created_at: row.try_get(2)?,
        updated_at: row.try_get(3)?,
        expires_at: row.try_get(4)?,
    };
    if let Some(key) = key {
        record_key(&tx, tenant, &collection.name, key, Outcome::Item(&stored)).await?;
    }
    tx.commit().await?;
    Ok(stored)
}

async fn write_chunk(
    tx: &Transaction<'_>,
    tenant: &str,
    collection: &Declaration,
    chunk: Chunk,
) -> Result<(), ImportError> {
    let stmt = tx
        .prepare_cached(CHUNK_SQL)
        .await
        .map_err(StoreError::from)?;
    let (keys, data) = chunk.columns();
    tx.execute(
        &stmt,
        &[
            &tenant,
            &collection.name,
            &keys,
            &data,
            &collection.ttl_seconds,
        ],
    )
    .await
    .map_err(StoreError::from)?;
    Ok(())
}

/// Writes an NDJSON batch into `collection`, all or nothing; the number of items (lines)
/// it carried.
#[tracing::instrument(name = "collections.write_batch", level = "debug", skip_all, fields(collection = %collection.name))]
pub async fn write_batch<R: AsyncRead + Unpin>(
    pool: &Pool,
    tenant: &str,
    collection: &Declaration,
    body: R,
    key: Option<&StreamedKey>,
) -> Result<i64, ImportError> {
    let mut client = pool.get().await.map_err(StoreError::from)?;
    let tx = bound(&mut client, tenant).await?;
    let mut batch = Batch::new(body);
    let mut pending: Option<Chunk> = None;
    loop {
        // The database writes one chunk while the next one is read and checked.
        let writing = pending.take();
        let write = async {
            match writing {
                Some(chunk) => write_chunk(&tx, tenant, collection, chunk).await,
                None => Ok(()),
            }
        };
        let (next, ()) = tokio::try_join!(batch.next_chunk(), write)?;
        match next {
            Some(chunk) => pending = Some(chunk),
            None => break,
        }
    }
    if let Some(key) = key {
        // The body has been read whole: the key's request hash is complete.
        let outcome = Outcome::Batch(batch.items);
        record_key(&tx, tenant, &collection.name, &key.record(), outcome).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(batch.items)
}

/// Deletes an item: `true` if it was live, `false` if there was none (or it had expired).
#[tracing::instrument(name = "collections.delete", level = "debug", skip_all, fields(collection = %collection))]
pub async fn delete(
    pool: &Pool,
    tenant: &str,
    collection: &str,
    key: &str,
) -> Result<bool, StoreError> {
    let mut client = pool.get().await?;
    let tx = bound(&mut client, tenant).await?;
    let stmt = tx.prepare_cached(DELETE_SQL).await?;
    let live = tx
        .query_opt(&stmt, &[&tenant, &collection, &key])
        .await?
        .map(|r| r.try_get::<_, bool>(0))
        .transpose()?
        .unwrap_or(false);
    tx.commit().await?;
    Ok(live)
}

/// Deletes expired items of every tenant, batch after batch until a batch comes back
/// short or [`PURGE_MAX_BATCHES`] ran; the number deleted.
#[tracing::instrument(name = "collections.purge", level = "debug", skip_all)]
pub async fn purge(pool: &Pool) -> Result<i64, StoreError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(PURGE_SQL).await?;
    let mut total = 0_i64;
    for _ in 0..PURGE_MAX_BATCHES {
        let n = client.execute(&stmt, &[&PURGE_BATCH]).await?;
        COLLS.items_purged.inc_by(n);
        total += i64::try_from(n).unwrap_or(i64::MAX);
        if n < PURGE_BATCH.unsigned_abs() {
            break;
        }
    }
    COLLS
        .purge_last_run
        .set(Utc::now().timestamp_millis() as f64 / 1000.0);
    Ok(total)
}
