//! Documents and full-text search (seeds 002, 003; replaces Weaviate's text search and
//! zhparser): weighted English and CJK-bigram search with ranking and snippets (ADR 0022).

pub mod aggregate;
pub mod cjk;
pub mod events;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod routes;

use std::sync::Arc;

use utoipa::OpenApi;

use crate::context::BoundedContext;
use crate::projections::Typed;

#[derive(OpenApi)]
#[openapi(
    paths(
        routes::create,
        routes::update,
        routes::remove,
        routes::get_one,
        routes::search
    ),
    components(schemas(
        events::DocumentDraft,
        queries::DocumentView,
        queries::Hit,
        queries::SearchPage
    ))
)]
struct DocumentsApi;

/// The documents context, as the server registers it (`context::all`).
pub fn context() -> BoundedContext {
    metrics::init();
    BoundedContext {
        name: "documents",
        routes: routes::configure,
        openapi: DocumentsApi::openapi,
        projections: |_| vec![Arc::new(Typed(projection::DocumentsProjector))],
        jobs: Vec::new,
        scheduled: |_| Vec::new(),
        ended: &[crate::eventstore::archive::EndedBy {
            stream_type: <aggregate::Document as crate::pipeline::EventSourced>::STREAM_TYPE,
            event_types: &["DocumentDeleted"],
        }],
    }
}
