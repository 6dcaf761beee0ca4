//! Projectors of the tagging context.
//!
//! - `subject_kinds`, `tag_categories`, `tags`: the definitions (few rows, written per
//!   event);
//! - `subject_attributes`: import batches merged into one record per subject, with each
//!   source's `updated_time`, one multi-row statement per batch of ~1,000 rows; sealed
//!   sensitive values opened with the subject's data key, or left out (erased) when the
//!   key was destroyed; `SubjectForgotten` destroys the keys and erases the values;
//! - `subject_tags`: the tag changes of runs and manual tags, folded per batch in memory
//!   and written with one staged upsert, plus the history (`subject_tag_history`, one row
//!   per subject and event) and each event's tags (`tag_change_sets`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use std::collections::BTreeMap;

use super::aggregate::{
    SubjectErasure, SubjectImport, SubjectKind, SubjectManualTags, Tag, TagCategory, TagRun,
};
use super::events::{
    sealing_context, AppliedTag, ManualTagEvent, RowsImported, SubjectChange, SubjectErasureEvent,
    SubjectKindEvent, TagCategoryEvent, TagEvent, TagRunEvent,
};
use crate::crypto::Vault;
use crate::eventstore::RecordedEvent;
use crate::pipeline::EventSourced;
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Envelope, Lane, Projection, Projector, ProjectorOptions};

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
        col("source_times", Type::JSONB),
        col("max_updated", Type::TIMESTAMPTZ),
        col("erased", Type::TEXT_ARRAY),
        col("erased_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &[],
    newer: None,
};

/// A source row replaces that source's columns of the subject: the file's columns are
/// removed first (a null is an absent key), then its non-null values merged in; the
/// source's `updated_time` is recorded. The batch's payload goes to PostgreSQL as it is
/// stored and is unpacked there: the rows are never decoded into Rust values and encoded
/// again. Each lane keeps the rows of the subjects it owns, by `cloudlens_lane` (sql/V27).
const MERGE_ATTRIBUTES_SQL: &str = "\
WITH ev AS (SELECT $2::jsonb AS p)
INSERT INTO subject_attributes AS s
       (tenant_id, kind, subject_id, is_subject, attrs, source_times, max_updated)
SELECT $1, ev.p ->> 'kind', r ->> 'id', (ev.p ->> 'primary')::boolean, r -> 'attrs',
       jsonb_build_object(ev.p ->> 'source', r -> 'updated_time'),
       (r ->> 'updated_time')::timestamptz
  FROM ev, jsonb_array_elements(ev.p -> 'rows') r
 WHERE cloudlens_lane(r ->> 'id', $3) = $4
ON CONFLICT (tenant_id, kind, subject_id) DO UPDATE
   SET attrs = (s.attrs - (SELECT ARRAY(SELECT jsonb_array_elements_text(ev.p -> 'columns'))
                             FROM ev)) || EXCLUDED.attrs,
       is_subject = s.is_subject OR EXCLUDED.is_subject,
       source_times = s.source_times || EXCLUDED.source_times,
       max_updated = greatest(s.max_updated, EXCLUDED.max_updated)";

const ERASE_SQL: &str = "\
UPDATE subject_attributes
   SET attrs = attrs - $4::text[], erased = $4, erased_at = $5
 WHERE tenant_id = $1 AND kind = $2 AND subject_id = $3";

/// Import batches, applied in PostgreSQL: a `Projection` over the raw events, so the
/// thousand rows of each are not decoded here (their shape is `events::RowsImported`) —
/// unless they hold sealed values, which only the server can open.
pub struct SubjectAttributesProjector {
    vault: Vault,
}

impl SubjectAttributesProjector {
    pub fn new(vault: Vault) -> Self {
        Self { vault }
    }

    /// The batch with its sealed values opened into `attrs`, or left out where the data
    /// key is destroyed (the subject was forgotten).
    async fn open(&self, tx: &Transaction<'_>, e: &RecordedEvent) -> anyhow::Result<RowsImported> {
        let mut batch: RowsImported = serde_json::from_str(e.payload.get())?;
        let ids: Vec<uuid::Uuid> = batch
            .rows
            .iter()
            .filter_map(|r| r.sealed.as_ref().map(|s| s.key))
            .collect();
        let keys = super::keys::by_id(tx, &self.vault, &ids).await?;
        for row in &mut batch.rows {
            let Some(sealed) = row.sealed.take() else {
                continue;
            };
            let Some(key) = keys.get(&sealed.key) else {
                continue; // destroyed: erased
            };
            let context = sealing_context(&e.tenant_id, &batch.kind, &row.id, &batch.source);
            let values: serde_json::Map<String, Value> =
                serde_json::from_slice(&key.open(&context, &sealed.data)?)?;
            row.attrs.extend(values);
        }
        Ok(batch)
    }
}

#[async_trait]
impl Projection for SubjectAttributesProjector {
    fn name(&self) -> &'static str {
        SUBJECT_ATTRIBUTES
    }

    fn stream_types(&self) -> &[&'static str] {
        &[SubjectImport::STREAM_TYPE, SubjectErasure::STREAM_TYPE]
    }

    fn tables(&self) -> Vec<&'static str> {
        vec![ATTRIBUTES_MODEL.table]
    }

    fn options(&self) -> ProjectorOptions {
        // Import events are large (1,000 rows each): fewer per batch. Subjects are split
        // by id over two lanes (ADR 0031), as `subject_tags` is.
        ProjectorOptions {
            durable_commit: false,
            batch_size: Some(50),
            lanes: 2,
        }
    }

    /// One statement per import batch (ids are distinct within a batch, not across).
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: &[RecordedEvent],
        lane: Lane,
    ) -> anyhow::Result<()> {
        let merge = tx.prepare(MERGE_ATTRIBUTES_SQL).await?;
        let (count, index) = lane.sql_params();
        for e in events {
            match e.event_type.as_str() {
                ROWS_IMPORTED => {
                    anyhow::ensure!(
                        e.schema_version == 1,
                        "RowsImported v{} has no upcaster",
                        e.schema_version
                    );
                    // A cheap test first: most batches hold nothing sealed.
                    if e.payload.get().contains("\"sealed\"") {
                        let opened = tokio_postgres::types::Json(self.open(tx, e).await?);
                        tx.execute(&merge, &[&e.tenant_id, &opened, &count, &index])
                            .await?;
                    } else {
                        let payload = tokio_postgres::types::Json(&e.payload);
                        tx.execute(&merge, &[&e.tenant_id, &payload, &count, &index])
                            .await?;
                    }
                }
                SUBJECT_FORGOTTEN => {
                    let SubjectErasureEvent::SubjectForgotten {
                        kind,
                        subject_id,
                        attributes,
                        ..
                    } = SubjectErasure::decode(e)?;
                    if !lane.owns_in_sql(tx, &subject_id).await? {
                        continue;
                    }
                    // The command destroyed them already; certain once applied, a no-op
                    // on replays.
                    let subject = (e.tenant_id.as_str(), kind.as_str());
                    super::keys::destroy(tx, subject, &subject_id, e.recorded_at).await?;
                    tx.execute(
                        ERASE_SQL,
                        &[
                            &e.tenant_id,
                            &kind,
                            &subject_id,
                            &attributes,
                            &e.recorded_at,
                        ],
                    )
                    .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// `event_type` of `SubjectErasureEvent::SubjectForgotten`.
const SUBJECT_FORGOTTEN: &str = "SubjectForgotten";

/// `event_type` of `SubjectImportEvent::RowsImported`.
const ROWS_IMPORTED: &str = "RowsImported";

static SUBJECT_TAGS_MODEL: ReadModel = ReadModel {
    table: "subject_tags",
    key: &["tenant_id", "kind", "subject_id"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("kind", Type::TEXT),
        col("subject_id", Type::TEXT),
        col("tag_ids", Type::JSONB),
        col("assigned", Type::JSONB),
        col("created_at", Type::TIMESTAMPTZ),
        col("updated_at", Type::TIMESTAMPTZ),
    ],
    keep_on_update: &["created_at"],
    newer: None,
};

static HISTORY_MODEL: ReadModel = ReadModel {
    table: "subject_tag_history",
    key: &["tenant_id", "kind", "subject_id", "position"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("kind", Type::TEXT),
        col("subject_id", Type::TEXT),
        col("position", Type::INT8),
        col("at", Type::TIMESTAMPTZ),
        col("run_id", Type::UUID),
        col("added", Type::INT4_ARRAY),
        col("removed", Type::INT4_ARRAY),
    ],
    keep_on_update: &[],
    newer: None,
};

static CHANGE_SETS_MODEL: ReadModel = ReadModel {
    table: "tag_change_sets",
    key: &["position"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("position", Type::INT8),
        col("at", Type::TIMESTAMPTZ),
        col("run_id", Type::UUID),
        col("tags", Type::JSONB),
    ],
    keep_on_update: &[],
    newer: None,
};

/// The current tags of the subjects a batch touches, by primary key.
const CURRENT_TAGS_SQL: &str = "\
SELECT subject_id, tag_ids, assigned, created_at, updated_at FROM subject_tags
 WHERE tenant_id = $1 AND kind = $2 AND subject_id = ANY($3)";

/// A subject's tags while a batch is applied.
struct TagSet {
    ids: std::collections::BTreeSet<i32>,
    /// Tag id → position of the event that assigned it.
    assigned: serde_json::Map<String, Value>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    /// Whether the row exists in the table (else it is written with a plain COPY).
    stored: bool,
}

struct SubjectTagsRow {
    tenant_id: String,
    kind: String,
    subject_id: String,
    tag_ids: Value,
    assigned: Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row for SubjectTagsRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant_id,
            &self.kind,
            &self.subject_id,
            &self.tag_ids,
            &self.assigned,
            &self.created_at,
            &self.updated_at,
        ]
    }
}

struct HistoryRow {
    tenant_id: String,
    kind: String,
    subject_id: String,
    position: i64,
    at: DateTime<Utc>,
    run_id: Option<uuid::Uuid>,
    added: Vec<i32>,
    removed: Vec<i32>,
}

impl Row for HistoryRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant_id,
            &self.kind,
            &self.subject_id,
            &self.position,
            &self.at,
            &self.run_id,
            &self.added,
            &self.removed,
        ]
    }
}

struct ChangeSetRow {
    tenant_id: String,
    position: i64,
    at: DateTime<Utc>,
    run_id: Option<uuid::Uuid>,
    tags: Value,
}

impl Row for ChangeSetRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant_id,
            &self.position,
            &self.at,
            &self.run_id,
            &self.tags,
        ]
    }
}

/// One event's changes, decoded.
struct Changes {
    tenant_id: String,
    kind: String,
    position: i64,
    at: DateTime<Utc>,
    run_id: Option<uuid::Uuid>,
    tags: BTreeMap<i32, AppliedTag>,
    changes: Vec<SubjectChange>,
}

/// The `subject_tags` projector reads two aggregates — runs and manual tags — so it is
/// a `Projection` that decodes each event by its stream type. A batch is applied
/// set-wise: one read of the current tags of every subject it touches (by primary
/// key), the changes folded in memory in log order, one staged upsert of the results,
/// and COPY of the history (one row per subject and event) and of each event's tags.
pub struct SubjectTagsProjector;

impl SubjectTagsProjector {
    fn decode(e: &RecordedEvent) -> anyhow::Result<Option<Changes>> {
        if e.stream_type == TagRun::STREAM_TYPE {
            let TagRunEvent::TagsChanged {
                subject_kind,
                run_id,
                tags,
                changes,
            } = TagRun::decode(e)?
            else {
                return Ok(None);
            };
            return Ok(Some(Changes {
                tenant_id: e.tenant_id.clone(),
                kind: subject_kind,
                position: e.position,
                at: e.recorded_at,
                run_id: Some(run_id),
                tags,
                changes,
            }));
        }
        let event: ManualTagEvent = SubjectManualTags::decode(e)?;
        let (kind, subject_id, change, tags) = match event {
            ManualTagEvent::ManualTagAssigned {
                subject_kind,
                subject_id,
                tag_id,
                tag,
            } => (
                subject_kind,
                subject_id,
                (vec![tag_id], vec![]),
                BTreeMap::from([(tag_id, tag)]),
            ),
            ManualTagEvent::ManualTagRemoved {
                subject_kind,
                subject_id,
                tag_id,
            } => (
                subject_kind,
                subject_id,
                (vec![], vec![tag_id]),
                BTreeMap::new(),
            ),
        };
        Ok(Some(Changes {
            tenant_id: e.tenant_id.clone(),
            kind,
            position: e.position,
            at: e.recorded_at,
            run_id: None,
            tags,
            changes: vec![SubjectChange {
                subject_id,
                added: change.0,
                removed: change.1,
            }],
        }))
    }
}

type SubjectKey = (String, String, String);

#[async_trait]
impl Projection for SubjectTagsProjector {
    fn name(&self) -> &'static str {
        SUBJECT_TAGS
    }

    fn stream_types(&self) -> &[&'static str] {
        &[TagRun::STREAM_TYPE, SubjectManualTags::STREAM_TYPE]
    }

    fn tables(&self) -> Vec<&'static str> {
        vec![
            SUBJECT_TAGS_MODEL.table,
            HISTORY_MODEL.table,
            CHANGE_SETS_MODEL.table,
        ]
    }

    fn options(&self) -> ProjectorOptions {
        // Run batches are large (1,000 subjects each): a few dozen per transaction.
        // Subjects are split by id over two lanes, one per core of the machine this was
        // measured on (ADR 0031); the change sets, one per event, are lane 0's.
        ProjectorOptions {
            durable_commit: false,
            batch_size: Some(50),
            lanes: 2,
        }
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: &[RecordedEvent],
        lane: Lane,
    ) -> anyhow::Result<()> {
        let mut decoded = Vec::new();
        for e in events {
            decoded.extend(Self::decode(e)?.map(|mut c| {
                c.changes.retain(|s| lane.owns(s.subject_id.as_bytes()));
                c
            }));
        }
        // Read the current tags of every subject the batch touches.
        let mut wanted: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for c in &decoded {
            let ids = wanted
                .entry((c.tenant_id.clone(), c.kind.clone()))
                .or_default();
            ids.extend(c.changes.iter().map(|s| s.subject_id.clone()));
        }
        let mut sets: std::collections::HashMap<SubjectKey, TagSet> =
            std::collections::HashMap::new();
        for ((tenant, kind), mut ids) in wanted {
            ids.sort_unstable();
            ids.dedup();
            for r in tx.query(CURRENT_TAGS_SQL, &[&tenant, &kind, &ids]).await? {
                let tag_ids: tokio_postgres::types::Json<Vec<i32>> = r.try_get(1)?;
                let assigned: tokio_postgres::types::Json<serde_json::Map<String, Value>> =
                    r.try_get(2)?;
                sets.insert(
                    (tenant.clone(), kind.clone(), r.try_get(0)?),
                    TagSet {
                        ids: tag_ids.0.into_iter().collect(),
                        assigned: assigned.0,
                        created_at: Some(r.try_get(3)?),
                        updated_at: Some(r.try_get(4)?),
                        stored: true,
                    },
                );
            }
        }
        // Fold the changes in log order.
        let mut history = Vec::new();
        let mut change_sets = Vec::new();
        let mut touched: Vec<SubjectKey> = Vec::new();
        for c in decoded {
            for change in c.changes {
                let key = (c.tenant_id.clone(), c.kind.clone(), change.subject_id);
                let set = sets.entry(key.clone()).or_insert_with(|| {
                    touched.push(key.clone());
                    TagSet {
                        ids: Default::default(),
                        assigned: Default::default(),
                        created_at: None,
                        updated_at: None,
                        stored: false,
                    }
                });
                let before = set.ids.clone();
                for t in &change.removed {
                    set.ids.remove(t);
                    set.assigned.remove(&t.to_string());
                }
                for t in &change.added {
                    if set.ids.insert(*t) {
                        set.assigned.insert(t.to_string(), json!(c.position));
                    }
                }
                if set.ids != before {
                    set.updated_at = Some(c.at);
                    set.created_at.get_or_insert(c.at);
                }
                history.push(HistoryRow {
                    tenant_id: key.0.clone(),
                    kind: key.1.clone(),
                    subject_id: key.2.clone(),
                    position: c.position,
                    at: c.at,
                    run_id: c.run_id,
                    added: change.added,
                    removed: change.removed,
                });
                touched.push(key);
            }
            if !lane.is_first() {
                continue;
            }
            change_sets.push(ChangeSetRow {
                tenant_id: c.tenant_id,
                position: c.position,
                at: c.at,
                run_id: c.run_id,
                tags: serde_json::to_value(&c.tags)?,
            });
        }
        touched.sort_unstable();
        touched.dedup();
        let (mut new, mut stored) = (Vec::new(), Vec::new());
        for key in touched {
            let Some(set) = sets.remove(&key) else {
                continue;
            };
            let (Some(created_at), Some(updated_at)) = (set.created_at, set.updated_at) else {
                continue; // never held a tag: no row
            };
            let row = SubjectTagsRow {
                tenant_id: key.0,
                kind: key.1,
                subject_id: key.2,
                tag_ids: json!(set.ids),
                assigned: Value::Object(set.assigned),
                created_at,
                updated_at,
            };
            if set.stored {
                stored.push(row);
            } else {
                new.push(row);
            }
        }
        // Subjects tagged for the first time (all of them in a first run) go in with a
        // plain COPY; the others through the staged upsert.
        SUBJECT_TAGS_MODEL.insert(tx, &new).await?;
        SUBJECT_TAGS_MODEL.upsert(tx, &stored).await?;
        HISTORY_MODEL.insert(tx, &history).await?;
        CHANGE_SETS_MODEL.insert(tx, &change_sets).await
    }
}
