//! Tagging: subjects with attributes from several source tables, tags defined by rules,
//! and runs that compute the tags of many subjects inside PostgreSQL (seed 004).
//!
//! `commands` → `aggregate` (subject kinds, categories, tags, runs) → `events`;
//! `import` streams source files into batched events; `rules` is the rule engine (also
//! for other contexts' subjects); `run` is the `tagging.run` job; `projection` keeps the
//! read models and `queries` reads them; `routes` binds it all to HTTP.

pub mod aggregate;
pub mod commands;
pub mod events;
pub mod import;
pub mod keys;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod routes;
pub mod rules;
pub mod run;

use std::sync::Arc;

use utoipa::OpenApi;
use uuid::Uuid;

use crate::context::BoundedContext;
use crate::projections::Typed;

/// Namespace of the tagging context's name-derived stream ids.
const STREAM_NS: Uuid = Uuid::from_u128(0x0193_c7a9_4a5e_7c1d_9d0e_7a61_7a67_0001);

/// The stream of a named thing of a tenant (`what` is `subject_kind`, `tag_category`,
/// `tag` or `tag_code`): the same name always gives the same stream.
pub fn stream_id(tenant: &str, what: &str, name: &str) -> Uuid {
    Uuid::new_v5(&STREAM_NS, format!("{what}/{tenant}/{name}").as_bytes())
}

/// The stream of tag `id` (tag ids are small integers handed out by the server).
pub fn tag_stream(tenant: &str, id: i32) -> Uuid {
    stream_id(tenant, "tag", &id.to_string())
}

#[derive(OpenApi)]
#[openapi(
    paths(
        routes::declare_kind,
        routes::get_kind,
        routes::import_rows,
        routes::create_category,
        routes::list_categories,
        routes::create_tag,
        routes::list_tags,
        routes::get_tag,
        routes::change_rule,
        routes::retire_tag,
        routes::preview_rule,
        routes::tag_stats,
        routes::start_run,
        routes::get_run,
        routes::list_runs,
        routes::subject_tags,
        routes::list_subjects,
        routes::explain,
        routes::tag_history,
        routes::assign_manual,
        routes::remove_manual,
        routes::get_subject,
        routes::forget_subject,
    ),
    components(schemas(
        commands::KindDraft,
        commands::CategoryDraft,
        commands::TagDraft,
        commands::RuleDraft,
        commands::RunDraft,
        events::Attribute,
        events::TagKind,
        events::TagRunStats,
        queries::KindView,
        queries::ImportResult,
        queries::CategoryView,
        queries::TagView,
        queries::TagList,
        queries::Preview,
        queries::TagStats,
        queries::RunAccepted,
        queries::RunView,
        queries::RunList,
        queries::SubjectTagsView,
        queries::SubjectPage,
        queries::SubjectItem,
        queries::ExplainView,
        queries::HistoryView,
        queries::HistoryEntry,
        queries::LastRun,
        routes::TagResult,
        routes::CategoryList,
        routes::ForgetResult,
        queries::SubjectView,
    ))
)]
struct TaggingApi;

/// The tagging context, as the server registers it (`context::all`).
pub fn context() -> BoundedContext {
    metrics::init();
    BoundedContext {
        name: "tagging",
        routes: routes::configure,
        openapi: TaggingApi::openapi,
        projections: |settings| {
            vec![
                Arc::new(Typed(projection::SubjectKindsProjector)),
                Arc::new(Typed(projection::TagCategoriesProjector)),
                Arc::new(Typed(projection::TagsProjector)),
                Arc::new(projection::SubjectAttributesProjector::new(
                    settings.vault(),
                )),
                Arc::new(projection::SubjectTagsProjector),
            ]
        },
        jobs: || vec![Arc::new(run::TagRunJob)],
        scheduled: |_| Vec::new(),
        ended: &[],
    }
}
