//! Events of the tagging context. Event types and versions are stable forever.
//!
//! Bulk work is carried in batches: an import appends one `RowsImported` per ~1,000 rows,
//! a run one `TagsChanged` per ~1,000 changed subjects — never one event per row.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::rules::AttrType;

/// One declared attribute of a subject kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attribute {
    /// `[a-z][a-z0-9_]*`, at most 63 characters.
    pub name: String,
    #[serde(rename = "type")]
    #[schema(value_type = String, pattern = "^(number|string|date|boolean)$")]
    pub ty: AttrType,
    /// The source table the attribute arrives in.
    pub source: String,
    /// Personal data (a phone number, an email): stored in events only sealed with the
    /// subject's data key, erased by `POST /api/v1/subjects/{kind}/{id}:forget`. Fixed
    /// once declared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
}

/// A subject kind's schema, as declared (full state in every event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindSchema {
    pub kind: String,
    pub id_field: String,
    pub primary_source: String,
    pub attributes: Vec<Attribute>,
}

impl KindSchema {
    /// The names of the sensitive attributes.
    pub fn sensitive(&self) -> Vec<String> {
        self.attributes
            .iter()
            .filter(|a| a.sensitive)
            .map(|a| a.name.clone())
            .collect()
    }

    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// Whether `source` is a source of this kind (the primary one or one of an attribute).
    pub fn has_source(&self, source: &str) -> bool {
        self.primary_source == source || self.attributes.iter().any(|a| a.source == source)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SubjectKindEvent {
    SubjectKindDeclared(KindSchema),
}

impl DomainEvent for SubjectKindEvent {
    fn event_type(&self) -> String {
        "SubjectKindDeclared".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// One row of a source table: the subject id, the row's `updated_time` (or the import
/// time), and its non-null attribute values in canonical JSON (numbers exact, dates RFC
/// 3339 UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedRow {
    pub id: String,
    pub updated_time: DateTime<Utc>,
    pub attrs: Map<String, Value>,
    /// The row's non-null sensitive values, sealed with the subject's data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
}

/// Values sealed with data key `key` (`crypto`): base64 of nonce ‖ AES-GCM ciphertext of
/// their JSON object, bound to the tenant, kind, subject and source (`sealing_context`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sealed {
    pub key: Uuid,
    pub data: String,
}

/// What a row's sealed values are bound to: they open only as that subject's row of that
/// source.
pub fn sealing_context(tenant: &str, kind: &str, subject: &str, source: &str) -> Vec<u8> {
    format!("{tenant}\0{kind}\0{subject}\0{source}").into_bytes()
}

/// A batch of rows of one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowsImported {
    pub kind: String,
    pub source: String,
    /// Rows of the primary source make their ids subjects.
    pub primary: bool,
    /// The attribute columns the file had: a value absent from `attrs` was null.
    pub columns: Vec<String>,
    pub rows: Vec<ImportedRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SubjectImportEvent {
    RowsImported(RowsImported),
    ImportCompleted {
        kind: String,
        source: String,
        rows: i64,
    },
}

impl DomainEvent for SubjectImportEvent {
    fn event_type(&self) -> String {
        match self {
            SubjectImportEvent::RowsImported(_) => "RowsImported",
            SubjectImportEvent::ImportCompleted { .. } => "ImportCompleted",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// On the subject's erasure stream (`stream_id(tenant, "subject", "{kind}/{id}")`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SubjectErasureEvent {
    /// The subject's data keys were destroyed: its sensitive values (`attributes`, all
    /// the kind ever declared sensitive) sealed under a key made up to this event (`keys`
    /// lists the live ones the command saw) no longer open, in any copy of the log.
    SubjectForgotten {
        kind: String,
        subject_id: String,
        attributes: Vec<String>,
        keys: Vec<Uuid>,
    },
}

impl DomainEvent for SubjectErasureEvent {
    fn event_type(&self) -> String {
        "SubjectForgotten".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TagCategoryEvent {
    TagCategoryCreated { code: String, name: String },
}

impl DomainEvent for TagCategoryEvent {
    fn event_type(&self) -> String {
        "TagCategoryCreated".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TagKind {
    Auto,
    Manual,
}

impl TagKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TagKind::Auto => "AUTO",
            TagKind::Manual => "MANUAL",
        }
    }
}

/// A tag as created (validated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagDefinition {
    pub id: i32,
    pub code: String,
    pub name: String,
    pub category: String,
    pub kind: TagKind,
    pub subject_kind: String,
    pub description: Option<String>,
    /// Canonical rule JSON (AUTO tags).
    pub rule: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TagEvent {
    TagCreated(TagDefinition),
    TagRuleChanged {
        tag_id: i32,
        rule: Value,
        rule_version: i32,
    },
    TagRetired {
        tag_id: i32,
    },
    /// On the tag code's own stream (`tag_code`): the code is taken, by this tag.
    TagCodeClaimed {
        tag_id: i32,
    },
}

impl DomainEvent for TagEvent {
    fn event_type(&self) -> String {
        match self {
            TagEvent::TagCreated(_) => "TagCreated",
            TagEvent::TagRuleChanged { .. } => "TagRuleChanged",
            TagEvent::TagRetired { .. } => "TagRetired",
            TagEvent::TagCodeClaimed { .. } => "TagCodeClaimed",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// What a run was asked to do (the job's parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    pub subject_kind: String,
    pub tag_ids: Option<Vec<i32>>,
    pub subject_ids: Option<Vec<String>>,
    pub changed_within_days: Option<u32>,
    pub as_of: DateTime<Utc>,
}

/// A tag as a run applied it: stored in the subject's `tag_details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedTag {
    pub code: String,
    pub name: String,
    pub category: String,
    pub rule_version: i32,
}

/// The tag changes of one subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectChange {
    #[serde(rename = "s")]
    pub subject_id: String,
    #[serde(rename = "a", default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<i32>,
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<i32>,
}

/// Per tag, what a run found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TagRunStats {
    pub matched: i64,
    pub added: i64,
    pub removed: i64,
}

/// What a completed run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    pub subjects_in_scope: i64,
    pub subjects_evaluated: i64,
    pub unknown_subject_ids: i64,
    pub tags_added: i64,
    pub tags_removed: i64,
    pub duration_ms: i64,
    /// By tag id.
    pub per_tag: BTreeMap<i32, TagRunStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TagRunEvent {
    TagRunRequested(RunRequest),
    /// A batch of the run's changes; `tags` describes every tag added or removed in it.
    TagsChanged {
        subject_kind: String,
        run_id: Uuid,
        tags: BTreeMap<i32, AppliedTag>,
        changes: Vec<SubjectChange>,
    },
    TagRunCompleted(RunOutcome),
    TagRunFailed {
        error: String,
    },
}

impl DomainEvent for TagRunEvent {
    fn event_type(&self) -> String {
        match self {
            TagRunEvent::TagRunRequested(_) => "TagRunRequested",
            TagRunEvent::TagsChanged { .. } => "TagsChanged",
            TagRunEvent::TagRunCompleted(_) => "TagRunCompleted",
            TagRunEvent::TagRunFailed { .. } => "TagRunFailed",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A MANUAL tag put on or taken off one subject (stream: the subject's manual tags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ManualTagEvent {
    ManualTagAssigned {
        subject_kind: String,
        subject_id: String,
        tag_id: i32,
        tag: AppliedTag,
    },
    ManualTagRemoved {
        subject_kind: String,
        subject_id: String,
        tag_id: i32,
    },
}

impl DomainEvent for ManualTagEvent {
    fn event_type(&self) -> String {
        match self {
            ManualTagEvent::ManualTagAssigned { .. } => "ManualTagAssigned",
            ManualTagEvent::ManualTagRemoved { .. } => "ManualTagRemoved",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
