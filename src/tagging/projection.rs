//! Projectors of the tagging context.
//!
//! - `subject_kinds`, `tag_categories`, `tags`: the definitions (few rows, written per
//!   event);
//! - `subject_attributes`: import batches merged into one record per subject
//!   (`subject_attributes`) and the per-source `updated_time` (`subject_sources`), one
//!   multi-row statement per batch of ~1,000 rows;
//! - `subject_tags`: the tag changes of runs, one multi-row statement per batch, plus the
//!   history rows (`subject_tag_history`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use super::aggregate::{SubjectImport, SubjectKind, Tag, TagCategory, TagRun};
use super::events::{
    KindSchema, SubjectImportEvent, SubjectKindEvent, TagCategoryEvent, TagEvent, TagRunEvent,
};
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Envelope, Projector, ProjectorOptions};

pub const SUBJECT_KINDS: &str = "subject_kinds";
pub const TAG_CATEGORIES: &str = "tag_categories";
pub const TAGS: &str = "tags";
pub const SUBJECT_ATTRIBUTES: &str = "subject_attributes";
pub const SUBJECT_TAGS: &str = "subject_tags";

static KINDS_MODEL: ReadModel = ReadModel {
    table: "subject_kinds",
    key: &["tenant_id", "kind"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("kind", Type::TEXT),
        col("id_field", Type::TEXT),
        col("primary_source", Type::TEXT),
        col("attributes", Type::JSONB),
        col("version", Type::INT8),
        col("updated_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &[],
    newer: Some("version"),
};

struct KindRow {
    tenant_id: String,
    kind: String,
    id_field: String,
    primary_source: String,
    attributes: Value,
    version: i64,
    updated_at: DateTime<Utc>,
}

impl Row for KindRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant_id,
            &self.kind,
            &self.id_field,
            &self.primary_source,
            &self.attributes,
            &self.version,
            &self.updated_at,
        ]
    }
}

pub struct SubjectKindsProjector;

#[async_trait]
impl Projector for SubjectKindsProjector {
    type Aggregate = SubjectKind;
    const NAME: &'static str = SUBJECT_KINDS;
    const READ_MODELS: &'static [&'static ReadModel] = &[&KINDS_MODEL];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<SubjectKindEvent>>,
    ) -> anyhow::Result<()> {
        // Full state per event: the last one of each kind wins.
        let mut rows: Vec<KindRow> = Vec::new();
        for e in events {
            let SubjectKindEvent::SubjectKindDeclared(s) = e.event;
            rows.retain(|r| !(r.tenant_id == e.tenant_id && r.kind == s.kind));
            rows.push(KindRow {
                tenant_id: e.tenant_id,
                attributes: serde_json::to_value(&s.attributes)?,
                kind: s.kind,
                id_field: s.id_field,
                primary_source: s.primary_source,
                version: e.version,
                updated_at: e.recorded_at,
            });
        }
        KINDS_MODEL.upsert(tx, &rows).await
    }
}

static CATEGORIES_MODEL: ReadModel = ReadModel {
    table: "tag_categories",
    key: &["tenant_id", "code"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("code", Type::TEXT),
        col("name", Type::TEXT),
        col("created_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &[],
    newer: None,
};

struct CategoryRow(String, String, String, DateTime<Utc>);

impl Row for CategoryRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.0, &self.1, &self.2, &self.3]
    }
}

pub struct TagCategoriesProjector;

#[async_trait]
impl Projector for TagCategoriesProjector {
    type Aggregate = TagCategory;
    const NAME: &'static str = TAG_CATEGORIES;
    const READ_MODELS: &'static [&'static ReadModel] = &[&CATEGORIES_MODEL];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<TagCategoryEvent>>,
    ) -> anyhow::Result<()> {
        let rows: Vec<CategoryRow> = events
            .into_iter()
            .map(|e| {
                let TagCategoryEvent::TagCategoryCreated { code, name } = e.event;
                CategoryRow(e.tenant_id, code, name, e.recorded_at)
            })
            .collect();
        // A category is created once (its stream is new); COPY is enough.
        CATEGORIES_MODEL.insert(tx, &rows).await
    }
}

static TAGS_MODEL: ReadModel = ReadModel {
    table: "tags",
    key: &["tenant_id", "id"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("id", Type::INT4),
        col("code", Type::TEXT),
        col("name", Type::TEXT),
        col("category", Type::TEXT),
        col("tag_kind", Type::TEXT),
        col("subject_kind", Type::TEXT),
        col("description", Type::TEXT),
        col("rule", Type::JSONB),
        col("rule_version", Type::INT4),
        col("retired", Type::BOOL),
        col("version", Type::INT8),
        col("created_at", Type::TIMESTAMPTZ),
        col("updated_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &["created_at"],
    newer: Some("version"),
};

const TAG_RULE_SQL: &str = "\
UPDATE tags SET rule = $3, rule_version = $4, version = $5, updated_at = $6
 WHERE tenant_id = $1 AND id = $2 AND version < $5";
const TAG_RETIRED_SQL: &str = "\
UPDATE tags SET retired = true, version = $3, updated_at = $4
 WHERE tenant_id = $1 AND id = $2 AND version < $3";

struct TagRow {
    tenant_id: String,
    id: i32,
    code: String,
    name: String,
    category: String,
    tag_kind: &'static str,
    subject_kind: String,
    description: Option<String>,
    rule: Option<Value>,
    rule_version: i32,
    retired: bool,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row for TagRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant_id,
            &self.id,
            &self.code,
            &self.name,
            &self.category,
            &self.tag_kind,
            &self.subject_kind,
            &self.description,
            &self.rule,
            &self.rule_version,
            &self.retired,
            &self.version,
            &self.created_at,
            &self.updated_at,
        ]
    }
}

pub struct TagsProjector;

#[async_trait]
impl Projector for TagsProjector {
    type Aggregate = Tag;
    const NAME: &'static str = TAGS;
    const READ_MODELS: &'static [&'static ReadModel] = &[&TAGS_MODEL];

    /// Tags are few and change rarely: created ones go in first (one upsert), changes
    /// follow in log order, one statement each.
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<TagEvent>>,
    ) -> anyhow::Result<()> {
        let mut created = Vec::new();
        for e in &events {
            if let TagEvent::TagCreated(d) = &e.event {
                created.push(TagRow {
                    tenant_id: e.tenant_id.clone(),
                    id: d.id,
                    code: d.code.clone(),
                    name: d.name.clone(),
                    category: d.category.clone(),
                    tag_kind: d.kind.as_str(),
                    subject_kind: d.subject_kind.clone(),
                    description: d.description.clone(),
                    rule: d.rule.clone(),
                    rule_version: i32::from(d.rule.is_some()),
                    retired: false,
                    version: e.version,
                    created_at: e.recorded_at,
                    updated_at: e.recorded_at,
                });
            }
        }
        TAGS_MODEL.upsert(tx, &created).await?;
        for e in events {
            match e.event {
                TagEvent::TagRuleChanged {
                    tag_id,
                    rule,
                    rule_version,
                } => {
                    tx.execute(
                        TAG_RULE_SQL,
                        &[
                            &e.tenant_id,
                            &tag_id,
                            &rule,
                            &rule_version,
                            &e.version,
                            &e.recorded_at,
                        ],
                    )
                    .await?;
                }
                TagEvent::TagRetired { tag_id } => {
                    tx.execute(
                        TAG_RETIRED_SQL,
                        &[&e.tenant_id, &tag_id, &e.version, &e.recorded_at],
                    )
                    .await?;
                }
                TagEvent::TagCreated(_) | TagEvent::TagCodeClaimed { .. } => {}
            }
        }
        Ok(())
    }
}

static ATTRIBUTES_MODEL: ReadModel = ReadModel {
    table: "subject_attributes",
    key: &["tenant_id", "kind", "subject_id"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("kind", Type::TEXT),
        col("subject_id", Type::TEXT),
        col("is_subject", Type::BOOL),
        col("attrs", Type::JSONB),
    ],
    keep_on_update: &[],
    newer: None,
};

static SOURCES_MODEL: ReadModel = ReadModel {
    table: "subject_sources",
    key: &["tenant_id", "kind", "subject_id", "source"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("kind", Type::TEXT),
        col("subject_id", Type::TEXT),
        col("source", Type::TEXT),
        col("updated_time", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &[],
    newer: None,
};

/// A source row replaces that source's columns of the subject: the file's columns are
/// removed first (a null is an absent key), then its non-null values merged in.
const MERGE_ATTRIBUTES_SQL: &str = "\
INSERT INTO subject_attributes AS s (tenant_id, kind, subject_id, is_subject, attrs)
SELECT $1, $2, u.id, $3, u.attrs FROM unnest($5::text[], $6::jsonb[]) AS u(id, attrs)
ON CONFLICT (tenant_id, kind, subject_id) DO UPDATE
   SET attrs = (s.attrs - $4::text[]) || EXCLUDED.attrs,
       is_subject = s.is_subject OR EXCLUDED.is_subject";

const MERGE_SOURCES_SQL: &str = "\
INSERT INTO subject_sources (tenant_id, kind, subject_id, source, updated_time)
SELECT $1, $2, u.id, $3, u.t FROM unnest($4::text[], $5::timestamptz[]) AS u(id, t)
ON CONFLICT (tenant_id, kind, subject_id, source) DO UPDATE
   SET updated_time = EXCLUDED.updated_time";

pub struct SubjectAttributesProjector;

#[async_trait]
impl Projector for SubjectAttributesProjector {
    type Aggregate = SubjectImport;
    const NAME: &'static str = SUBJECT_ATTRIBUTES;
    const READ_MODELS: &'static [&'static ReadModel] = &[&ATTRIBUTES_MODEL, &SOURCES_MODEL];

    fn options(&self) -> ProjectorOptions {
        // Import events are large (1,000 rows each): fewer per batch.
        ProjectorOptions {
            durable_commit: false,
            batch_size: Some(50),
        }
    }

    /// One statement pair per import batch (ids are distinct within a batch).
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<SubjectImportEvent>>,
    ) -> anyhow::Result<()> {
        let merge = tx.prepare(MERGE_ATTRIBUTES_SQL).await?;
        let sources = tx.prepare(MERGE_SOURCES_SQL).await?;
        for e in events {
            let SubjectImportEvent::RowsImported(batch) = e.event else {
                continue;
            };
            let mut ids = Vec::with_capacity(batch.rows.len());
            let mut attrs = Vec::with_capacity(batch.rows.len());
            let mut times = Vec::with_capacity(batch.rows.len());
            for r in batch.rows {
                ids.push(r.id);
                attrs.push(Value::Object(r.attrs));
                times.push(r.updated_time);
            }
            tx.execute(
                &merge,
                &[
                    &e.tenant_id,
                    &batch.kind,
                    &batch.primary,
                    &batch.columns,
                    &ids,
                    &attrs,
                ],
            )
            .await?;
            tx.execute(
                &sources,
                &[&e.tenant_id, &batch.kind, &batch.source, &ids, &times],
            )
            .await?;
        }
        Ok(())
    }
}

static SUBJECT_TAGS_MODEL: ReadModel = ReadModel {
    table: "subject_tags",
    key: &["tenant_id", "kind", "subject_id"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("kind", Type::TEXT),
        col("subject_id", Type::TEXT),
        col("tag_ids", Type::JSONB),
        col("tag_details", Type::JSONB),
        col("created_at", Type::TIMESTAMPTZ),
        col("updated_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &["created_at"],
    newer: None,
};

static HISTORY_MODEL: ReadModel = ReadModel {
    table: "subject_tag_history",
    key: &["tenant_id", "kind", "subject_id", "tag_id", "position"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("kind", Type::TEXT),
        col("subject_id", Type::TEXT),
        col("tag_id", Type::INT4),
        col("action", Type::TEXT),
        col("at", Type::TIMESTAMPTZ),
        col("run_id", Type::UUID),
        col("rule_version", Type::INT4),
        col("position", Type::INT8),
    ],
    keep_on_update: &[],
    newer: None,
};

/// Applies one batch of changes: the new set is `(old − removed) ∪ added`, details of
/// removed tags dropped and of added ones set; `updated_at` moves only when the set
/// changes, `created_at` never.
const APPLY_CHANGES_SQL: &str = "\
WITH u AS (
    SELECT u.id, u.added, u.removed,
           ARRAY(SELECT jsonb_array_elements_text(u.removed)) AS removed_keys,
           coalesce((SELECT jsonb_object_agg(a, $4::jsonb -> a)
                       FROM jsonb_array_elements_text(u.added) a), '{}'::jsonb) AS details
      FROM unnest($3::text[], $5::jsonb[], $6::jsonb[]) AS u(id, added, removed)),
changed AS (
    UPDATE subject_tags t
       SET tag_ids = cloudlens_tag_set(t.tag_ids, u.added, u.removed),
           tag_details = (t.tag_details - u.removed_keys) || u.details,
           updated_at = CASE WHEN cloudlens_tag_set(t.tag_ids, u.added, u.removed) = t.tag_ids
                             THEN t.updated_at ELSE $7 END
      FROM u
     WHERE t.tenant_id = $1 AND t.kind = $2 AND t.subject_id = u.id
    RETURNING t.subject_id)
INSERT INTO subject_tags (tenant_id, kind, subject_id, tag_ids, tag_details, created_at, updated_at)
SELECT $1, $2, u.id, cloudlens_tag_set('[]'::jsonb, u.added, '[]'::jsonb), u.details, $7, $7
  FROM u
 WHERE NOT EXISTS (SELECT 1 FROM changed c WHERE c.subject_id = u.id)";

struct HistoryRow {
    tenant_id: String,
    kind: String,
    subject_id: String,
    tag_id: i32,
    action: &'static str,
    at: DateTime<Utc>,
    run_id: Option<uuid::Uuid>,
    rule_version: Option<i32>,
    position: i64,
}

impl Row for HistoryRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant_id,
            &self.kind,
            &self.subject_id,
            &self.tag_id,
            &self.action,
            &self.at,
            &self.run_id,
            &self.rule_version,
            &self.position,
        ]
    }
}

pub struct SubjectTagsProjector;

#[async_trait]
impl Projector for SubjectTagsProjector {
    type Aggregate = TagRun;
    const NAME: &'static str = SUBJECT_TAGS;
    const READ_MODELS: &'static [&'static ReadModel] = &[&SUBJECT_TAGS_MODEL, &HISTORY_MODEL];

    fn options(&self) -> ProjectorOptions {
        ProjectorOptions {
            durable_commit: false,
            batch_size: Some(20),
        }
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<TagRunEvent>>,
    ) -> anyhow::Result<()> {
        let apply = tx.prepare(APPLY_CHANGES_SQL).await?;
        let mut history = Vec::new();
        for e in events {
            let TagRunEvent::TagsChanged {
                subject_kind,
                run_id,
                tags,
                changes,
            } = e.event
            else {
                continue;
            };
            let details: serde_json::Map<String, Value> = tags
                .iter()
                .map(|(id, t)| {
                    (
                        id.to_string(),
                        json!({"code": t.code, "name": t.name, "category": t.category,
                               "rule_version": t.rule_version, "assigned_at": e.recorded_at}),
                    )
                })
                .collect();
            let details = Value::Object(details);
            let mut ids = Vec::with_capacity(changes.len());
            let mut added = Vec::with_capacity(changes.len());
            let mut removed = Vec::with_capacity(changes.len());
            for c in changes {
                for (list, action) in [(&c.added, "added"), (&c.removed, "removed")] {
                    for t in list {
                        history.push(HistoryRow {
                            tenant_id: e.tenant_id.clone(),
                            kind: subject_kind.clone(),
                            subject_id: c.subject_id.clone(),
                            tag_id: *t,
                            action,
                            at: e.recorded_at,
                            run_id: Some(run_id),
                            rule_version: tags.get(t).map(|t| t.rule_version),
                            position: e.position,
                        });
                    }
                }
                added.push(json!(c.added));
                removed.push(json!(c.removed));
                ids.push(c.subject_id);
            }
            tx.execute(
                &apply,
                &[
                    &e.tenant_id,
                    &subject_kind,
                    &ids,
                    &details,
                    &added,
                    &removed,
                    &e.recorded_at,
                ],
            )
            .await?;
        }
        HISTORY_MODEL.insert(tx, &history).await
    }
}

/// The schema row of a kind, as the queries read it.
pub fn schema_from_row(
    kind: String,
    id_field: String,
    primary_source: String,
    attributes: Value,
) -> anyhow::Result<KindSchema> {
    Ok(KindSchema {
        kind,
        id_field,
        primary_source,
        attributes: serde_json::from_value(attributes)?,
    })
}
