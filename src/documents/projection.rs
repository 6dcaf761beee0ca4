//! The `documents` read model. Its weighted `search` tsvector (English words and CJK
//! bigrams) is a generated column (`sql/V13`), so the projector writes plain columns.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::aggregate::{Document, DocumentBatch};
use super::events::{DocumentBatchEvent, DocumentDraft, DocumentEvent};
use crate::eventstore::RecordedEvent;
use crate::pipeline::EventSourced;
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Lane, Projection, ProjectorOptions};

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
        col("embedding", Type::FLOAT4_ARRAY),
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
    embedding: Option<Vec<f32>>,
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
            &self.embedding,
        ]
    }
}

pub struct DocumentsProjector;

/// The last state of each document a batch of events touched.
#[derive(Default)]
struct Changes {
    /// `Some(row)` to write, `None` to delete.
    last: HashMap<Uuid, Option<DocumentRow>>,
    /// Documents this batch of events creates from batches and nothing else touches:
    /// their ids are new (ADR 0025), so they are copied in, not merged.
    new: HashSet<Uuid>,
}

impl Changes {
    fn write(&mut self, tenant: &str, id: Uuid, d: DocumentDraft, e: &RecordedEvent, version: i64) {
        let created_at = match self.last.get(&id) {
            Some(Some(earlier)) => earlier.created_at,
            _ => d.created_at.unwrap_or(e.recorded_at),
        };
        let row = DocumentRow {
            tenant: tenant.to_owned(),
            id,
            title: d.title,
            content: d.content,
            source: d.source,
            category: d.category,
            author: d.author,
            tags: d.tags,
            metadata: Value::Object(d.metadata),
            created_at,
            updated_at: e.recorded_at,
            version,
            embedding: d.embedding,
        };
        self.last.insert(id, Some(row));
    }
}

/// The projector reads a document's own stream and the batches that create documents
/// (version 0: a batch's document has no events of its own yet), so it implements
/// `Projection` and decodes each event by its stream type.
#[async_trait]
impl Projection for DocumentsProjector {
    fn name(&self) -> &'static str {
        DOCUMENTS
    }

    fn stream_types(&self) -> &[&'static str] {
        &[Document::STREAM_TYPE, DocumentBatch::STREAM_TYPE]
    }

    fn tables(&self) -> Vec<&'static str> {
        vec![TABLE.table]
    }

    fn options(&self) -> ProjectorOptions {
        // A batch event holds up to 500 documents. The tsvector of each is computed as
        // its row goes in (half of the load's time), so documents are split by id over
        // two lanes, one per core of the machine this was measured on (ADR 0031).
        ProjectorOptions {
            durable_commit: false,
            batch_size: Some(20),
            lanes: 2,
        }
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: &[RecordedEvent],
        lane: Lane,
    ) -> anyhow::Result<()> {
        let mut changes = Changes::default();
        for e in events {
            if e.stream_type == DocumentBatch::STREAM_TYPE {
                if let DocumentBatchEvent::DocumentsImported { documents } =
                    DocumentBatch::decode(e)?
                {
                    for d in documents.into_iter().filter(|d| lane.owns(d.id.as_bytes())) {
                        changes.new.insert(d.id);
                        changes.write(&e.tenant_id, d.id, d.document, e, 0);
                    }
                }
                continue;
            }
            if !lane.owns(e.stream_id.as_bytes()) {
                continue;
            }
            changes.new.remove(&e.stream_id);
            match Document::decode(e)? {
                DocumentEvent::DocumentCreated(d) | DocumentEvent::DocumentUpdated(d) => {
                    changes.write(&e.tenant_id, e.stream_id, d, e, e.stream_version)
                }
                DocumentEvent::DocumentDeleted {} | DocumentEvent::ImportedDocumentDeleted {} => {
                    changes.last.insert(e.stream_id, None);
                }
            }
        }
        let (mut new, mut rows, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for (id, change) in changes.last {
            match change {
                Some(row) if changes.new.contains(&id) => new.push(row),
                Some(row) => rows.push(row),
                None => gone.push(id),
            }
        }
        TABLE.insert(tx, &new).await?;
        TABLE.upsert(tx, &rows).await?;
        TABLE.delete(tx, &gone).await
    }
}
