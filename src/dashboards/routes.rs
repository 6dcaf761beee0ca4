//! HTTP endpoints of the dashboards context.

use actix_web::http::{header, StatusCode};
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::commands::{DashboardCommand, DashboardDraft};
use super::data::{self as widgets_data, DashboardData};
use super::projection::NAME as PROJECTION;
use super::queries::{self, DashboardPage, DashboardView};
use super::Dashboard;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{
    command_context, if_match, min_position, tenant, time_param, JsonBody, ReadParams,
};
use crate::http::AppState;
use crate::pipeline::{self, CommandResult, Expect};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(get_one)
        .service(dashboard_data)
        .service(update)
        .service(remove);
}

fn dashboard_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("dashboard".into()))
}

/// The caller as commands record it: reads show it its own and the shared dashboards.
fn caller(req: &HttpRequest) -> Result<String, ApiError> {
    Ok(crate::http::extract::actor(req)?
        .unwrap_or_else(|| crate::pipeline::CommandContext::new("default").actor))
}

/// serde's path of a body field (`widgets[2].position.w`) as the JSON pointer the
/// aggregate names fields by (`/widgets/2/position/w`).
fn pointer(path: &str) -> String {
    if path.is_empty() || path.starts_with('/') {
        return path.to_owned();
    }
    let dotted = path.replace('[', ".").replace(']', "");
    format!(
        "/{}",
        dotted
            .split('.')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    )
}

/// The draft of a request body; a type error names its field by pointer too.
fn draft(body: &JsonBody) -> Result<DashboardDraft, ApiError> {
    body.parse().map_err(|e| match e {
        ApiError::Validation { field, message } => ApiError::Validation {
            field: pointer(&field),
            message,
        },
        other => other,
    })
}

/// Create a dashboard. Its owner is the request's actor (the API key, or `X-Actor`).
#[utoipa::path(post, path = "/api/v1/dashboards", request_body = DashboardDraft,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$"),
           ("X-Actor" = Option<String>, Header, description = "who acts, without API keys")),
    responses((status = 201, body = CommandResult), (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem, description = "`validation_failed`, `field` a JSON pointer (`/widgets/2/position/w`)")))]
#[post("/api/v1/dashboards")]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft = draft(&body)?;
    let ctx = command_context(&req, &body.bytes)?;
    let owner = ctx.actor.clone();
    let (result, _) = pipeline::execute::<Dashboard>(
        &state.store,
        &ctx,
        "CreateDashboard",
        Uuid::now_v7(),
        Expect::New,
        DashboardCommand::CreateDashboard { owner, draft },
        &(),
    )
    .await?;
    let path = format!("/api/v1/dashboards/{}", result.id);
    Ok(crate::http::extract::created(&path, result.version, result))
}

/// Replace a dashboard (its owner only). `If-Match: "<version>"` makes a stale write fail
/// with 409.
#[utoipa::path(put, path = "/api/v1/dashboards/{id}", request_body = DashboardDraft,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$"),
           ("X-Actor" = Option<String>, Header, description = "who acts, without API keys")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem),
              (status = 403, body = Problem, description = "`not_owner`: a shared dashboard of someone else"),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem)))]
#[put("/api/v1/dashboards/{id}")]
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let id = dashboard_id(&id)?;
    let draft = draft(&body)?;
    let ctx = command_context(&req, &body.bytes)?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let actor = ctx.actor.clone();
    let (result, _) = pipeline::execute::<Dashboard>(
        &state.store,
        &ctx,
        "UpdateDashboard",
        id,
        expect,
        DashboardCommand::UpdateDashboard { actor, draft },
        &(),
    )
    .await?;
    Ok(crate::http::extract::with_etag(
        StatusCode::OK,
        result.version,
        result,
    ))
}

/// Delete a dashboard (its owner only; its history stays in the event store).
#[utoipa::path(delete, path = "/api/v1/dashboards/{id}",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$"),
           ("X-Actor" = Option<String>, Header, description = "who acts, without API keys")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem),
              (status = 403, body = Problem, description = "`not_owner`: a shared dashboard of someone else"),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
#[delete("/api/v1/dashboards/{id}")]
pub async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = dashboard_id(&id)?;
    let ctx = command_context(&req, b"")?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let actor = ctx.actor.clone();
    let (result, _) = pipeline::execute::<Dashboard>(
        &state.store,
        &ctx,
        "DeleteDashboard",
        id,
        expect,
        DashboardCommand::DeleteDashboard { actor },
        &(),
    )
    .await?;
    Ok(crate::http::extract::with_etag(
        StatusCode::OK,
        result.version,
        result,
    ))
}

/// One dashboard (the caller's own, or a shared one), with its version as ETag.
#[utoipa::path(get, path = "/api/v1/dashboards/{id}",
    params(("id" = Uuid, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$"),
           ("X-Actor" = Option<String>, Header, description = "who reads, without API keys")),
    responses((status = 200, body = DashboardView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/dashboards/{id}")]
pub async fn get_one(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let id = dashboard_id(&id)?;
    let tenant = tenant(&req)?;
    let caller = caller(&req)?;
    let client = state
        .read_model(&tenant, PROJECTION, min_position(params.min_position)?)
        .await?;
    let dashboard = queries::get(&client, &tenant, &caller, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("dashboard".into()))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{}\"", dashboard.version)))
        .json(dashboard))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    /// 1..=500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// The caller's dashboards and the shared ones of its tenant, in pages (keyset
/// pagination).
#[utoipa::path(get, path = "/api/v1/dashboards",
    params(ListParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$"),
           ("X-Actor" = Option<String>, Header, description = "who reads, without API keys")),
    responses((status = 200, body = DashboardPage), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/dashboards")]
pub async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let caller = caller(&req)?;
    let p = params.into_inner();
    let limit = crate::http::extract::page_limit(p.limit, 50)?;
    let after: Option<Uuid> = crate::http::extract::page_cursor(p.cursor.as_deref())?;
    let client = state
        .read_model(&tenant, PROJECTION, min_position(p.min_position)?)
        .await?;
    let page = queries::list(&client, &tenant, &caller, after, limit).await?;
    Ok(HttpResponse::Ok().json(page))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DataParams {
    /// Start (RFC 3339 or `YYYY-MM-DD`); default: 30 days before `to`.
    pub from: Option<String>,
    /// End, exclusive; default: the end of today (UTC). Budget figures are as of its
    /// last day.
    pub to: Option<String>,
    /// Every widget waits until its read models reflect this position.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// Every widget's data, each from the code of the endpoint its data source names. A
/// widget that fails carries its own problem document (`error`); the others still
/// answer, and the response is 200.
#[utoipa::path(get, path = "/api/v1/dashboards/{id}/data",
    params(("id" = Uuid, Path), DataParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$"),
           ("X-Actor" = Option<String>, Header, description = "who reads, without API keys")),
    responses((status = 200, body = DashboardData), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[get("/api/v1/dashboards/{id}/data")]
pub async fn dashboard_data(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<DataParams>,
) -> Result<HttpResponse, ApiError> {
    let id = dashboard_id(&id)?;
    let tenant = tenant(&req)?;
    let caller = caller(&req)?;
    let p = params.into_inner();
    let (_, default_to) = widgets_data::default_range(chrono::Utc::now());
    let to = time_param("to", p.to.as_deref())?.unwrap_or(default_to);
    let from =
        time_param("from", p.from.as_deref())?.unwrap_or_else(|| to - chrono::Duration::days(30));
    if from >= to {
        return Err(ApiError::validation("from", "must be before to"));
    }
    let min_position = min_position(p.min_position)?;
    let client = state.read_model(&tenant, PROJECTION, min_position).await?;
    let widgets = queries::widgets(&client, &tenant, &caller, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("dashboard".into()))?;
    let answer = widgets_data::run_all(&state, &tenant, &widgets, (from, to), min_position).await;
    Ok(HttpResponse::Ok().json(answer))
}

#[cfg(test)]
mod tests {
    #[test]
    fn serde_paths_become_json_pointers() {
        assert_eq!(
            super::pointer("widgets[2].position.w"),
            "/widgets/2/position/w"
        );
        assert_eq!(super::pointer("name"), "/name");
        assert_eq!(super::pointer("/name"), "/name");
        assert_eq!(super::pointer(""), "");
    }
}
