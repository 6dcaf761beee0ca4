//! HTTP endpoints of documents and search.

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::aggregate::{Document, DocumentBatch, DocumentCommand, Origin, MAX_CONTENT_BYTES};
use super::entries::{SEARCH_ENTRIES, TYPES};
use super::events::{DocumentBatchEvent, DocumentDraft};
use super::import;
use super::metrics::DOCS;
use super::projection::DOCUMENTS;
use super::queries::{self, DocumentView, Search, SearchPage};
use crate::db::cursor;
use crate::http::batch::{streamed, Streamed};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{
    command_context, created, if_match, media_type, min_position, tenant, time_param, with_etag,
    JsonBody, ReadParams,
};
use crate::http::AppState;
use crate::pipeline::{self, CommandResult, EventSourced, Expect};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create)
        .service(batch)
        .service(get_one)
        .service(update)
        .service(remove)
        .service(search);
}

/// Whether `id` is a document a batch created (it has no events of its own yet).
async fn origin(state: &AppState, tenant: &str, id: Uuid) -> Result<Origin, ApiError> {
    Ok(Origin {
        imported: import::imported(&state.store, tenant, id).await?,
        dimensions: state.settings.embedding_dimensions,
    })
}

/// What a batch of documents appended.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentBatchAccepted {
    /// The batch's stream (`document_batch`).
    pub batch_id: Uuid,
    /// Documents accepted.
    pub accepted: i64,
    /// Read with `min_position` at least this to find the whole batch.
    pub position: i64,
}

/// Add documents in bulk: one document per line (NDJSON), each
/// `{id?, title, content, source?, category?, author?, tags?, metadata?, created_at?}`.
/// Up to 1,000,000 documents, read as they stream, recorded as blocks of 500 in one
/// `document_batch` stream. A line may name its document's `id` (a UUID no other document
/// has); otherwise the document gets a new one. A bad line rejects the whole batch (422
/// `invalid_row` with `row` and `field`) and nothing is written; 409 `command_refused` when
/// a line's id is being imported by another batch still in progress. A batch's documents
/// are changed and deleted like any other.
#[utoipa::path(post, path = "/api/v1/documents:batch",
    request_body(content = String, content_type = "application/x-ndjson", description = "one document per line"),
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 202, body = DocumentBatchAccepted), (status = 400, body = Problem),
              (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[post("/api/v1/documents:batch")]
pub async fn batch(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if media_type(&req).as_deref() != Some("application/x-ndjson") {
        return Err(ApiError::UnsupportedMediaType("application/x-ndjson"));
    }
    let started = std::time::Instant::now();
    let tenant = tenant(&req)?;
    let store = &state.store;
    let dimensions = state.settings.embedding_dimensions;
    let outcome = streamed(
        &state,
        &req,
        payload,
        DocumentBatch::STREAM_TYPE,
        async |body, metadata, key| {
            import::import(store, &tenant, body, dimensions, metadata, key).await
        },
    )
    .await;
    let accepted = match outcome {
        Ok(Streamed::New(done)) => {
            DOCS.batch_documents
                .inc_by(u64::try_from(done.documents).unwrap_or(0));
            DOCS.batch_duration.observe(started.elapsed().as_secs_f64());
            DocumentBatchAccepted {
                batch_id: done.batch_id,
                accepted: done.documents,
                position: done.appended.position,
            }
        }
        Ok(Streamed::Earlier {
            stream_id,
            last,
            position,
        }) => match DocumentBatch::decode(&last) {
            Ok(DocumentBatchEvent::DocumentBatchCompleted { documents }) => DocumentBatchAccepted {
                batch_id: stream_id,
                accepted: documents,
                position,
            },
            _ => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "a batch stream ends unfinished"
                )))
            }
        },
        Err(e) => {
            DOCS.batches_rejected.inc();
            return Err(e);
        }
    };
    Ok(HttpResponse::Accepted().json(accepted))
}

/// Content past 1 MiB: 413, like a body past its limit.
fn within_limit(d: &DocumentDraft) -> Result<(), ApiError> {
    if d.content.len() > MAX_CONTENT_BYTES {
        return Err(ApiError::PayloadTooLarge(MAX_CONTENT_BYTES));
    }
    Ok(())
}

fn document_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("document".into()))
}

/// Add a document.
#[utoipa::path(post, path = "/api/v1/documents", request_body = DocumentDraft,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = CommandResult), (status = 400, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/documents")]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: DocumentDraft = body.parse()?;
    within_limit(&draft)?;
    let ctx = command_context(&req, &body.bytes)?;
    let (result, _) = pipeline::execute::<Document>(
        &state.store,
        &ctx,
        "CreateDocument",
        Uuid::now_v7(),
        Expect::New,
        DocumentCommand::Create(draft),
        &Origin {
            imported: false,
            dimensions: state.settings.embedding_dimensions,
        },
    )
    .await?;
    let path = format!("/api/v1/documents/{}", result.id);
    Ok(created(&path, result.version, result))
}

/// Replace a document. `If-Match: "<version>"` makes a stale write fail with 409.
#[utoipa::path(put, path = "/api/v1/documents/{id}", request_body = DocumentDraft,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
#[put("/api/v1/documents/{id}")]
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let id = document_id(&id)?;
    let draft: DocumentDraft = body.parse()?;
    within_limit(&draft)?;
    let ctx = command_context(&req, &body.bytes)?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let (result, _) = pipeline::execute::<Document>(
        &state.store,
        &ctx,
        "UpdateDocument",
        id,
        expect,
        DocumentCommand::Update(draft),
        &origin(&state, &ctx.tenant_id, id).await?,
    )
    .await?;
    Ok(with_etag(StatusCode::OK, result.version, result))
}

/// Delete a document (its history stays in the event store).
#[utoipa::path(delete, path = "/api/v1/documents/{id}",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
#[delete("/api/v1/documents/{id}")]
pub async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = document_id(&id)?;
    let ctx = command_context(&req, b"")?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let (result, _) = pipeline::execute::<Document>(
        &state.store,
        &ctx,
        "DeleteDocument",
        id,
        expect,
        DocumentCommand::Delete,
        &origin(&state, &ctx.tenant_id, id).await?,
    )
    .await?;
    Ok(with_etag(StatusCode::OK, result.version, result))
}

/// One document.
#[utoipa::path(get, path = "/api/v1/documents/{id}",
    params(("id" = Uuid, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = DocumentView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/documents/{id}")]
pub async fn get_one(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let id = document_id(&id)?;
    let tenant = tenant(&req)?;
    let reader = state
        .read_model(&tenant, DOCUMENTS, min_position(params.min_position)?)
        .await?;
    let view = reader
        .query_opt(queries::DOCUMENT_SQL, &[&tenant, &id])
        .await?
        .map(|r| queries::document_view(&r))
        .transpose()?
        .ok_or_else(|| ApiError::NotFound("document".into()))?;
    Ok(with_etag(StatusCode::OK, view.version, view))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// websearch syntax: words, "phrases", `or`, `-word`; Chinese and other CJK text too.
    /// Needed unless `vector` is given.
    #[param(min_length = 1, max_length = 1000)]
    pub q: Option<String>,
    /// A query embedding, a JSON array of `CLOUDLENS_EMBEDDING_DIMENSIONS` numbers: the
    /// documents nearest to it (cosine), or with `q` a hybrid search. Needs pgvector.
    pub vector: Option<String>,
    /// `text`, `vector` or `hybrid` (reciprocal rank fusion of both rankings); by default
    /// whichever of `q` and `vector` are given. Vector and hybrid searches find documents
    /// only and return one page (no `next`).
    pub mode: Option<String>,
    /// The types of hit wanted, comma-separated: `document`, `budget`, `tag`, `account`
    /// (default all). The document filters below (category, tag, metadata, from, to)
    /// limit the search to documents.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    pub category: Option<String>,
    /// A tag the document has (comma-separated: all of them).
    pub tag: Option<String>,
    /// A JSON object the metadata must contain.
    pub metadata: Option<String>,
    /// Created at or after (RFC 3339).
    pub from: Option<String>,
    /// Created before (RFC 3339).
    pub to: Option<String>,
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
    pub min_position: Option<i64>,
}

/// The vector side of a search, checked: 422 for a bad mode or vector, 503 when this
/// deployment cannot run vector searches.
fn vector_query(
    state: &AppState,
    p: &SearchParams,
) -> Result<Option<queries::VectorQuery>, ApiError> {
    let mode = match (p.mode.as_deref(), p.q.is_some(), p.vector.is_some()) {
        (None, true, false) | (Some("text"), true, false) => return Ok(None),
        (None, false, true) | (Some("vector"), false, true) => false,
        (None, true, true) | (Some("hybrid"), true, true) => true,
        (None, false, false) => return Err(ApiError::validation("q", "give q, vector or both")),
        (Some("text" | "vector" | "hybrid"), ..) => {
            return Err(ApiError::validation(
                "mode",
                "text takes q, vector takes vector, hybrid takes both",
            ))
        }
        (Some(_), ..) => {
            return Err(ApiError::validation(
                "mode",
                "must be text, vector or hybrid",
            ))
        }
    };
    if p.kind
        .as_deref()
        .is_some_and(|k| !k.split(',').any(|t| t.trim() == "document"))
    {
        return Err(ApiError::validation(
            "type",
            "vector and hybrid searches find documents only",
        ));
    }
    let dimensions = state.settings.embedding_dimensions;
    let vector = super::vector::parse(p.vector.as_deref().unwrap_or(""), dimensions)
        .map_err(|m| ApiError::validation("vector", m))?;
    state
        .vector
        .check()
        .map_err(ApiError::VectorSearchUnavailable)?;
    Ok(Some(queries::VectorQuery {
        vector,
        dimensions,
        hybrid: mode,
    }))
}

/// Full-text search over documents, budgets, tags and accounts, ranked (title and name
/// matches first), with snippets.
#[utoipa::path(get, path = "/api/v1/search",
    params(SearchParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = SearchPage), (status = 400, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[get("/api/v1/search")]
pub async fn search(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<SearchParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let p = params.into_inner();
    if let Some(q) = &p.q {
        if q.trim().is_empty() || q.chars().count() > 1000 || q.contains('\0') {
            return Err(ApiError::validation("q", "must be 1 to 1,000 characters"));
        }
    }
    let vector = vector_query(&state, &p)?;
    let metadata: Option<serde_json::Value> = match &p.metadata {
        None => None,
        Some(m) => match serde_json::from_str(m) {
            Ok(v @ serde_json::Value::Object(_)) => Some(v),
            _ => return Err(ApiError::validation("metadata", "must be a JSON object")),
        },
    };
    let types: Vec<String> = match &p.kind {
        None => TYPES.iter().map(|t| (*t).to_owned()).collect(),
        Some(list) => {
            let wanted: Vec<String> = list.split(',').map(|t| t.trim().to_owned()).collect();
            if let Some(bad) = wanted.iter().find(|t| !TYPES.contains(&t.as_str())) {
                return Err(ApiError::validation(
                    "type",
                    format!("{bad:?} is not one of {}", TYPES.join(", ")),
                ));
            }
            wanted
        }
    };
    let after = p
        .cursor
        .as_deref()
        .map(|c| {
            cursor::decode::<(f32, String, String)>(c)
                .ok_or_else(|| ApiError::validation("cursor", "is not a cursor this server gave"))
        })
        .transpose()?;
    let limit = p.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::validation("limit", "must be from 1 to 100"));
    }
    if vector.is_some() && p.cursor.is_some() {
        return Err(ApiError::validation(
            "cursor",
            "vector and hybrid searches return one page",
        ));
    }
    let q = p.q.as_deref().unwrap_or("");
    let s = Search {
        q,
        types,
        category: p.category.as_deref(),
        tags: p
            .tag
            .as_deref()
            .map(|t| {
                t.split(',')
                    .map(|x| x.trim().to_owned())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        metadata: metadata.as_ref(),
        from: time_param("from", p.from.as_deref())?,
        to: time_param("to", p.to.as_deref())?,
        limit,
        after,
    };
    let client = state
        .scan(
            &tenant,
            &[DOCUMENTS, SEARCH_ENTRIES],
            min_position(p.min_position)?,
        )
        .await?;
    let started = std::time::Instant::now();
    let hits = queries::search(&client, &tenant, &s, vector.as_ref()).await?;
    let script = match (
        vector.as_ref().map(|v| v.hybrid),
        q.chars().any(super::cjk::is_cjk),
        q.chars().any(|c| c.is_ascii_alphanumeric()),
    ) {
        (Some(false), ..) => "vector",
        (Some(true), ..) => "hybrid",
        (None, true, true) => "mixed",
        (None, true, false) => "cjk",
        _ => "latin",
    };
    DOCS.search_duration
        .with_label_values(&[script])
        .observe(started.elapsed().as_secs_f64());
    let next = (vector.is_none() && hits.len() as i64 == limit)
        .then(|| hits.last())
        .flatten()
        .map(|h| cursor::encode(&(h.rank, &h.kind, &h.id)));
    Ok(HttpResponse::Ok().json(SearchPage { hits, next }))
}
