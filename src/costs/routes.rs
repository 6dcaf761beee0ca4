//! HTTP endpoints of the costs context.

use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::aggregate::{is_currency, Account, AllocationRule, VirtualTag};
use super::allocation::AllocationRuleDef;
use super::budget_status as status;
use super::commands::AllocationRuleCommand;
use super::commands::{AccountCommand, AccountDraft, VirtualTagCommand, VirtualTagDraft};
use super::events::BillFormat;
use super::metrics::COSTS;
use super::projection::{COST_ACCOUNTS, COST_ALLOCATION_RULES, COST_LINES};
use super::queries::{self, AccountList, BreakdownQuery, Bucket, Dim, Filters, ImportList};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{
    command_context, media_type, min_position, saved, streamed_body, tenant, with_etag, JsonBody,
    ReadParams,
};
use crate::http::AppState;
use crate::pipeline::{self, CommandResult, Expect};
use crate::tagging::rules::parse_date;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(open_account)
        .service(list_accounts)
        .service(import_bill)
        .service(list_imports)
        .service(get_import)
        .service(costs)
        .service(top)
        .service(lines)
        .service(save_virtual_tag)
        .service(list_virtual_tags)
        .service(save_allocation_rule)
        .service(list_allocation_rules)
        .service(list_anomalies)
        .service(budget_status);
}

/// Open a cloud account. Names are unique per tenant.
#[utoipa::path(post, path = "/api/v1/accounts", request_body = AccountDraft,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = CommandResult), (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/accounts")]
pub async fn open_account(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: AccountDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let id = super::account_stream(&ctx.tenant_id, &draft.name);
    let (result, _) = pipeline::execute::<Account>(
        &state.store,
        &ctx,
        "OpenAccount",
        id,
        Expect::New,
        AccountCommand::OpenAccount(draft),
        &(),
    )
    .await?;
    Ok(with_etag(StatusCode::CREATED, result.version, result))
}

/// The tenant's cloud accounts.
#[utoipa::path(get, path = "/api/v1/accounts",
    params(ReadParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = AccountList), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/accounts")]
pub async fn list_accounts(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let conn = state
        .read_model(&tenant, COST_ACCOUNTS, min_position(params.min_position)?)
        .await?;
    Ok(HttpResponse::Ok().json(AccountList {
        items: queries::accounts(&conn, &tenant).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ImportParams {
    /// The account's name.
    pub account: String,
    /// `cloudlens` (Alibaba Cloud bill columns) or `focus` (FOCUS 1.2/1.3 columns).
    #[param(inline, value_type = String, pattern = "^(cloudlens|focus)$")]
    pub format: String,
}

/// What an import appended (202), or the earlier import of the same bytes (200).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportAccepted {
    pub import_id: Uuid,
    pub lines: i64,
    /// Read with `min_position` at least this to see the whole import.
    pub position: i64,
    /// The same bytes were imported before into this account: nothing changed.
    pub duplicate: bool,
}

/// Import a bill: a CSV body (`text/csv`, header row), streamed. The file restates the
/// billing periods it holds: earlier lines of the account in those periods are superseded.
/// A byte-identical file returns the first import (200) and changes nothing. A bad line
/// rejects the whole file (422 `invalid_row` with `row` and `field`).
#[utoipa::path(post, path = "/api/v1/costs/imports",
    request_body(content = String, content_type = "text/csv", description = "header row; cloudlens: billing_cycle, billing_date, product_code, …, pretax_amount, currency, tag; focus: FOCUS column names and x_ columns"),
    params(ImportParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 202, body = ImportAccepted), (status = 200, body = ImportAccepted, description = "the same file was imported before"),
              (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/costs/imports")]
pub async fn import_bill(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<ImportParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let format = match params.format.as_str() {
        "cloudlens" => BillFormat::Cloudlens,
        "focus" => BillFormat::Focus,
        _ => return Err(ApiError::validation("format", "must be cloudlens or focus")),
    };
    if media_type(&req).as_deref() != Some("text/csv") {
        return Err(ApiError::UnsupportedMediaType("text/csv"));
    }
    let account = pipeline::load::<Account>(
        &state.store,
        &tenant,
        super::account_stream(&tenant, &params.account),
    )
    .await
    .map_err(ApiError::from)?
    .aggregate
    .details
    .ok_or_else(|| {
        ApiError::validation("account", format!("no account named {:?}", params.account))
    })?;
    let ctx = command_context(&req, b"")?;
    let started = std::time::Instant::now();
    let outcome = super::import::import(
        &state.store,
        &tenant,
        &account,
        format,
        streamed_body(payload, state.settings.import_limit),
        &ctx.metadata(),
    )
    .await;
    let imported = match outcome {
        Ok(i) => i,
        Err(e) => {
            COSTS.imports.with_label_values(&["rejected"]).inc();
            return Err(e.into());
        }
    };
    COSTS
        .import_duration
        .observe(started.elapsed().as_secs_f64());
    let (status, outcome) = if imported.duplicate {
        (StatusCode::OK, "duplicate")
    } else {
        COSTS
            .lines_imported
            .with_label_values(&[format.as_str()])
            .inc_by(imported.lines as u64);
        (StatusCode::ACCEPTED, "accepted")
    };
    COSTS.imports.with_label_values(&[outcome]).inc();
    Ok(HttpResponse::build(status).json(ImportAccepted {
        import_id: imported.import_id,
        lines: imported.lines,
        position: imported.position,
        duplicate: imported.duplicate,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ImportListParams {
    /// Only this account's imports.
    pub account: Option<String>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// Imports, newest first (at most 200).
#[utoipa::path(get, path = "/api/v1/costs/imports",
    params(ImportListParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = ImportList), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/costs/imports")]
pub async fn list_imports(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<ImportListParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let conn = state
        .read_model(&tenant, COST_LINES, min_position(params.min_position)?)
        .await?;
    Ok(HttpResponse::Ok().json(ImportList {
        items: queries::imports(&conn, &tenant, params.account.as_deref()).await?,
    }))
}

/// An import: what it holds and how many of its lines are visible (`state`).
#[utoipa::path(get, path = "/api/v1/costs/imports/{id}",
    params(("id" = Uuid, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = queries::ImportView), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/costs/imports/{id}")]
pub async fn get_import(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("import".into()))?;
    let conn = state
        .read_model(&tenant, COST_LINES, min_position(params.min_position)?)
        .await?;
    let view = queries::import(&conn, &tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("import".into()))?;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct CostParams {
    /// Start (inclusive): `YYYY-MM-DD` (midnight UTC) or an RFC 3339 instant.
    pub from: String,
    /// End (exclusive), same formats.
    pub to: String,
    /// `day` (default), `week` (Monday to Monday, UTC) or `month` (calendar months, UTC).
    #[param(pattern = "^(day|week|month)$")]
    pub bucket: Option<String>,
    /// Comma-separated: `account`, `service`, `region`, `tag:KEY` (at most 4).
    pub group_by: Option<String>,
    pub account: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
    /// `KEY:VALUE`: only lines with this tag.
    pub tag: Option<String>,
    #[param(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// `lines` reads the raw lines even where the daily rollup could answer (to compare).
    #[param(pattern = "^(auto|lines)$")]
    pub source: Option<String>,
    /// Spread shared costs over their allocation rules' targets; needs `group_by` to be
    /// exactly one dimension (the rules' `by`), and no `tag` filter.
    pub allocated: Option<bool>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

fn time(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    parse_date(s)
        .ok_or_else(|| ApiError::validation(field, "must be YYYY-MM-DD or an RFC 3339 instant"))
}

/// The range and filters every cost read takes.
fn filters(
    from: &str,
    to: &str,
    account: &Option<String>,
    service: &Option<String>,
    region: &Option<String>,
    tag: &Option<String>,
    currency: &Option<String>,
) -> Result<Filters, ApiError> {
    let (from, to) = (time("from", from)?, time("to", to)?);
    if to <= from {
        return Err(ApiError::validation("to", "must be after from"));
    }
    if to - from > chrono::Duration::days(3700) {
        return Err(ApiError::validation(
            "to",
            "the range may span at most 3700 days",
        ));
    }
    if let Some(c) = currency {
        if !is_currency(c) {
            return Err(ApiError::validation(
                "currency",
                "is not an ISO 4217 currency code",
            ));
        }
    }
    let tag = match tag {
        None => None,
        Some(t) => Some(
            t.split_once(':')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| ApiError::validation("tag", "must be KEY:VALUE"))?,
        ),
    };
    Ok(Filters {
        from: Some(from),
        to: Some(to),
        account: account.clone(),
        service: service.clone(),
        region: region.clone(),
        resource: None,
        currency: currency.clone(),
        tag,
    })
}

/// Cost over time, grouped. Reads the daily rollup unless a tag is involved or a bound is
/// not midnight UTC. Costs in different currencies are never summed together.
#[utoipa::path(get, path = "/api/v1/costs",
    params(CostParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = queries::CostBreakdown), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/costs")]
pub async fn costs(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<CostParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let answer = breakdown(&state, &tenant, params.into_inner()).await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// `GET /api/v1/costs` without HTTP: its parameters checked, the breakdown read (and
/// allocated). Dashboards' `cost_breakdown` widgets run exactly this.
pub async fn breakdown(
    state: &AppState,
    tenant: &str,
    p: CostParams,
) -> Result<queries::CostBreakdown, ApiError> {
    let tenant = tenant.to_owned();
    let f = filters(
        &p.from,
        &p.to,
        &p.account,
        &p.service,
        &p.region,
        &p.tag,
        &p.currency,
    )?;
    let bucket = match p.bucket.as_deref() {
        None => Bucket::Day,
        Some(b) => Bucket::parse(b)
            .ok_or_else(|| ApiError::validation("bucket", "must be day, week or month"))?,
    };
    let mut group_by = Vec::new();
    for item in p
        .group_by
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let d = Dim::parse(item)
            .filter(|d| *d != Dim::Resource)
            .ok_or_else(|| {
                ApiError::validation(
                    "group_by",
                    format!("{item:?} is not account, service, region, tag:KEY or vtag:NAME"),
                )
            })?;
        if group_by.contains(&d) {
            return Err(ApiError::validation(
                "group_by",
                format!("{item:?} appears twice"),
            ));
        }
        group_by.push(d);
    }
    if group_by.len() > 4 {
        return Err(ApiError::validation("group_by", "at most 4 items"));
    }
    let force_lines = match p.source.as_deref() {
        None | Some("auto") => false,
        Some("lines") => true,
        Some(_) => return Err(ApiError::validation("source", "must be auto or lines")),
    };
    let conn = state
        .scan(&tenant, &[COST_LINES], min_position(p.min_position)?)
        .await?;
    if group_by.iter().any(|d| matches!(d, Dim::VTag(_))) {
        let known = queries::virtual_tags(&*state.reads.tenant(&tenant).await?, &tenant).await?;
        for d in &group_by {
            if let Dim::VTag(name) = d {
                if !known.iter().any(|v| &v.name == name) {
                    return Err(ApiError::validation(
                        "group_by",
                        format!("no virtual tag named {name:?}"),
                    ));
                }
            }
        }
    }
    let started = std::time::Instant::now();
    let query = BreakdownQuery {
        filters: f,
        bucket,
        group_by,
        force_lines,
    };
    let mut answer = queries::breakdown(&conn, &tenant, &query).await?;
    if p.allocated == Some(true) {
        if query.group_by.len() != 1 {
            return Err(ApiError::validation(
                "allocated",
                "needs group_by to be one dimension: the allocation rules' by",
            ));
        }
        if query.filters.tag.is_some() {
            return Err(ApiError::validation(
                "allocated",
                "cannot be combined with a tag filter",
            ));
        }
        let rules_conn = state
            .read_model(
                &tenant,
                COST_ALLOCATION_RULES,
                min_position(p.min_position)?,
            )
            .await?;
        let rules = queries::allocation_rules(&rules_conn, &tenant).await?;
        queries::allocate(&conn, &tenant, &query, &mut answer, &rules).await?;
    }
    COSTS
        .query_duration
        .with_label_values(&["breakdown", &answer.source])
        .observe(started.elapsed().as_secs_f64());
    Ok(answer)
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TopParams {
    /// `resource`, `service` or `account`.
    #[param(pattern = "^(resource|service|account)$")]
    pub by: String,
    pub from: String,
    pub to: String,
    /// 1..=1000, default 10: items per currency.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    pub account: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
    pub tag: Option<String>,
    #[param(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// The costliest resources, services or accounts in a range, ranked within each currency.
#[utoipa::path(get, path = "/api/v1/costs/top",
    params(TopParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = queries::TopList), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/costs/top")]
pub async fn top(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<TopParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let p = params.into_inner();
    let by = match p.by.as_str() {
        "resource" => Dim::Resource,
        "service" => Dim::Service,
        "account" => Dim::Account,
        _ => {
            return Err(ApiError::validation(
                "by",
                "must be resource, service or account",
            ))
        }
    };
    let limit = p.limit.unwrap_or(10);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 1000"));
    }
    let f = filters(
        &p.from,
        &p.to,
        &p.account,
        &p.service,
        &p.region,
        &p.tag,
        &p.currency,
    )?;
    let conn = state
        .scan(&tenant, &[COST_LINES], min_position(p.min_position)?)
        .await?;
    let started = std::time::Instant::now();
    let answer = queries::top(&conn, &tenant, &by, &f, limit).await?;
    COSTS
        .query_duration
        .with_label_values(&["top", &answer.source])
        .observe(started.elapsed().as_secs_f64());
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LineParams {
    pub from: String,
    pub to: String,
    pub account: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
    pub resource: Option<String>,
    pub tag: Option<String>,
    #[param(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// The bill lines behind a figure, in charge order, a page at a time.
#[utoipa::path(get, path = "/api/v1/costs/lines",
    params(LineParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = queries::LinePage), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/costs/lines")]
pub async fn lines(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<LineParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let p = params.into_inner();
    let mut f = filters(
        &p.from,
        &p.to,
        &p.account,
        &p.service,
        &p.region,
        &p.tag,
        &p.currency,
    )?;
    f.resource = p.resource;
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
    let conn = state
        .scan(&tenant, &[COST_LINES], min_position(p.min_position)?)
        .await?;
    Ok(HttpResponse::Ok().json(queries::lines(&conn, &tenant, &f, after, limit).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct StatusParams {
    /// The day to report on (`YYYY-MM-DD` or an instant, UTC); today when absent.
    pub as_of: Option<String>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ForecastView {
    /// `linear_run_rate` (ADR 0010), `final` (the period is over) or `insufficient_data`
    /// (fewer than 3 days with cost lines: no amount is guessed).
    pub method: String,
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>)]
    pub amount: Option<Decimal>,
    /// 95 % range.
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>)]
    pub low: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>)]
    pub high: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>)]
    pub percent: Option<Decimal>,
    pub days_with_data: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ThresholdView {
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub percent: Decimal,
    /// `actual` (spent) or `forecast`.
    pub basis: String,
    pub crossed: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetStatus {
    pub budget_id: Uuid,
    #[schema(value_type = String, format = Date)]
    pub as_of: NaiveDate,
    /// First day of the period (UTC).
    #[schema(value_type = String, format = Date)]
    pub period_start: NaiveDate,
    /// First day after the period (exclusive).
    #[schema(value_type = String, format = Date)]
    pub period_end: NaiveDate,
    pub days_in_period: i64,
    pub days_elapsed: i64,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub amount: Decimal,
    /// Cost lines of the budget's account, services and tags, in its currency, charged
    /// in the period on or before `as_of`.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub spent: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub remaining: Decimal,
    /// Not capped at 100.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub percent_used: Decimal,
    pub forecast: ForecastView,
    pub thresholds: Vec<ThresholdView>,
    /// `rollup`, `tag_rollup` (a one-tag filter) or `lines` (two or more tags).
    pub source: String,
}

/// A budget's spending in its current period (or the one holding `as_of`), its forecast
/// and which thresholds are crossed.
#[utoipa::path(get, path = "/api/v1/budgets/{id}/status",
    params(("id" = Uuid, Path), StatusParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = BudgetStatus), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/budgets/{id}/status")]
pub async fn budget_status(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<StatusParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("budget".into()))?;
    let as_of = match &params.as_of {
        None => Utc::now().date_naive(),
        Some(s) => time("as_of", s)?.date_naive(),
    };
    let answer = status_of(
        &state,
        &tenant,
        id,
        as_of,
        min_position(params.min_position)?,
    )
    .await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// `GET /api/v1/budgets/{id}/status` without HTTP. Dashboards' `budget_status` widgets
/// run exactly this.
pub async fn status_of(
    state: &AppState,
    tenant: &str,
    id: Uuid,
    as_of: NaiveDate,
    min_position: Option<i64>,
) -> Result<BudgetStatus, ApiError> {
    let conn = state
        .scan(
            tenant,
            &[crate::budgets::projection::NAME, COST_LINES],
            min_position,
        )
        .await?;
    let tenant = tenant.to_owned();
    let started = std::time::Instant::now();
    let b = queries::budget(&conn, &tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("budget".into()))?;
    let window = status::window(&b.period, b.start_date, b.end_date, as_of)
        .ok_or_else(|| ApiError::validation("as_of", "lies outside the budget's dates"))?;
    let (fig, source) = queries::budget_figures(&conn, &tenant, &b, window, as_of).await?;
    COSTS
        .query_duration
        .with_label_values(&["budget_status", source])
        .observe(started.elapsed().as_secs_f64());
    let thresholds = fig
        .thresholds
        .iter()
        .map(|(percent, basis, crossed)| ThresholdView {
            percent: *percent,
            basis: (*basis).into(),
            crossed: *crossed,
        })
        .collect();
    let f = fig.forecast;
    Ok(BudgetStatus {
        budget_id: id,
        as_of,
        period_start: window.start,
        period_end: window.end,
        days_in_period: window.days(),
        days_elapsed: f.days_elapsed,
        currency: b.currency,
        amount: b.amount,
        spent: fig.spent,
        remaining: b.amount - fig.spent,
        percent_used: fig.percent_used,
        forecast: ForecastView {
            method: f.method.into(),
            amount: f.amount,
            low: f.low,
            high: f.high,
            percent: fig.forecast_percent,
            days_with_data: f.days_with_data,
        },
        thresholds,
        source: source.into(),
    })
}

/// Create or replace a virtual tag. Lines imported from now on get it as they are
/// written; the lines already there are recomputed by a background job in steps of about
/// 200,000 lines, whose progress `GET /api/v1/costs/virtual-tags` reports (`recompute`).
#[utoipa::path(post, path = "/api/v1/costs/virtual-tags", request_body = VirtualTagDraft,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = CommandResult, description = "created"), (status = 200, body = CommandResult, description = "replaced or unchanged"),
              (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/costs/virtual-tags")]
pub async fn save_virtual_tag(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: VirtualTagDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let id = super::stream_id(&ctx.tenant_id, "virtual_tag", &draft.name);
    let (result, _) = pipeline::execute::<VirtualTag>(
        &state.store,
        &ctx,
        "SaveVirtualTag",
        id,
        Expect::Any,
        VirtualTagCommand::SaveVirtualTag(draft),
        &(),
    )
    .await?;
    Ok(saved(result))
}

/// The tenant's virtual tags.
#[utoipa::path(get, path = "/api/v1/costs/virtual-tags",
    params(ReadParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = queries::VirtualTagList), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/costs/virtual-tags")]
pub async fn list_virtual_tags(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let conn = state
        .read_model(&tenant, COST_LINES, min_position(params.min_position)?)
        .await?;
    Ok(HttpResponse::Ok().json(queries::VirtualTagList {
        items: queries::virtual_tags(&conn, &tenant).await?,
    }))
}

/// Create or replace a shared-cost allocation rule. A rule whose source is another rule's
/// target (or whose targets hold another rule's source) along the same dimension is
/// refused (422): no chains, no cycles.
#[utoipa::path(post, path = "/api/v1/costs/allocation-rules", request_body = AllocationRuleDef,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = CommandResult, description = "created"), (status = 200, body = CommandResult, description = "replaced or unchanged"),
              (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/costs/allocation-rules")]
pub async fn save_allocation_rule(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let def: AllocationRuleDef = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let conn = state
        .read_model(&ctx.tenant_id, COST_ALLOCATION_RULES, None)
        .await?;
    let others = queries::allocation_rules(&conn, &ctx.tenant_id).await?;
    let id = super::stream_id(&ctx.tenant_id, "allocation_rule", &def.name);
    let (result, _) = pipeline::execute::<AllocationRule>(
        &state.store,
        &ctx,
        "SaveAllocationRule",
        id,
        Expect::Any,
        AllocationRuleCommand::SaveAllocationRule(def),
        &others,
    )
    .await?;
    Ok(saved(result))
}

/// The tenant's allocation rules.
#[utoipa::path(get, path = "/api/v1/costs/allocation-rules",
    params(ReadParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = queries::AllocationRuleList), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/costs/allocation-rules")]
pub async fn list_allocation_rules(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let conn = state
        .read_model(
            &tenant,
            COST_ALLOCATION_RULES,
            min_position(params.min_position)?,
        )
        .await?;
    Ok(HttpResponse::Ok().json(queries::AllocationRuleList {
        items: queries::allocation_rules(&conn, &tenant).await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AnomalyParams {
    /// Anomalies whose first day is on or after this day (`YYYY-MM-DD` or RFC 3339, UTC).
    pub from: Option<String>,
    /// … and before this day.
    pub to: Option<String>,
    pub account: Option<String>,
    pub service: Option<String>,
    /// The least severity listed: `low` (all), `medium`, `high` or `critical`.
    #[param(pattern = "^(low|medium|high|critical)$")]
    pub severity: Option<String>,
    /// `open` or `ended`.
    #[param(pattern = "^(open|ended)$")]
    pub state: Option<String>,
    /// 1..=500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// A day parameter: a date, or an instant (its UTC day).
fn day_param(name: &str, value: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    Ok(crate::http::extract::time_param(name, value)?.map(|t| t.date_naive()))
}

/// Cost anomalies (ADR 0026): one per episode of anomalous days of an account × service,
/// found after every bill import; newest first day first, a page at a time.
#[utoipa::path(get, path = "/api/v1/costs/anomalies",
    params(AnomalyParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = queries::AnomalyPage), (status = 400, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/costs/anomalies")]
pub async fn list_anomalies(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<AnomalyParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let p = params.into_inner();
    let from = day_param("from", p.from.as_deref())?;
    let to = day_param("to", p.to.as_deref())?;
    if let (Some(f), Some(t)) = (from, to) {
        if t <= f {
            return Err(ApiError::validation("to", "must be after from"));
        }
    }
    let least = match p.severity.as_deref() {
        None => super::anomaly::Severity::Low,
        Some(s) => super::anomaly::Severity::parse(s).ok_or_else(|| {
            ApiError::validation("severity", "must be low, medium, high or critical")
        })?,
    };
    if let Some(s) = p.state.as_deref() {
        if s != "open" && s != "ended" {
            return Err(ApiError::validation("state", "must be open or ended"));
        }
    }
    let limit = crate::http::extract::page_limit(p.limit, 100)?;
    let after: Option<(NaiveDate, Uuid)> = crate::http::extract::page_cursor(p.cursor.as_deref())?;
    let f = queries::AnomalyFilters {
        from,
        to,
        account: p.account,
        service: p.service,
        severities: super::anomaly::Severity::ALL
            .into_iter()
            .filter(|s| *s >= least)
            .map(|s| s.as_str().to_owned())
            .collect(),
        state: p.state,
    };
    let conn = state
        .read_model(
            &tenant,
            super::projection::COST_ANOMALIES,
            min_position(p.min_position)?,
        )
        .await?;
    Ok(HttpResponse::Ok().json(queries::anomalies(&conn, &tenant, &f, after, limit).await?))
}
