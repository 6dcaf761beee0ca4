//! Events of the documents context; `event_type` and `event_version` are stable.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A document as a client writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentDraft {
    /// 1 to 1,000 characters.
    pub title: String,
    /// Up to 1 MiB of text.
    pub content: String,
    pub source: Option<String>,
    pub category: Option<String>,
    pub author: Option<String>,
    /// Up to 100 tags of 1 to 200 characters.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Any JSON object; searched by containment (`metadata=` on search).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// When the document was written (default: when it was recorded).
    pub created_at: Option<DateTime<Utc>>,
    /// A vector for similarity search (`CLOUDLENS_EMBEDDING_DIMENSIONS` numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum DocumentEvent {
    DocumentCreated(DocumentDraft),
    DocumentUpdated(DocumentDraft),
    DocumentDeleted {},
    /// The deletion of a document a batch created: its stream is not archived (ADR 0020),
    /// since the batch that created it stays in the log.
    ImportedDocumentDeleted {},
}

impl DomainEvent for DocumentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::DocumentCreated(_) => "DocumentCreated",
            Self::DocumentUpdated(_) => "DocumentUpdated",
            Self::DocumentDeleted {} => "DocumentDeleted",
            Self::ImportedDocumentDeleted {} => "ImportedDocumentDeleted",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A document of a batch, with the id it gets (the client's, or a new one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedDocument {
    pub id: uuid::Uuid,
    pub document: DocumentDraft,
}

/// The events of a `document_batch` stream: the documents of one
/// `POST /api/v1/documents:batch`, in blocks, then its completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum DocumentBatchEvent {
    DocumentsImported { documents: Vec<ImportedDocument> },
    DocumentBatchCompleted { documents: i64 },
}

impl DomainEvent for DocumentBatchEvent {
    fn event_type(&self) -> String {
        match self {
            Self::DocumentsImported { .. } => "DocumentsImported",
            Self::DocumentBatchCompleted { .. } => "DocumentBatchCompleted",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
