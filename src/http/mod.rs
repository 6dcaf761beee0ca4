//! The HTTP side: app state, route table, request metrics, the server on a bound listener.

pub mod admin;
pub mod auth;
pub mod batch;
pub mod error;
pub mod extract;
pub mod openapi;

use std::net::TcpListener;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{middleware, web, App, HttpRequest, HttpServer};
use std::sync::Arc;

use crate::app::Tasks;
use crate::config::Settings;
use crate::db::{ReadConnection, Reader};
use crate::eventstore::EventStore;
use crate::projections::{wait, Progress, Registry};
use crate::telemetry::METRICS;
use error::ApiError;

/// Shared by all workers.
pub struct AppState {
    pub settings: Settings,
    /// The write side: appends and stream loads.
    pub store: EventStore,
    /// Shared connections to the primary: the `min_position` check (it reads the writers'
    /// locks), the key check, admin reads, and queries when there is no replica.
    pub reads: Reader,
    /// Queries that scan many rows (cost breakdowns) get pooled connections of their own,
    /// so they never hold up the point reads pipelined on `reads`.
    pub scans: deadpool_postgres::Pool,
    /// `CLOUDLENS_REPLICA_URL`: read-model queries go there while it is up (`db::replica`).
    pub replica: Option<crate::db::replica::Replica>,
    pub projections: Registry,
    /// Connection string for dedicated connections (rebuilds).
    pub conn: String,
    /// What local projectors have reached (serves `min_position`).
    pub progress: Progress,
    /// Work that requests start in the background (rebuilds); awaited on shutdown.
    pub tasks: Tasks,
    /// The API keys as this process knows them (`auth`).
    pub keyring: auth::Keyring,
    /// Seals and opens sensitive values (`crypto`).
    pub vault: crate::crypto::Vault,
    /// Whether vector searches can run (`documents::vector`).
    pub vector: std::sync::Arc<crate::documents::vector::VectorIndex>,
    /// Turns `true` when a graceful stop begins (`Running::stopping`): responses that
    /// never end by themselves (SSE streams) end then, so the stop does not wait for them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    /// A connection for `tenant`'s queries of `projection`'s read model, once that read
    /// model reflects `min_position` (read-your-writes; README). It runs as the query
    /// role bound to `tenant`: row-level security shows it only that tenant's rows.
    pub async fn read_model(
        &self,
        tenant: &str,
        projection: &str,
        min_position: Option<i64>,
    ) -> Result<Arc<ReadConnection>, ApiError> {
        self.read_models(tenant, &[projection], min_position).await
    }

    /// `read_model` for a query that reads the tables of several projectors: waits until
    /// each reflects `min_position`.
    pub async fn read_models(
        &self,
        tenant: &str,
        projections: &[&str],
        min_position: Option<i64>,
    ) -> Result<Arc<ReadConnection>, ApiError> {
        self.read_connection(tenant, projections, min_position, false)
            .await
    }

    /// `read_model` for a page of a list (tens of rows): a connection of the tenant's
    /// group for pages (`Reader::tenant_pages`).
    pub async fn page_read_model(
        &self,
        tenant: &str,
        projection: &str,
        min_position: Option<i64>,
    ) -> Result<Arc<ReadConnection>, ApiError> {
        self.read_connection(tenant, &[projection], min_position, true)
            .await
    }

    async fn read_connection(
        &self,
        tenant: &str,
        projections: &[&str],
        min_position: Option<i64>,
        pages: bool,
    ) -> Result<Arc<ReadConnection>, ApiError> {
        if let Some(r) = self.wait(projections, min_position).await? {
            match pick(&r.reads, tenant, pages).await {
                Ok(c) => return Ok(self.served_by("replica", c)),
                Err(e) => r.mark_down(&e),
            }
        }
        let c = pick(&self.reads, tenant, pages).await?;
        Ok(self.served_by("primary", c))
    }

    /// Counts where a read-model query was served, when a replica is configured.
    fn served_by<T>(&self, by: &str, connection: T) -> T {
        if self.replica.is_some() {
            METRICS.replica_queries.with_label_values(&[by]).inc();
        }
        connection
    }

    /// A connection as the owner, for the admin API's reads across tenants (API keys).
    pub async fn admin_read_model(
        &self,
        projection: &str,
        min_position: Option<i64>,
    ) -> Result<Arc<ReadConnection>, ApiError> {
        self.wait_primary(&[projection], min_position).await?;
        Ok(self.reads.get().await?)
    }

    /// Waits until the read models reflect `min_position` where the query will read them:
    /// on the primary, then (when the replica is up) until the replica replayed that far.
    /// The replica to read from, if any.
    async fn wait(
        &self,
        projections: &[&str],
        min_position: Option<i64>,
    ) -> Result<Option<&crate::db::replica::Replica>, ApiError> {
        self.wait_primary(projections, min_position).await?;
        let Some(replica) = self.replica.as_ref().filter(|r| r.is_up()) else {
            return Ok(None);
        };
        let Some(target) = min_position.filter(|p| *p > 0) else {
            return Ok(Some(replica));
        };
        match replica
            .wait_reflected(
                &self.reads,
                projections,
                target,
                self.settings.min_position_timeout,
            )
            .await
        {
            Ok(true) => Ok(Some(replica)),
            Ok(false) => Err(ApiError::ReadModelBehind(target)),
            Err(e) => {
                // Down while we waited: the primary has it all.
                replica.mark_down(&e);
                Ok(None)
            }
        }
    }

    async fn wait_primary(
        &self,
        projections: &[&str],
        min_position: Option<i64>,
    ) -> Result<(), ApiError> {
        if let Some(target) = min_position.filter(|p| *p > 0) {
            for projection in projections {
                let p = self
                    .projections
                    .iter()
                    .find(|p| p.name() == *projection)
                    .ok_or_else(|| {
                        ApiError::Internal(anyhow::anyhow!("no projection {projection}"))
                    })?;
                let timeout = self.settings.min_position_timeout;
                wait::wait_for(&self.reads, &self.progress, &**p, target, timeout).await?;
            }
        }
        Ok(())
    }

    /// A pooled connection of `scans` for `tenant`'s query that reads `projections'`
    /// tables, once each reflects `min_position`; bound to `tenant` as `read_model`'s.
    pub async fn scan(
        &self,
        tenant: &str,
        projections: &[&str],
        min_position: Option<i64>,
    ) -> Result<deadpool_postgres::Object, ApiError> {
        let mut client = None;
        if let Some(r) = self.wait(projections, min_position).await? {
            match r.scans.get().await {
                Ok(c) => client = Some(self.served_by("replica", c)),
                Err(e) => r.mark_down(&crate::db::QueryError::from(e)),
            }
        }
        let client = match client {
            Some(c) => c,
            None => {
                let c = self
                    .scans
                    .get()
                    .await
                    .map_err(crate::db::QueryError::from)?;
                self.served_by("primary", c)
            }
        };
        let bind = client
            .prepare_cached(crate::db::reader::BIND_TENANT_SQL)
            .await
            .map_err(crate::db::QueryError::from)?;
        client
            .execute(&bind, &[&tenant])
            .await
            .map_err(crate::db::QueryError::from)?;
        Ok(client)
    }

    /// A pooled connection of `scans` as the owner, bound to no tenant: for the admin
    /// API's reads of the whole database (the assessment), under the scans' timeout.
    pub async fn admin_scan(&self) -> Result<deadpool_postgres::Object, ApiError> {
        let client = self
            .scans
            .get()
            .await
            .map_err(crate::db::QueryError::from)?;
        client
            .batch_execute(crate::db::reader::UNBIND_SQL)
            .await
            .map_err(crate::db::QueryError::from)?;
        Ok(client)
    }
}

/// A connection of `reads` for `tenant`: of its group for pages, or for point reads.
async fn pick(
    reads: &crate::db::Reader,
    tenant: &str,
    pages: bool,
) -> Result<Arc<ReadConnection>, crate::db::QueryError> {
    if pages {
        reads.tenant_pages(tenant).await
    } else {
        reads.tenant(tenant).await
    }
}

/// Records every request by route pattern (not raw path: bounded label values) and status.
async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = res.status().as_u16().to_string();
    METRICS
        .http_requests
        .with_label_values(&[&method, &route, &status])
        .inc();
    METRICS
        .http_duration
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(%method, %route, %status, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "http request");
    Ok(res)
}

/// Reads W3C `traceparent` / `tracestate` from request headers.
struct HeaderExtractor<'a>(&'a actix_web::http::header::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The outermost middleware when traces are on: one server span per request, continuing
/// the caller's trace when it sends `traceparent`; the trace id in every log line of the
/// request (a span field) and in problem bodies.
async fn trace_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let method = req.method().to_string();
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    // Before the span is first entered: its parent is the caller's span, if any.
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&HeaderExtractor(req.headers()));
    let _ = span.set_parent(parent);
    crate::telemetry::record_trace_id(&span);
    let res = next.call(req).instrument(span.clone()).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    span.context()
        .span()
        .update_name(format!("{method} {route}"));
    span.record("http.route", route.as_str());
    span.record("http.response.status_code", res.status().as_u16());
    if res.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    Ok(res)
}

/// No route matched: 405 with `Allow` when the path exists with other methods (the
/// OpenAPI document knows every path), else 404.
async fn no_route(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    match openapi::allowed_methods(req.path()) {
        Some(allow) => Err(ApiError::MethodNotAllowed { allow }),
        None => Err(ApiError::NotFound(format!("route {}", req.path()))),
    }
}

/// Route table: the operations endpoints and every context's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(admin::healthz)
        .service(admin::readyz)
        .service(admin::metrics)
        .service(admin::openapi)
        .service(admin::projections)
        .service(admin::assessment)
        .service(admin::archive)
        .service(admin::rebuild)
        .service(admin::stream_events);
    for context in crate::context::all() {
        (context.routes)(cfg);
    }
}

/// Builds the server on an already bound listener (port 0 in tests). It does not listen
/// for signals: stop it through its handle (`app::serve` does on SIGINT/SIGTERM), and
/// workers finish in-flight requests before the returned future resolves.
pub fn server(listener: TcpListener, state: web::Data<AppState>) -> std::io::Result<Server> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let server = HttpServer::new(move || {
        let query_cfg = web::QueryConfig::default()
            .error_handler(|e, _| ApiError::validation("query", e.to_string()).into());
        let path_cfg = web::PathConfig::default()
            .error_handler(|e, _| ApiError::NotFound(e.to_string()).into());
        App::new()
            .app_data(state.clone())
            .app_data(query_cfg)
            .app_data(path_cfg)
            .app_data(web::PayloadConfig::new(state.settings.body_limit))
            .wrap(middleware::from_fn(auth::authenticate))
            .wrap(middleware::from_fn(record))
            .wrap(middleware::Condition::new(
                state.settings.otlp_endpoint.is_some(),
                middleware::from_fn(trace_request),
            ))
            .configure(routes)
            .default_service(web::to(no_route))
    })
    .workers(workers)
    .backlog(2048)
    .shutdown_timeout(30)
    // SIGINT and SIGTERM are handled by `app::serve`, both as a graceful stop (actix
    // would treat SIGINT as a forced one).
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
