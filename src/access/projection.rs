//! The `api_keys` projector: one row per key (its hash, never the secret).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::aggregate::ApiKey;
use super::events::ApiKeyEvent;
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Envelope, Projector};

pub const NAME: &str = "api_keys";

static KEYS_MODEL: ReadModel = ReadModel {
    table: "api_keys",
    key: &["id"],
    columns: &[
        col("id", Type::UUID),
        col("name", Type::TEXT),
        col("role", Type::TEXT),
        col("tenant", Type::TEXT),
        col("prefix", Type::TEXT),
        col("hash", Type::TEXT),
        col("created_at", Type::TIMESTAMPTZ),
        col("position", Type::INT8),
    ],
    keep_on_update: &[],
    newer: None,
};

const REVOKE_SQL: &str = "UPDATE api_keys SET revoked_at = $2, position = $3 WHERE id = $1";

struct KeyRow {
    id: Uuid,
    name: String,
    role: &'static str,
    tenant: String,
    prefix: String,
    hash: String,
    at: DateTime<Utc>,
    position: i64,
}

impl Row for KeyRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.id,
            &self.name,
            &self.role,
            &self.tenant,
            &self.prefix,
            &self.hash,
            &self.at,
            &self.position,
        ]
    }
}

pub struct ApiKeysProjector;

#[async_trait]
impl Projector for ApiKeysProjector {
    type Aggregate = ApiKey;
    const NAME: &'static str = NAME;
    const READ_MODELS: &'static [&'static ReadModel] = &[&KEYS_MODEL];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<ApiKeyEvent>>,
    ) -> anyhow::Result<()> {
        // In log order: a key issued and revoked in one batch is inserted first.
        for e in events {
            match e.event {
                ApiKeyEvent::ApiKeyIssued(k) => {
                    let row = KeyRow {
                        id: e.stream_id,
                        name: k.name,
                        role: k.role.as_str(),
                        tenant: k.tenant,
                        prefix: k.prefix,
                        hash: k.hash,
                        at: e.recorded_at,
                        position: e.position,
                    };
                    KEYS_MODEL.insert(tx, &[row]).await?;
                }
                ApiKeyEvent::ApiKeyRevoked {} => {
                    tx.execute(REVOKE_SQL, &[&e.stream_id, &e.recorded_at, &e.position])
                        .await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_read_model_declaration_is_valid() {
        super::KEYS_MODEL.check().unwrap();
    }
}
