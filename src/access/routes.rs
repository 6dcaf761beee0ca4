//! `/api/v1/admin/api-keys`: issue, list and revoke API keys (admin keys only, once any
//! key exists; `http::auth`).

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::aggregate::{ApiKey, ApiKeyCommand};
use super::events::Role;
use super::projection::NAME;
use super::queries::{self, KeyList};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{command_context, min_position, with_etag, JsonBody, ReadParams};
use crate::http::AppState;
use crate::pipeline::{self, CommandResult, Expect};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(issue).service(list).service(revoke);
}

/// `POST /api/v1/admin/api-keys`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyDraft {
    #[schema(min_length = 1, max_length = 100, example = "ci")]
    pub name: String,
    pub role: Role,
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "default")]
    pub tenant: String,
}

/// A key just issued: the secret is in this answer and nowhere else.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedKey {
    pub id: Uuid,
    /// `Authorization: Bearer <key>`. Shown once; the server keeps only a hash.
    pub key: String,
    pub prefix: String,
    pub name: String,
    pub role: Role,
    pub tenant: String,
    pub position: i64,
}

/// Issue an API key for a tenant and role. The answer carries the secret, once.
#[utoipa::path(post, path = "/api/v1/admin/api-keys", request_body = KeyDraft,
    params(("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = IssuedKey), (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/admin/api-keys")]
pub async fn issue(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: KeyDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let new = super::keys::generate();
    let (name, role, tenant) = (draft.name.clone(), draft.role, draft.tenant.clone());
    let (id, result) = super::issue(&state.store, &ctx, &draft, &new.key).await?;
    Ok(with_etag(
        StatusCode::CREATED,
        result.version,
        IssuedKey {
            id,
            key: new.key,
            prefix: new.prefix,
            name,
            role,
            tenant,
            position: result.position,
        },
    ))
}

/// Every API key (never a secret or hash).
#[utoipa::path(get, path = "/api/v1/admin/api-keys",
    params(ReadParams),
    responses((status = 200, body = KeyList), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/admin/api-keys")]
pub async fn list(
    state: web::Data<AppState>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let conn = state
        .admin_read_model(NAME, min_position(params.min_position)?)
        .await?;
    Ok(HttpResponse::Ok().json(KeyList {
        items: queries::list(&conn).await?,
    }))
}

/// Revoke an API key: requests with it answer 401 within about a second.
#[utoipa::path(delete, path = "/api/v1/admin/api-keys/{id}",
    params(("id" = Uuid, Path), ReadParams),
    responses((status = 200, body = CommandResult, description = "revoked (or revoked before)"),
              (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)))]
#[delete("/api/v1/admin/api-keys/{id}")]
pub async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("API key".into()))?;
    let conn = state
        .admin_read_model(NAME, min_position(params.min_position)?)
        .await?;
    let tenant = queries::tenant_of(&conn, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("API key".into()))?;
    let mut ctx = command_context(&req, b"")?;
    ctx.tenant_id = tenant;
    let (result, _) = pipeline::execute::<ApiKey>(
        &state.store,
        &ctx,
        "RevokeApiKey",
        id,
        Expect::Any,
        ApiKeyCommand::Revoke,
        &(),
    )
    .await?;
    Ok(with_etag(StatusCode::OK, result.version, result))
}
