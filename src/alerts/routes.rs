//! HTTP endpoints of the alerts context: alert rules, their episodes, notification
//! channels and the delivery log.

use actix_web::http::{header, StatusCode};
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::aggregate::{AlertRule, NotificationChannel};
use super::commands::{AlertRuleCommand, ChannelCommand, ChannelDraft, RuleDraft};
use super::events::ChannelDetails;
use super::projection::{CHANNELS, RULES};
use super::queries::{
    self, AlertFilter, AlertPage, ChannelPage, ChannelView, NotificationPage, RulePage, RuleView,
};
use super::send;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{
    command_context, if_match, min_position, page_cursor, page_limit, tenant, time_param, JsonBody,
    ReadParams,
};
use crate::http::AppState;
use crate::pipeline::{self, CommandResult, Expect};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(create_rule)
        .service(list_rules)
        .service(get_rule)
        .service(update_rule)
        .service(delete_rule)
        .service(list_alerts)
        .service(create_channel)
        .service(test_channel)
        .service(list_channels)
        .service(get_channel)
        .service(update_channel)
        .service(delete_channel)
        .service(list_notifications);
}

fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(what.into()))
}

/// Every channel a rule notifies must exist (checked on the write side: a channel just
/// created counts even before its read model shows it).
async fn check_channels(state: &AppState, tenant: &str, draft: &RuleDraft) -> Result<(), ApiError> {
    for (i, id) in draft.notify.iter().enumerate() {
        let loaded = pipeline::load::<NotificationChannel>(&state.store, tenant, *id).await?;
        if loaded.aggregate.live().is_none() {
            return Err(ApiError::validation(
                format!("notify[{i}]"),
                "is not a notification channel of this tenant",
            ));
        }
    }
    Ok(())
}

/// Create an alert rule.
#[utoipa::path(post, path = "/api/v1/alert-rules", request_body = RuleDraft,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = CommandResult), (status = 400, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
#[post("/api/v1/alert-rules")]
pub async fn create_rule(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: RuleDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    check_channels(&state, &ctx.tenant_id, &draft).await?;
    let (result, _) = pipeline::execute::<AlertRule>(
        &state.store,
        &ctx,
        "CreateAlertRule",
        Uuid::now_v7(),
        Expect::New,
        AlertRuleCommand::CreateRule(draft),
        &(),
    )
    .await?;
    let path = format!("/api/v1/alert-rules/{}", result.id);
    Ok(crate::http::extract::created(&path, result.version, result))
}

/// Replace an alert rule. `If-Match: "<version>"` makes a stale write fail with 409.
/// Disabling a rule, or changing its condition, resolves its open episodes.
#[utoipa::path(put, path = "/api/v1/alert-rules/{id}", request_body = RuleDraft,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
#[put("/api/v1/alert-rules/{id}")]
pub async fn update_rule(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "alert rule")?;
    let draft: RuleDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    check_channels(&state, &ctx.tenant_id, &draft).await?;
    let (result, _) = pipeline::execute::<AlertRule>(
        &state.store,
        &ctx,
        "UpdateAlertRule",
        id,
        expect,
        AlertRuleCommand::UpdateRule(draft),
        &(),
    )
    .await?;
    Ok(crate::http::extract::with_etag(
        StatusCode::OK,
        result.version,
        result,
    ))
}

/// Delete an alert rule; its open episodes are resolved, its alert history stays.
#[utoipa::path(delete, path = "/api/v1/alert-rules/{id}",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)))]
#[delete("/api/v1/alert-rules/{id}")]
pub async fn delete_rule(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "alert rule")?;
    let ctx = command_context(&req, b"")?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let (result, _) = pipeline::execute::<AlertRule>(
        &state.store,
        &ctx,
        "DeleteAlertRule",
        id,
        expect,
        AlertRuleCommand::DeleteRule,
        &(),
    )
    .await?;
    Ok(crate::http::extract::with_etag(
        StatusCode::OK,
        result.version,
        result,
    ))
}

/// One alert rule, with its version as ETag and its open episodes.
#[utoipa::path(get, path = "/api/v1/alert-rules/{id}",
    params(("id" = Uuid, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = RuleView), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/alert-rules/{id}")]
pub async fn get_rule(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "alert rule")?;
    let tenant = tenant(&req)?;
    let client = state
        .read_model(&tenant, RULES, min_position(params.min_position)?)
        .await?;
    let rule = queries::get_rule(&client, &tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("alert rule".into()))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{}\"", rule.version)))
        .json(rule))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1..=500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// Alert rules, in pages.
#[utoipa::path(get, path = "/api/v1/alert-rules",
    params(PageParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = RulePage), (status = 400, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/alert-rules")]
pub async fn list_rules(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let limit = page_limit(params.limit, 50)?;
    let after: Option<Uuid> = page_cursor(params.cursor.as_deref())?;
    let client = state
        .read_model(&tenant, RULES, min_position(params.min_position)?)
        .await?;
    Ok(HttpResponse::Ok().json(queries::list_rules(&client, &tenant, after, limit).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertParams {
    /// `firing` or `resolved`; both when omitted.
    pub state: Option<String>,
    /// Episodes of this rule only.
    pub rule: Option<Uuid>,
    /// Episodes fired at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Episodes fired before this time (RFC 3339).
    pub to: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// Alert episodes, newest first: each fired once and, when over, resolved once.
#[utoipa::path(get, path = "/api/v1/alerts",
    params(AlertParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = AlertPage), (status = 400, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/alerts")]
pub async fn list_alerts(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<AlertParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let p = params.into_inner();
    let states = match p.state.as_deref() {
        None => vec!["firing".to_owned(), "resolved".to_owned()],
        Some(s @ ("firing" | "resolved")) => vec![s.to_owned()],
        Some(_) => return Err(ApiError::validation("state", "must be firing or resolved")),
    };
    let from = time_param("from", p.from.as_deref())?.unwrap_or(queries::all_time().0);
    let to = time_param("to", p.to.as_deref())?.unwrap_or(queries::all_time().1);
    if from >= to {
        return Err(ApiError::validation("to", "must be after from"));
    }
    let filter = AlertFilter {
        states,
        rule: p.rule,
        from,
        to,
        after: page_cursor(p.cursor.as_deref())?,
        limit: page_limit(p.limit, 50)?,
    };
    let page = alerts_of(&state, &tenant, &filter, min_position(p.min_position)?).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// The episodes `filter` selects, once the read model reflects `min_position` (the
/// endpoint above and the dashboards' `alert_list` widget).
pub async fn alerts_of(
    state: &AppState,
    tenant: &str,
    filter: &AlertFilter,
    min_position: Option<i64>,
) -> Result<AlertPage, ApiError> {
    let client = state.read_model(tenant, RULES, min_position).await?;
    Ok(queries::list_alerts(&client, tenant, filter).await?)
}

/// Stores a channel's secret beside the log (sql/V18), after its command succeeded.
const SAVE_SECRET_SQL: &str = "\
INSERT INTO notification_channel_secrets (tenant_id, channel_id, secret) VALUES ($1, $2, $3)
ON CONFLICT (channel_id) DO UPDATE SET secret = EXCLUDED.secret, updated_at = now()
 WHERE notification_channel_secrets.tenant_id = EXCLUDED.tenant_id";
const DELETE_SECRET_SQL: &str =
    "DELETE FROM notification_channel_secrets WHERE tenant_id = $1 AND channel_id = $2";

async fn save_secret(
    state: &AppState,
    tenant: &str,
    id: Uuid,
    secret: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(secret) = secret {
        let client = state
            .store
            .pool()
            .get()
            .await
            .map_err(crate::db::QueryError::from)?;
        client
            .execute(SAVE_SECRET_SQL, &[&tenant, &id, &secret])
            .await
            .map_err(crate::db::QueryError::from)?;
    }
    Ok(())
}

/// Create a notification channel (webhook, DingTalk, WeCom or email).
#[utoipa::path(post, path = "/api/v1/notification-channels", request_body = ChannelDraft,
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 201, body = CommandResult), (status = 400, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
#[post("/api/v1/notification-channels")]
pub async fn create_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: ChannelDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    // The secret first, under the new id: a channel never exists without the secret it
    // says it has (a secret whose channel was never created is never read).
    ChannelDetails::validate(&draft, false).map_err(pipeline::CommandError::Domain)?;
    let id = Uuid::now_v7();
    save_secret(&state, &ctx.tenant_id, id, draft.secret.as_deref()).await?;
    let (result, _) = pipeline::execute::<NotificationChannel>(
        &state.store,
        &ctx,
        "CreateNotificationChannel",
        id,
        Expect::New,
        ChannelCommand::CreateChannel(draft),
        &(),
    )
    .await?;
    let path = format!("/api/v1/notification-channels/{}", result.id);
    Ok(crate::http::extract::created(&path, result.version, result))
}

/// Replace a notification channel; a `secret` left out keeps the stored one.
#[utoipa::path(put, path = "/api/v1/notification-channels/{id}", request_body = ChannelDraft,
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem)))]
#[put("/api/v1/notification-channels/{id}")]
pub async fn update_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "notification channel")?;
    let draft: ChannelDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let secret = draft.secret.clone();
    let (result, _) = pipeline::execute::<NotificationChannel>(
        &state.store,
        &ctx,
        "UpdateNotificationChannel",
        id,
        expect,
        ChannelCommand::UpdateChannel(draft),
        &(),
    )
    .await?;
    save_secret(&state, &ctx.tenant_id, id, secret.as_deref()).await?;
    Ok(crate::http::extract::with_etag(
        StatusCode::OK,
        result.version,
        result,
    ))
}

/// Delete a notification channel (and its secret). Rules naming it keep the id; their
/// notifications to it are marked dead.
#[utoipa::path(delete, path = "/api/v1/notification-channels/{id}",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "expected version, e.g. \"1\"", pattern = "^(W/)?\"?[0-9]{1,18}\"?$"),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)))]
#[delete("/api/v1/notification-channels/{id}")]
pub async fn delete_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "notification channel")?;
    let ctx = command_context(&req, b"")?;
    let expect = if_match(&req)?.map_or(Expect::Any, Expect::Version);
    let (result, _) = pipeline::execute::<NotificationChannel>(
        &state.store,
        &ctx,
        "DeleteNotificationChannel",
        id,
        expect,
        ChannelCommand::DeleteChannel,
        &(),
    )
    .await?;
    let client = state
        .store
        .pool()
        .get()
        .await
        .map_err(crate::db::QueryError::from)?;
    client
        .execute(DELETE_SECRET_SQL, &[&ctx.tenant_id, &id])
        .await
        .map_err(crate::db::QueryError::from)?;
    Ok(crate::http::extract::with_etag(
        StatusCode::OK,
        result.version,
        result,
    ))
}

/// One notification channel (never its secret).
#[utoipa::path(get, path = "/api/v1/notification-channels/{id}",
    params(("id" = Uuid, Path), ReadParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = ChannelView), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/notification-channels/{id}")]
pub async fn get_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "notification channel")?;
    let tenant = tenant(&req)?;
    let client = state
        .read_model(&tenant, CHANNELS, min_position(params.min_position)?)
        .await?;
    let channel = queries::get_channel(&client, &tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("notification channel".into()))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{}\"", channel.version)))
        .json(channel))
}

/// Notification channels, in pages.
#[utoipa::path(get, path = "/api/v1/notification-channels",
    params(PageParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = ChannelPage), (status = 400, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/notification-channels")]
pub async fn list_channels(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<PageParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let limit = page_limit(params.limit, 50)?;
    let after: Option<Uuid> = page_cursor(params.cursor.as_deref())?;
    let client = state
        .read_model(&tenant, CHANNELS, min_position(params.min_position)?)
        .await?;
    Ok(HttpResponse::Ok().json(queries::list_channels(&client, &tenant, after, limit).await?))
}

/// What a channel test did.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestOutcome {
    /// Whether the receiver accepted the message.
    pub delivered: bool,
    /// The receiver's HTTP status (250 for an SMTP server that took the mail).
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Its entry in the delivery log (`GET /api/v1/notifications`).
    pub notification_id: i64,
}

const SECRET_SQL: &str =
    "SELECT secret FROM notification_channel_secrets WHERE tenant_id = $1 AND channel_id = $2";

/// Send a test message to the channel now, and log it. 200 with `delivered: false` and
/// the receiver's error when it refused or could not be reached.
#[utoipa::path(post, path = "/api/v1/notification-channels/{id}:test",
    params(("id" = Uuid, Path),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = TestOutcome), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/notification-channels/{id}:test")]
pub async fn test_channel(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id, "notification channel")?;
    let tenant = tenant(&req)?;
    // The write side: a channel created a moment ago is tested at once.
    let loaded = pipeline::load::<NotificationChannel>(&state.store, &tenant, id).await?;
    let channel = loaded
        .aggregate
        .live()
        .ok_or_else(|| ApiError::NotFound("notification channel".into()))?;
    let client = state
        .store
        .pool()
        .get()
        .await
        .map_err(crate::db::QueryError::from)?;
    let secret: Option<String> = client
        .query_opt(SECRET_SQL, &[&tenant, &id])
        .await
        .map_err(crate::db::QueryError::from)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(crate::db::QueryError::from)?;
    let target = send::Target {
        kind: channel.kind.as_str().to_owned(),
        config: channel.config.clone(),
        secret,
    };
    let message = serde_json::json!({
        "state": "test", "rule_id": null, "rule_name": "cloudlens test message",
        "type": "test", "severity": "info", "at": chrono::Utc::now(),
        "details": {"channel_id": id},
    });
    let started = std::time::Instant::now();
    let sender = send::Sender::new(&state.settings).map_err(ApiError::Internal)?;
    let outcome = sender.send(&target, &message, "test").await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (delivered, status, error) = match outcome {
        Ok(s) => (true, Some(s), None),
        Err(f) => (false, f.status, Some(f.error)),
    };
    let log_state = if delivered { "delivered" } else { "dead" };
    let notification_id: i64 = client
        .query_one(
            super::outbox::LOG_TEST_SQL,
            &[
                &tenant,
                &id,
                &message,
                &log_state,
                &status.map(i32::from),
                &error,
            ],
        )
        .await
        .map_err(crate::db::QueryError::from)?
        .try_get(0)
        .map_err(crate::db::QueryError::from)?;
    Ok(HttpResponse::Ok().json(TestOutcome {
        delivered,
        status,
        error,
        duration_ms,
        notification_id,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationParams {
    /// `pending`, `delivered` or `dead`; all when omitted.
    pub state: Option<String>,
    /// Notifications to this channel only.
    pub channel: Option<Uuid>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// The delivery log, newest first: each notification's attempts, last status and error.
#[utoipa::path(get, path = "/api/v1/notifications",
    params(NotificationParams, ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = NotificationPage), (status = 400, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/notifications")]
pub async fn list_notifications(
    state: web::Data<AppState>,
    req: HttpRequest,
    params: web::Query<NotificationParams>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let p = params.into_inner();
    let states = match p.state.as_deref() {
        None => vec![
            "pending".to_owned(),
            "delivered".to_owned(),
            "dead".to_owned(),
        ],
        Some(s @ ("pending" | "delivered" | "dead")) => vec![s.to_owned()],
        Some(_) => {
            return Err(ApiError::validation(
                "state",
                "must be pending, delivered or dead",
            ))
        }
    };
    let limit = page_limit(p.limit, 50)?;
    let after: Option<i64> = page_cursor(p.cursor.as_deref())?;
    let client = state.read_model(&tenant, RULES, None).await?;
    Ok(HttpResponse::Ok().json(
        queries::list_notifications(&client, &tenant, &states, p.channel, after, limit).await?,
    ))
}
