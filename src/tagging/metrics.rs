//! The tagging context's Prometheus metrics, registered in the server's registry.

use std::sync::LazyLock;

use prometheus::{exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, Opts};

use crate::telemetry::{reg, METRICS};

pub struct TaggingMetrics {
    pub rows_imported: IntCounterVec,
    pub runs: IntCounterVec,
    pub run_duration: HistogramVec,
    pub subjects_evaluated: IntCounterVec,
    pub tags_changed: IntCounterVec,
    pub data_keys: IntCounterVec,
}

fn build() -> Result<TaggingMetrics, prometheus::Error> {
    let r = &METRICS.registry;
    Ok(TaggingMetrics {
        rows_imported: reg(
            r,
            IntCounterVec::new(
                Opts::new("cloudlens_tagging_rows_imported_total", "Source rows imported, by source"),
                &["source"],
            )?,
        )?,
        runs: reg(
            r,
            IntCounterVec::new(
                Opts::new("cloudlens_tagging_runs_total", "Tagging runs finished, by outcome"),
                &["outcome"],
            )?,
        )?,
        run_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_tagging_run_duration_seconds",
                    "Time from a run's start to its tags being readable, by scope (all, changed, ids)",
                )
                .buckets(exponential_buckets(0.01, 2.0, 16)?),
                &["scope"],
            )?,
        )?,
        subjects_evaluated: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_tagging_subjects_evaluated_total",
                    "Subjects evaluated by tagging runs, by subject kind",
                ),
                &["subject_kind"],
            )?,
        )?,
        tags_changed: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_tagging_tag_changes_total",
                    "Tag assignments added and removed by runs, by change (added, removed)",
                ),
                &["change"],
            )?,
        )?,
        data_keys: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_tagging_data_keys_total",
                    "Subject data keys for sensitive attributes, by change (created, destroyed)",
                ),
                &["change"],
            )?,
        )?,
    })
}

#[allow(clippy::expect_used)] // metric definitions are constants: a failure is a programming error
pub static TAGGING: LazyLock<TaggingMetrics> =
    LazyLock::new(|| build().expect("tagging metric definitions are valid"));

/// Registers the metrics (so they show on `/metrics` before the first import or run).
pub fn init() {
    LazyLock::force(&TAGGING);
    for change in ["created", "destroyed"] {
        data_keys(change, 0);
    }
}

pub fn rows_imported(source: &str, rows: i64) {
    TAGGING
        .rows_imported
        .with_label_values(&[source])
        .inc_by(rows.max(0) as u64);
}

/// Data keys made by imports (`created`) or destroyed by forgets (`destroyed`).
pub fn data_keys(change: &str, n: u64) {
    TAGGING.data_keys.with_label_values(&[change]).inc_by(n);
}
