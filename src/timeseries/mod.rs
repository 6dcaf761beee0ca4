//! Time series (seeds 000, 001, 002; replaces TDengine): batched ingest of points and
//! 1-minute bars into TimescaleDB hypertables, bucketed queries with gap filling,
//! projector-kept rollups and per-metric retention of raw points (ADR 0021).
//!
//! `ingest` streams a body into blocks of points (`events`); `projection` writes points,
//! the series catalog and the rollups; `queries` reads them; `retention` drops what is
//! past its retention; `routes` binds it all to HTTP.

pub mod aggregate;
pub mod events;
pub mod ingest;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod retention;
pub mod routes;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::context::BoundedContext;
use crate::projections::Typed;
use crate::scheduled::Job;

/// Namespace of the context's name-derived stream ids.
const STREAM_NS: Uuid = Uuid::from_u128(0x0193_c7a9_4a5e_7c1d_9d0e_7153_0000_0001);

/// The id of a tenant's (series, metric): the first 8 bytes of a SHA-256 of the names,
/// the same in every process and every replay, so ingest and queries need no lookup.
pub fn series_id(tenant: &str, series: &str, metric: &str) -> i64 {
    let mut h = Sha256::new();
    for part in [tenant, series, metric] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut b = [0_u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// The stream of a tenant's retention of `metric`.
pub fn retention_stream(tenant: &str, metric: &str) -> Uuid {
    Uuid::new_v5(
        &STREAM_NS,
        format!("metric_retention/{tenant}/{metric}").as_bytes(),
    )
}

#[derive(OpenApi)]
#[openapi(
    paths(
        routes::ingest_points,
        routes::ingest_bars,
        routes::series_buckets,
        routes::latest,
        routes::cross_series,
        routes::list_series,
        routes::bars,
        routes::set_retention,
        routes::retention_status,
        routes::run_retention,
    ),
    components(schemas(
        routes::BatchAccepted,
        routes::RetentionDraft,
        routes::RetentionStatus,
        routes::MetricRetentionView,
        routes::HorizonView,
        retention::RetentionRun,
        queries::SeriesBuckets,
        queries::BucketView,
        queries::CrossSeries,
        queries::GroupBuckets,
        queries::Source,
        queries::SeriesView,
        queries::SeriesList,
        queries::BarSeries,
        queries::BarView,
    ))
)]
struct TimeseriesApi;

/// The time-series context, as the server registers it (`context::all`).
pub fn context() -> BoundedContext {
    metrics::init();
    BoundedContext {
        name: "timeseries",
        routes: routes::configure,
        openapi: TimeseriesApi::openapi,
        projections: |_| {
            vec![
                Arc::new(Typed(projection::PointsProjector)),
                Arc::new(Typed(projection::BarsProjector)),
                Arc::new(Typed(projection::RetentionProjector)),
            ]
        },
        jobs: Vec::new,
        scheduled: retention_job,
        ended: &[],
    }
}

/// Retention requested by the elected process every `metrics_retention_interval`.
fn retention_job(env: &crate::scheduled::Env) -> Vec<Job> {
    let (conn, store) = (env.conn.clone(), env.store.clone());
    let days = env.settings.metrics_retention_days;
    vec![Job::new(
        "metrics_retention",
        env.settings.metrics_retention_interval,
        move || {
            let (conn, store) = (conn.clone(), store.clone());
            async move {
                let client = crate::db::connect(&conn).await?;
                retention::request(&client, &store, days, retention::Trigger::Schedule).await?;
                Ok(())
            }
        },
    )]
}
