//! Operations endpoints: health, readiness, metrics, projections, the audit trail, OpenAPI.

use actix_web::{get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::AppState;
use crate::eventstore::archive as event_archive;
use crate::projections::rebuild::{Rebuild, RebuildError};
use crate::projections::status::{self, ProjectorStatus};
use crate::telemetry::{self, METRICS};

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub database: bool,
    pub migrations: bool,
    pub projectors: bool,
    /// Age of the oldest open event-writer transaction, in seconds. Projectors cannot
    /// read past it (ADR 0001); it does not make the server unready, but an alert fires.
    pub oldest_writer_seconds: f64,
    /// True when that transaction has been open longer than 5 s: projectors are stalled.
    pub writers_stalled: bool,
}

/// Database reachable, migrations applied, every projector running (in some process).
async fn readiness(state: &AppState) -> Readiness {
    let mut r = Readiness {
        ready: false,
        database: false,
        migrations: false,
        projectors: false,
        oldest_writer_seconds: 0.0,
        writers_stalled: false,
    };
    // Operations read through the write store's pool: their scans (lag counts, sizes) must
    // not hold up the queries pipelined on the read connections (`db::Reader`).
    if let Ok(client) = state.store.pool().get().await {
        let client = &**client;
        if let Ok(applied) = crate::db::migrations_applied(client).await {
            r.database = true;
            r.migrations = applied >= crate::db::migration_count();
            if let Ok(w) = crate::db::stats::oldest_writer(client).await {
                r.oldest_writer_seconds = w.age.as_secs_f64();
                r.writers_stalled = w.stalled;
            }
            let mut all = true;
            for p in state.projections.iter() {
                match status::of(client, &**p).await {
                    Ok(s) if s.state != "stopped" => {}
                    _ => all = false,
                }
            }
            r.projectors = all;
        }
    }
    r.ready = r.database && r.migrations && r.projectors;
    METRICS.ready.set(i64::from(r.ready));
    r
}

/// Readiness: database reachable, migrations applied, every projector running somewhere.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let r = readiness(&state).await;
    let mut resp = if r.ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    if !r.ready {
        resp.insert_header(("Retry-After", "1"));
    }
    resp.json(r)
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let pool = state.store.pool().status();
    METRICS.pool_size.set(pool.size as i64);
    METRICS.pool_available.set(pool.available as i64);
    METRICS.pool_waiting.set(pool.waiting as i64);
    // Readiness (which also refreshes the projector lag and writer gauges) and the
    // database gauges are read from the database; a scrape while it is down keeps the
    // last values.
    readiness(&state).await;
    if let Ok(client) = state.store.pool().get().await {
        let tables: Vec<&str> = state.projections.iter().flat_map(|p| p.tables()).collect();
        if let Err(e) = crate::db::stats::refresh(&**client, &tables).await {
            tracing::debug!(error = %e, "cannot refresh database gauges");
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(telemetry::render())
}

#[derive(Serialize, ToSchema)]
pub struct ProjectionsList {
    pub projections: Vec<ProjectorStatus>,
}

/// Every projector: position, lag, state.
#[utoipa::path(get, path = "/api/v1/admin/projections", responses(
    (status = 200, body = ProjectionsList), (status = 503, body = Problem)))]
#[get("/api/v1/admin/projections")]
pub async fn projections(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let client = state
        .store
        .pool()
        .get()
        .await
        .map_err(|e| ApiError::from(crate::eventstore::StoreError::from(e)))?;
    let mut out = Vec::new();
    for p in state.projections.iter() {
        out.push(status::of(&**client, &**p).await?);
    }
    Ok(HttpResponse::Ok().json(ProjectionsList { projections: out }))
}

/// The database assessed: tables, hypertables, indexes, events per type and per day,
/// growth, and the top statements (`cloudlens assess` prints the same as tables).
#[utoipa::path(get, path = "/api/v1/admin/assessment", responses(
    (status = 200, body = crate::ops::assessment::Assessment), (status = 503, body = Problem)))]
#[get("/api/v1/admin/assessment")]
pub async fn assessment(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let client = state.admin_scan().await?;
    let report = crate::ops::assessment::assess(&client).await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Serialize, ToSchema)]
pub struct RebuildStarted {
    pub projection: String,
    /// `running`.
    pub state: String,
    /// Where to follow it.
    pub status: String,
}

/// Starts a rebuild of one projection into a shadow copy; swaps it in when caught up.
/// A server that stops meanwhile marks it `interrupted`; it is not resumed.
#[utoipa::path(post, path = "/api/v1/admin/projections/{name}/rebuild",
    params(("name" = String, Path, description = "projection name")),
    responses((status = 202, body = RebuildStarted), (status = 404, body = Problem),
              (status = 409, body = Problem)))]
#[post("/api/v1/admin/projections/{name}/rebuild")]
pub async fn rebuild(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let projection = state
        .projections
        .iter()
        .find(|p| p.name() == name.as_str())
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("projection {name}")))?;
    let rebuild = Rebuild::begin(&state.conn, projection)
        .await
        .map_err(|e| match e {
            RebuildError::InProgress(n) => {
                ApiError::RebuildInProgress(format!("a rebuild of {n} is already running"))
            }
            RebuildError::Projection(p) if p.is_unavailable() => {
                ApiError::Unavailable(p.to_string())
            }
            other => ApiError::Internal(other.into()),
        })?;
    let batch = state.settings.projector_batch_size;
    state.tasks.spawn(move |stop| async move {
        let _ = rebuild.run(batch, stop).await;
    });
    Ok(HttpResponse::Accepted().json(RebuildStarted {
        projection: name.into_inner(),
        state: "running".into(),
        status: "/api/v1/admin/projections".into(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct StreamEvent {
    pub position: i64,
    pub version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: i32,
    #[schema(value_type = Object)]
    pub data: Box<serde_json::value::RawValue>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct StreamEvents {
    pub events: Vec<StreamEvent>,
}

/// The audit trail of one stream, oldest first (events as stored, not upcast).
#[utoipa::path(get, path = "/api/v1/streams/{stream_type}/{id}/events",
    params(("stream_type" = String, Path), ("id" = Uuid, Path),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = StreamEvents), (status = 400, body = Problem),
              (status = 404, body = Problem)))]
#[get("/api/v1/streams/{stream_type}/{id}/events")]
pub async fn stream_events(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    path: web::Path<(String, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (stream_type, id) = path.into_inner();
    // Key streams hold hashes of secrets: the admin API lists keys without them.
    if stream_type
        == <crate::access::aggregate::ApiKey as crate::pipeline::EventSourced>::STREAM_TYPE
    {
        return Err(ApiError::NotFound(format!("stream {stream_type}/{id}")));
    }
    let tenant = super::extract::tenant(&req)?;
    let events = state.store.load_stream(&stream_type, id).await?;
    let events: Vec<StreamEvent> = events
        .into_iter()
        .filter(|e| e.tenant_id == tenant)
        .map(|e| StreamEvent {
            position: e.position,
            version: e.stream_version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            data: e.payload,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
        })
        .collect();
    if events.is_empty() {
        return Err(ApiError::NotFound(format!("stream {stream_type}/{id}")));
    }
    Ok(HttpResponse::Ok().json(StreamEvents { events }))
}

/// This API's OpenAPI 3 document, generated from the handlers.
#[get("/api/v1/openapi.json")]
pub async fn openapi() -> HttpResponse {
    static BODY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        serde_json::to_string(super::openapi::document()).unwrap_or_default()
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .body(BODY.as_str())
}

/// What to archive (ADR 0020).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveRequest {
    /// Streams that ended at least this many days ago (0: any ended stream).
    #[schema(minimum = 0, maximum = 36500)]
    pub ended_days_ago: u32,
    /// Count what would move, move nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Archive streams that ended (deleted budgets): their events move from the live log to
/// the archive, out of every replay and rebuild, still readable through the stream API.
#[utoipa::path(post, path = "/api/v1/admin/archive", request_body = ArchiveRequest,
    responses((status = 200, body = crate::eventstore::archive::Archived),
              (status = 400, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[post("/api/v1/admin/archive")]
pub async fn archive(
    state: web::Data<AppState>,
    body: super::extract::JsonBody,
) -> Result<HttpResponse, ApiError> {
    let request: ArchiveRequest = body.parse()?;
    if request.ended_days_ago > event_archive::MAX_DAYS {
        return Err(ApiError::validation("ended_days_ago", "at most 36500"));
    }
    let report = event_archive::archive_ended(
        &state.conn,
        &crate::context::ended_streams(),
        &state.projections,
        event_archive::Cutoff {
            ended_days_ago: request.ended_days_ago,
            min_age: state.settings.archive_min_age,
        },
        request.dry_run,
    )
    .await
    .map_err(|e| match e {
        event_archive::ArchiveError::RebuildInProgress(_) => {
            ApiError::RebuildInProgress(e.to_string())
        }
        event_archive::ArchiveError::Store(s) => s.into(),
    })?;
    Ok(HttpResponse::Ok().json(report))
}
