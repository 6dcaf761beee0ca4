//! Documents and full-text search (seeds 002, 003; replaces Weaviate's text search and
//! zhparser): weighted English and CJK-bigram search with ranking and snippets (ADR 0022).

pub mod aggregate;
pub mod cjk;
pub mod entries;
pub mod events;
pub mod import;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod routes;
pub mod vector;

use std::sync::Arc;

use utoipa::OpenApi;

use crate::context::BoundedContext;
use crate::scheduled::Job;

#[derive(OpenApi)]
#[openapi(
    paths(
        routes::create,
        routes::batch,
        routes::update,
        routes::remove,
        routes::get_one,
        routes::search
    ),
    components(schemas(
        events::DocumentDraft,
        routes::DocumentBatchAccepted,
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
        projections: |_| {
            vec![
                Arc::new(projection::DocumentsProjector),
                Arc::new(entries::SearchEntriesProjector),
            ]
        },
        jobs: Vec::new,
        scheduled: reservations_job,
        ended: &[crate::eventstore::archive::EndedBy {
            stream_type: <aggregate::Document as crate::pipeline::EventSourced>::STREAM_TYPE,
            event_types: &["DocumentDeleted"],
        }],
    }
}

/// Drops the id reservations of batches whose request died (`import::purge_reservations`).
fn reservations_job(env: &crate::scheduled::Env) -> Vec<Job> {
    let store = env.store.clone();
    vec![Job::new(
        "document_batch_ids_purge",
        env.settings.purge_interval,
        move || {
            let store = store.clone();
            // A batch reserves for as long as its body streams in; a day is far beyond.
            async move {
                import::purge_reservations(&store, std::time::Duration::from_secs(86_400)).await?;
                Ok(())
            }
        },
    )]
}
