//! Group commit for the common command: one event, no idempotency key.
//!
//! Commands that arrive while earlier ones are being written are appended together in
//! one multi-row statement: one transaction, one WAL flush, one round trip for all of
//! them. Each command is still one row, so each is atomic. If the combined statement
//! fails (a version conflict in one of them), nothing of it was written and every
//! command is retried alone, so each gets its own answer. Nothing waits to fill a
//! batch: a lone command goes out at once; batches form only while others are in flight.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::types::Json;
use uuid::Uuid;

use super::{Appended, StoreError, APPEND_ONE_SQL};

/// Most commands in one statement, and most statements in flight at once.
const MAX_BATCH: usize = 64;
const IN_FLIGHT: usize = 8;

/// `APPEND_ONE_SQL` for many streams: one row per command.
const APPEND_MANY_SQL: &str = "\
INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type,
                    schema_version, payload, metadata)
SELECT u.tenant_id, u.stream_type, u.stream_id, u.stream_version, u.event_type,
       u.schema_version, u.payload, u.metadata
  FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], $6::int[],
              $7::jsonb[], $8::jsonb[])
           AS u(tenant_id, stream_type, stream_id, stream_version, event_type, schema_version,
                payload, metadata)
RETURNING stream_type, stream_id, stream_version, position";

/// One command's single event, owned so it can wait in the queue.
pub struct OneEvent {
    pub tenant_id: String,
    pub stream_type: String,
    pub stream_id: Uuid,
    /// The version this event gets (expected + 1).
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Box<RawValue>,
    pub metadata: Value,
}

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<(OneEvent, Reply)>,
}

impl Batcher {
    /// Starts the batching task on the current runtime.
    pub fn start(pool: Pool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx));
        Self { tx }
    }

    pub async fn append(&self, event: OneEvent) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((event, reply))
            .map_err(|_| StoreError::Unavailable("the append queue is closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the append was abandoned".into()))?
    }
}

async fn run(pool: Pool, mut rx: mpsc::UnboundedReceiver<(OneEvent, Reply)>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: commands queue up meanwhile and form the batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            write(&pool, batch).await;
            drop(slot);
        });
    }
}

async fn write(pool: &Pool, batch: Vec<(OneEvent, Reply)>) {
    if batch.len() > 1 {
        match write_many(pool, &batch).await {
            Ok(mut appended) => {
                for (e, reply) in batch {
                    let result = appended
                        .remove(&(e.stream_type, e.stream_id, e.version))
                        .ok_or_else(|| StoreError::Corrupt {
                            position: 0,
                            reason: "row missing from RETURNING".into(),
                        });
                    let _ = reply.send(result);
                }
                return;
            }
            // Nothing was written: answer each command on its own below.
            Err(e) => {
                tracing::debug!(error = %e, size = batch.len(), "combined append failed; retrying one by one")
            }
        }
    }
    for (e, reply) in batch {
        let _ = reply.send(write_one(pool, &e).await);
    }
}

type Written = HashMap<(String, Uuid, i64), Appended>;

async fn write_many(pool: &Pool, batch: &[(OneEvent, Reply)]) -> Result<Written, StoreError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(APPEND_MANY_SQL).await?;
    let col = |f: fn(&OneEvent) -> &str| batch.iter().map(|(e, _)| f(e)).collect::<Vec<&str>>();
    let ids: Vec<Uuid> = batch.iter().map(|(e, _)| e.stream_id).collect();
    let versions: Vec<i64> = batch.iter().map(|(e, _)| e.version).collect();
    let schema_versions: Vec<i32> = batch.iter().map(|(e, _)| e.schema_version).collect();
    let payloads: Vec<Json<&RawValue>> = batch.iter().map(|(e, _)| Json(&*e.payload)).collect();
    let metadata: Vec<&Value> = batch.iter().map(|(e, _)| &e.metadata).collect();
    let rows = client
        .query(
            &stmt,
            &[
                &col(|e| &e.tenant_id),
                &col(|e| &e.stream_type),
                &ids,
                &versions,
                &col(|e| &e.event_type),
                &schema_versions,
                &payloads,
                &metadata,
            ],
        )
        .await
        .map_err(super::append_error)?;
    rows.iter()
        .map(|r| {
            let key = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            Ok((
                key,
                Appended {
                    version: r.try_get(2)?,
                    position: r.try_get(3)?,
                },
            ))
        })
        .collect()
}

async fn write_one(pool: &Pool, e: &OneEvent) -> Result<Appended, StoreError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(APPEND_ONE_SQL).await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &e.tenant_id,
                &e.stream_type,
                &e.stream_id,
                &e.version,
                &e.event_type,
                &e.schema_version,
                &Json(&*e.payload),
                &e.metadata,
            ],
        )
        .await
        .map_err(super::append_error)?;
    Ok(Appended {
        position: row.try_get(0)?,
        version: row.try_get(1)?,
    })
}
