//! Budgets: how much a team may spend per period, with filters and alert thresholds.
//!
//! `commands` (what a client asks) → `aggregate` (decides, cqrs-es) → `events` (what
//! happened) → `projection` (the `budgets_view` read model) → `queries` (what clients
//! read) ; `routes` binds it all to HTTP, and [`context`] hands it to the server.

pub mod aggregate;
pub mod commands;
pub mod events;
pub mod projection;
pub mod queries;
pub mod routes;

use std::sync::Arc;

use utoipa::OpenApi;

pub use aggregate::{Budget, BudgetError};
pub use commands::{BudgetCommand, BudgetDraft};
pub use events::{BudgetDetails, BudgetEvent};

use crate::context::BoundedContext;
use crate::projections::Typed;

#[derive(OpenApi)]
#[openapi(
    paths(
        routes::create,
        routes::update,
        routes::remove,
        routes::get_one,
        routes::alerts,
        routes::list
    ),
    components(schemas(
        BudgetDraft,
        queries::BudgetView,
        queries::BudgetPage,
        queries::AlertView,
        queries::AlertList
    ))
)]
struct BudgetsApi;

/// The budgets context, as the server registers it (`context::all`).
pub fn context() -> BoundedContext {
    BoundedContext {
        name: "budgets",
        routes: routes::configure,
        openapi: BudgetsApi::openapi,
        projections: |_| vec![Arc::new(Typed(projection::BudgetsProjector))],
        jobs: Vec::new,
        // A deleted budget's row and alerts are gone from the read models.
        scheduled: |_| Vec::new(),
        ended: &[crate::eventstore::archive::EndedBy {
            stream_type: <aggregate::Budget as crate::pipeline::EventSourced>::STREAM_TYPE,
            event_types: &["BudgetDeleted"],
        }],
    }
}
