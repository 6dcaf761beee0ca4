//! The `collections` read model: one row per declared collection, the last declaration
//! of its stream. Items are not a read model (`store`, ADR 0023).

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use super::aggregate::Collection;
use super::events::CollectionEvent;
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Envelope, Projector};

pub const COLLECTIONS: &str = "collections";

static TABLE: ReadModel = ReadModel {
    table: "collections",
    key: &["tenant_id", "name"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("name", Type::TEXT),
        col("ttl_seconds", Type::INT4),
        col("indexes", Type::TEXT_ARRAY),
        col("version", Type::INT8),
        col("declared_at", Type::TIMESTAMPTZ),
        col("updated_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &["declared_at"],
    newer: Some("version"),
};

struct CollectionRow {
    tenant: String,
    name: String,
    ttl_seconds: Option<i32>,
    indexes: Vec<String>,
    version: i64,
    declared_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row for CollectionRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant,
            &self.name,
            &self.ttl_seconds,
            &self.indexes,
            &self.version,
            &self.declared_at,
            &self.updated_at,
        ]
    }
}

pub struct CollectionsProjector;

#[async_trait]
impl Projector for CollectionsProjector {
    type Aggregate = Collection;
    const NAME: &'static str = COLLECTIONS;
    const READ_MODELS: &'static [&'static ReadModel] = &[&TABLE];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<CollectionEvent>>,
    ) -> anyhow::Result<()> {
        // The last declaration of each stream in the batch (each one is whole); the upsert
        // keeps the first `declared_at` and never goes back to an older version.
        let mut last: HashMap<uuid::Uuid, CollectionRow> = HashMap::new();
        for e in events {
            let CollectionEvent::CollectionDeclared {
                name,
                ttl_seconds,
                indexes,
            } = e.event;
            let declared_at = last
                .get(&e.stream_id)
                .map_or(e.recorded_at, |earlier| earlier.declared_at);
            last.insert(
                e.stream_id,
                CollectionRow {
                    tenant: e.tenant_id,
                    name,
                    ttl_seconds,
                    indexes,
                    version: e.version,
                    declared_at,
                    updated_at: e.recorded_at,
                },
            );
        }
        let rows: Vec<CollectionRow> = last.into_values().collect();
        TABLE.upsert(tx, &rows).await
    }
}
