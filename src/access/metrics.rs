//! The access context's Prometheus metrics, registered in the server's registry.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts};

use crate::telemetry::{reg, METRICS};

pub struct AccessMetrics {
    /// Requests by what the key check decided.
    pub decisions: IntCounterVec,
}

fn build() -> Result<AccessMetrics, prometheus::Error> {
    Ok(AccessMetrics {
        decisions: reg(
            &METRICS.registry,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_access_decisions_total",
                    "Requests by the API key check's decision (open, granted, unauthenticated, forbidden, rate_limited)",
                ),
                &["decision"],
            )?,
        )?,
    })
}

#[allow(clippy::expect_used)] // metric definitions are constants: a failure is a programming error
pub static ACCESS: LazyLock<AccessMetrics> =
    LazyLock::new(|| build().expect("access metric definitions are valid"));

/// Registers the metrics (so they show on `/metrics` before the first request).
pub fn init() {
    LazyLock::force(&ACCESS);
}

/// Counts one decision.
pub fn decided(decision: &str) {
    ACCESS.decisions.with_label_values(&[decision]).inc();
}
