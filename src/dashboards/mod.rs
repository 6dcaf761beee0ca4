//! Dashboards: named grids of widgets, each showing the data of one existing endpoint
//! (cost breakdowns, metric series, budget status, tag stats, alerts).
//!
//! `commands` (what a client asks) → `aggregate` (checks the grid and the data sources,
//! and who may change it) → `events` → `projection` (the `dashboards` read model) →
//! `queries`; `data` runs the widgets through their endpoints' code (ADR 0027); `routes`
//! binds it all to HTTP, and [`context`] hands it to the server.

pub mod aggregate;
pub mod commands;
pub mod data;
pub mod events;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod routes;

use std::sync::Arc;

use utoipa::OpenApi;

pub use aggregate::{Dashboard, DashboardError};
pub use commands::{DashboardCommand, DashboardDraft};
pub use events::{DashboardDetails, DashboardEvent};

use crate::context::BoundedContext;
use crate::projections::Typed;

#[derive(OpenApi)]
#[openapi(
    paths(
        routes::create,
        routes::update,
        routes::remove,
        routes::get_one,
        routes::list,
        routes::dashboard_data
    ),
    components(schemas(
        DashboardDraft,
        commands::WidgetDraft,
        commands::PositionDraft,
        queries::DashboardView,
        queries::DashboardPage,
        data::DashboardData,
        data::WidgetData
    ))
)]
struct DashboardsApi;

/// The dashboards context, as the server registers it (`context::all`).
pub fn context() -> BoundedContext {
    metrics::init();
    BoundedContext {
        name: "dashboards",
        routes: routes::configure,
        openapi: DashboardsApi::openapi,
        projections: |_| vec![Arc::new(Typed(projection::DashboardsProjector))],
        jobs: Vec::new,
        scheduled: |_| Vec::new(),
        // A deleted dashboard's row (and search entry) is gone from the read models.
        ended: &[crate::eventstore::archive::EndedBy {
            stream_type: <aggregate::Dashboard as crate::pipeline::EventSourced>::STREAM_TYPE,
            event_types: &["DashboardDeleted"],
        }],
    }
}
