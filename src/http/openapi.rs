//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations.

use utoipa::OpenApi;

use crate::budgets::{commands, queries, routes as budgets};
use crate::http::{admin, error};
use crate::pipeline::CommandResult;
use crate::projections::status;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cloudlens",
        description = "Event-sourced data server on PostgreSQL + TimescaleDB"
    ),
    paths(
        admin::healthz,
        admin::readyz,
        admin::metrics,
        admin::projections,
        admin::rebuild,
        admin::stream_events,
        budgets::create,
        budgets::update,
        budgets::remove,
        budgets::get_one,
        budgets::list,
    ),
    components(schemas(
        commands::BudgetDraft,
        queries::BudgetView,
        queries::BudgetPage,
        CommandResult,
        error::Problem,
        status::ProjectorStatus,
        status::RebuildStatus,
        admin::ProjectionsList,
        admin::StreamEvents,
        admin::StreamEvent,
        admin::Readiness,
    ))
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // The document describes itself too.
    let me = utoipa::openapi::path::PathItem::new(
        utoipa::openapi::HttpMethod::Get,
        utoipa::openapi::path::OperationBuilder::new()
            .summary(Some("This OpenAPI 3 document"))
            .response("200", utoipa::openapi::Response::new("OpenAPI document")),
    );
    doc.paths.paths.insert("/api/v1/openapi.json".into(), me);
    doc
}
