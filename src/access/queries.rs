//! Reads of the access context: the `api_keys` read model.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{QueryError, ReadConnection};

const LIST_SQL: &str = "\
SELECT id, name, role, tenant, prefix, created_at, revoked_at FROM api_keys
 ORDER BY created_at, id";
const TENANT_SQL: &str = "SELECT tenant FROM api_keys WHERE id = $1";
/// Every key with what `http::auth` needs to check one.
const KEYRING_SQL: &str = "\
SELECT id, name, role, tenant, prefix, hash, revoked_at IS NOT NULL FROM api_keys";

/// Whether any key was ever issued (the log's partial index `events_api_keys`).
const KEYS_IN_LOG_SQL: &str = "SELECT EXISTS (SELECT 1 FROM events WHERE stream_type = 'api_key')";

pub async fn keys_in_log(conn: &ReadConnection) -> Result<bool, QueryError> {
    Ok(conn
        .query_opt(KEYS_IN_LOG_SQL, &[])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(false))
}

/// A key as `http::auth` checks it.
pub struct KeyRecord {
    pub id: Uuid,
    pub name: String,
    pub role: super::events::Role,
    pub tenant: String,
    pub prefix: String,
    /// Argon2id, PHC string.
    pub hash: String,
    pub revoked: bool,
}

/// Every key, revoked ones included.
pub async fn keyring(conn: &ReadConnection) -> Result<Vec<KeyRecord>, QueryError> {
    conn.query(KEYRING_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            let role: String = r.try_get(2)?;
            Ok(KeyRecord {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                role: super::events::Role::parse(&role)
                    .ok_or_else(|| QueryError::BadValue(format!("role {role:?}")))?,
                tenant: r.try_get(3)?,
                prefix: r.try_get(4)?,
                hash: r.try_get(5)?,
                revoked: r.try_get(6)?,
            })
        })
        .collect()
}

/// A key as listed: never its secret or hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    #[schema(example = "writer")]
    pub role: String,
    pub tenant: String,
    /// The key's public part: `clk_<prefix>_…`.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyView>,
}

pub async fn list(conn: &ReadConnection) -> Result<Vec<KeyView>, QueryError> {
    conn.query(LIST_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            Ok(KeyView {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                role: r.try_get(2)?,
                tenant: r.try_get(3)?,
                prefix: r.try_get(4)?,
                created_at: r.try_get(5)?,
                revoked_at: r.try_get(6)?,
            })
        })
        .collect()
}

/// The tenant a key belongs to (its stream's), if the key exists.
pub async fn tenant_of(conn: &ReadConnection, id: Uuid) -> Result<Option<String>, QueryError> {
    Ok(conn
        .query(TENANT_SQL, &[&id])
        .await?
        .first()
        .map(|r| r.try_get(0))
        .transpose()?)
}
