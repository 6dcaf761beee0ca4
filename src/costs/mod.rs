//! Costs: cloud accounts, bill imports (Alibaba Cloud columns and FOCUS 1.2/1.3) with
//! restatement, the `cost_lines` hypertable with its daily rollup, and breakdowns (seed 000).
//!
//! `commands` → `aggregate` (accounts; bill imports only fold) → `events`; `import`
//! streams a bill into batched events; `projection` keeps the read models and `queries`
//! reads them; `routes` binds it all to HTTP; `reference` holds the FOCUS column names and
//! ISO 4217 codes.

pub mod aggregate;
pub mod allocation;
pub mod anomaly;
pub mod anomaly_job;
pub mod budget_status;
pub mod commands;
pub mod events;
pub mod import;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod recompute;
pub mod reference;
pub mod routes;
pub mod thresholds;
pub mod vtags;

use std::sync::Arc;

use utoipa::OpenApi;
use uuid::Uuid;

use crate::context::BoundedContext;
use crate::projections::Typed;

/// Namespace of the costs context's name-derived stream ids.
const STREAM_NS: Uuid = Uuid::from_u128(0x0193_c7a9_4a5e_7c1d_9d0e_c057_0000_0001);

/// The stream of a named thing of a tenant: the same name always gives the same stream.
pub fn stream_id(tenant: &str, what: &str, name: &str) -> Uuid {
    Uuid::new_v5(&STREAM_NS, format!("{what}/{tenant}/{name}").as_bytes())
}

/// The stream of the account `name`.
pub fn account_stream(tenant: &str, name: &str) -> Uuid {
    stream_id(tenant, "account", name)
}

#[derive(OpenApi)]
#[openapi(
    paths(
        routes::open_account,
        routes::list_accounts,
        routes::import_bill,
        routes::list_imports,
        routes::get_import,
        routes::costs,
        routes::top,
        routes::lines,
        routes::budget_status,
        routes::save_virtual_tag,
        routes::list_virtual_tags,
        routes::save_allocation_rule,
        routes::list_allocation_rules,
        routes::list_anomalies,
    ),
    components(schemas(
        commands::AccountDraft,
        events::Provider,
        events::CurrencyTotal,
        queries::AccountView,
        queries::AccountList,
        queries::ImportView,
        queries::ImportList,
        queries::CostBreakdown,
        queries::CostBucket,
        queries::CostGroup,
        queries::CurrencySum,
        queries::TopList,
        queries::TopItem,
        queries::LineView,
        queries::LinePage,
        routes::ImportAccepted,
        routes::BudgetStatus,
        commands::VirtualTagDraft,
        commands::VirtualTagValueDraft,
        events::VirtualTagValue,
        queries::VirtualTagView,
        queries::RecomputeView,
        queries::VirtualTagList,
        allocation::AllocationRuleDef,
        allocation::SourceFilters,
        allocation::Target,
        allocation::Method,
        queries::AllocationRuleList,
        routes::ForecastView,
        routes::ThresholdView,
        queries::AnomalyView,
        queries::AnomalyPage,
        events::Contributor,
        anomaly::Severity,
    ))
)]
struct CostsApi;

/// The costs context, as the server registers it (`context::all`).
pub fn context() -> BoundedContext {
    metrics::init();
    BoundedContext {
        name: "costs",
        routes: routes::configure,
        openapi: CostsApi::openapi,
        projections: |_| {
            vec![
                Arc::new(Typed(projection::AccountsProjector)),
                Arc::new(projection::CostLinesProjector),
                Arc::new(Typed(projection::AllocationRulesProjector)),
                Arc::new(Typed(projection::AnomaliesProjector)),
            ]
        },
        jobs: || {
            vec![
                Arc::new(thresholds::BudgetThresholdJob),
                Arc::new(thresholds::BudgetChangedThresholdJob("BudgetCreated")),
                Arc::new(thresholds::BudgetChangedThresholdJob("BudgetUpdated")),
                Arc::new(recompute::VirtualTagRecomputeJob),
                Arc::new(anomaly_job::CostAnomalyJob),
            ]
        },
        scheduled: |_| Vec::new(),
        ended: &[],
    }
}
