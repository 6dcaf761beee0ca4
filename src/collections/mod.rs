//! TTL collections (issue 11: MongoDB's `system_logs` and `configurations`, the Redis-like
//! `task_status_cache`): JSON items by key in named collections, filtered by containment,
//! paged by time or key, expiring after their collection's TTL (ADR 0023).
//!
//! A collection's declaration is an event (`collection` stream, read model `collections`,
//! rebuildable); its items are not: `store` writes them to the plain table
//! `collection_items`, `queries` reads them (never an expired one) and the elected
//! `collection_items_purge` job deletes the expired ones. `items` checks what a client
//! sends; `routes` binds it all to HTTP.

pub mod aggregate;
pub mod commands;
pub mod events;
pub mod items;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod routes;
pub mod store;

use std::sync::Arc;

use utoipa::OpenApi;
use uuid::Uuid;

use crate::context::BoundedContext;
use crate::projections::Typed;
use crate::scheduled::Job;

/// Namespace of the context's name-derived stream ids.
const STREAM_NS: Uuid = Uuid::from_u128(0x0194_e3c1_7b2a_7c55_a0d4_4c6f_0000_0017);

/// The stream of the tenant's collection `name`.
pub fn stream_id(tenant: &str, name: &str) -> Uuid {
    Uuid::new_v5(&STREAM_NS, format!("collection/{tenant}/{name}").as_bytes())
}

#[derive(OpenApi)]
#[openapi(
    paths(
        routes::declare,
        routes::list_collections,
        routes::get_collection,
        routes::write_items,
        routes::list_items,
        routes::get_item,
        routes::put_item,
        routes::delete_item,
        routes::run_purge,
    ),
    components(schemas(
        commands::CollectionDraft,
        items::ItemDraft,
        items::ItemData,
        queries::CollectionView,
        queries::CollectionList,
        queries::ItemView,
        queries::ItemPage,
        routes::ItemsWritten,
        routes::PurgeRun,
    ))
)]
struct CollectionsApi;

/// The collections context, as the server registers it (`context::all`).
pub fn context() -> BoundedContext {
    metrics::init();
    BoundedContext {
        name: "collections",
        routes: routes::configure,
        openapi: CollectionsApi::openapi,
        projections: |_| vec![Arc::new(Typed(projection::CollectionsProjector))],
        jobs: Vec::new,
        scheduled: purge_job,
        ended: &[],
    }
}

/// Expired items deleted by the elected process every `collections_purge_interval`.
fn purge_job(env: &crate::scheduled::Env) -> Vec<Job> {
    let store = env.store.clone();
    vec![Job::new(
        "collection_items_purge",
        env.settings.collections_purge_interval,
        move || {
            let store = store.clone();
            async move {
                store::purge(store.pool()).await?;
                Ok(())
            }
        },
    )]
}
