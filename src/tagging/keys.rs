//! The data keys of subjects with sensitive attributes (`subject_keys`, ADR 0018), kept
//! outside the log and read as the owner only. Imports make them, the projector opens
//! sealed values with them, a forget destroys them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::crypto::{CryptoError, DataKey, Vault};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

const LIVE_KEYS_SQL: &str = "\
SELECT subject_id, key_id, wrapped FROM subject_keys
 WHERE tenant_id = $1 AND kind = $2 AND subject_id = ANY($3) AND destroyed_at IS NULL";
/// A concurrent import that made a subject's key first wins (one live key a subject).
const NEW_KEYS_SQL: &str = "\
INSERT INTO subject_keys (key_id, tenant_id, kind, subject_id, wrapped)
SELECT k, $1, $2, s, w FROM unnest($3::uuid[], $4::text[], $5::bytea[]) AS t(k, s, w)
    ON CONFLICT (tenant_id, kind, subject_id) WHERE destroyed_at IS NULL DO NOTHING";
const DATA_KEYS_SQL: &str = "SELECT key_id, wrapped FROM subject_keys WHERE key_id = ANY($1)";
/// A forget covers every key the subject had when it was recorded (`$4`): also one that a
/// concurrent import made after the forget looked, so nothing sealed before it survives.
const DESTROY_SQL: &str = "\
UPDATE subject_keys SET wrapped = NULL, destroyed_at = $4
 WHERE tenant_id = $1 AND kind = $2 AND subject_id = $3 AND created_at <= $4
   AND destroyed_at IS NULL";
/// `DESTROY_SQL` at the time the forget at position `$4` was recorded.
const DESTROY_AT_SQL: &str = "\
UPDATE subject_keys k SET wrapped = NULL, destroyed_at = e.recorded_at
  FROM events e
 WHERE e.position = $4 AND k.tenant_id = $1 AND k.kind = $2 AND k.subject_id = $3
   AND k.created_at <= e.recorded_at AND k.destroyed_at IS NULL";
const SUBJECT_KEYS_SQL: &str = "\
SELECT key_id FROM subject_keys
 WHERE tenant_id = $1 AND kind = $2 AND subject_id = $3 AND destroyed_at IS NULL";
/// Whether the subject was ever seen: it has had a key, or it has attributes.
const KNOWN_SQL: &str = "\
SELECT EXISTS (SELECT 1 FROM subject_keys
                WHERE tenant_id = $1 AND kind = $2 AND subject_id = $3)
    OR EXISTS (SELECT 1 FROM subject_attributes
                WHERE tenant_id = $1 AND kind = $2 AND subject_id = $3)";

/// The live data key of each of `ids`, made (and committed) where a subject has none.
pub async fn for_subjects(
    client: &impl GenericClient,
    vault: &Vault,
    (tenant, kind): (&str, &str),
    ids: &[&str],
) -> Result<HashMap<String, (Uuid, DataKey)>, KeyError> {
    let mut keys = live(client, vault, (tenant, kind), ids).await?;
    let missing: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !keys.contains_key(*id))
        .collect();
    if missing.is_empty() {
        return Ok(keys);
    }
    let mut key_ids = Vec::with_capacity(missing.len());
    let mut wrapped = Vec::with_capacity(missing.len());
    for _ in &missing {
        let key_id = Uuid::now_v7();
        wrapped.push(vault.new_data_key(key_id.as_bytes())?.1);
        key_ids.push(key_id);
    }
    let created = client
        .execute(
            NEW_KEYS_SQL,
            &[&tenant, &kind, &key_ids, &missing, &wrapped],
        )
        .await?;
    super::metrics::data_keys("created", created);
    // Read back: where a concurrent import won, its key is the one to use.
    keys.extend(live(client, vault, (tenant, kind), &missing).await?);
    Ok(keys)
}

async fn live(
    client: &impl GenericClient,
    vault: &Vault,
    (tenant, kind): (&str, &str),
    ids: &[&str],
) -> Result<HashMap<String, (Uuid, DataKey)>, KeyError> {
    client
        .query(LIVE_KEYS_SQL, &[&tenant, &kind, &ids])
        .await?
        .iter()
        .map(|r| {
            let key_id: Uuid = r.get(1);
            let key = vault.unwrap_key(key_id.as_bytes(), r.get::<_, &[u8]>(2))?;
            Ok((r.get(0), (key_id, key)))
        })
        .collect()
}

/// The keys `ids` that still exist, unwrapped; destroyed ones are absent.
pub async fn by_id(
    client: &impl GenericClient,
    vault: &Vault,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, DataKey>, KeyError> {
    let mut keys = HashMap::new();
    for r in client.query(DATA_KEYS_SQL, &[&ids]).await? {
        let key_id: Uuid = r.get(0);
        if let Some(wrapped) = r.get::<_, Option<&[u8]>>(1) {
            keys.insert(key_id, vault.unwrap_key(key_id.as_bytes(), wrapped)?);
        }
    }
    Ok(keys)
}

/// The subject's live keys (at most one; a list, for the event).
pub async fn of_subject(
    client: &impl GenericClient,
    (tenant, kind): (&str, &str),
    id: &str,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(SUBJECT_KEYS_SQL, &[&tenant, &kind, &id])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub async fn known(
    client: &impl GenericClient,
    (tenant, kind): (&str, &str),
    id: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(KNOWN_SQL, &[&tenant, &kind, &id])
        .await?
        .get(0))
}

/// Crypto-shredding: overwrites the wrapped copies of the subject's keys made up to `at`
/// (the forget's `recorded_at`); the number destroyed now.
pub async fn destroy(
    client: &impl GenericClient,
    (tenant, kind): (&str, &str),
    id: &str,
    at: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(DESTROY_SQL, &[&tenant, &kind, &id, &at])
        .await
}

/// `destroy` as of the forget recorded at `position`.
pub async fn destroy_for(
    client: &impl GenericClient,
    (tenant, kind): (&str, &str),
    id: &str,
    position: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(DESTROY_AT_SQL, &[&tenant, &kind, &id, &position])
        .await
}
