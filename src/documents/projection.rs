//! The `documents` read model. Its weighted `search` tsvector (English words and CJK
//! bigrams) is a generated column (`sql/V13`), so the projector writes plain columns.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::aggregate::Document;
use super::events::DocumentEvent;
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Envelope, Projector};

pub const DOCUMENTS: &str = "documents";

static TABLE: ReadModel = ReadModel {
    table: "documents",
    key: &["id"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("id", Type::UUID),
        col("title", Type::TEXT),
        col("content", Type::TEXT),
        col("source", Type::TEXT),
        col("category", Type::TEXT),
        col("author", Type::TEXT),
        col("tags", Type::TEXT_ARRAY),
        col("metadata", Type::JSONB),
        col("created_at", Type::TIMESTAMPTZ),
        col("updated_at", Type::TIMESTAMPTZ),
        col("version", Type::INT8),
    ],
    // A document keeps the time it was created at; an update's `created_at` is ignored.
    keep_on_update: &["created_at"],
    newer: Some("version"),
};

struct DocumentRow {
    tenant: String,
    id: Uuid,
    title: String,
    content: String,
    source: Option<String>,
    category: Option<String>,
    author: Option<String>,
    tags: Vec<String>,
    metadata: Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl Row for DocumentRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant,
            &self.id,
            &self.title,
            &self.content,
            &self.source,
            &self.category,
            &self.author,
            &self.tags,
            &self.metadata,
            &self.created_at,
            &self.updated_at,
            &self.version,
        ]
    }
}

pub struct DocumentsProjector;

#[async_trait]
impl Projector for DocumentsProjector {
    type Aggregate = Document;
    const NAME: &'static str = DOCUMENTS;
    const READ_MODELS: &'static [&'static ReadModel] = &[&TABLE];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<DocumentEvent>>,
    ) -> anyhow::Result<()> {
        // The last state per document: `Some(row)` to write, `None` to delete.
        let mut last: HashMap<Uuid, Option<DocumentRow>> = HashMap::new();
        for e in events {
            let change = match e.event {
                DocumentEvent::DocumentCreated(d) | DocumentEvent::DocumentUpdated(d) => {
                    let created_at = match last.get(&e.stream_id) {
                        Some(Some(earlier)) => earlier.created_at,
                        _ => d.created_at.unwrap_or(e.recorded_at),
                    };
                    Some(DocumentRow {
                        tenant: e.tenant_id,
                        id: e.stream_id,
                        title: d.title,
                        content: d.content,
                        source: d.source,
                        category: d.category,
                        author: d.author,
                        tags: d.tags,
                        metadata: Value::Object(d.metadata),
                        created_at,
                        updated_at: e.recorded_at,
                        version: e.version,
                    })
                }
                DocumentEvent::DocumentDeleted {} => None,
            };
            last.insert(e.stream_id, change);
        }
        let (mut rows, mut gone) = (Vec::new(), Vec::new());
        for (id, change) in last {
            match change {
                Some(row) => rows.push(row),
                None => gone.push(id),
            }
        }
        TABLE.upsert(tx, &rows).await?;
        TABLE.delete(tx, &gone).await
    }
}
