//! The time-series context's Prometheus metrics, registered in the server's registry.

use std::sync::LazyLock;

use prometheus::{exponential_buckets, Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts};

use super::retention::Trigger;
use crate::telemetry::{reg, METRICS};

pub struct TimeseriesMetrics {
    pub batches: IntCounterVec,
    pub items: IntCounterVec,
    pub ingest_duration: HistogramVec,
    pub query_duration: HistogramVec,
    pub queries_refused: IntCounterVec,
    pub retention_requests: IntCounterVec,
    pub chunks_dropped: IntCounterVec,
    pub points_deleted: IntCounterVec,
    pub retention_last_run: Gauge,
}

fn build() -> Result<TimeseriesMetrics, prometheus::Error> {
    let r = &METRICS.registry;
    Ok(TimeseriesMetrics {
        batches: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_timeseries_batches_total",
                    "Ingest batches, by kind (points, bars) and outcome (accepted, rejected)",
                ),
                &["kind", "outcome"],
            )?,
        )?,
        items: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_timeseries_items_ingested_total",
                    "Points and bars accepted by ingest batches, by kind",
                ),
                &["kind"],
            )?,
        )?,
        ingest_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_timeseries_ingest_duration_seconds",
                    "Time to read, check and append one accepted batch, by kind",
                )
                .buckets(exponential_buckets(0.005, 2.0, 16)?),
                &["kind"],
            )?,
        )?,
        query_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_timeseries_query_duration_seconds",
                    "Time-series queries, by query and the table that answered",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 16)?),
                &["query", "source"],
            )?,
        )?,
        queries_refused: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_timeseries_queries_refused_total",
                    "Queries refused because they would return too many points, by query",
                ),
                &["query"],
            )?,
        )?,
        retention_requests: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_timeseries_retention_cutoffs_total",
                    "Metric cutoffs requested by retention (RawPointsExpired), by trigger (schedule, admin)",
                ),
                &["trigger"],
            )?,
        )?,
        chunks_dropped: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_timeseries_retention_chunks_dropped_total",
                    "Raw-point chunks dropped by the point projector applying retention, by trigger",
                ),
                &["trigger"],
            )?,
        )?,
        points_deleted: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_timeseries_retention_points_deleted_total",
                    "Raw points removed by the point projector applying retention (dropped chunks included), by trigger",
                ),
                &["trigger"],
            )?,
        )?,
        retention_last_run: reg(
            r,
            Gauge::new(
                "cloudlens_timeseries_retention_last_run_timestamp_seconds",
                "When retention last ran in this process (Unix time; only the elected process runs the schedule)",
            )?,
        )?,
    })
}

#[allow(clippy::expect_used)]
pub static TS: LazyLock<TimeseriesMetrics> =
    LazyLock::new(|| build().expect("time-series metrics register once"));

/// Registers the metrics (so they are rendered from the first scrape).
pub fn init() {
    LazyLock::force(&TS);
    for kind in ["points", "bars"] {
        TS.items.with_label_values(&[kind]);
        for outcome in ["accepted", "rejected"] {
            TS.batches.with_label_values(&[kind, outcome]);
        }
    }
    for t in [Trigger::Schedule, Trigger::Admin] {
        TS.retention_requests.with_label_values(&[t.as_str()]);
        TS.chunks_dropped.with_label_values(&[t.as_str()]);
        TS.points_deleted.with_label_values(&[t.as_str()]);
    }
}
