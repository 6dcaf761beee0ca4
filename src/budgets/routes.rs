//! HTTP endpoints of the budgets context.

use actix_web::http::header::{self, ContentType};
use actix_web::http::StatusCode;
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::commands::{BudgetCommand, BudgetDraft};
use super::projection::NAME as PROJECTION;
use super::queries::{self, BudgetPage, BudgetView, ListFilter};
use super::Budget;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{command_context, if_match, min_position, tenant, JsonBody, ReadParams};
use crate::http::AppState;
use crate::pipeline::{self, CommandResult, Expect};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(get_one)
        .service(alerts)
        .service(update)
        .service(remove);
}

fn accepted(status: StatusCode, r: CommandResult) -> HttpResponse {
    crate::http::extract::with_etag(status, r.version, r)
}

fn budget_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("budget".into()))
}

/// Create a budget.
#[utoipa::path(post, path = "/api/v1/budgets", request_body = BudgetDraft,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = CommandResult), (status = 400, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/budgets")]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: BudgetDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let (result, _) = pipeline::execute::<Budget>(
        &state.store,
        &ctx,
        "CreateBudget",
        Uuid::now_v7(),
        Expect::New,
        BudgetCommand::CreateBudget(draft),
        &(),
    )
    .await?;
    let path = format!("/api/v1/budgets/{}", result.id);
    Ok(crate::http::extract::created(&path, result.version, result))
}

/// Replace a budget. `If-Match: "<version>"` makes a stale write fail with 409.
#[utoipa::path(put, path = "/api/v1/budgets/{id}", request_body = BudgetDraft,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
#[put("/api/v1/budgets/{id}")]
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let id = budget_id(&id)?;
    let draft: BudgetDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let (result, _) = pipeline::execute::<Budget>(
        &state.store,
        &ctx,
        "UpdateBudget",
        id,
        expect,
        BudgetCommand::UpdateBudget(draft),
        &(),
    )
    .await?;
    Ok(accepted(StatusCode::OK, result))
}

/// Delete a budget (its history stays in the event store).
#[utoipa::path(delete, path = "/api/v1/budgets/{id}",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)))]
#[delete("/api/v1/budgets/{id}")]
pub async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = budget_id(&id)?;
    let ctx = command_context(&req, b"")?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let (result, _) = pipeline::execute::<Budget>(
        &state.store,
        &ctx,
        "DeleteBudget",
        id,
        expect,
        BudgetCommand::DeleteBudget,
        &(),
    )
    .await?;
    Ok(accepted(StatusCode::OK, result))
}

/// One budget, with its version as ETag.
#[utoipa::path(get, path = "/api/v1/budgets/{id}",
    params(("id" = Uuid, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = BudgetView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/budgets/{id}")]
pub async fn get_one(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let id = budget_id(&id)?;
    let tenant = tenant(&req)?;
    let min_position = min_position(params.min_position)?;
    let client = state.read_model(&tenant, PROJECTION, min_position).await?;
    let budget = queries::get(&client, &tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("budget".into()))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{}\"", budget.version)))
        .content_type(ContentType::json())
        .body(budget.json))
}

/// The thresholds the budget has crossed, each once per period and basis, in the order
/// they were recorded (by the process manager that evaluates budgets after bill imports).
#[utoipa::path(get, path = "/api/v1/budgets/{id}/alerts",
    params(("id" = Uuid, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = queries::AlertList), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/budgets/{id}/alerts")]
pub async fn alerts(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let id = budget_id(&id)?;
    let tenant = tenant(&req)?;
    let client = state
        .read_model(&tenant, PROJECTION, min_position(params.min_position)?)
        .await?;
    queries::get(&client, &tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("budget".into()))?;
    Ok(HttpResponse::Ok().json(queries::AlertList {
        items: queries::alerts(&client, &tenant, id).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    pub account: Option<String>,
    /// `KEY:VALUE`: budgets whose tag_filter contains this tag.
    pub tag: Option<String>,
    /// 1..=500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// See `GET /api/v1/budgets/{id}`.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// Budgets, filtered, in pages (keyset pagination).
#[utoipa::path(get, path = "/api/v1/budgets",
    params(ListParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = BudgetPage), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/budgets")]
pub async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<ListParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let p = params.into_inner();
    let limit = crate::http::extract::page_limit(p.limit, 50)?;
    let tag = match p.tag {
        None => None,
        Some(t) => match t.split_once(':') {
            Some((k, v)) if !k.is_empty() => Some((k.to_owned(), v.to_owned())),
            _ => return Err(ApiError::validation("tag", "must be KEY:VALUE")),
        },
    };
    let after = match p.cursor {
        None => None,
        Some(c) => Some(
            queries::decode_cursor(&c)
                .ok_or_else(|| ApiError::validation("cursor", "is not a cursor from this API"))?,
        ),
    };
    let min_position = min_position(p.min_position)?;
    let client = state
        .page_read_model(&tenant, PROJECTION, min_position)
        .await?;
    let page = queries::list(
        &client,
        &tenant,
        &ListFilter {
            account: p.account,
            tag,
            after,
            limit,
        },
    )
    .await?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(page))
}
