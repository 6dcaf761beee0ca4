//! A bounded context as a plug-in. Each context's folder provides one [`BoundedContext`]:
//! its routes, its part of the OpenAPI document and its projectors. Its domain errors map
//! to HTTP through `pipeline::DomainError`. Shared code (`app`, `http`, `projections`)
//! names no context; [`all`] is the one place where a context is registered.

use std::sync::Arc;

use actix_web::web;

use crate::projections::Projection;

pub struct BoundedContext {
    /// Short name, for logs.
    pub name: &'static str,
    /// Adds the context's endpoints to the route table.
    pub routes: fn(&mut web::ServiceConfig),
    /// The context's paths and schemas, merged into the served OpenAPI document.
    pub openapi: fn() -> utoipa::openapi::OpenApi,
    /// The projectors that keep the context's read models.
    pub projections: fn() -> Vec<Arc<dyn Projection>>,
}

/// Every bounded context the server runs.
pub fn all() -> Vec<BoundedContext> {
    vec![crate::budgets::context()]
}

/// Every projector of every context.
pub fn projections() -> crate::projections::Registry {
    Arc::new(all().iter().flat_map(|c| (c.projections)()).collect())
}
