//! The feed's Prometheus metrics, registered in the server's registry.
//!
//! Group names are chosen by tenants, so `cloudlens_consumer_group_lag_events` carries
//! `group="<tenant>/<group>"` for at most [`MAX_LAG_GROUPS`] groups (the ones with the most
//! lag), and is reset on every measurement: the label set stays bounded.

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::telemetry::{reg, METRICS};

/// Groups whose lag is exported.
pub const MAX_LAG_GROUPS: usize = 50;

pub struct FeedMetrics {
    pub requests: IntCounterVec,
    pub delivered: IntCounterVec,
    pub sse_connections: IntGauge,
    pub polls: IntCounterVec,
    /// Partitions dropped from a batch because they changed hands while the poll read.
    pub fenced: IntCounter,
    pub group_lag: IntGaugeVec,
}

fn build() -> Result<FeedMetrics, prometheus::Error> {
    let r = &METRICS.registry;
    Ok(FeedMetrics {
        requests: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_feed_requests_total",
                    "Feed reads by format (json, ndjson, sse: a stream opened)",
                ),
                &["format"],
            )?,
        )?,
        delivered: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_feed_events_delivered_total",
                    "Events handed out by the feed, by way (page, sse, group)",
                ),
                &["via"],
            )?,
        )?,
        sse_connections: reg(
            r,
            IntGauge::new(
                "cloudlens_feed_sse_connections",
                "Server-sent event streams of the feed open now",
            )?,
        )?,
        polls: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_consumer_group_polls_total",
                    "Consumer group polls by outcome (events, empty)",
                ),
                &["outcome"],
            )?,
        )?,
        fenced: reg(
            r,
            IntCounter::new(
                "cloudlens_consumer_group_fenced_partitions_total",
                "Partitions left out of a consumer group batch: another member claimed them while the poll was reading (its lease ran out)",
            )?,
        )?,
        group_lag: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "cloudlens_consumer_group_lag_events",
                    "Events not yet acknowledged by a consumer group (counted up to 100,000), group=\"tenant/name\", at most 50 groups",
                ),
                &["group"],
            )?,
        )?,
    })
}

#[allow(clippy::expect_used)] // metric definitions are constants: a failure is a programming error
pub static FEED: LazyLock<FeedMetrics> =
    LazyLock::new(|| build().expect("feed metric definitions are valid"));

/// Registers the metrics (so they show on `/metrics` before the first read).
pub fn init() {
    LazyLock::force(&FEED);
    for f in ["json", "ndjson", "sse"] {
        FEED.requests.with_label_values(&[f]);
    }
    for v in ["page", "sse", "group"] {
        FEED.delivered.with_label_values(&[v]);
    }
    for o in ["events", "empty"] {
        FEED.polls.with_label_values(&[o]);
    }
}

/// Counts an open SSE stream while it lives.
pub struct SseConnection;

impl SseConnection {
    pub fn open() -> Self {
        FEED.sse_connections.inc();
        Self
    }
}

impl Drop for SseConnection {
    fn drop(&mut self) {
        FEED.sse_connections.dec();
    }
}
