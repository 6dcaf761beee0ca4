//! Alerts: rules evaluated by the server as events arrive and on a schedule, episodes
//! fired and resolved as events, notification channels and an outbox that delivers them
//! (ADR 0028).
//!
//! `commands` → `aggregate` (`AlertRule`, `NotificationChannel`; `condition` checks and
//! compares) → `events` → `projection` (`alert_rules`, `alerts`, `notification_channels`)
//! → `queries`; `evaluate` measures and observes, `outbox` delivers through `send`;
//! `routes` binds it to HTTP.

pub mod aggregate;
pub mod commands;
pub mod condition;
pub mod evaluate;
pub mod events;
pub mod metrics;
pub mod outbox;
pub mod projection;
pub mod queries;
pub mod routes;
pub mod send;

use std::sync::Arc;

use utoipa::OpenApi;

pub use aggregate::{AlertError, AlertRule, NotificationChannel};

use crate::context::BoundedContext;
use crate::projections::Typed;
use crate::scheduled::Job;

#[derive(OpenApi)]
#[openapi(
    paths(
        routes::create_rule,
        routes::list_rules,
        routes::get_rule,
        routes::update_rule,
        routes::delete_rule,
        routes::list_alerts,
        routes::create_channel,
        routes::list_channels,
        routes::get_channel,
        routes::update_channel,
        routes::delete_channel,
        routes::test_channel,
        routes::list_notifications,
    ),
    components(schemas(
        commands::RuleDraft,
        commands::ChannelDraft,
        condition::Severity,
        events::ChannelKind,
        queries::RuleView,
        queries::RulePage,
        queries::AlertView,
        queries::AlertPage,
        queries::ChannelView,
        queries::ChannelPage,
        queries::NotificationView,
        queries::NotificationPage,
        routes::TestOutcome,
    ))
)]
struct AlertsApi;

/// The alerts context, as the server registers it (`context::all`).
pub fn context() -> BoundedContext {
    metrics::init();
    BoundedContext {
        name: "alerts",
        routes: routes::configure,
        openapi: AlertsApi::openapi,
        projections: |_| {
            vec![
                Arc::new(Typed(projection::AlertRulesProjector)),
                Arc::new(Typed(projection::ChannelsProjector)),
            ]
        },
        jobs: || {
            vec![
                Arc::new(evaluate::BudgetCrossingAlerts),
                Arc::new(evaluate::AnomalyAlerts {
                    event_type: "CostAnomalyDetected",
                }),
                Arc::new(evaluate::AnomalyAlerts {
                    event_type: "CostAnomalyUpdated",
                }),
                Arc::new(evaluate::AnomalyAlerts {
                    event_type: "CostAnomalyEnded",
                }),
            ]
        },
        scheduled: scheduled_jobs,
        // A deleted channel leaves no read-model row; a deleted rule leaves its alerts.
        ended: &[crate::eventstore::archive::EndedBy {
            stream_type: <NotificationChannel as crate::pipeline::EventSourced>::STREAM_TYPE,
            event_types: &["NotificationChannelDeleted"],
        }],
    }
}

/// The window rules' evaluation and the outbox delivery, each in one elected process.
fn scheduled_jobs(env: &crate::scheduled::Env) -> Vec<Job> {
    let store = env.store.clone();
    let evaluator = evaluate::Evaluator::default();
    let evaluate = Job::new(
        "alerts.evaluate",
        env.settings.alert_evaluation_interval,
        move || {
            let (store, evaluator) = (store.clone(), evaluator.clone());
            async move {
                evaluator.round(&store).await?;
                Ok(())
            }
        },
    );
    let store = env.store.clone();
    let policy = outbox::Policy {
        max_attempts: env.settings.notify_max_attempts,
        retry_base: env.settings.notify_retry_base,
    };
    let sender = send::Sender::new(&env.settings);
    let deliver = Job::new("alerts.deliver", env.settings.notify_poll, move || {
        let (store, policy) = (store.clone(), policy.clone());
        let sender = sender
            .as_ref()
            .map(Clone::clone)
            .map_err(|e| anyhow::anyhow!("{e}"));
        async move {
            let client = store.pool().get().await?;
            outbox::deliver_due(&client, &sender?, &policy).await?;
            Ok(())
        }
    });
    vec![evaluate, deliver]
}
