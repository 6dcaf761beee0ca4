//! Tracing set-up and the Prometheus metrics every part of the server reports to.

use std::sync::LazyLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use tracing_subscriber::EnvFilter;

/// Tracing's lifetime: when traces are exported, dropping it flushes and stops the
/// exporter (at most a few seconds), so spans of the last requests are not lost.
#[must_use = "dropping Telemetry stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("cloudlens: trace export did not shut down cleanly: {e}");
            }
        }
    }
}

/// Structured logs to stderr; `RUST_LOG` filters (default `info`), JSON when asked. With
/// `otlp_endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`), spans of requests, commands, appends
/// and projector batches are also exported over OTLP/HTTP (JSON) to `{endpoint}/v1/traces`
/// by the SDK's batch processor (its own thread, `OTEL_BSP_*` tune it), and each request's
/// trace id shows in its log lines and problem bodies. Without it no trace is kept.
pub fn init_tracing(json: bool, otlp_endpoint: Option<&str>) -> Telemetry {
    use opentelemetry_otlp::WithExportConfig;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let provider = otlp_endpoint.and_then(|base| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
            .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
            .build();
        match exporter {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name("cloudlens")
                            .build(),
                    )
                    .with_batch_exporter(exporter)
                    .build(),
            ),
            Err(e) => {
                eprintln!("cloudlens: traces are not exported: {e}");
                None
            }
        }
    });
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("cloudlens"))
            // The server's own spans down to debug (commands, appends: cost nothing when
            // traces are off), other crates' from info; log events stay in the logs.
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span()
                    && (*m.level() <= tracing::Level::INFO || m.target().starts_with("cloudlens"))
            }))
    });
    // try_init: tests start several apps in one process.
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Telemetry { provider }
}

/// The trace id (32 hex digits) of the span being run, when traces are on.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let id = opentelemetry::Context::current()
        .span()
        .span_context()
        .trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

/// Records `span`'s trace id in its `trace_id` field, so every log line inside it names
/// the trace (a no-op when traces are off).
pub fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let id = span.context().span().span_context().trace_id();
    if id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}

/// Every metric the server exports. One process-wide set (a static), so handlers,
/// the store and projectors record without threading a handle through every call.
pub struct Metrics {
    pub registry: Registry,
    pub commands: IntCounterVec,
    pub command_duration: HistogramVec,
    pub events_appended: IntCounterVec,
    pub append_duration: Histogram,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub projector_position: IntGaugeVec,
    pub projector_lag_events: IntGaugeVec,
    pub projector_lag_seconds: prometheus::GaugeVec,
    pub projector_batch_duration: HistogramVec,
    pub projector_events_applied: IntCounterVec,
    pub projector_leader: IntGaugeVec,
    pub projector_errors: IntCounterVec,
    pub rebuild_position: IntGaugeVec,
    pub min_position_wait: Histogram,
    /// `CLOUDLENS_REPLICA_URL` (`db::replica`): whether queries go to the replica, how far
    /// it is behind, and where queries were served.
    pub replica_up: IntGauge,
    pub replica_lag_bytes: IntGauge,
    pub replica_lag_seconds: prometheus::Gauge,
    pub replica_queries: IntCounterVec,
    pub pool_size: IntGauge,
    pub pool_available: IntGauge,
    pub pool_waiting: IntGauge,
    pub db_size_bytes: IntGauge,
    pub db_table_size_bytes: IntGaugeVec,
    pub read_model_rows: IntGaugeVec,
    pub oldest_writer_transaction_seconds: prometheus::Gauge,
    pub ready: IntGauge,
    pub scheduled_runs: IntCounterVec,
    pub scheduled_leader: IntGaugeVec,
    pub idempotency_keys_purged: prometheus::IntCounter,
    pub writer_stalled: IntGauge,
    pub jobs: IntCounterVec,
    pub job_duration: HistogramVec,
    pub job_runner_leader: IntGauge,
}

fn latency_buckets() -> Vec<f64> {
    // 0.25 ms .. ~8 s
    exponential_buckets(0.000_25, 2.0, 16).unwrap_or_default()
}

/// Registers a metric and hands it back: each metric is written down once.
pub fn reg<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> Result<T, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let r = &registry;
    let m = Metrics {
        commands: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_commands_total",
                    "Commands handled, by type and outcome",
                ),
                &["command", "outcome"],
            )?,
        )?,
        command_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_command_duration_seconds",
                    "Command handling latency",
                )
                .buckets(latency_buckets()),
                &["command"],
            )?,
        )?,
        events_appended: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_events_appended_total",
                    "Events appended to the store",
                ),
                &["stream_type"],
            )?,
        )?,
        append_duration: reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "cloudlens_event_append_duration_seconds",
                    "Latency of one append statement",
                )
                .buckets(latency_buckets()),
            )?,
        )?,
        http_requests: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_http_requests_total",
                    "HTTP requests by route and status",
                ),
                &["method", "route", "status"],
            )?,
        )?,
        http_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_http_request_duration_seconds",
                    "HTTP request latency",
                )
                .buckets(latency_buckets()),
                &["method", "route"],
            )?,
        )?,
        projector_position: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "cloudlens_projector_position",
                    "Global position of the last event a projector applied",
                ),
                &["projector"],
            )?,
        )?,
        projector_lag_events: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "cloudlens_projector_lag_events",
                    "Events not yet applied by a projector",
                ),
                &["projector"],
            )?,
        )?,
        projector_lag_seconds: reg(
            r,
            prometheus::GaugeVec::new(
                Opts::new(
                    "cloudlens_projector_lag_seconds",
                    "Age of the oldest event a projector has not applied",
                ),
                &["projector"],
            )?,
        )?,
        projector_batch_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_projector_batch_duration_seconds",
                    "Duration of one projector batch",
                )
                .buckets(latency_buckets()),
                &["projector"],
            )?,
        )?,
        projector_events_applied: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_projector_events_applied_total",
                    "Events applied by projectors in this process",
                ),
                &["projector"],
            )?,
        )?,
        projector_leader: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "cloudlens_projector_leader",
                    "1 when this process runs the projector",
                ),
                &["projector"],
            )?,
        )?,
        projector_errors: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_projector_errors_total",
                    "Failed projector batches (retried)",
                ),
                &["projector"],
            )?,
        )?,
        rebuild_position: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "cloudlens_projection_rebuild_position",
                    "Position reached by a running rebuild",
                ),
                &["projector"],
            )?,
        )?,
        min_position_wait: reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "cloudlens_min_position_wait_seconds",
                    "Time queries waited for min_position",
                )
                .buckets(latency_buckets()),
            )?,
        )?,
        replica_up: reg(
            r,
            IntGauge::new(
                "cloudlens_replica_up",
                "1 while queries go to the replica (CLOUDLENS_REPLICA_URL), 0 while they fall back to the primary",
            )?,
        )?,
        replica_lag_bytes: reg(
            r,
            IntGauge::new(
                "cloudlens_replica_lag_bytes",
                "WAL bytes the replica has yet to replay",
            )?,
        )?,
        replica_lag_seconds: reg(
            r,
            prometheus::Gauge::new(
                "cloudlens_replica_lag_seconds",
                "Age of the last transaction the replica replayed while it is behind (0 when caught up)",
            )?,
        )?,
        replica_queries: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_replica_queries_total",
                    "Read-model queries by the database that served them, when a replica is configured",
                ),
                &["served_by"],
            )?,
        )?,
        pool_size: reg(
            r,
            IntGauge::new("cloudlens_db_pool_size", "Connections in the pool")?,
        )?,
        pool_available: reg(
            r,
            IntGauge::new(
                "cloudlens_db_pool_available",
                "Idle connections in the pool",
            )?,
        )?,
        pool_waiting: reg(
            r,
            IntGauge::new(
                "cloudlens_db_pool_waiting",
                "Requests waiting for a connection",
            )?,
        )?,
        db_size_bytes: reg(
            r,
            IntGauge::new("cloudlens_db_size_bytes", "Size of the database")?,
        )?,
        db_table_size_bytes: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "cloudlens_db_table_size_bytes",
                    "Size of each table with its indexes",
                ),
                &["table"],
            )?,
        )?,
        read_model_rows: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "cloudlens_read_model_rows",
                    "Rows in each read-model table (statistics estimate)",
                ),
                &["table"],
            )?,
        )?,
        oldest_writer_transaction_seconds: reg(
            r,
            prometheus::Gauge::new(
                "cloudlens_oldest_writer_transaction_seconds",
                "Age of the oldest open event-writer transaction (projectors wait for it)",
            )?,
        )?,
        ready: reg(
            r,
            IntGauge::new("cloudlens_ready", "1 when /readyz would answer 200")?,
        )?,
        scheduled_runs: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_scheduled_runs_total",
                    "Runs of periodic work in the elected process, by task and outcome",
                ),
                &["task", "outcome"],
            )?,
        )?,
        scheduled_leader: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "cloudlens_scheduled_leader",
                    "1 when this process runs the periodic job",
                ),
                &["task"],
            )?,
        )?,
        idempotency_keys_purged: reg(
            r,
            prometheus::IntCounter::new(
                "cloudlens_idempotency_keys_purged_total",
                "Idempotency records removed by the retention purge",
            )?,
        )?,
        writer_stalled: reg(
            r,
            IntGauge::new(
                "cloudlens_event_writer_stalled",
                "1 when an event-writer transaction has been open longer than the stall threshold",
            )?,
        )?,
        jobs: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "cloudlens_jobs_total",
                    "Background jobs finished, by kind and outcome (succeeded, failed, interrupted)",
                ),
                &["kind", "outcome"],
            )?,
        )?,
        job_duration: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "cloudlens_job_duration_seconds",
                    "Time from a job's start to its end, by kind",
                )
                .buckets(exponential_buckets(0.01, 2.0, 16)?),
                &["kind"],
            )?,
        )?,
        job_runner_leader: reg(
            r,
            IntGauge::new(
                "cloudlens_job_runner_leader",
                "1 when this process is the elected job runner",
            )?,
        )?,
        registry,
    };
    Ok(m)
}

#[allow(clippy::expect_used)] // metric definitions are constants: a failure is a programming error
pub static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("metric definitions are valid"));

/// Renders the registry in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&METRICS.registry.gather(), &mut out) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}
