//! The OpenAPI 3 document: the operations endpoints' paths plus every context's part,
//! generated from the handlers' `#[utoipa::path]` annotations, then completed so that it
//! describes every status and content type a route can answer with:
//! - every error body is `application/problem+json` (the handlers' annotations say
//!   `body = Problem`, and this module sets the media type once for all);
//! - every `/api/v1` operation may answer 500, and every one that reads the database 503.
//!
//! The served document is checked against the running server by schemathesis
//! (`scripts/api-contract.sh`), so a route that answers differently fails the tests.

use std::sync::LazyLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HttpMethod, OpenApi as Document, RefOr, ResponseBuilder};
use utoipa::OpenApi;

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
        admin::assessment,
        admin::rebuild,
        admin::stream_events,
        admin::archive,
    ),
    components(schemas(
        CommandResult,
        error::Problem,
        status::ProjectorStatus,
        status::LaneStatus,
        status::RebuildStatus,
        admin::Health,
        admin::ProjectionsList,
        admin::RebuildStarted,
        admin::StreamEvents,
        admin::StreamEvent,
        admin::Readiness,
        admin::ArchiveRequest,
        crate::eventstore::archive::Archived,
        crate::ops::assessment::Assessment,
        crate::ops::assessment::TableReport,
        crate::ops::assessment::HypertableReport,
        crate::ops::assessment::IndexReport,
        crate::ops::assessment::EventTypeCount,
        crate::ops::assessment::DayCount,
        crate::ops::assessment::Growth,
        crate::ops::assessment::StatementReport,
    ))
)]
struct OperationsDoc;

const PROBLEM_REF: &str = "#/components/schemas/Problem";

static DOCUMENT: LazyLock<Document> = LazyLock::new(build);

/// The whole document (built once).
pub fn document() -> &'static Document {
    &DOCUMENT
}

fn build() -> Document {
    let mut doc = OperationsDoc::openapi();
    for context in crate::context::all() {
        doc.merge((context.openapi)());
    }
    // The document describes itself too.
    let me = utoipa::openapi::path::PathItem::new(
        HttpMethod::Get,
        utoipa::openapi::path::OperationBuilder::new()
            .summary(Some("This OpenAPI 3 document"))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("OpenAPI document")
                    .content("application/json", ContentBuilder::new().build())
                    .build(),
            ),
    );
    doc.paths.paths.insert("/api/v1/openapi.json".into(), me);
    for (path, item) in doc.paths.paths.iter_mut() {
        let api = path.starts_with("/api/v1/") && path != "/api/v1/openapi.json";
        let keyed = !matches!(path.as_str(), "/healthz" | "/readyz");
        for op in operations(item) {
            complete(op, api);
            if keyed {
                access(op);
            }
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "api_key",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key (`clk_…`). Needed once any key exists (`http::auth`).",
                ))
                .build(),
        ),
    );
    doc
}

/// Once any API key exists, a request needs one (`http::auth`): 401 without a valid key,
/// 403 when its role or tenant does not allow the request, 429 past its rate limit. (`/metrics` answers without a
/// key unless `CLOUDLENS_METRICS_PUBLIC=false`.)
fn access(op: &mut Operation) {
    let responses = &mut op.responses.responses;
    responses.entry("401".into()).or_insert_with(|| {
        problem("no valid API key (sent with WWW-Authenticate: Bearer); only once keys exist")
    });
    responses
        .entry("403".into())
        .or_insert_with(|| problem("the API key's role or tenant does not allow this request"));
    responses.entry("429".into()).or_insert_with(|| {
        problem("the API key's rate limit is used up; sent with Retry-After (seconds)")
    });
    op.security = Some(vec![SecurityRequirement::new::<_, _, &str>("api_key", [])]);
}

fn operations(item: &mut utoipa::openapi::path::PathItem) -> Vec<&mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
    ]
    .into_iter()
    .filter_map(|o| o.as_mut())
    .collect()
}

fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                error::PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::new(PROBLEM_REF)))
                    .build(),
            )
            .build(),
    )
}

fn complete(op: &mut Operation, api: bool) {
    for response in op.responses.responses.values_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        let is_problem = response.content.get("application/json").is_some_and(
            |c| matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location == PROBLEM_REF),
        );
        if is_problem {
            if let Some(content) = response.content.shift_remove("application/json") {
                response.content.insert(error::PROBLEM_JSON.into(), content);
            }
        }
    }
    if api {
        let responses = &mut op.responses.responses;
        responses
            .entry("500".into())
            .or_insert_with(|| problem("internal error (opaque; the cause is logged)"));
        responses.entry("503".into()).or_insert_with(|| {
            problem("database unavailable or read model behind; sent with Retry-After")
        });
    }
}

/// Path templates of the document with the methods each allows, for 405 answers.
static ROUTES: LazyLock<Vec<(Vec<String>, String)>> = LazyLock::new(|| {
    document()
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let methods: Vec<&str> = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ]
            .into_iter()
            .filter(|(_, has)| *has)
            .map(|(m, _)| m)
            .collect();
            let segments = path.split('/').map(str::to_owned).collect();
            (segments, methods.join(", "))
        })
        .collect()
});

/// The methods `path` allows, if it is one of the document's paths (`{param}` matches
/// any non-empty segment).
pub fn allowed_methods(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    ROUTES
        .iter()
        .find(|(template, _)| {
            template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| {
                    t == s || (t.starts_with('{') && t.ends_with('}') && !s.is_empty())
                })
        })
        .map(|(_, allow)| allow.clone())
}
