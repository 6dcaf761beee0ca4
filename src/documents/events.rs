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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum DocumentEvent {
    DocumentCreated(DocumentDraft),
    DocumentUpdated(DocumentDraft),
    DocumentDeleted {},
}

impl DomainEvent for DocumentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::DocumentCreated(_) => "DocumentCreated",
            Self::DocumentUpdated(_) => "DocumentUpdated",
            Self::DocumentDeleted {} => "DocumentDeleted",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
