//! The event feed (issue 13, ADR 0029): other programs read a tenant's events in the
//! gap-free global order, page by page (`GET /api/v1/feed`, JSON or NDJSON, long-polling),
//! as a server-sent event stream, or through consumer groups that hold their members'
//! positions, lease partitions of streams to them and redeliver what was not acknowledged.
//!
//! - `cursor`: the opaque cursor, `(epoch, transaction_id, position)`;
//! - `params`: checked query parameters and filters;
//! - `groups`: consumer groups (tables `consumer_*`, `sql/V21`);
//! - `routes`: the endpoints; `metrics`: their Prometheus metrics.
//!
//! The reads themselves are `eventstore::global::read_feed` / `read_partitions`, built from
//! the same ordering predicate as the projectors' reads.

pub mod cursor;
pub mod groups;
pub mod metrics;
pub mod params;
pub mod routes;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::context::BoundedContext;
use crate::eventstore::global::Cursor;
use crate::eventstore::RecordedEvent;
use crate::scheduled::Job;

/// Stream types the feed never shows: API key streams hold hashes of secrets.
pub fn hidden() -> [&'static str; 1] {
    [<crate::access::aggregate::ApiKey as crate::pipeline::EventSourced>::STREAM_TYPE]
}

/// One event as the feed shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedEvent {
    /// Global position (unique; *not* the order: see `cursor`).
    pub position: i64,
    pub stream_type: String,
    pub stream_id: Uuid,
    /// The event's version in its stream.
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    /// The event's data as stored.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    /// Where this event stands in the global order: pass it as `after` (or ack it) to go on
    /// after it.
    pub cursor: String,
}

impl From<RecordedEvent> for FeedEvent {
    fn from(e: RecordedEvent) -> Self {
        let cursor = cursor::encode(Cursor::from(&e));
        Self {
            position: e.position,
            stream_type: e.stream_type,
            stream_id: e.stream_id,
            version: e.stream_version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            payload: e.payload,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
            cursor,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    paths(
        routes::feed,
        routes::put_group,
        routes::get_group,
        routes::poll,
        routes::ack,
    ),
    components(schemas(
        FeedEvent,
        routes::FeedPage,
        groups::GroupFilters,
        groups::GroupDraft,
        groups::GroupView,
        groups::PartitionView,
        groups::MemberView,
        groups::PollRequest,
        groups::PollBatch,
        groups::AckRequest,
        groups::Acked,
    ))
)]
struct FeedApi;

/// The feed, registered like a context (`context::all`): routes, OpenAPI, and the elected
/// job that measures consumer-group lag. It has no projector and no events of its own.
pub fn context() -> BoundedContext {
    metrics::init();
    BoundedContext {
        name: "feed",
        routes: routes::configure,
        openapi: FeedApi::openapi,
        projections: |_| Vec::new(),
        jobs: Vec::new,
        scheduled: lag_job,
        ended: &[],
    }
}

/// How often the elected process measures every group's lag.
const LAG_EVERY: Duration = Duration::from_secs(5);

fn lag_job(env: &crate::scheduled::Env) -> Vec<Job> {
    let store = env.store.clone();
    let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    vec![Job::new("consumer_group_lag", LAG_EVERY, move || {
        let store = store.clone();
        let shown = shown.clone();
        async move {
            groups::refresh_lag(store.pool(), &shown).await?;
            Ok(())
        }
    })]
}
