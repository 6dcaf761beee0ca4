//! Streamed batch requests (ADR 0007), shared by every route that takes a large body:
//! the body is read as it arrives, and an Idempotency-Key's request hash covers the body
//! too, so a retry is recognised only once its whole body has been read.

use actix_web::{web, HttpRequest};
use serde_json::Value;
use tokio::io::AsyncRead;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{streamed_body, streamed_command_context, tenant};
use super::AppState;
use crate::eventstore::{RecordedEvent, StoreError};
use crate::imports::{body_error, ImportError, StreamedKey};

/// A streamed body, hashed into its Idempotency-Key's request hash as it is read.
pub type Body = Box<dyn AsyncRead + Unpin + Send>;

/// What a streamed batch request did.
pub enum Streamed<T> {
    /// This request's batch.
    New(T),
    /// The same request (key and body) committed earlier: that batch's stream, its last
    /// event (which holds the counts) and the position of the append.
    Earlier {
        stream_id: Uuid,
        last: Box<RecordedEvent>,
        position: i64,
    },
}

/// Runs `run` over the request's streamed body with the request metadata and key, or
/// answers with the batch an earlier request under the same Idempotency-Key committed
/// (422 `idempotency_key_reused` when that was another request). `stream_type` is the
/// type of the batch streams `run` writes.
pub async fn streamed<T>(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    stream_type: &'static str,
    run: impl AsyncFnOnce(Body, &Value, Option<&StreamedKey>) -> Result<T, ImportError>,
) -> Result<Streamed<T>, ApiError> {
    let tenant = tenant(req)?;
    let body = streamed_body(payload, state.settings.import_limit);
    let (ctx, key) = streamed_command_context(req)?;
    let key = key.map(|(k, hash)| StreamedKey::new(k, hash));
    let metadata = ctx.metadata();
    if let Some(key) = &key {
        if state
            .store
            .find_idempotent(&tenant, &key.key)
            .await?
            .is_some()
        {
            // Seen before: only the same request (this body too) gets the first answer.
            tokio::io::copy(&mut key.reader(body), &mut tokio::io::sink())
                .await
                .map_err(|e| ApiError::from(body_error(&e)))?;
            return earlier(state, &tenant, key, stream_type).await;
        }
    }
    let body: Body = match &key {
        Some(key) => Box::new(key.reader(body)),
        None => Box::new(body),
    };
    match (run(body, &metadata, key.as_ref()).await, &key) {
        (Ok(done), _) => Ok(Streamed::New(done)),
        // A retry under the same key committed first: answer with its batch.
        (Err(ImportError::Store(StoreError::IdempotencyKeyTaken)), Some(key)) => {
            earlier(state, &tenant, key, stream_type).await
        }
        (Err(e), _) => Err(e.into()),
    }
}

/// The batch committed under `key` (whose body has been read into its hash by now).
async fn earlier<T>(
    state: &AppState,
    tenant: &str,
    key: &StreamedKey,
    stream_type: &'static str,
) -> Result<Streamed<T>, ApiError> {
    let stored = state
        .store
        .find_idempotent(tenant, &key.key)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("idempotency key vanished")))?;
    if key.record().request_hash != stored.request_hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let last = state
        .store
        .last_event(stream_type, stored.stream_id)
        .await?
        .filter(|e| e.tenant_id == tenant)
        // The key was used for a request of another kind.
        .ok_or(ApiError::IdempotencyKeyReused)?;
    Ok(Streamed::Earlier {
        stream_id: stored.stream_id,
        last: Box::new(last),
        position: stored.appended.position,
    })
}
