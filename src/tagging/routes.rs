//! HTTP endpoints of the tagging context.

use actix_web::http::{header, StatusCode};
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::aggregate::{
    ManualServices, SubjectErasure, SubjectImport, SubjectKind, SubjectManualTags, Tag,
    TagCategory, TagRun, TagServices, TaggingError,
};
use super::commands::{
    CategoryDraft, KindDraft, ManualTagCommand, RuleDraft, RunDraft, TagCategoryCommand,
    TagCommand, TagDraft, TagRunCommand,
};
use super::events::{SubjectErasureEvent, SubjectImportEvent, TagEvent};
use super::import::Format;
use super::projection::{SUBJECT_ATTRIBUTES, SUBJECT_KINDS, SUBJECT_TAGS, TAGS, TAG_CATEGORIES};
use super::queries::{
    self, CategoryView, ExplainView, HistoryView, ImportResult, KindView, Preview, RunAccepted,
    RunList, RunView, SubjectFilter, SubjectPage, SubjectTagsView, SubjectView, TagFilter, TagList,
    TagStats, TagView,
};
use super::{rules, stream_id};
use crate::eventstore::{codec, RecordedEvent, StoreError, StreamEvents};
use crate::http::batch::{streamed, Streamed};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{
    command_context, if_match, media_type, min_position, tenant, with_etag, JsonBody, ReadParams,
};
use crate::http::AppState;
use crate::pipeline::{self, CommandError, CommandResult, EventSourced, Expect};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(declare_kind)
        .service(get_kind)
        .service(import_rows)
        .service(create_category)
        .service(list_categories)
        .service(create_tag)
        .service(list_tags)
        .service(get_tag)
        .service(change_rule)
        .service(retire_tag)
        .service(preview_rule)
        .service(tag_stats)
        .service(start_run)
        .service(list_runs)
        .service(get_run)
        .service(list_subjects)
        .service(subject_tags)
        .service(explain)
        .service(tag_history)
        .service(assign_manual)
        .service(remove_manual)
        .service(get_subject)
        .service(forget_subject);
}

/// A tag id from the path: unknown (404) unless a positive integer.
fn tag_id(raw: &str) -> Result<i32, ApiError> {
    raw.parse::<i32>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::NotFound("tag".into()))
}

/// The answer to a tag command: the tag's integer id.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TagResult {
    pub id: i32,
    pub version: i64,
    pub position: i64,
}

/// Declare or change a subject kind's attribute schema. An attribute keeps its type.
#[utoipa::path(put, path = "/api/v1/subject-kinds/{kind}", request_body = KindDraft,
    params(("kind" = String, Path, pattern = "^[a-z][a-z0-9_]{0,62}$"),
           ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[put("/api/v1/subject-kinds/{kind}")]
pub async fn declare_kind(
    state: web::Data<AppState>,
    req: HttpRequest,
    kind: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: KindDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let kind = kind.into_inner();
    let (result, _) = pipeline::execute::<SubjectKind>(
        &state.store,
        &ctx,
        "DeclareSubjectKind",
        stream_id(&ctx.tenant_id, "subject_kind", &kind),
        expect,
        (kind, draft),
        &(),
    )
    .await?;
    Ok(with_etag(StatusCode::OK, result.version, result))
}

/// A subject kind's schema.
#[utoipa::path(get, path = "/api/v1/subject-kinds/{kind}",
    params(("kind" = String, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = KindView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/subject-kinds/{kind}")]
pub async fn get_kind(
    state: web::Data<AppState>,
    req: HttpRequest,
    kind: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let conn = state
        .read_model(&tenant, SUBJECT_KINDS, min_position(params.min_position)?)
        .await?;
    let view = queries::kind(&conn, &tenant, &kind)
        .await?
        .ok_or_else(|| ApiError::NotFound("subject kind".into()))?;
    Ok(with_etag(StatusCode::OK, view.version, view))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ImportParams {
    /// The source table the rows come from (declared in the kind's schema).
    pub source: String,
}

/// Import rows of one source table: CSV (`text/csv`, header row) or NDJSON
/// (`application/x-ndjson`). Streamed; a bad row rejects the whole request (422
/// `invalid_row` with `row` and `field`) and nothing is applied.
#[utoipa::path(post, path = "/api/v1/subjects/{kind}/import",
    request_body(content = String, content_type = "text/csv", description = "header row with the id column; `updated_time` optional; an empty cell is null (NDJSON: application/x-ndjson)"),
    params(("kind" = String, Path), ImportParams,
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters: the same request (body included) again answers the first import's result and applies nothing", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = ImportResult), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem, description = "`encryption_unavailable`: the source has sensitive attributes and the server no master key; or the database is unavailable")))]
#[post("/api/v1/subjects/{kind}/import")]
pub async fn import_rows(
    state: web::Data<AppState>,
    req: HttpRequest,
    kind: web::Path<String>,
    params: web::Query<ImportParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let media = media_type(&req);
    let format = match media.as_deref() {
        Some("text/csv") => Format::Csv,
        Some("application/x-ndjson") => Format::Ndjson,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "text/csv or application/x-ndjson",
            ))
        }
    };
    let loaded = pipeline::load::<SubjectKind>(
        &state.store,
        &tenant,
        stream_id(&tenant, "subject_kind", &kind),
    )
    .await
    .map_err(ApiError::from)?;
    let schema = loaded
        .aggregate
        .schema
        .ok_or_else(|| ApiError::NotFound("subject kind".into()))?;
    if !schema.has_source(&params.source) {
        return Err(ApiError::validation(
            "source",
            format!(
                "{:?} is not a source of subject kind {kind:?}",
                params.source
            ),
        ));
    }
    let sealed_source = schema
        .attributes
        .iter()
        .any(|a| a.sensitive && a.source == params.source);
    if sealed_source && !state.vault.is_enabled() {
        return Err(ApiError::EncryptionUnavailable);
    }
    let target = super::import::Target {
        schema: &schema,
        source: &params.source,
        format,
        vault: &state.vault,
    };
    let store = &state.store;
    let outcome = streamed(
        &state,
        &req,
        payload,
        SubjectImport::STREAM_TYPE,
        async |body, metadata, key| {
            super::import::import(store, &tenant, target, body, metadata, key).await
        },
    )
    .await?;
    let imported = match outcome {
        Streamed::New(imported) => imported,
        Streamed::Earlier {
            stream_id,
            last,
            position,
        } => return imported_before(stream_id, &last, position),
    };
    super::metrics::rows_imported(&params.source, imported.rows);
    Ok(HttpResponse::Ok().json(ImportResult {
        import_id: imported.import_id,
        rows: imported.rows,
        position: imported.appended.position,
    }))
}

/// The answer of the import an earlier request under the same key made: its
/// `ImportCompleted` holds the rows.
fn imported_before(
    import_id: Uuid,
    last: &RecordedEvent,
    position: i64,
) -> Result<HttpResponse, ApiError> {
    let event: SubjectImportEvent =
        SubjectImport::decode(last).map_err(|e| ApiError::Internal(e.into()))?;
    let SubjectImportEvent::ImportCompleted { rows, .. } = event else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "an import stream ends without ImportCompleted"
        )));
    };
    Ok(HttpResponse::Ok().json(ImportResult {
        import_id,
        rows,
        position,
    }))
}

/// Create a tag category.
#[utoipa::path(post, path = "/api/v1/tag-categories", request_body = CategoryDraft,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = CommandResult), (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/tag-categories")]
pub async fn create_category(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: CategoryDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let id = stream_id(&ctx.tenant_id, "tag_category", &draft.code);
    let (result, _) = pipeline::execute::<TagCategory>(
        &state.store,
        &ctx,
        "CreateTagCategory",
        id,
        Expect::New,
        TagCategoryCommand::CreateTagCategory(draft),
        &(),
    )
    .await?;
    Ok(with_etag(StatusCode::CREATED, result.version, result))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategoryList {
    pub items: Vec<CategoryView>,
}

/// Tag categories.
#[utoipa::path(get, path = "/api/v1/tag-categories",
    params(ReadParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CategoryList), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/tag-categories")]
pub async fn list_categories(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let conn = state
        .read_model(&tenant, TAG_CATEGORIES, min_position(params.min_position)?)
        .await?;
    Ok(HttpResponse::Ok().json(CategoryList {
        items: queries::categories(&conn, &tenant).await?,
    }))
}

/// The services a tag command needs, read from the command side (the event streams).
async fn tag_services(
    state: &AppState,
    tenant: &str,
    subject_kind: &str,
    category: Option<&str>,
) -> Result<TagServices, ApiError> {
    let kind = pipeline::load::<SubjectKind>(
        &state.store,
        tenant,
        stream_id(tenant, "subject_kind", subject_kind),
    )
    .await
    .map_err(ApiError::from)?;
    let category_exists = match category {
        Some(code) => {
            pipeline::load::<TagCategory>(
                &state.store,
                tenant,
                stream_id(tenant, "tag_category", code),
            )
            .await
            .map_err(ApiError::from)?
            .aggregate
            .exists
        }
        None => true,
    };
    Ok(TagServices {
        schema: kind.aggregate.schema,
        category_exists,
    })
}

/// Create a tag. Its integer id is assigned by the server; the code is unique per tenant.
#[utoipa::path(post, path = "/api/v1/tags", request_body = TagDraft,
    params(("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = TagResult), (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/tags")]
pub async fn create_tag(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: TagDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let tenant = ctx.tenant_id.clone();
    if let Some(stored) = pipeline::replay::<TaggingError>(&state.store, &ctx).await? {
        return tag_created(&state, &tenant, stored).await;
    }
    let services =
        tag_services(&state, &tenant, &draft.subject_kind, Some(&draft.category)).await?;
    let id = queries::next_tag_id(state.store.pool()).await?;
    let code = draft.code.clone();
    let events = Tag::default()
        .handle(TagCommand::CreateTag { id, draft }, &services)
        .await
        .map_err(|e| ApiError::from(CommandError::<TaggingError>::Domain(e)))?;
    let encode = |e: &TagEvent| codec::encode(e).map_err(|e| ApiError::Internal(e.into()));
    let claim = encode(&TagEvent::TagCodeClaimed { tag_id: id })?;
    let created = events.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
    let metadata = ctx.metadata();
    // The tag's stream and its code's stream, both new, in one append: a taken code
    // fails the whole command.
    let appended = state
        .store
        .append_streams(
            &tenant,
            &metadata,
            &[
                StreamEvents {
                    stream_type: Tag::STREAM_TYPE,
                    stream_id: super::tag_stream(&tenant, id),
                    expected_version: 0,
                    events: created,
                },
                StreamEvents {
                    stream_type: "tag_code",
                    stream_id: stream_id(&tenant, "tag_code", &code),
                    expected_version: 0,
                    events: vec![claim],
                },
            ],
            ctx.idempotency.as_ref(),
        )
        .await;
    let appended = match appended {
        Ok(a) => a,
        // A retry under the same key may have got there first (its append takes the key,
        // or the code): then its answer is this one's.
        Err(e @ (StoreError::IdempotencyKeyTaken | StoreError::Conflict)) => {
            if let Some(stored) = pipeline::replay::<TaggingError>(&state.store, &ctx).await? {
                return tag_created(&state, &tenant, stored).await;
            }
            return Err(match e {
                StoreError::Conflict => ApiError::AlreadyExists(format!("tag with code {code:?}")),
                other => other.into(),
            });
        }
        Err(other) => return Err(other.into()),
    };
    let position = appended.iter().map(|a| a.position).max().unwrap_or(0);
    Ok(created_response(id, appended[0].version, position))
}

/// `201` with the new tag's id, version and position, its `ETag` and `Location`.
fn created_response(id: i32, version: i64, position: i64) -> HttpResponse {
    let body = TagResult {
        id,
        version,
        position,
    };
    crate::http::extract::created(&format!("/api/v1/tags/{id}"), version, body)
}

/// The answer of a `POST /api/v1/tags` already made under the same idempotency key: the
/// stored append names the tag's stream; its first event holds the tag's number.
async fn tag_created(
    state: &AppState,
    tenant: &str,
    stored: pipeline::CommandResult,
) -> Result<HttpResponse, ApiError> {
    let first = state
        .store
        .load_stream(Tag::STREAM_TYPE, stored.id)
        .await?
        .into_iter()
        .find(|e| e.tenant_id == tenant)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored tag stream is empty")))?;
    let event: TagEvent = Tag::decode(&first).map_err(|e| ApiError::Internal(e.into()))?;
    let TagEvent::TagCreated(def) = event else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "first event of a tag stream is not TagCreated"
        )));
    };
    Ok(created_response(def.id, stored.version, stored.position))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TagListParams {
    pub category: Option<String>,
    pub subject_kind: Option<String>,
    /// AUTO or MANUAL.
    #[param(pattern = "^(AUTO|MANUAL)$")]
    pub kind: Option<String>,
    /// Include retired tags.
    pub retired: Option<bool>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// Tags, filtered.
#[utoipa::path(get, path = "/api/v1/tags",
    params(TagListParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = TagList), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/tags")]
pub async fn list_tags(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<TagListParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let p = params.into_inner();
    if p.kind
        .as_deref()
        .is_some_and(|k| k != "AUTO" && k != "MANUAL")
    {
        return Err(ApiError::validation("kind", "must be AUTO or MANUAL"));
    }
    let conn = state
        .read_model(&tenant, TAGS, min_position(p.min_position)?)
        .await?;
    let list = queries::tags(
        &conn,
        &tenant,
        &TagFilter {
            category: p.category,
            subject_kind: p.subject_kind,
            kind: p.kind,
            include_retired: p.retired.unwrap_or(false),
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(list))
}

/// One tag, with its version as ETag.
#[utoipa::path(get, path = "/api/v1/tags/{id}",
    params(("id" = i32, Path, minimum = 1), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = TagView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/tags/{id}")]
pub async fn get_tag(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let id = tag_id(&id)?;
    let tenant = tenant(&req)?;
    let conn = state
        .read_model(&tenant, TAGS, min_position(params.min_position)?)
        .await?;
    let tag = queries::tag(&conn, &tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("tag".into()))?;
    Ok(with_etag(StatusCode::OK, tag.version, tag))
}

/// Runs a command on tag `id`, whose subject kind the command side reads first.
async fn tag_command(
    state: &AppState,
    req: &HttpRequest,
    id: i32,
    body: &[u8],
    command_type: &'static str,
    command: TagCommand,
) -> Result<HttpResponse, ApiError> {
    let ctx = command_context(req, body)?;
    let expect = if_match(req)?.map_or(Expect::Any, Expect::Version);
    let stream = super::tag_stream(&ctx.tenant_id, id);
    let loaded = pipeline::load::<Tag>(&state.store, &ctx.tenant_id, stream)
        .await
        .map_err(ApiError::from)?;
    let subject_kind = loaded
        .aggregate
        .definition
        .as_ref()
        .map(|d| d.subject_kind.clone())
        .ok_or_else(|| ApiError::NotFound("tag".into()))?;
    let services = tag_services(state, &ctx.tenant_id, &subject_kind, None).await?;
    let (result, _) = pipeline::execute::<Tag>(
        &state.store,
        &ctx,
        command_type,
        stream,
        expect,
        command,
        &services,
    )
    .await?;
    Ok(with_etag(
        StatusCode::OK,
        result.version,
        TagResult {
            id,
            version: result.version,
            position: result.position,
        },
    ))
}

/// Replace an AUTO tag's rule (bumps its rule version). `If-Match` guards against a
/// stale edit.
#[utoipa::path(put, path = "/api/v1/tags/{id}/rule", request_body = RuleDraft,
    params(("id" = i32, Path, minimum = 1),
           ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = TagResult), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
#[put("/api/v1/tags/{id}/rule")]
pub async fn change_rule(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let id = tag_id(&id)?;
    let draft: RuleDraft = body.parse()?;
    tag_command(
        &state,
        &req,
        id,
        &body.bytes,
        "ChangeTagRule",
        TagCommand::ChangeRule { rule: draft.rule },
    )
    .await
}

/// Retire a tag: the next run that covers it revokes its assignments.
#[utoipa::path(delete, path = "/api/v1/tags/{id}",
    params(("id" = i32, Path, minimum = 1),
           ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = TagResult), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
#[delete("/api/v1/tags/{id}")]
pub async fn retire_tag(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = tag_id(&id)?;
    tag_command(&state, &req, id, b"", "RetireTag", TagCommand::RetireTag).await
}

/// How many subjects a rule would match now, and a sample; nothing is saved.
#[utoipa::path(post, path = "/api/v1/tags/{id}/rule:preview", request_body = RuleDraft,
    params(("id" = i32, Path, minimum = 1),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = Preview), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/tags/{id}/rule:preview")]
pub async fn preview_rule(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let id = tag_id(&id)?;
    let draft: RuleDraft = body.parse()?;
    let tenant = tenant(&req)?;
    let conn = state.read_model(&tenant, SUBJECT_ATTRIBUTES, None).await?;
    let tag = queries::tag(&conn, &tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("tag".into()))?;
    let schema = queries::kind(&conn, &tenant, &tag.subject_kind)
        .await?
        .ok_or_else(|| ApiError::NotFound("subject kind".into()))?
        .schema();
    let rule = super::aggregate::check_rule(&draft.rule, &schema)
        .map_err(|e| ApiError::from(CommandError::<TaggingError>::Domain(e)))?;
    let preview =
        queries::preview(&conn, &tenant, &tag.subject_kind, &rule, chrono::Utc::now()).await?;
    Ok(HttpResponse::Ok().json(preview))
}

/// Subjects holding the tag, its coverage, and what the last run that covered it did.
#[utoipa::path(get, path = "/api/v1/tags/{id}/stats",
    params(("id" = i32, Path, minimum = 1), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = TagStats), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/tags/{id}/stats")]
pub async fn tag_stats(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let id = tag_id(&id)?;
    let tenant = tenant(&req)?;
    let stats = stats_of(&state, &tenant, id, min_position(params.min_position)?).await?;
    Ok(HttpResponse::Ok().json(stats))
}

/// `GET /api/v1/tags/{id}/stats` without HTTP. Dashboards' `tag_stats` widgets run
/// exactly this.
pub async fn stats_of(
    state: &AppState,
    tenant: &str,
    id: i32,
    min_position: Option<i64>,
) -> Result<TagStats, ApiError> {
    let conn = state.read_model(tenant, SUBJECT_TAGS, min_position).await?;
    let tag = queries::tag(&conn, tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("tag".into()))?;
    Ok(queries::stats(&conn, tenant, &tag.subject_kind, id).await?)
}

/// Start a tagging run (ApplyTagRules). It proceeds in the background; follow it with
/// `GET /api/v1/tagging/runs/{run_id}`. Runs execute one at a time, in request order:
/// a second run waits (`queued`) until the first has finished.
#[utoipa::path(post, path = "/api/v1/tagging/runs", request_body = RunDraft,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 202, body = RunAccepted), (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/tagging/runs")]
pub async fn start_run(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: RunDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let kind = pipeline::load::<SubjectKind>(
        &state.store,
        &ctx.tenant_id,
        stream_id(&ctx.tenant_id, "subject_kind", &draft.subject_kind),
    )
    .await
    .map_err(ApiError::from)?;
    let (result, _) = pipeline::execute::<TagRun>(
        &state.store,
        &ctx,
        "ApplyTagRules",
        Uuid::now_v7(),
        Expect::New,
        TagRunCommand::RequestRun(draft),
        &kind.aggregate.schema,
    )
    .await?;
    let mut response = HttpResponse::Accepted().json(RunAccepted {
        run_id: result.id,
        position: result.position,
    });
    if let Ok(location) = format!("/api/v1/tagging/runs/{}", result.id).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A run's state and progress (live while it runs).
#[utoipa::path(get, path = "/api/v1/tagging/runs/{run_id}",
    params(("run_id" = Uuid, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = RunView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/tagging/runs/{run_id}")]
pub async fn get_run(
    state: web::Data<AppState>,
    req: HttpRequest,
    run_id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&run_id).map_err(|_| ApiError::NotFound("tagging run".into()))?;
    let tenant = tenant(&req)?;
    let conn = state
        .read_model(&tenant, "jobs", min_position(params.min_position)?)
        .await?;
    let run: RunView = queries::run(&conn, &tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("tagging run".into()))?;
    Ok(HttpResponse::Ok().json(run))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct RunListParams {
    /// 1..=200, default 20.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// Recent runs, newest first.
#[utoipa::path(get, path = "/api/v1/tagging/runs",
    params(RunListParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = RunList), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/tagging/runs")]
pub async fn list_runs(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<RunListParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 200"));
    }
    let conn = state
        .read_model(&tenant, "jobs", min_position(params.min_position)?)
        .await?;
    Ok(HttpResponse::Ok().json(queries::runs(&conn, &tenant, limit).await?))
}

/// A subject's tags (`tag_ids: []` for a subject without tags; 404 for an id that is not
/// a subject of the kind).
#[utoipa::path(get, path = "/api/v1/subjects/{kind}/{id}/tags",
    params(("kind" = String, Path), ("id" = String, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = SubjectTagsView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/subjects/{kind}/{id}/tags")]
pub async fn subject_tags(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let tenant = tenant(&req)?;
    let at = min_position(params.min_position)?;
    let conn = state
        .read_models(&tenant, &[SUBJECT_ATTRIBUTES, SUBJECT_TAGS], at)
        .await?;
    let view: SubjectTagsView = queries::subject_tags(&conn, &tenant, &kind, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("subject".into()))?;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SubjectListParams {
    /// Comma-separated tag ids the subject must all hold.
    #[param(pattern = "^[0-9]{1,9}(,[0-9]{1,9}){0,49}$")]
    pub tags_all: Option<String>,
    /// Comma-separated tag ids of which the subject holds at least one.
    #[param(pattern = "^[0-9]{1,9}(,[0-9]{1,9}){0,49}$")]
    pub tags_any: Option<String>,
    /// Comma-separated tag ids the subject must hold none of.
    #[param(pattern = "^[0-9]{1,9}(,[0-9]{1,9}){0,49}$")]
    pub tags_none: Option<String>,
    /// 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Add the exact number of matching subjects.
    pub count: Option<bool>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

fn tag_list(field: &str, raw: Option<&str>) -> Result<Vec<i32>, ApiError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let ids = raw
        .split(',')
        .map(|t| t.trim().parse::<i32>().ok().filter(|t| *t >= 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApiError::validation(field, "must be comma-separated tag ids"))?;
    if ids.is_empty() || ids.len() > 50 {
        return Err(ApiError::validation(field, "1 to 50 tag ids"));
    }
    Ok(ids)
}

/// Subjects of a kind with their tag ids, filtered by tags, in pages by subject id.
#[utoipa::path(get, path = "/api/v1/subjects/{kind}",
    params(("kind" = String, Path), SubjectListParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = SubjectPage), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/subjects/{kind}")]
pub async fn list_subjects(
    state: web::Data<AppState>,
    req: HttpRequest,
    kind: web::Path<String>,
    params: web::Query<SubjectListParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let p = params.into_inner();
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 1000"));
    }
    let after = match p.cursor {
        None => None,
        Some(c) => Some(
            queries::decode_cursor(&c)
                .ok_or_else(|| ApiError::validation("cursor", "is not a cursor from this API"))?,
        ),
    };
    let filter = SubjectFilter {
        all: tag_list("tags_all", p.tags_all.as_deref())?,
        any: tag_list("tags_any", p.tags_any.as_deref())?,
        none: tag_list("tags_none", p.tags_none.as_deref())?,
        after,
        limit,
        count: p.count.unwrap_or(false),
    };
    let at = min_position(p.min_position)?;
    let conn = state
        .read_models(&tenant, &[SUBJECT_ATTRIBUTES, SUBJECT_TAGS], at)
        .await?;
    let page: SubjectPage = queries::subjects(&conn, &tenant, &kind, &filter).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// Why a subject has (or has not) a tag: every condition of the current rule with the
/// subject's value, and whether the result agrees with what the last run stored.
#[utoipa::path(get, path = "/api/v1/subjects/{kind}/{id}/tags/{tag_id}/explain",
    params(("kind" = String, Path), ("id" = String, Path), ("tag_id" = i32, Path, minimum = 1), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = ExplainView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/subjects/{kind}/{id}/tags/{tag_id}/explain")]
pub async fn explain(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id, tag) = path.into_inner();
    let tag_id = tag_id(&tag)?;
    let tenant = tenant(&req)?;
    let at = min_position(params.min_position)?;
    let conn = state
        .read_models(&tenant, &[SUBJECT_ATTRIBUTES, SUBJECT_TAGS], at)
        .await?;
    let tag = queries::tag(&conn, &tenant, tag_id)
        .await?
        .filter(|t| t.subject_kind == kind)
        .ok_or_else(|| ApiError::NotFound("tag".into()))?;
    let rule = tag
        .rule
        .as_ref()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r.get()).ok())
        .ok_or_else(|| ApiError::validation("tag_id", "a MANUAL tag has no rule to explain"))?;
    let schema = queries::kind(&conn, &tenant, &kind)
        .await?
        .ok_or_else(|| ApiError::NotFound("subject kind".into()))?
        .schema();
    let attrs = queries::attributes(&conn, &tenant, &kind, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("subject".into()))?;
    let stored_tags = queries::subject_tags(&conn, &tenant, &kind, &id).await?;
    let stored = stored_tags
        .as_ref()
        .and_then(|v| serde_json::from_str::<Vec<i32>>(v.tag_ids.get()).ok())
        .is_some_and(|ids| ids.contains(&tag_id));
    let stored_version = stored_tags
        .as_ref()
        .and_then(|v| serde_json::from_str::<serde_json::Value>(v.tag_details.get()).ok())
        .and_then(|d| d.get(tag_id.to_string())?.get("rule_version")?.as_i64());
    let as_of = queries::last_run_as_of(&conn, &tenant, tag_id)
        .await?
        .unwrap_or_else(chrono::Utc::now);
    let (result, conditions, note) = match rules::parse(&rule, &|f| schema.type_of(f)) {
        Ok(rule) => {
            let value_of = |f: &str| {
                let ty = schema.type_of(f)?;
                rules::parse_value(ty, attrs.get(f)?)
            };
            let e = rules::explain(&rule, &value_of, as_of);
            let note = (e.result != stored).then(|| match stored_version {
                Some(v) if i64::from(tag.rule_version) != v => format!(
                    "the rule changed since the last run (stored rule version {v}, current {})",
                    tag.rule_version
                ),
                _ => "the subject's data or the tag's rule changed since the last run that covered it (or no run covered it yet)".to_owned(),
            });
            (e.result, e.conditions, note)
        }
        Err(e) => (
            false,
            Vec::new(),
            Some(format!("the rule no longer fits the schema: {e}")),
        ),
    };
    Ok(HttpResponse::Ok().json(ExplainView {
        subject_id: id,
        tag_id,
        rule_version: tag.rule_version,
        result,
        stored,
        as_of,
        note,
        conditions,
    }))
}

/// Every add and remove of a tag on the subject, with time and cause.
#[utoipa::path(get, path = "/api/v1/subjects/{kind}/{id}/tag-history",
    params(("kind" = String, Path), ("id" = String, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = HistoryView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/subjects/{kind}/{id}/tag-history")]
pub async fn tag_history(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let tenant = tenant(&req)?;
    let at = min_position(params.min_position)?;
    let conn = state
        .read_models(&tenant, &[SUBJECT_ATTRIBUTES, SUBJECT_TAGS], at)
        .await?;
    if queries::attributes(&conn, &tenant, &kind, &id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("subject".into()));
    }
    let items = queries::history(&conn, &tenant, &kind, &id).await?;
    Ok(HttpResponse::Ok().json(HistoryView {
        subject_id: id,
        items,
    }))
}

/// Runs a manual tag command on the subject's manual-tag stream.
async fn manual(
    state: &AppState,
    req: &HttpRequest,
    path: (String, String, String),
    assign: bool,
) -> Result<HttpResponse, ApiError> {
    let (kind, id, tag) = path;
    let tag_id = tag_id(&tag)?;
    let ctx = command_context(req, b"")?;
    let expect = if_match(req)?.map_or(Expect::Any, Expect::Version);
    let tenant = ctx.tenant_id.clone();
    let tag = pipeline::load::<Tag>(&state.store, &tenant, super::tag_stream(&tenant, tag_id))
        .await
        .map_err(ApiError::from)?
        .aggregate;
    let conn = state.read_model(&tenant, SUBJECT_ATTRIBUTES, None).await?;
    let subject_exists = queries::attributes(&conn, &tenant, &kind, &id)
        .await?
        .is_some();
    let services = ManualServices {
        tag: Some(tag),
        subject_exists,
    };
    let command = ManualTagCommand {
        subject_kind: kind.clone(),
        subject_id: id.clone(),
        tag_id,
        assign,
    };
    let (result, _) = pipeline::execute::<SubjectManualTags>(
        &state.store,
        &ctx,
        if assign {
            "AssignManualTag"
        } else {
            "RemoveManualTag"
        },
        stream_id(&tenant, "subject_manual_tags", &format!("{kind}/{id}")),
        expect,
        command,
        &services,
    )
    .await?;
    Ok(with_etag(StatusCode::OK, result.version, result))
}

/// Put a MANUAL tag on a subject (422 for an AUTO tag). Assigning a tag the subject
/// holds changes nothing.
#[utoipa::path(put, path = "/api/v1/subjects/{kind}/{id}/tags/{tag_id}",
    params(("kind" = String, Path), ("id" = String, Path), ("tag_id" = i32, Path, minimum = 1),
           ("If-Match" = Option<String>, Header, description = "expected version of the subject's manual tags", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
#[put("/api/v1/subjects/{kind}/{id}/tags/{tag_id}")]
pub async fn assign_manual(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    manual(&state, &req, path.into_inner(), true).await
}

/// Take a MANUAL tag off a subject (422 for an AUTO tag).
#[utoipa::path(delete, path = "/api/v1/subjects/{kind}/{id}/tags/{tag_id}",
    params(("kind" = String, Path), ("id" = String, Path), ("tag_id" = i32, Path, minimum = 1),
           ("If-Match" = Option<String>, Header, description = "expected version of the subject's manual tags", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
#[delete("/api/v1/subjects/{kind}/{id}/tags/{tag_id}")]
pub async fn remove_manual(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    manual(&state, &req, path.into_inner(), false).await
}

/// A subject's merged attributes from all its sources, and what a forget erased.
#[utoipa::path(get, path = "/api/v1/subjects/{kind}/{id}",
    params(("kind" = String, Path), ("id" = String, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = SubjectView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/subjects/{kind}/{id}")]
pub async fn get_subject(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let (kind, id) = path.into_inner();
    let conn = state
        .read_model(
            &tenant,
            SUBJECT_ATTRIBUTES,
            min_position(params.min_position)?,
        )
        .await?;
    let view = queries::subject(&conn, &tenant, &kind, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("subject".into()))?;
    Ok(HttpResponse::Ok().json(view))
}

/// What a forget did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ForgetResult {
    pub subject_id: String,
    /// The sensitive attributes erased (all the kind declares).
    pub erased: Vec<String>,
    /// The subject's data keys this forget destroyed (0 when nothing sensitive was
    /// stored since the last forget).
    pub keys_destroyed: u64,
    pub version: i64,
    pub position: i64,
}

/// Forget a subject (crypto-shredding): its data keys are destroyed, so its sensitive
/// attributes can no longer be read from the log, in replays or in read models, where
/// they show as erased; its other attributes stay. Idempotent; an import after it seals
/// new values under a new key.
#[utoipa::path(post, path = "/api/v1/subjects/{kind}/{id}:forget",
    params(("kind" = String, Path), ("id" = String, Path),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = ForgetResult), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/subjects/{kind}/{id}:forget")]
pub async fn forget_subject(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let ctx = command_context(&req, b"")?;
    let tenant = ctx.tenant_id.clone();
    let (kind, id) = path.into_inner();
    let declared = pipeline::load::<SubjectKind>(
        &state.store,
        &tenant,
        stream_id(&tenant, "subject_kind", &kind),
    )
    .await
    .map_err(ApiError::from)?
    .aggregate;
    if declared.schema.is_none() {
        return Err(ApiError::NotFound("subject kind".into()));
    }
    let subject = (tenant.as_str(), kind.as_str());
    let keys = {
        let client = state.store.pool().get().await.map_err(StoreError::from)?;
        if !super::keys::known(&**client, subject, &id)
            .await
            .map_err(StoreError::from)?
        {
            return Err(ApiError::NotFound("subject".into()));
        }
        super::keys::of_subject(&**client, subject, &id)
            .await
            .map_err(StoreError::from)?
    };
    let stream = stream_id(&tenant, "subject", &format!("{kind}/{id}"));
    let (result, _) = pipeline::execute::<SubjectErasure>(
        &state.store,
        &ctx,
        "ForgetSubject",
        stream,
        Expect::Any,
        SubjectErasureEvent::SubjectForgotten {
            kind: kind.clone(),
            subject_id: id.clone(),
            attributes: declared.ever_sensitive(),
            keys,
        },
        &(),
    )
    .await?;
    // Destroyed now, not when the projector reaches the event (it destroys the same keys,
    // so a crash between the append and this loses nothing). A retry destroys what the
    // first forget covered, never keys made since.
    let client = state.store.pool().get().await.map_err(StoreError::from)?;
    let destroyed = super::keys::destroy_for(&**client, subject, &id, result.position)
        .await
        .map_err(StoreError::from)?;
    super::metrics::data_keys("destroyed", destroyed);
    // The answer describes the recorded event (the first one's, for a retry).
    let recorded = state
        .store
        .load_stream(SubjectErasure::STREAM_TYPE, stream)
        .await?
        .into_iter()
        .find(|e| e.position == result.position && e.tenant_id == tenant)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the forget event vanished")))?;
    let SubjectErasureEvent::SubjectForgotten {
        attributes: erased,
        keys,
        ..
    } = SubjectErasure::decode(&recorded).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Ok().json(ForgetResult {
        subject_id: id,
        erased,
        keys_destroyed: keys.len() as u64,
        version: result.version,
        position: result.position,
    }))
}
