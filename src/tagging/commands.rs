//! Commands of the tagging context and the drafts they carry (unvalidated input).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::events::{Attribute, TagKind};

/// `PUT /api/v1/subject-kinds/{kind}`: declares or changes a subject kind's schema.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KindDraft {
    /// The id column of every source file, e.g. `user_id`.
    #[schema(pattern = "^[a-z][a-z0-9_]{0,62}$")]
    pub id_field: String,
    /// The source whose ids are the kind's subjects.
    #[schema(pattern = "^[a-z][a-z0-9_]{0,62}$")]
    pub primary_source: String,
    pub attributes: Vec<Attribute>,
}

/// Imports are appended in bulk by the import itself; no command goes through `handle`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub enum SubjectImportCommand {}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryDraft {
    #[schema(pattern = "^[a-z][a-z0-9_]{0,62}$")]
    pub code: String,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub enum TagCategoryCommand {
    CreateTagCategory(CategoryDraft),
}

/// `POST /api/v1/tags`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagDraft {
    #[schema(pattern = "^[a-z][a-z0-9_]{0,62}$")]
    pub code: String,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Code of an existing tag category.
    pub category: String,
    pub kind: TagKind,
    pub subject_kind: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// AUTO tags: `{"logic": "AND"|"OR"|"NOT", "conditions": [...]}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub rule: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub enum TagCommand {
    CreateTag { id: i32, draft: TagDraft },
    ChangeRule { rule: serde_json::Value },
    RetireTag,
}

/// `PUT /api/v1/tags/{id}/rule` and `POST /api/v1/tags/{id}/rule:preview`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleDraft {
    #[schema(value_type = Object)]
    pub rule: serde_json::Value,
}

/// `POST /api/v1/tagging/runs`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunDraft {
    pub subject_kind: String,
    /// Recompute only these tags (merged with the subjects' other tags).
    #[serde(default)]
    pub tag_ids: Option<Vec<i32>>,
    /// Only these subjects (unknown ids are ignored and counted).
    #[serde(default)]
    pub subject_ids: Option<Vec<String>>,
    /// Only subjects whose `updated_time` in any source lies in `[as_of − N days, as_of]`.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 36500)]
    pub changed_within_days: Option<u32>,
    /// Anchors `recent_days` and the change window; defaults to now.
    #[serde(default)]
    pub as_of: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub enum TagRunCommand {
    RequestRun(RunDraft),
}

/// `PUT` / `DELETE /api/v1/subjects/{kind}/{id}/tags/{tag_id}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ManualTagCommand {
    pub subject_kind: String,
    pub subject_id: String,
    pub tag_id: i32,
    /// Put on (`true`) or take off.
    pub assign: bool,
}
