//! The documents context's Prometheus metrics, registered in the server's registry.

use std::sync::LazyLock;

use prometheus::{exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter};

use crate::telemetry::{reg, METRICS};

pub struct DocumentsMetrics {
    pub search_duration: HistogramVec,
    pub batch_documents: IntCounter,
    pub batches_rejected: IntCounter,
    pub batch_duration: Histogram,
}

fn build() -> Result<DocumentsMetrics, prometheus::Error> {
    Ok(DocumentsMetrics {
        search_duration: reg(
            &METRICS.registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_documents_search_duration_seconds",
                    "Searches, by kind: script of a text query (latin, cjk, mixed), vector, hybrid",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 16)?),
                &["script"],
            )?,
        )?,
        batch_documents: reg(
            &METRICS.registry,
            IntCounter::new(
                "cloudlens_documents_batch_documents_total",
                "Documents accepted by POST /api/v1/documents:batch",
            )?,
        )?,
        batches_rejected: reg(
            &METRICS.registry,
            IntCounter::new(
                "cloudlens_documents_batches_rejected_total",
                "Document batches refused (a bad line, a taken id, a broken body)",
            )?,
        )?,
        batch_duration: reg(
            &METRICS.registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "cloudlens_documents_batch_duration_seconds",
                    "Accepted document batches, from the first byte to the commit",
                )
                .buckets(exponential_buckets(0.01, 2.0, 16)?),
            )?,
        )?,
    })
}

#[allow(clippy::expect_used)] // metric definitions are constants: a failure is a programming error
pub static DOCS: LazyLock<DocumentsMetrics> =
    LazyLock::new(|| build().expect("documents metric definitions are valid"));

/// Registers the metrics (so they show on `/metrics` before the first search).
pub fn init() {
    LazyLock::force(&DOCS);
    for script in ["latin", "cjk", "mixed", "vector", "hybrid"] {
        DOCS.search_duration.with_label_values(&[script]);
    }
}
