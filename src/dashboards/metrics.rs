//! The dashboards context's Prometheus metrics, registered in the server's registry.

use std::sync::LazyLock;

use prometheus::{exponential_buckets, Histogram, HistogramOpts, IntCounterVec, Opts};

use crate::telemetry::{reg, METRICS};

pub struct DashboardMetrics {
    pub widget_queries: IntCounterVec,
    pub data_duration: Histogram,
}

fn build() -> Result<DashboardMetrics, prometheus::Error> {
    let r = &METRICS.registry;
    Ok(DashboardMetrics {
        widget_queries: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_dashboard_widget_queries_total",
                    "Widgets run by GET /api/v1/dashboards/{id}/data, by data-source kind and outcome (ok, error)",
                ),
                &["kind", "outcome"],
            )?,
        )?,
        data_duration: reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "cloudlens_dashboard_data_seconds",
                    "Time to answer GET /api/v1/dashboards/{id}/data, all its widgets",
                )
                .buckets(exponential_buckets(0.001, 2.0, 16)?),
            )?,
        )?,
    })
}

#[allow(clippy::expect_used)] // metric definitions are constants: a failure is a programming error
pub static DASHBOARDS: LazyLock<DashboardMetrics> =
    LazyLock::new(|| build().expect("dashboard metric definitions are valid"));

/// Registers the metrics (so they show on `/metrics` before the first data request).
pub fn init() {
    LazyLock::force(&DASHBOARDS);
}
