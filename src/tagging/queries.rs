//! Reads of the tagging context: only its read models (and the `jobs` rows of its runs).
//! Fixed queries are named constants prepared once per read connection; the few whose
//! shape depends on the filters (tag filters, a previewed rule) are built from checked
//! parts and parameterised.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio_postgres::types::{Json, ToSql};
use utoipa::ToSchema;
use uuid::Uuid;

use super::events::{Attribute, KindSchema, TagRunStats};
use super::rules;
use super::run::{field_sql, to_sql, JOB_KIND};
use crate::db::{QueryError, ReadConnection};

const KIND_SQL: &str = "\
SELECT kind, id_field, primary_source, attributes, version, updated_at FROM subject_kinds
 WHERE tenant_id = $1 AND kind = $2";
const CATEGORIES_SQL: &str = "\
SELECT code, name, created_at FROM tag_categories WHERE tenant_id = $1 ORDER BY code";
const CATEGORY_EXISTS_SQL: &str = "SELECT 1 FROM tag_categories WHERE tenant_id = $1 AND code = $2";
macro_rules! tag_columns {
    () => {
        "id, code, name, category, tag_kind, subject_kind, description, rule, rule_version, \
         retired, version, created_at, updated_at"
    };
}
const TAG_SQL: &str = concat!(
    "SELECT ",
    tag_columns!(),
    " FROM tags WHERE tenant_id = $1 AND id = $2"
);
const TAGS_SQL: &str = concat!(
    "SELECT ",
    tag_columns!(),
    " FROM tags WHERE tenant_id = $1 AND ($2::text IS NULL OR category = $2)
        AND ($3::text IS NULL OR subject_kind = $3) AND ($4::text IS NULL OR tag_kind = $4)
        AND (NOT retired OR $5) ORDER BY id"
);
/// The details of each tag are those of the event that assigned it.
const SUBJECT_TAGS_SQL: &str = "\
SELECT t.tag_ids,
       (SELECT coalesce(jsonb_object_agg(a.key, (c.tags -> a.key)
                          || jsonb_build_object('assigned_at', c.at)), '{}'::jsonb)
          FROM jsonb_each(t.assigned) a
          JOIN tag_change_sets c ON c.position = a.value::bigint),
       t.created_at, t.updated_at
  FROM subject_tags t
 WHERE t.tenant_id = $1 AND t.kind = $2 AND t.subject_id = $3";
const SUBJECT_SQL: &str = "\
SELECT is_subject, attrs FROM subject_attributes
 WHERE tenant_id = $1 AND kind = $2 AND subject_id = $3";
const HISTORY_SQL: &str = "\
SELECT h.position, h.at, h.run_id, h.added, h.removed, c.tags
  FROM subject_tag_history h
  LEFT JOIN tag_change_sets c ON c.position = h.position
 WHERE h.tenant_id = $1 AND h.kind = $2 AND h.subject_id = $3
 ORDER BY h.position";
macro_rules! run_columns {
    () => {
        "id, params, state, progress, error, restarts, attempts, position, requested_at, \
         started_at, finished_at"
    };
}
const RUN_SQL: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM jobs WHERE tenant_id = $1 AND kind = $2 AND id = $3"
);
const RUNS_SQL: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM jobs WHERE tenant_id = $1 AND kind = $2 ORDER BY requested_at DESC LIMIT $3"
);
const HOLDERS_SQL: &str = "\
SELECT (SELECT count(*) FROM subject_tags WHERE tenant_id = $1 AND kind = $2 AND tag_ids @> $3),
       (SELECT count(*) FROM subject_attributes WHERE tenant_id = $1 AND kind = $2 AND is_subject)";
const LAST_RUN_OF_TAG_SQL: &str = "\
SELECT id, result -> 'per_tag' -> $3, (result ->> 'subjects_evaluated')::bigint,
       (result ->> 'duration_ms')::bigint, finished_at, params ->> 'as_of'
  FROM jobs
 WHERE tenant_id = $1 AND kind = $2 AND state = 'succeeded' AND result -> 'per_tag' ? $3
 ORDER BY finished_at DESC LIMIT 1";

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KindView {
    pub kind: String,
    pub id_field: String,
    pub primary_source: String,
    pub attributes: Vec<Attribute>,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl KindView {
    pub fn schema(&self) -> KindSchema {
        KindSchema {
            kind: self.kind.clone(),
            id_field: self.id_field.clone(),
            primary_source: self.primary_source.clone(),
            attributes: self.attributes.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportResult {
    pub import_id: Uuid,
    /// Rows applied.
    pub rows: i64,
    /// Global position of the import's last event (for `min_position`).
    pub position: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategoryView {
    pub code: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TagView {
    pub id: i32,
    pub code: String,
    pub name: String,
    pub category: String,
    /// AUTO or MANUAL.
    pub kind: String,
    pub subject_kind: String,
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub rule: Option<Box<RawValue>>,
    pub rule_version: i32,
    pub retired: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TagList {
    pub items: Vec<TagView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Preview {
    /// Subjects of the kind the rule matches now.
    pub matched: i64,
    /// Subjects of the kind.
    pub subjects: i64,
    /// Up to 10 matching subject ids, in id order.
    pub sample: Vec<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastRun {
    pub run_id: Uuid,
    pub subjects_evaluated: i64,
    #[serde(flatten)]
    pub stats: TagRunStats,
    pub duration_ms: i64,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TagStats {
    pub tag_id: i32,
    /// Subjects holding the tag now.
    pub subjects: i64,
    /// `subjects` / subjects of the kind (0 when the kind has none).
    pub coverage: f64,
    /// The last successful run that covered the tag.
    pub last_run: Option<LastRun>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunAccepted {
    pub run_id: Uuid,
    pub position: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    pub run_id: Uuid,
    pub subject_kind: String,
    /// queued, running, succeeded or failed.
    pub state: String,
    pub subjects_in_scope: Option<i64>,
    pub subjects_evaluated: Option<i64>,
    pub tags_added: Option<i64>,
    pub tags_removed: Option<i64>,
    /// Given subject ids that are not subjects of the kind.
    pub unknown_subject_ids: Option<i64>,
    /// What the run is doing now (while it runs).
    pub phase: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    /// Position of the request.
    pub position: i64,
    /// How often the run was started again because the server running it stopped.
    pub restarts: i32,
    pub error: Option<String>,
    #[schema(value_type = Object)]
    pub request: Value,
    /// A finished run: milliseconds spent evaluating (changes staged meanwhile),
    /// appending, and until the tags were readable.
    #[schema(value_type = Option<Object>)]
    pub phases_ms: Option<Value>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunList {
    pub items: Vec<RunView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubjectTagsView {
    pub subject_id: String,
    #[schema(value_type = Vec<i32>)]
    pub tag_ids: Box<RawValue>,
    #[schema(value_type = Object)]
    pub tag_details: Box<RawValue>,
    /// First assignment (absent while the subject never had a tag).
    pub created_at: Option<DateTime<Utc>>,
    /// Last change of the tag set.
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubjectItem {
    pub subject_id: String,
    #[schema(value_type = Vec<i32>)]
    pub tag_ids: Box<RawValue>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubjectPage {
    pub items: Vec<SubjectItem>,
    pub next_cursor: Option<String>,
    /// Exact number of matching subjects (`count=true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExplainView {
    pub subject_id: String,
    pub tag_id: i32,
    pub rule_version: i32,
    /// What the current rule gives for the subject's current data.
    pub result: bool,
    /// Whether the subject holds the tag now (what the last run stored).
    pub stored: bool,
    /// The instant `recent_days` was measured from (the last run's `as_of`, else now).
    pub as_of: DateTime<Utc>,
    /// Present when `result` and `stored` differ: why.
    pub note: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub conditions: Vec<rules::ConditionCheck>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub tag_id: i32,
    /// added or removed.
    pub action: String,
    pub at: DateTime<Utc>,
    /// run (with `run_id` and `rule_version`) or manual.
    pub cause: String,
    pub run_id: Option<Uuid>,
    pub rule_version: Option<i32>,
    pub position: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryView {
    pub subject_id: String,
    pub items: Vec<HistoryEntry>,
}

pub async fn kind(
    conn: &ReadConnection,
    tenant: &str,
    kind: &str,
) -> Result<Option<KindView>, QueryError> {
    let Some(r) = conn.query_opt(KIND_SQL, &[&tenant, &kind]).await? else {
        return Ok(None);
    };
    let attributes: Json<Vec<Attribute>> = r.try_get(3)?;
    Ok(Some(KindView {
        kind: r.try_get(0)?,
        id_field: r.try_get(1)?,
        primary_source: r.try_get(2)?,
        attributes: attributes.0,
        version: r.try_get(4)?,
        updated_at: r.try_get(5)?,
    }))
}

pub async fn categories(
    conn: &ReadConnection,
    tenant: &str,
) -> Result<Vec<CategoryView>, QueryError> {
    conn.query(CATEGORIES_SQL, &[&tenant])
        .await?
        .iter()
        .map(|r| {
            Ok(CategoryView {
                code: r.try_get(0)?,
                name: r.try_get(1)?,
                created_at: r.try_get(2)?,
            })
        })
        .collect()
}

pub async fn category_exists(
    conn: &ReadConnection,
    tenant: &str,
    code: &str,
) -> Result<bool, QueryError> {
    Ok(conn
        .query_opt(CATEGORY_EXISTS_SQL, &[&tenant, &code])
        .await?
        .is_some())
}

fn tag_view(r: &tokio_postgres::Row) -> Result<TagView, QueryError> {
    Ok(TagView {
        id: r.try_get(0)?,
        code: r.try_get(1)?,
        name: r.try_get(2)?,
        category: r.try_get(3)?,
        kind: r.try_get(4)?,
        subject_kind: r.try_get(5)?,
        description: r.try_get(6)?,
        rule: r.try_get::<_, Option<Json<Box<RawValue>>>>(7)?.map(|j| j.0),
        rule_version: r.try_get(8)?,
        retired: r.try_get(9)?,
        version: r.try_get(10)?,
        created_at: r.try_get(11)?,
        updated_at: r.try_get(12)?,
    })
}

pub async fn tag(
    conn: &ReadConnection,
    tenant: &str,
    id: i32,
) -> Result<Option<TagView>, QueryError> {
    conn.query_opt(TAG_SQL, &[&tenant, &id])
        .await?
        .as_ref()
        .map(tag_view)
        .transpose()
}

/// Filters of the tag list.
#[derive(Debug, Default)]
pub struct TagFilter {
    pub category: Option<String>,
    pub subject_kind: Option<String>,
    pub kind: Option<String>,
    pub include_retired: bool,
}

pub async fn tags(
    conn: &ReadConnection,
    tenant: &str,
    f: &TagFilter,
) -> Result<TagList, QueryError> {
    let rows = conn
        .query(
            TAGS_SQL,
            &[
                &tenant,
                &f.category,
                &f.subject_kind,
                &f.kind,
                &f.include_retired,
            ],
        )
        .await?;
    Ok(TagList {
        items: rows.iter().map(tag_view).collect::<Result<_, _>>()?,
    })
}

/// The tags of one subject: `None` for an id that is not a subject of the kind.
pub async fn subject_tags(
    conn: &ReadConnection,
    tenant: &str,
    kind: &str,
    id: &str,
) -> Result<Option<SubjectTagsView>, QueryError> {
    if let Some(r) = conn
        .query_opt(SUBJECT_TAGS_SQL, &[&tenant, &kind, &id])
        .await?
    {
        return Ok(Some(SubjectTagsView {
            subject_id: id.to_owned(),
            tag_ids: r.try_get::<_, Json<Box<RawValue>>>(0)?.0,
            tag_details: r.try_get::<_, Json<Box<RawValue>>>(1)?.0,
            created_at: Some(r.try_get(2)?),
            updated_at: Some(r.try_get(3)?),
        }));
    }
    let subject = conn.query_opt(SUBJECT_SQL, &[&tenant, &kind, &id]).await?;
    if !subject
        .map(|r| r.try_get::<_, bool>(0))
        .transpose()?
        .unwrap_or(false)
    {
        return Ok(None);
    }
    Ok(Some(SubjectTagsView {
        subject_id: id.to_owned(),
        tag_ids: raw("[]"),
        tag_details: raw("{}"),
        created_at: None,
        updated_at: None,
    }))
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap_or_else(|_| Box::<RawValue>::default())
}

/// Filters of the subject list, checked: tag ids as given.
#[derive(Debug, Default)]
pub struct SubjectFilter {
    pub all: Vec<i32>,
    pub any: Vec<i32>,
    pub none: Vec<i32>,
    pub after: Option<String>,
    pub limit: i64,
    pub count: bool,
}

pub fn encode_cursor(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Subjects of a kind by their tags, in pages by subject id. A subject with no tags
/// has none of the `tags_none` ones; `tags_all`/`tags_any` use the GIN index.
pub async fn subjects(
    conn: &ReadConnection,
    tenant: &str,
    kind: &str,
    f: &SubjectFilter,
) -> Result<SubjectPage, QueryError> {
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
        vec![Box::new(tenant.to_owned()), Box::new(kind.to_owned())];
    let mut conditions = Vec::new();
    let add = |params: &mut Vec<Box<dyn ToSql + Sync + Send>>, v: Value| {
        params.push(Box::new(v));
        params.len()
    };
    if !f.all.is_empty() {
        let n = add(&mut params, serde_json::json!(f.all));
        conditions.push(format!("t.tag_ids @> ${n}"));
    }
    if !f.any.is_empty() {
        let ors: Vec<String> = f
            .any
            .iter()
            .map(|t| format!("t.tag_ids @> ${}", add(&mut params, serde_json::json!([t]))))
            .collect();
        conditions.push(format!("({})", ors.join(" OR ")));
    }
    for t in &f.none {
        let n = add(&mut params, serde_json::json!([t]));
        conditions.push(format!("NOT coalesce(t.tag_ids @> ${n}, false)"));
    }
    let from = if f.all.is_empty() && f.any.is_empty() {
        "subject_attributes s LEFT JOIN subject_tags t
           ON t.tenant_id = s.tenant_id AND t.kind = s.kind AND t.subject_id = s.subject_id
         WHERE s.tenant_id = $1 AND s.kind = $2 AND s.is_subject"
    } else {
        "subject_tags t JOIN subject_attributes s
           ON s.tenant_id = t.tenant_id AND s.kind = t.kind AND s.subject_id = t.subject_id
         WHERE t.tenant_id = $1 AND t.kind = $2 AND s.is_subject"
    };
    let filter: String = conditions.iter().map(|c| format!(" AND {c}")).collect();
    let total = if f.count {
        let sql = format!("SELECT count(*) FROM {from}{filter}");
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
        Some(conn.client().query_one(&sql, &refs).await?.try_get(0)?)
    } else {
        None
    };
    params.push(Box::new(f.after.clone().unwrap_or_default()));
    let after = params.len();
    params.push(Box::new(f.limit + 1));
    let limit = params.len();
    let sql = format!(
        "SELECT s.subject_id, coalesce(t.tag_ids, '[]'::jsonb) FROM {from}{filter}
            AND s.subject_id > ${after} ORDER BY s.subject_id LIMIT ${limit}"
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
    let rows = conn.client().query(&sql, &refs).await?;
    let mut items = rows
        .iter()
        .map(|r| {
            Ok(SubjectItem {
                subject_id: r.try_get(0)?,
                tag_ids: r.try_get::<_, Json<Box<RawValue>>>(1)?.0,
            })
        })
        .collect::<Result<Vec<_>, QueryError>>()?;
    let next_cursor = if items.len() as i64 > f.limit {
        items.truncate(f.limit as usize);
        items.last().map(|i| encode_cursor(&i.subject_id))
    } else {
        None
    };
    Ok(SubjectPage {
        items,
        next_cursor,
        total,
    })
}

/// How many subjects of the kind `rule` matches now, with a sample.
pub async fn preview(
    conn: &ReadConnection,
    tenant: &str,
    kind: &str,
    rule: &rules::Rule,
    as_of: DateTime<Utc>,
) -> Result<Preview, QueryError> {
    let compiled = rules::compile(rule, &field_sql, as_of, 3);
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
        vec![Box::new(tenant.to_owned()), Box::new(kind.to_owned())];
    params.extend(compiled.params.iter().map(to_sql));
    let sql = format!(
        "SELECT count(*) FILTER (WHERE m), count(*),
                coalesce((array_agg(subject_id ORDER BY subject_id) FILTER (WHERE m))[1:10], '{{}}')
           FROM (SELECT sc.subject_id, {} AS m FROM subject_attributes sc
                  WHERE sc.tenant_id = $1 AND sc.kind = $2 AND sc.is_subject) x",
        compiled.sql
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as _).collect();
    let r = conn.client().query_one(&sql, &refs).await?;
    Ok(Preview {
        matched: r.try_get(0)?,
        subjects: r.try_get(1)?,
        sample: r.try_get(2)?,
    })
}

/// A subject's merged attributes (`None` when the id is not a subject of the kind).
pub async fn attributes(
    conn: &ReadConnection,
    tenant: &str,
    kind: &str,
    id: &str,
) -> Result<Option<serde_json::Map<String, Value>>, QueryError> {
    let Some(r) = conn.query_opt(SUBJECT_SQL, &[&tenant, &kind, &id]).await? else {
        return Ok(None);
    };
    if !r.try_get::<_, bool>(0)? {
        return Ok(None);
    }
    let attrs: Value = r.try_get(1)?;
    Ok(match attrs {
        Value::Object(m) => Some(m),
        _ => Some(serde_json::Map::new()),
    })
}

const SUBJECT_VIEW_SQL: &str = "\
SELECT attrs, source_times, max_updated, coalesce(erased, '{}'), erased_at
  FROM subject_attributes
 WHERE tenant_id = $1 AND kind = $2 AND subject_id = $3 AND is_subject";

/// A subject's record (`GET /api/v1/subjects/{kind}/{id}`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubjectView {
    pub subject_id: String,
    /// The non-null attributes of all sources, merged (numbers exact, dates RFC 3339).
    #[schema(value_type = Object)]
    pub attributes: Value,
    /// Each source's `updated_time`.
    #[schema(value_type = Object)]
    pub source_times: Value,
    pub updated_at: DateTime<Utc>,
    /// Sensitive attributes erased by a forget (their values are gone from every copy).
    pub erased: Vec<String>,
    pub erased_at: Option<DateTime<Utc>>,
}

pub async fn subject(
    conn: &ReadConnection,
    tenant: &str,
    kind: &str,
    id: &str,
) -> Result<Option<SubjectView>, QueryError> {
    let Some(r) = conn
        .query_opt(SUBJECT_VIEW_SQL, &[&tenant, &kind, &id])
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(SubjectView {
        subject_id: id.to_owned(),
        attributes: r.try_get(0)?,
        source_times: r.try_get(1)?,
        updated_at: r.try_get(2)?,
        erased: r.try_get(3)?,
        erased_at: r.try_get(4)?,
    }))
}

/// Every add and remove of the subject's tags, in log order (by tag within one event).
pub async fn history(
    conn: &ReadConnection,
    tenant: &str,
    kind: &str,
    id: &str,
) -> Result<Vec<HistoryEntry>, QueryError> {
    let mut items = Vec::new();
    for r in conn.query(HISTORY_SQL, &[&tenant, &kind, &id]).await? {
        let position: i64 = r.try_get(0)?;
        let at: DateTime<Utc> = r.try_get(1)?;
        let run_id: Option<Uuid> = r.try_get(2)?;
        let tags: Option<Value> = r.try_get(5)?;
        let mut entries: Vec<(i32, &str)> = Vec::new();
        for (column, action) in [(3, "added"), (4, "removed")] {
            let ids: Vec<i32> = r.try_get(column)?;
            entries.extend(ids.into_iter().map(|t| (t, action)));
        }
        entries.sort_unstable();
        for (tag_id, action) in entries {
            let rule_version = run_id
                .and(tags.as_ref())
                .and_then(|t| t.get(tag_id.to_string())?.get("rule_version")?.as_i64())
                .and_then(|v| i32::try_from(v).ok());
            items.push(HistoryEntry {
                tag_id,
                action: action.to_owned(),
                at,
                cause: if run_id.is_some() { "run" } else { "manual" }.to_owned(),
                run_id,
                rule_version,
                position,
            });
        }
    }
    Ok(items)
}

fn run_view(r: &tokio_postgres::Row) -> Result<RunView, QueryError> {
    let request: Value = r.try_get(1)?;
    let progress: Value = r.try_get(3)?;
    let int = |k: &str| progress.get(k).and_then(Value::as_i64);
    Ok(RunView {
        run_id: r.try_get(0)?,
        subject_kind: request
            .get("subject_kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        state: r.try_get(2)?,
        subjects_in_scope: int("subjects_in_scope"),
        subjects_evaluated: int("subjects_evaluated"),
        tags_added: int("tags_added"),
        tags_removed: int("tags_removed"),
        unknown_subject_ids: int("unknown_subject_ids"),
        phase: progress
            .get("phase")
            .and_then(Value::as_str)
            .map(str::to_owned),
        error: r.try_get(4)?,
        restarts: r.try_get(5)?,
        position: r.try_get(7)?,
        requested_at: r.try_get(8)?,
        started_at: r.try_get(9)?,
        finished_at: r.try_get(10)?,
        duration_ms: int("duration_ms"),
        phases_ms: progress.get("phases_ms").cloned(),
        request,
    })
}

pub async fn run(
    conn: &ReadConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<RunView>, QueryError> {
    conn.query_opt(RUN_SQL, &[&tenant, &JOB_KIND, &id])
        .await?
        .as_ref()
        .map(run_view)
        .transpose()
}

pub async fn runs(conn: &ReadConnection, tenant: &str, limit: i64) -> Result<RunList, QueryError> {
    Ok(RunList {
        items: conn
            .query(RUNS_SQL, &[&tenant, &JOB_KIND, &limit])
            .await?
            .iter()
            .map(run_view)
            .collect::<Result<_, _>>()?,
    })
}

pub async fn stats(
    conn: &ReadConnection,
    tenant: &str,
    kind: &str,
    tag_id: i32,
) -> Result<TagStats, QueryError> {
    let r = conn
        .query_opt(HOLDERS_SQL, &[&tenant, &kind, &serde_json::json!([tag_id])])
        .await?;
    let (holders, subjects): (i64, i64) = match r {
        Some(r) => (r.try_get(0)?, r.try_get(1)?),
        None => (0, 0),
    };
    let key = tag_id.to_string();
    let last_run = match conn
        .query_opt(LAST_RUN_OF_TAG_SQL, &[&tenant, &JOB_KIND, &key])
        .await?
    {
        None => None,
        Some(r) => {
            let stats: Value = r.try_get(1)?;
            Some(LastRun {
                run_id: r.try_get(0)?,
                stats: serde_json::from_value(stats).unwrap_or_default(),
                subjects_evaluated: r.try_get::<_, Option<i64>>(2)?.unwrap_or(0),
                duration_ms: r.try_get::<_, Option<i64>>(3)?.unwrap_or(0),
                finished_at: r.try_get(4)?,
            })
        }
    };
    Ok(TagStats {
        tag_id,
        subjects: holders,
        coverage: if subjects == 0 {
            0.0
        } else {
            holders as f64 / subjects as f64
        },
        last_run,
    })
}

/// The `as_of` of the last successful run that covered the tag, if any.
pub async fn last_run_as_of(
    conn: &ReadConnection,
    tenant: &str,
    tag_id: i32,
) -> Result<Option<DateTime<Utc>>, QueryError> {
    let key = tag_id.to_string();
    let Some(r) = conn
        .query_opt(LAST_RUN_OF_TAG_SQL, &[&tenant, &JOB_KIND, &key])
        .await?
    else {
        return Ok(None);
    };
    let as_of: Option<String> = r.try_get(5)?;
    Ok(as_of
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc)))
}

/// A new tag id (from the `tag_ids` sequence; gaps are harmless).
pub async fn next_tag_id(pool: &deadpool_postgres::Pool) -> Result<i32, QueryError> {
    let client = pool.get().await?;
    Ok(client
        .query_one("SELECT nextval('tag_ids')::int", &[])
        .await?
        .try_get(0)?)
}
