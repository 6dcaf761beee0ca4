//! A bounded context as a plug-in. Each context's folder provides one [`BoundedContext`]:
//! its routes, its part of the OpenAPI document and its projectors. Its domain errors map
//! to HTTP through `pipeline::DomainError`. Shared code (`app`, `http`, `projections`)
//! names no context; [`all`] is the one place where a context is registered.

use std::sync::Arc;

use actix_web::web;

use crate::config::Settings;
use crate::eventstore::archive::EndedBy;
use crate::jobs::{JobHandler, JobsProjection};
use crate::projections::Projection;
use crate::scheduled::Job;

pub struct BoundedContext {
    /// Short name, for logs.
    pub name: &'static str,
    /// Adds the context's endpoints to the route table.
    pub routes: fn(&mut web::ServiceConfig),
    /// The context's paths and schemas, merged into the served OpenAPI document.
    pub openapi: fn() -> utoipa::openapi::OpenApi,
    /// The projectors that keep the context's read models, configured from the settings
    /// (those that read sealed values open them with `settings.vault()`).
    pub projections: fn(&Settings) -> Vec<Arc<dyn Projection>>,
    /// The background jobs its commands may request (see `jobs`).
    pub jobs: fn() -> Vec<Arc<dyn JobHandler>>,
    /// Its periodic work, run by one elected process (`scheduled`).
    pub scheduled: fn(&crate::scheduled::Env) -> Vec<Job>,
    /// Its streams that end leaving no read-model rows, which may be archived.
    pub ended: &'static [EndedBy],
}

/// Every bounded context the server runs.
pub fn all() -> Vec<BoundedContext> {
    vec![
        crate::budgets::context(),
        crate::tagging::context(),
        crate::costs::context(),
        crate::access::context(),
        crate::timeseries::context(),
        crate::documents::context(),
        crate::collections::context(),
        crate::alerts::context(),
        crate::dashboards::context(),
        crate::feed::context(),
    ]
}

/// Every projector of every context, and the `jobs` projector that enqueues their jobs.
pub fn projections(settings: &Settings) -> crate::projections::Registry {
    let mut all_projections: Vec<Arc<dyn Projection>> = all()
        .iter()
        .flat_map(|c| (c.projections)(settings))
        .collect();
    all_projections.push(Arc::new(JobsProjection::new(jobs())));
    Arc::new(all_projections)
}

/// Every job handler of every context.
pub fn jobs() -> crate::jobs::Handlers {
    Arc::new(all().iter().flat_map(|c| (c.jobs)()).collect())
}

/// Every context's periodic jobs.
pub fn scheduled(env: &crate::scheduled::Env) -> Vec<Job> {
    all().iter().flat_map(|c| (c.scheduled)(env)).collect()
}

/// Every archivable kind of stream end, of every context.
pub fn ended_streams() -> Vec<EndedBy> {
    all().iter().flat_map(|c| c.ended.iter().copied()).collect()
}
