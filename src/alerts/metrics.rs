//! The alerts context's Prometheus metrics, registered in the server's registry. Labels
//! are bounded: rule types, severities, channel kinds and outcomes.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use super::condition::TYPES;
use crate::telemetry::{reg, METRICS};

pub struct AlertsMetrics {
    pub evaluations: IntCounterVec,
    pub evaluation_duration: HistogramVec,
    pub transitions: IntCounterVec,
    pub firing: IntGaugeVec,
    pub notifications: IntCounterVec,
    pub delivery_duration: HistogramVec,
    pub outbox_pending: IntGauge,
}

fn build() -> Result<AlertsMetrics, prometheus::Error> {
    let r = &METRICS.registry;
    Ok(AlertsMetrics {
        evaluations: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_alert_rule_evaluations_total",
                    "Rules evaluated, by rule type and outcome (ok, error)",
                ),
                &["type", "outcome"],
            )?,
        )?,
        evaluation_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_alert_evaluation_duration_seconds",
                    "One evaluation round of all rules of a type (scheduled) or of one event's rules (reactive)",
                )
                .buckets(exponential_buckets(0.000_5, 2.0, 16)?),
                &["type"],
            )?,
        )?,
        transitions: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_alert_transitions_total",
                    "Episodes opened (fired) and closed (resolved), by rule type",
                ),
                &["type", "transition"],
            )?,
        )?,
        firing: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "cloudlens_alerts_firing",
                    "Open episodes, by rule type (set by the elected evaluator each round)",
                ),
                &["type"],
            )?,
        )?,
        notifications: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_notifications_total",
                    "Delivery attempts, by channel kind and outcome (delivered, failed: retried later, dead: given up)",
                ),
                &["kind", "outcome"],
            )?,
        )?,
        delivery_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_notification_delivery_duration_seconds",
                    "One delivery attempt to a receiver, by channel kind",
                )
                .buckets(exponential_buckets(0.000_5, 2.0, 16)?),
                &["kind"],
            )?,
        )?,
        outbox_pending: reg(
            r,
            IntGauge::new(
                "cloudlens_notification_outbox_pending",
                "Notifications waiting for delivery (set by the elected sender each poll)",
            )?,
        )?,
    })
}

#[allow(clippy::expect_used)] // metric definitions are constants: a failure is a programming error
pub static ALERTS: LazyLock<AlertsMetrics> =
    LazyLock::new(|| build().expect("alerts metric definitions are valid"));

/// Registers the metrics (so they show on `/metrics` before the first alert).
pub fn init() {
    LazyLock::force(&ALERTS);
    for t in TYPES {
        for outcome in ["ok", "error"] {
            ALERTS.evaluations.with_label_values(&[t, outcome]);
        }
        ALERTS.evaluation_duration.with_label_values(&[t]);
        for transition in ["fired", "resolved"] {
            ALERTS.transitions.with_label_values(&[t, transition]);
        }
        ALERTS.firing.with_label_values(&[t]);
    }
    for kind in ["webhook", "dingtalk", "wecom", "email"] {
        for outcome in ["delivered", "failed", "dead"] {
            ALERTS.notifications.with_label_values(&[kind, outcome]);
        }
        ALERTS.delivery_duration.with_label_values(&[kind]);
    }
}
