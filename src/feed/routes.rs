//! HTTP endpoints of the feed and of consumer groups.
//!
//! `GET /api/v1/feed` answers by the `Accept` header: JSON `{events, next}` (default),
//! NDJSON (one event per line; the next cursor in the `Feed-Next-Cursor` header), or a
//! server-sent event stream that keeps sending events as they are appended, each with
//! `id: <cursor>`, resuming after `Last-Event-ID`.

use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{get, post, put, web, HttpMessage, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::groups::{self, AckRequest, Acked, GroupDraft, GroupView, PollBatch, PollRequest};
use super::metrics::{SseConnection, FEED};
use super::{cursor, params, FeedEvent};
use crate::eventstore::global::{self, Cursor, FeedFilter};
use crate::eventstore::signal::Wake;
use crate::eventstore::RecordedEvent;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{tenant, JsonBody};
use crate::http::AppState;

/// The header that carries an NDJSON page's next cursor.
pub const NEXT_CURSOR: &str = "Feed-Next-Cursor";
/// How often a waiting reader looks again without a wake-up (appends in flight past the
/// horizon, other processes without LISTEN).
const POLL_EVERY: Duration = Duration::from_millis(200);
/// An SSE stream sends a comment line after this long without events.
const HEARTBEAT: Duration = Duration::from_secs(15);
const MAX_LIMIT: i64 = 1_000;
const MAX_NDJSON_LIMIT: i64 = 10_000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(feed)
        .service(put_group)
        .service(get_group)
        .service(poll)
        .service(ack);
}

/// `GET /api/v1/feed` parameters, all checked by the handler (422 names the field).
#[derive(Debug, Deserialize, IntoParams)]
pub struct FeedQuery {
    /// The cursor to read after (`0` or absent: the start of the log).
    pub after: Option<String>,
    /// Comma-separated stream types (`budget,bill_import`); absent: all.
    pub stream_types: Option<String>,
    /// Comma-separated event types (`BudgetCreated`); absent: all.
    pub event_types: Option<String>,
    /// Most events in the page: 1–1000 (NDJSON: 1–10000), default 100.
    pub limit: Option<String>,
    /// Seconds (0–30) to wait for events when there are none yet.
    pub wait: Option<String>,
}

/// A page of the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedPage {
    pub events: Vec<FeedEvent>,
    /// Pass as `after` for the next page. A page shorter than `limit` moves it on to
    /// the horizon: everything before it was read.
    pub next: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
    Sse,
}

fn format(req: &HttpRequest) -> Format {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if accept.contains("text/event-stream") {
        Format::Sse
    } else if accept.contains("application/x-ndjson") {
        Format::Ndjson
    } else {
        Format::Json
    }
}

/// What a reader asked for, checked.
struct Reading {
    tenant: String,
    stream_types: Option<Vec<String>>,
    event_types: Option<Vec<String>>,
    limit: i64,
}

impl Reading {
    /// One page after `after`, below the horizon, on a pooled connection held only for
    /// it, and the cursor to read on from (`global::read_feed`).
    async fn page(
        &self,
        state: &AppState,
        after: Cursor,
    ) -> Result<(Vec<RecordedEvent>, Cursor), ApiError> {
        let client = state.admin_scan().await?;
        let hidden = super::hidden();
        let filter = FeedFilter {
            tenant: &self.tenant,
            hidden: &hidden,
            stream_types: self.stream_types.clone(),
            event_types: self.event_types.clone(),
        };
        Ok(global::read_feed(&**client, &filter, after, self.limit).await?)
    }

    /// A page, waiting up to `wait` for one that is not empty: woken by appends in this
    /// process (and, through LISTEN, in others), polling as the fallback.
    async fn wait_page(
        &self,
        state: &AppState,
        wake: &mut Wake,
        mut after: Cursor,
        wait: Duration,
    ) -> Result<(Vec<RecordedEvent>, Cursor), ApiError> {
        let deadline = Instant::now() + wait;
        loop {
            // Forget older wake-ups *before* reading: an append during the read wakes the
            // next wait instead of being missed.
            wake.mark_unchanged();
            let (events, next) = self.page(state, after).await?;
            let now = Instant::now();
            if !events.is_empty() || now >= deadline {
                return Ok((events, next));
            }
            // Nothing up to the horizon: the next read starts there.
            after = next;
            let nap = (deadline - now).min(POLL_EVERY);
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }
}

/// The next events of the tenant in the gap-free global order (never one skipped or
/// repeated), long-polling up to `wait` seconds. JSON by default; NDJSON with
/// `Accept: application/x-ndjson` (next cursor in `Feed-Next-Cursor`); a server-sent event
/// stream with `Accept: text/event-stream` (resumes after `Last-Event-ID`).
#[utoipa::path(get, path = "/api/v1/feed", params(FeedQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "SSE: the cursor to resume after (wins over `after`)"),
        ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "A page (JSON), a page as NDJSON lines (the next cursor in the Feed-Next-Cursor header), or a server-sent event stream that ends only with a last `shutdown` event (graceful stop) or `error` event (its API key revoked, a failed read)",
            content(
                (FeedPage = "application/json"),
                (FeedEvent = "application/x-ndjson"),
                (String = "text/event-stream"),
            ),
            headers(("Feed-Next-Cursor" = String, description = "NDJSON: the cursor to pass as `after` next"))),
        (status = 400, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem)))]
#[get("/api/v1/feed")]
pub async fn feed(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<FeedQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let format = format(&req);
    let q = query.into_inner();
    let max = if format == Format::Ndjson {
        MAX_NDJSON_LIMIT
    } else {
        MAX_LIMIT
    };
    let reading = Reading {
        tenant,
        stream_types: params::names(
            "stream_types",
            q.stream_types.as_deref(),
            params::is_stream_type,
        )?,
        event_types: params::names(
            "event_types",
            q.event_types.as_deref(),
            params::is_event_type,
        )?,
        limit: params::number("limit", q.limit.as_deref(), 1, max, 100)?,
    };
    let wait = params::wait(q.wait.as_deref())?;
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let after = match (format, last_event_id) {
        (Format::Sse, Some(id)) => params::after("Last-Event-ID", Some(id))?,
        _ => params::after("after", q.after.as_deref())?,
    };
    let format_label = match format {
        Format::Json => "json",
        Format::Ndjson => "ndjson",
        Format::Sse => "sse",
    };
    FEED.requests.with_label_values(&[format_label]).inc();
    if format == Format::Sse {
        let key = req
            .extensions()
            .get::<crate::http::auth::Principal>()
            .map(|p| p.key_id);
        return Ok(sse(state, reading, after, key));
    }
    let mut wake = state.store.signal().subscribe_all();
    let (events, next) = reading.wait_page(&state, &mut wake, after, wait).await?;
    FEED.delivered
        .with_label_values(&["page"])
        .inc_by(events.len() as u64);
    let next = cursor::encode(next);
    let events: Vec<FeedEvent> = events.into_iter().map(FeedEvent::from).collect();
    if format == Format::Ndjson {
        let mut body = Vec::with_capacity(events.len() * 256);
        for e in &events {
            serde_json::to_writer(&mut body, e)
                .map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
            body.push(b'\n');
        }
        return Ok(HttpResponse::Ok()
            .content_type("application/x-ndjson")
            .insert_header((NEXT_CURSOR, next))
            .body(body));
    }
    Ok(HttpResponse::Ok().json(FeedPage { events, next }))
}

/// The SSE stream: batches of events as they arrive, a heartbeat comment when idle. An
/// error ends the stream with an `error` event; the client reconnects with
/// `Last-Event-ID` and loses nothing. The stream also ends:
/// - when the server begins a graceful stop, with a `shutdown` event (so the stop does not
///   wait for the stream; the client reconnects to another instance);
/// - when its API key `key` is revoked, with an `error` event (401 `unauthenticated`),
///   found between two chunks: within one heartbeat and the key copy's reload (1 s).
fn sse(
    state: web::Data<AppState>,
    reading: Reading,
    after: Cursor,
    key: Option<uuid::Uuid>,
) -> HttpResponse {
    struct Stream {
        state: web::Data<AppState>,
        reading: Reading,
        after: Cursor,
        wake: Wake,
        stopping: tokio::sync::watch::Receiver<bool>,
        key: Option<uuid::Uuid>,
        _open: SseConnection,
        done: bool,
    }
    fn error_event(e: &ApiError) -> Vec<u8> {
        let problem = serde_json::to_string(&e.problem()).unwrap_or_default();
        format!("event: error\ndata: {problem}\n\n").into_bytes()
    }
    let wake = state.store.signal().subscribe_all();
    let stopping = state.stopping.clone();
    let start = Stream {
        state,
        reading,
        after,
        wake,
        stopping,
        key,
        _open: SseConnection::open(),
        done: false,
    };
    let first = futures::stream::once(async {
        Ok::<_, actix_web::Error>(web::Bytes::from_static(b"retry: 1000\n\n"))
    });
    let rest = futures::stream::unfold(start, |mut s| async move {
        if s.done {
            return None;
        }
        if let Some(key) = s.key {
            if !s.state.keyring.still_valid(&s.state.reads, key).await {
                s.done = true;
                let e = ApiError::Unauthenticated("the API key was revoked");
                return Some((Ok(web::Bytes::from(error_event(&e))), s));
            }
        }
        let stopping = &mut s.stopping;
        let stopped = async move {
            // No one can stop this server gracefully (a test's server): never.
            if stopping.wait_for(|stopping| *stopping).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let page = tokio::select! {
            page = s.reading.wait_page(&s.state, &mut s.wake, s.after, HEARTBEAT) => Some(page),
            () = stopped => None,
        };
        let Some(page) = page else {
            s.done = true;
            let chunk = web::Bytes::from_static(
                b"event: shutdown\ndata: {\"detail\":\"the server is stopping; reconnect with Last-Event-ID\"}\n\n",
            );
            return Some((Ok(chunk), s));
        };
        if let Ok((_, next)) = &page {
            s.after = *next;
        }
        let chunk = match page {
            Ok((events, _)) if events.is_empty() => b": keep-alive\n\n".to_vec(),
            Ok((events, _)) => {
                FEED.delivered
                    .with_label_values(&["sse"])
                    .inc_by(events.len() as u64);
                let mut out = Vec::with_capacity(events.len() * 300);
                for e in events {
                    let e = FeedEvent::from(e);
                    out.extend_from_slice(b"id: ");
                    out.extend_from_slice(e.cursor.as_bytes());
                    out.extend_from_slice(b"\ndata: ");
                    if serde_json::to_writer(&mut out, &e).is_err() {
                        s.done = true;
                    }
                    out.extend_from_slice(b"\n\n");
                }
                out
            }
            Err(e) => {
                tracing::warn!(error = %e, "feed stream stopped");
                s.done = true;
                error_event(&e)
            }
        };
        Some((Ok::<_, actix_web::Error>(web::Bytes::from(chunk)), s))
    });
    use futures::StreamExt;
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(first.chain(rest))
}

/// Creates a consumer group (201) or replaces its filters (200); positions stay.
#[utoipa::path(put, path = "/api/v1/consumers/{group}", request_body = GroupDraft,
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = GroupView), (status = 201, body = GroupView),
              (status = 400, body = Problem), (status = 403, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[put("/api/v1/consumers/{group}")]
pub async fn put_group(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let group = path.into_inner();
    groups::check_group(&group)?;
    let draft: GroupDraft = body.parse()?;
    let created = groups::put(state.store.pool(), &tenant, &group, &draft).await?;
    let view = groups::view(state.store.pool(), &tenant, &group).await?;
    Ok(if created {
        HttpResponse::Created().json(view)
    } else {
        HttpResponse::Ok().json(view)
    })
}

/// The group: its filters, its 16 partitions with owner, lease, committed cursor and lag,
/// and its members.
#[utoipa::path(get, path = "/api/v1/consumers/{group}",
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = GroupView), (status = 400, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[get("/api/v1/consumers/{group}")]
pub async fn get_group(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let group = path.into_inner();
    groups::check_group(&group)?;
    Ok(HttpResponse::Ok().json(groups::view(state.store.pool(), &tenant, &group).await?))
}

/// The member's next batch: events of the partitions it holds, after their committed
/// cursors (unacknowledged events come again: at-least-once), leased to it.
#[utoipa::path(post, path = "/api/v1/consumers/{group}/poll", request_body = PollRequest,
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = PollBatch), (status = 400, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[post("/api/v1/consumers/{group}/poll")]
pub async fn poll(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let group = path.into_inner();
    groups::check_group(&group)?;
    let request: PollRequest = body.parse()?;
    let batch: PollBatch = groups::poll(state.store.pool(), &tenant, &group, &request).await?;
    Ok(HttpResponse::Ok().json(batch))
}

/// Commits the member's partitions up to the cursor (or the event at `position`), never
/// past what was delivered to it. 409 when its lease expired and its partitions went to
/// another member.
#[utoipa::path(post, path = "/api/v1/consumers/{group}/ack", request_body = AckRequest,
    params(("group" = String, Path, pattern = "^[A-Za-z0-9_.-]{1,64}$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = Acked), (status = 400, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[post("/api/v1/consumers/{group}/ack")]
pub async fn ack(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let tenant = tenant(&req)?;
    let group = path.into_inner();
    groups::check_group(&group)?;
    let request: AckRequest = body.parse()?;
    let acked: Acked = groups::ack(state.store.pool(), &tenant, &group, &request).await?;
    Ok(HttpResponse::Ok().json(acked))
}
