//! The costs context's Prometheus metrics, registered in the server's registry.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
};

use crate::telemetry::{reg, METRICS};

pub struct CostsMetrics {
    pub imports: IntCounterVec,
    pub lines_imported: IntCounterVec,
    pub import_duration: Histogram,
    pub query_duration: HistogramVec,
    pub threshold_crossings: IntCounter,
    pub vtag_lines_recomputed: IntCounter,
    pub anomalies_detected: IntCounterVec,
    pub anomaly_job_duration: Histogram,
}

fn build() -> Result<CostsMetrics, prometheus::Error> {
    let r = &METRICS.registry;
    Ok(CostsMetrics {
        imports: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_costs_imports_total",
                    "Bill imports, by outcome (accepted, duplicate, rejected)",
                ),
                &["outcome"],
            )?,
        )?,
        lines_imported: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_costs_lines_imported_total",
                    "Bill lines accepted by imports, by format (cloudlens, focus)",
                ),
                &["format"],
            )?,
        )?,
        import_duration: reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "cloudlens_costs_import_duration_seconds",
                    "Time to read, check and append one accepted bill file",
                )
                .buckets(exponential_buckets(0.01, 2.0, 16)?),
            )?,
        )?,
        query_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_costs_query_duration_seconds",
                    "Time of cost queries in the database, by query (breakdown, top) and source (rollup, lines)",
                )
                .buckets(exponential_buckets(0.001, 2.0, 16)?),
                &["query", "source"],
            )?,
        )?,
        threshold_crossings: reg(
            r,
            IntCounter::new(
                "cloudlens_costs_budget_threshold_crossings_total",
                "Budget thresholds recorded as crossed (BudgetThresholdCrossed) by the process manager",
            )?,
        )?,
        vtag_lines_recomputed: reg(
            r,
            IntCounter::new(
                "cloudlens_costs_virtual_tag_lines_recomputed_total",
                "Bill lines given a saved virtual tag again by the recompute job's steps",
            )?,
        )?,
        anomalies_detected: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_cost_anomalies_detected_total",
                    "Cost anomalies recorded (CostAnomalyDetected) by the anomaly job, by severity",
                ),
                &["severity"],
            )?,
        )?,
        anomaly_job_duration: reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "cloudlens_costs_anomaly_job_duration_seconds",
                    "Time of one anomaly job (one bill import: read, detect, record)",
                )
                .buckets(exponential_buckets(0.01, 2.0, 16)?),
            )?,
        )?,
    })
}

#[allow(clippy::expect_used)] // metric definitions are constants: a failure is a programming error
pub static COSTS: LazyLock<CostsMetrics> =
    LazyLock::new(|| build().expect("costs metric definitions are valid"));

/// Registers the metrics (so they show on `/metrics` before the first import).
pub fn init() {
    LazyLock::force(&COSTS);
    // Every severity shows from the start (at 0), so the dashboard has series to plot.
    for s in super::anomaly::Severity::ALL {
        COSTS.anomalies_detected.with_label_values(&[s.as_str()]);
    }
}
