//! The collections context's Prometheus metrics, registered in the server's registry.
//!
//! The `collection` label is a seed collection's name or `other`: declared names are
//! chosen by tenants, and label values must stay bounded.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
};

use super::aggregate::SEEDS;
use crate::telemetry::{reg, METRICS};

pub struct CollectionsMetrics {
    pub items_written: IntCounterVec,
    pub writes: IntCounterVec,
    pub write_duration: HistogramVec,
    pub read_duration: HistogramVec,
    pub items_purged: IntCounter,
    pub purge_last_run: Gauge,
}

fn build() -> Result<CollectionsMetrics, prometheus::Error> {
    let r = &METRICS.registry;
    Ok(CollectionsMetrics {
        items_written: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_collection_items_written_total",
                    "Items written to collections (single writes and batch lines), by collection (a seed's name, else other)",
                ),
                &["collection"],
            )?,
        )?,
        writes: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_collection_writes_total",
                    "Item write requests, by kind (item, batch, delete) and outcome (ok, rejected)",
                ),
                &["kind", "outcome"],
            )?,
        )?,
        write_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_collection_write_duration_seconds",
                    "Accepted item writes, from the request to the commit, by kind (item, batch)",
                )
                .buckets(exponential_buckets(0.000_25, 2.0, 18)?),
                &["kind"],
            )?,
        )?,
        read_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_collection_item_read_duration_seconds",
                    "Item reads by query (get: one key, list: a page), their SQL only",
                )
                .buckets(exponential_buckets(0.000_25, 2.0, 16)?),
                &["query"],
            )?,
        )?,
        items_purged: reg(
            r,
            IntCounter::new(
                "cloudlens_collection_items_purged_total",
                "Expired items deleted by the purge (elected job or admin run)",
            )?,
        )?,
        purge_last_run: reg(
            r,
            Gauge::new(
                "cloudlens_collection_purge_last_run_timestamp_seconds",
                "When this process last finished a purge of expired items (0: never)",
            )?,
        )?,
    })
}

#[allow(clippy::expect_used)] // metric definitions are constants: a failure is a programming error
pub static COLLS: LazyLock<CollectionsMetrics> =
    LazyLock::new(|| build().expect("collections metric definitions are valid"));

/// The `collection` label of a collection.
pub fn label(collection: &str) -> &str {
    SEEDS
        .iter()
        .find(|s| s.name == collection)
        .map_or("other", |s| s.name)
}

/// Registers the metrics (so they show on `/metrics` before the first write).
pub fn init() {
    LazyLock::force(&COLLS);
    for s in &SEEDS {
        COLLS.items_written.with_label_values(&[s.name]);
    }
    COLLS.items_written.with_label_values(&["other"]);
    for kind in ["item", "batch", "delete"] {
        for outcome in ["ok", "rejected"] {
            COLLS.writes.with_label_values(&[kind, outcome]);
        }
    }
    for kind in ["item", "batch"] {
        COLLS.write_duration.with_label_values(&[kind]);
    }
    for query in ["get", "list"] {
        COLLS.read_duration.with_label_values(&[query]);
    }
}
