//! The document aggregate: created once, replaced, deleted for good.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::events::{DocumentBatchEvent, DocumentDraft, DocumentEvent};
use crate::pipeline::{DomainError, EventSourced, Rejection};

/// Most bytes of a document's content.
pub const MAX_CONTENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("document not found")]
    NotFound,
    #[error("document exists")]
    AlreadyExists,
}

impl DomainError for DocumentError {
    fn rejection(&self) -> Rejection {
        match self {
            Self::Invalid { field, message } => Rejection::Invalid {
                field: field.clone(),
                message: message.clone(),
            },
            Self::NotFound => Rejection::NotFound {
                what: "document".into(),
            },
            Self::AlreadyExists => Rejection::AlreadyExists {
                what: "document".into(),
            },
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> DocumentError {
    DocumentError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DocumentCommand {
    Create(DocumentDraft),
    Update(DocumentDraft),
    Delete,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Document {
    pub exists: bool,
    pub deleted: bool,
}

/// What a document command needs to know besides the stream: whether the document
/// came from a committed batch (`document_batch_ids`, checked by the route before the
/// command: such a document has no events of its own yet), and the deployment's
/// embedding size.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub imported: bool,
    pub dimensions: usize,
}

impl EventSourced for Document {
    const STREAM_TYPE: &'static str = "document";
}

/// Checks an embedding (a document's, or a query's): `dimensions` finite numbers, not
/// all zero (cosine distance needs a direction).
pub fn check_embedding(e: &[f32], dimensions: usize) -> Result<(), String> {
    if e.len() != dimensions {
        return Err(format!(
            "must have {dimensions} numbers (this deployment's size)"
        ));
    }
    if e.iter().any(|x| !x.is_finite()) {
        return Err("must be finite numbers".into());
    }
    if e.iter().all(|x| *x == 0.0) {
        return Err("must not be all zeros (no direction)".into());
    }
    Ok(())
}

/// Checks a draft: lengths, no NUL characters (PostgreSQL text cannot hold them), an
/// embedding of `dimensions` finite numbers.
pub fn check(d: &DocumentDraft, dimensions: usize) -> Result<(), DocumentError> {
    if let Some(e) = &d.embedding {
        check_embedding(e, dimensions).map_err(|m| invalid("embedding", m))?;
    }
    // Control characters other than tab and line breaks have no place in text (and
    // U+0001/U+0002 mark matches in snippets).
    let text = |field: &str, v: &str, max: usize| {
        if v.chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        {
            Err(invalid(field, "must not contain control characters"))
        } else if v.chars().count() > max {
            Err(invalid(field, format!("must be at most {max} characters")))
        } else {
            Ok(())
        }
    };
    if d.title.trim().is_empty() {
        return Err(invalid("title", "must not be empty"));
    }
    text("title", &d.title, 1000)?;
    if d.content.len() > MAX_CONTENT_BYTES {
        return Err(invalid("content", "must be at most 1 MiB"));
    }
    text("content", &d.content, usize::MAX)?;
    for (field, v) in [
        ("source", &d.source),
        ("category", &d.category),
        ("author", &d.author),
    ] {
        if let Some(v) = v {
            text(field, v, 200)?;
        }
    }
    if d.tags.len() > 100 {
        return Err(invalid("tags", "at most 100 tags"));
    }
    for t in &d.tags {
        if t.trim().is_empty() || t.trim() != t || t.contains(',') {
            return Err(invalid(
                "tags",
                "a tag is not empty, has no spaces at its ends and no comma",
            ));
        }
        text("tags", t, 200)?;
    }
    if d.metadata
        .iter()
        .any(|(k, v)| k.contains('\0') || has_nul(v))
    {
        return Err(invalid("metadata", "must not contain NUL characters"));
    }
    if let Some(t) = d.created_at {
        use chrono::Datelike;
        if !(1..=9999).contains(&t.year()) {
            return Err(invalid("created_at", "must be within the years 1 to 9999"));
        }
    }
    Ok(())
}

fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[async_trait]
impl Aggregate for Document {
    type Command = DocumentCommand;
    type Event = DocumentEvent;
    type Error = DocumentError;
    type Services = Origin;

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        c: DocumentCommand,
        origin: &Origin,
    ) -> Result<Vec<DocumentEvent>, DocumentError> {
        // A batch's document has no creation event of its own: its stream starts with
        // its first change.
        let imported = origin.imported && !self.exists;
        let live = (self.exists || imported) && !self.deleted;
        match c {
            DocumentCommand::Create(d) => {
                if self.exists || origin.imported {
                    return Err(DocumentError::AlreadyExists);
                }
                check(&d, origin.dimensions)?;
                Ok(vec![DocumentEvent::DocumentCreated(d)])
            }
            DocumentCommand::Update(d) if live => {
                check(&d, origin.dimensions)?;
                Ok(vec![DocumentEvent::DocumentUpdated(d)])
            }
            DocumentCommand::Delete if live && origin.imported => {
                Ok(vec![DocumentEvent::ImportedDocumentDeleted {}])
            }
            DocumentCommand::Delete if live => Ok(vec![DocumentEvent::DocumentDeleted {}]),
            DocumentCommand::Update(_) | DocumentCommand::Delete => Err(DocumentError::NotFound),
        }
    }

    fn apply(&mut self, e: DocumentEvent) {
        match e {
            DocumentEvent::DocumentCreated(_) => self.exists = true,
            DocumentEvent::DocumentUpdated(_) => {}
            DocumentEvent::DocumentDeleted {} | DocumentEvent::ImportedDocumentDeleted {} => {
                self.deleted = true
            }
        }
    }
}

/// A `document_batch` stream, written whole by `POST /api/v1/documents:batch`
/// (`super::import`) and only folded.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DocumentBatch {
    pub documents: i64,
    pub completed: bool,
}

impl EventSourced for DocumentBatch {
    const STREAM_TYPE: &'static str = "document_batch";
}

/// Batch streams take no commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NoCommand {}

#[async_trait]
impl Aggregate for DocumentBatch {
    type Command = NoCommand;
    type Event = DocumentBatchEvent;
    type Error = DocumentError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(&self, c: NoCommand, _: &()) -> Result<Vec<DocumentBatchEvent>, DocumentError> {
        match c {}
    }

    fn apply(&mut self, e: DocumentBatchEvent) {
        match e {
            DocumentBatchEvent::DocumentsImported { documents } => {
                self.documents += documents.len() as i64
            }
            DocumentBatchEvent::DocumentBatchCompleted { .. } => self.completed = true,
        }
    }
}
