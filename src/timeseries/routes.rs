//! HTTP for time series: batch ingest of points and bars, bucketed queries, the latest
//! point, the series catalog, bars by interval, and the admin API of retention.

use actix_web::{get, post, put, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::aggregate::{BarBatch, MetricBatch, MetricRetention, SetRetention};
use super::events::{BarBatchEvent, MetricBatchEvent};
use super::ingest::{self, Format, Ingested};
use super::metrics::TS;
use super::projection::{BARS, METRIC_POINTS, METRIC_RETENTION};
use super::queries::{
    self, bucket_that_fits, Agg, Bucket, CrossQuery, CrossSeries, Fill, Range, SeriesBuckets,
    SeriesList, SeriesView,
};
use super::retention::{self, RetentionRun, Trigger};
use super::{retention_stream, series_id};
use crate::db::cursor;
use crate::eventstore::RecordedEvent;
use crate::http::batch::{streamed, Streamed};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{
    command_context, media_type, min_position, tenant, time_param, JsonBody,
};
use crate::http::AppState;
use crate::pipeline::{self, CommandResult, EventSourced, Expect};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(ingest_points)
        .service(ingest_bars)
        .service(list_series)
        .service(cross_series)
        .service(series_buckets)
        .service(latest)
        .service(bars)
        .service(set_retention)
        .service(retention_status)
        .service(run_retention);
}

/// What a batch appended.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    /// The batch's stream.
    pub batch_id: Uuid,
    /// Points (or bars) accepted.
    pub accepted: i64,
    /// Distinct (series, metric) pairs, or symbols.
    pub series: i64,
    /// Read with `min_position` at least this to see the whole batch.
    pub position: i64,
}

fn format_of(req: &HttpRequest) -> Result<Format, ApiError> {
    match media_type(req).as_deref() {
        Some("application/json") => Ok(Format::Json),
        Some("application/x-ndjson") => Ok(Format::Ndjson),
        Some("text/csv") => Ok(Format::Csv),
        _ => Err(ApiError::UnsupportedMediaType(
            "application/json, application/x-ndjson or text/csv",
        )),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Points,
    Bars,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Points => "points",
            Kind::Bars => "bars",
        }
    }
}

/// Streams a batch body into the store, with its Idempotency-Key if it has one.
async fn ingest(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    kind: Kind,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let format = format_of(req)?;
    let tenant = tenant(req)?;
    let store = &state.store;
    let stream_type = match kind {
        Kind::Points => MetricBatch::STREAM_TYPE,
        Kind::Bars => BarBatch::STREAM_TYPE,
    };
    let outcome = streamed(
        state,
        req,
        payload,
        stream_type,
        async |body, metadata, key| match kind {
            Kind::Points => {
                ingest::ingest_points(store, &tenant, format, body, metadata, key).await
            }
            Kind::Bars => ingest::ingest_bars(store, &tenant, format, body, metadata, key).await,
        },
    )
    .await;
    let done: Ingested = match outcome {
        Ok(Streamed::New(done)) => done,
        Ok(Streamed::Earlier {
            stream_id,
            last,
            position,
        }) => return ingested_before(stream_id, &last, position, kind),
        Err(e) => {
            TS.batches
                .with_label_values(&[kind.as_str(), "rejected"])
                .inc();
            return Err(e);
        }
    };
    TS.batches
        .with_label_values(&[kind.as_str(), "accepted"])
        .inc();
    TS.items
        .with_label_values(&[kind.as_str()])
        .inc_by(u64::try_from(done.items).unwrap_or(0));
    TS.ingest_duration
        .with_label_values(&[kind.as_str()])
        .observe(started.elapsed().as_secs_f64());
    Ok(HttpResponse::Accepted().json(BatchAccepted {
        batch_id: done.batch_id,
        accepted: done.items,
        series: done.series,
        position: done.appended.position,
    }))
}

/// The answer of the batch an earlier request under the same key made, from the last
/// event of its stream.
fn ingested_before(
    batch_id: Uuid,
    last: &RecordedEvent,
    position: i64,
    kind: Kind,
) -> Result<HttpResponse, ApiError> {
    let counts = match kind {
        Kind::Points => match MetricBatch::decode(last) {
            Ok(MetricBatchEvent::MetricBatchCompleted { points, series }) => Some((points, series)),
            _ => None,
        },
        Kind::Bars => match BarBatch::decode(last) {
            Ok(BarBatchEvent::BarBatchCompleted { bars: n, symbols }) => Some((n, symbols)),
            _ => None,
        },
    };
    let (accepted, series) = counts
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a batch stream ends unfinished")))?;
    Ok(HttpResponse::Accepted().json(BatchAccepted {
        batch_id,
        accepted,
        series,
        position,
    }))
}

/// Ingest points: `{"points": [{series, metric, time, value, tags?}, …]}` (JSON), one
/// point per line (NDJSON) or CSV with the columns series, metric, time, value and
/// optional `tags` (a JSON object); any other CSV column is a tag. Seed 000's names
/// `resource_id`, `metric_name`, `metric_value`, `timestamp` are accepted for the four,
/// and `resource_type`, `account`, `region` become tags. Up to 1,000,000 points, read as
/// they stream; a bad point rejects the whole batch (422 `invalid_row` with `row` and
/// `field`) and nothing is written. The same (series, metric, time) again: the later
/// value wins.
#[utoipa::path(post, path = "/api/v1/metrics:batch",
    request_body(content = String, content_type = "application/json", description = "JSON `{\"points\": [...]}`; also application/x-ndjson and text/csv"),
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 202, body = BatchAccepted), (status = 400, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[post("/api/v1/metrics:batch")]
pub async fn ingest_points(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    ingest(&state, &req, payload, Kind::Points).await
}

/// Ingest 1-minute bars: `{"bars": [{symbol, time, open, high, low, close, volume}, …]}`,
/// NDJSON or CSV with those columns. Prices and volume are exact decimals (numbers or
/// strings); a bar starts on a whole minute and has low ≤ open, close ≤ high.
#[utoipa::path(post, path = "/api/v1/bars:batch",
    request_body(content = String, content_type = "application/json", description = "JSON `{\"bars\": [...]}`; also application/x-ndjson and text/csv"),
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 202, body = BatchAccepted), (status = 400, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[post("/api/v1/bars:batch")]
pub async fn ingest_bars(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    ingest(&state, &req, payload, Kind::Bars).await
}

// --- queries ----------------------------------------------------------------------------

/// The query string as pairs (`tag` may repeat), checked against the names a route takes.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(req: &HttpRequest, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
            .map_err(|e| ApiError::validation("query", e.to_string()))?;
        for (k, _) in &pairs {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::validation(k, "is not a parameter of this query"));
            }
        }
        for a in allowed.iter().filter(|a| **a != "tag") {
            if pairs.iter().filter(|(k, _)| k == a).count() > 1 {
                return Err(ApiError::validation(*a, "is given more than once"));
            }
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        time_param(name, self.get(name))
    }

    fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<i64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        ApiError::validation(
                            name,
                            format!("must be an integer from {min} to {max}"),
                        )
                    })
            })
            .transpose()
    }

    fn min_position(&self) -> Result<Option<i64>, ApiError> {
        min_position(self.int("min_position", 0, i64::MAX)?)
    }

    /// `from`/`to`, by default the last day up to now; `from` before `to`.
    fn range(&self) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
        let to = self.time("to")?.unwrap_or_else(Utc::now);
        let from = self.time("from")?.unwrap_or(to - Duration::days(1));
        if from >= to {
            return Err(ApiError::validation("from", "must be before to"));
        }
        Ok((from, to))
    }

    fn bucket(&self, name: &str, allowed: &[Bucket], default: Bucket) -> Result<Bucket, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(b) => Bucket::parse(b, allowed).ok_or_else(|| {
                let names: Vec<&str> = allowed.iter().map(|b| b.as_str()).collect();
                ApiError::validation(name, format!("must be one of {}", names.join(", ")))
            }),
        }
    }

    fn aggs(&self) -> Result<Vec<Agg>, ApiError> {
        let Some(list) = self.get("agg") else {
            return Ok(vec![Agg::Avg]);
        };
        let mut aggs = Vec::new();
        for a in list.split(',').map(str::trim) {
            let agg = Agg::parse(a).ok_or_else(|| {
                ApiError::validation(
                    "agg",
                    format!("{a:?} is not one of avg, min, max, sum, count, first, last, p95"),
                )
            })?;
            if !aggs.contains(&agg) {
                aggs.push(agg);
            }
        }
        Ok(aggs)
    }

    fn fill(&self) -> Result<Fill, ApiError> {
        self.get("fill").map_or(Ok(Fill::None), |f| {
            Fill::parse(f).ok_or_else(|| {
                ApiError::validation("fill", "must be one of none, null, previous, linear")
            })
        })
    }

    /// `tag=KEY:VALUE` (repeatable) as one object the series' tags must contain.
    fn tags(&self) -> Result<Value, ApiError> {
        let mut tags = Map::new();
        for (_, v) in self.0.iter().filter(|(k, _)| k == "tag") {
            let (k, val) = v
                .split_once(':')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| ApiError::validation("tag", format!("{v:?} is not KEY:VALUE")))?;
            tags.insert(k.to_owned(), Value::String(val.to_owned()));
        }
        Ok(Value::Object(tags))
    }
}

/// 422 `too_many_points` unless `buckets × groups` fits the limit; names a bucket that fits.
fn check_size(
    state: &AppState,
    (query, parameter): (&'static str, &'static str),
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    range: &Range,
    groups: i64,
    allowed: &[Bucket],
) -> Result<(), ApiError> {
    let max = state.settings.metrics_max_points;
    let points = range.buckets().saturating_mul(groups.max(1));
    if points <= max {
        return Ok(());
    }
    TS.queries_refused.with_label_values(&[query]).inc();
    let hint = match bucket_that_fits(from, to, groups.max(1), max, allowed) {
        Some(b) => format!("{parameter}={} would fit", b.as_str()),
        None => "no bucket fits; narrow the range (or the series)".to_owned(),
    };
    Err(ApiError::TooManyPoints {
        field: parameter,
        message: format!("the query would return up to {points} points, more than {max}; {hint}"),
    })
}

fn observe(query: &str, source: &str, started: std::time::Instant) {
    TS.query_duration
        .with_label_values(&[query, source])
        .observe(started.elapsed().as_secs_f64());
}

/// Query parameters of a bucketed series (documentation; the route reads them itself).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BucketParams {
    /// Start (RFC 3339), rounded down to the bucket; default: a day before `to`.
    pub from: Option<String>,
    /// End (RFC 3339), exclusive, rounded up to the bucket; default: now.
    pub to: Option<String>,
    /// `1m`, `5m`, `1h` (default) or `1d`.
    pub bucket: Option<String>,
    /// Comma-separated: avg (default), min, max, sum, count, first, last, p95.
    pub agg: Option<String>,
    /// `none` (default: absent buckets stay absent), `null`, `previous` or `linear`.
    pub fill: Option<String>,
    pub min_position: Option<i64>,
}

/// One series bucketed: 1-hour and 1-day buckets come from the rollups unless `p95` is
/// asked. 404 when the tenant has no such series.
#[utoipa::path(get, path = "/api/v1/metrics/{series}/{metric}",
    params(("series" = String, Path), ("metric" = String, Path), BucketParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = SeriesBuckets), (status = 400, body = Problem),
              (status = 404, body = Problem),
              (status = 422, body = Problem, description = "`validation_failed`, or `too_many_points` naming a bucket that fits"),
              (status = 503, body = Problem)))]
#[get("/api/v1/metrics/{series}/{metric}")]
pub async fn series_buckets(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let (series, metric) = path.into_inner();
    let p = Params::new(
        &req,
        &["from", "to", "bucket", "agg", "fill", "min_position"],
    )?;
    let tenant = tenant(&req)?;
    let span = p.range()?;
    let bucket = p.bucket("bucket", &Bucket::FOR_POINTS, Bucket::H1)?;
    let (aggs, fill) = (p.aggs()?, p.fill()?);
    let q = SeriesQuery {
        series: &series,
        metric: &metric,
        span,
        bucket,
        aggs: &aggs,
        fill,
    };
    let out = one_series(&state, &tenant, &q, p.min_position()?).await?;
    observe("series", out.source.as_str(), started);
    Ok(HttpResponse::Ok().json(out))
}

/// The checked parameters of `GET /api/v1/metrics/{series}/{metric}`.
pub struct SeriesQuery<'a> {
    pub series: &'a str,
    pub metric: &'a str,
    /// `from`, `to`; `from` before `to`.
    pub span: (DateTime<Utc>, DateTime<Utc>),
    pub bucket: Bucket,
    pub aggs: &'a [Agg],
    pub fill: Fill,
}

/// `GET /api/v1/metrics/{series}/{metric}` without HTTP: the size check, the series and
/// its buckets. Dashboards' `metric_series` widgets run exactly this.
pub async fn one_series(
    state: &AppState,
    tenant: &str,
    q: &SeriesQuery<'_>,
    min_position: Option<i64>,
) -> Result<SeriesBuckets, ApiError> {
    let range = Range::whole(q.span.0, q.span.1, q.bucket);
    check_size(
        state,
        ("series", "bucket"),
        q.span,
        &range,
        1,
        &Bucket::FOR_POINTS,
    )?;
    let (series, metric) = (q.series, q.metric);
    let id = series_id(tenant, series, metric);
    let client = state.scan(tenant, &[METRIC_POINTS], min_position).await?;
    let view = queries::series(&client, tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("series {series:?} of metric {metric:?}")))?;
    Ok(queries::one_series(&client, &view, id, &range, q.aggs, q.fill).await?)
}

/// The newest point of a series.
#[utoipa::path(get, path = "/api/v1/metrics/{series}/{metric}/latest",
    params(("series" = String, Path), ("metric" = String, Path),
           ("min_position" = Option<i64>, Query, minimum = 0),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = SeriesView), (status = 400, body = Problem),
              (status = 404, body = Problem),
              (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[get("/api/v1/metrics/{series}/{metric}/latest")]
pub async fn latest(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (series, metric) = path.into_inner();
    let p = Params::new(&req, &["min_position"])?;
    let tenant = tenant(&req)?;
    let client = state
        .read_model(&tenant, METRIC_POINTS, p.min_position()?)
        .await?;
    let view = client
        .query_opt(
            queries::SERIES_BY_ID,
            &[&tenant, &series_id(&tenant, &series, &metric)],
        )
        .await?
        .map(|r| queries::series_view(&r))
        .transpose()?
        .ok_or_else(|| ApiError::NotFound(format!("series {series:?} of metric {metric:?}")))?;
    Ok(HttpResponse::Ok().json(view))
}

/// Query parameters of a cross-series query (documentation).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CrossParams {
    /// The metric (required).
    pub metric: String,
    /// `KEY:VALUE`; repeat for several (all must match).
    pub tag: Option<Vec<String>>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `1m`, `5m`, `1h` (default) or `1d`.
    pub bucket: Option<String>,
    /// Comma-separated aggregates; the first ranks the groups for `top`.
    pub agg: Option<String>,
    pub fill: Option<String>,
    /// `tag:KEY`: one group per value of the tag (default: one per series).
    pub group_by: Option<String>,
    /// Only the N groups with the highest first aggregate over the range.
    #[param(minimum = 1, maximum = 10000)]
    pub top: Option<i64>,
    pub min_position: Option<i64>,
}

/// Many series of one metric, bucketed per series or per value of a tag.
#[utoipa::path(get, path = "/api/v1/metrics",
    params(CrossParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CrossSeries), (status = 400, body = Problem),
              (status = 422, body = Problem, description = "`validation_failed`, or `too_many_points` naming a bucket that fits"),
              (status = 503, body = Problem)))]
#[get("/api/v1/metrics")]
pub async fn cross_series(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let p = Params::new(
        &req,
        &[
            "metric",
            "tag",
            "from",
            "to",
            "bucket",
            "agg",
            "fill",
            "group_by",
            "top",
            "min_position",
        ],
    )?;
    let tenant = tenant(&req)?;
    let metric = p
        .get("metric")
        .ok_or_else(|| ApiError::validation("metric", "is required"))?;
    let group_by = match p.get("group_by") {
        None | Some("series") => None,
        Some(g) => Some(
            g.strip_prefix("tag:")
                .filter(|k| !k.is_empty())
                .ok_or_else(|| ApiError::validation("group_by", "must be series or tag:KEY"))?,
        ),
    };
    let span = p.range()?;
    let bucket = p.bucket("bucket", &Bucket::FOR_POINTS, Bucket::H1)?;
    let tags = p.tags()?;
    let aggs = p.aggs()?;
    let q = CrossQuery {
        metric,
        tags: &tags,
        group_by,
        range: Range::whole(span.0, span.1, bucket),
        aggs: &aggs,
        fill: p.fill()?,
        top: p.int("top", 1, 10_000)?,
    };
    let client = state
        .scan(&tenant, &[METRIC_POINTS], p.min_position()?)
        .await?;
    let series = queries::matching_series(&client, &tenant, &q).await?;
    let mut groups: Vec<&Option<String>> = series.iter().map(|s| &s.1).collect();
    groups.sort();
    groups.dedup();
    // Every group's buckets are read (`top` ranks them after), so every group counts.
    check_size(
        &state,
        ("cross_series", "bucket"),
        span,
        &q.range,
        groups.len() as i64,
        &Bucket::FOR_POINTS,
    )?;
    let out: CrossSeries = queries::cross_series(&client, &q, &series).await?;
    observe("cross_series", out.source.as_str(), started);
    Ok(HttpResponse::Ok().json(out))
}

/// Query parameters of the series catalog (documentation).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesListParams {
    pub metric: Option<String>,
    /// `KEY:VALUE`; repeat for several.
    pub tag: Option<Vec<String>>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    pub min_position: Option<i64>,
}

/// The series catalog: each series with its tags and newest point, by metric and name.
#[utoipa::path(get, path = "/api/v1/metrics/series",
    params(SeriesListParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = SeriesList), (status = 400, body = Problem),
              (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[get("/api/v1/metrics/series")]
pub async fn list_series(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let p = Params::new(&req, &["metric", "tag", "after", "limit", "min_position"])?;
    let tenant = tenant(&req)?;
    let limit = p.int("limit", 1, 1000)?.unwrap_or(100);
    let after = p
        .get("after")
        .map(|a| {
            cursor::decode::<(String, String)>(a)
                .ok_or_else(|| ApiError::validation("after", "is not a cursor this server gave"))
        })
        .transpose()?;
    let client = state
        .scan(&tenant, &[METRIC_POINTS], p.min_position()?)
        .await?;
    let items =
        queries::list_series(&client, &tenant, p.get("metric"), &p.tags()?, after, limit).await?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last())
        .flatten()
        .map(|l| cursor::encode(&(&l.metric, &l.series)));
    Ok(HttpResponse::Ok().json(SeriesList { items, next }))
}

/// Query parameters of bars (documentation).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BarParams {
    pub from: Option<String>,
    pub to: Option<String>,
    /// `1m` (default), `5m`, `15m`, `1h` or `1d`.
    pub interval: Option<String>,
    pub min_position: Option<i64>,
}

/// OHLCV bars of a symbol rolled up from its 1-minute bars: first open, highest high,
/// lowest low, last close, summed volume.
#[utoipa::path(get, path = "/api/v1/bars/{symbol}",
    params(("symbol" = String, Path), BarParams,
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = queries::BarSeries), (status = 400, body = Problem),
              (status = 422, body = Problem, description = "`validation_failed`, or `too_many_points` naming an interval that fits"),
              (status = 503, body = Problem)))]
#[get("/api/v1/bars/{symbol}")]
pub async fn bars(
    state: web::Data<AppState>,
    req: HttpRequest,
    symbol: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let p = Params::new(&req, &["from", "to", "interval", "min_position"])?;
    let tenant = tenant(&req)?;
    let span = p.range()?;
    let interval = p.bucket("interval", &Bucket::FOR_BARS, Bucket::M1)?;
    let range = Range::whole(span.0, span.1, interval);
    check_size(
        &state,
        ("bars", "interval"),
        span,
        &range,
        1,
        &Bucket::FOR_BARS,
    )?;
    let client = state.scan(&tenant, &[BARS], p.min_position()?).await?;
    let out = queries::bars(&client, &tenant, &symbol, &range).await?;
    observe("bars", "bars_1m", started);
    Ok(HttpResponse::Ok().json(out))
}

// --- retention (admin) ------------------------------------------------------------------

/// A metric's raw-point retention.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionDraft {
    /// Days raw points are kept (1 to 36,500); `null` returns to the server's default.
    pub raw_days: Option<i32>,
}

/// Set how long a metric of the tenant (`X-Tenant-Id`) keeps its raw points; rollups are
/// kept. Admin keys only.
#[utoipa::path(put, path = "/api/v1/admin/metrics/retention/{metric}", request_body = RetentionDraft,
    params(("metric" = String, Path),
           ("Idempotency-Key" = Option<String>, Header, description = "retry-safe key, 1-200 characters", min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$"),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = CommandResult), (status = 400, body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem)))]
#[put("/api/v1/admin/metrics/retention/{metric}")]
pub async fn set_retention(
    state: web::Data<AppState>,
    req: HttpRequest,
    metric: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    let draft: RetentionDraft = body.parse()?;
    let ctx = command_context(&req, &body.bytes)?;
    let metric = metric.into_inner();
    let (result, _) = pipeline::execute::<MetricRetention>(
        &state.store,
        &ctx,
        "SetMetricRetention",
        retention_stream(&ctx.tenant_id, &metric),
        Expect::Any,
        SetRetention {
            metric,
            raw_days: draft.raw_days,
        },
        &(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(result))
}

/// Retention as configured and as applied.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetentionStatus {
    /// The server's default (`CLOUDLENS_METRICS_RETENTION_DAYS`).
    pub default_days: i32,
    /// Metrics of the tenant with their own retention.
    pub metrics: Vec<MetricRetentionView>,
    /// Where each metric's raw points start now, and how many retention removed.
    pub horizons: Vec<HorizonView>,
    /// The last retention runs (all tenants), newest first.
    pub runs: Vec<RetentionRun>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricRetentionView {
    pub metric: String,
    pub raw_days: i32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HorizonView {
    pub metric: String,
    /// Raw points before this are dropped (rollups keep them).
    pub raw_from: DateTime<Utc>,
    pub points_deleted: i64,
    pub updated_at: DateTime<Utc>,
}

const RETENTION_SQL: &str =
    "SELECT metric, raw_days FROM metric_retention WHERE tenant_id = $1 ORDER BY metric";
const HORIZONS_SQL: &str = "SELECT metric, before, points_deleted, updated_at
 FROM metric_raw_horizon WHERE tenant_id = $1 ORDER BY metric";

/// Retention of the tenant's metrics, where their raw points start, and the last 20 runs.
/// Admin keys only.
#[utoipa::path(get, path = "/api/v1/admin/metrics/retention",
    params(("min_position" = Option<i64>, Query, minimum = 0),
           ("X-Tenant-Id" = Option<String>, Header, description = "tenant", pattern = "^[a-z0-9_-]{1,64}$")),
    responses((status = 200, body = RetentionStatus), (status = 400, body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[get("/api/v1/admin/metrics/retention")]
pub async fn retention_status(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let p = Params::new(&req, &["min_position"])?;
    let tenant = tenant(&req)?;
    let reader = state
        .read_models(
            &tenant,
            &[METRIC_RETENTION, METRIC_POINTS],
            p.min_position()?,
        )
        .await?;
    let metrics = reader
        .query(RETENTION_SQL, &[&tenant])
        .await?
        .iter()
        .map(|r| {
            Ok(MetricRetentionView {
                metric: r.try_get(0)?,
                raw_days: r.try_get(1)?,
            })
        })
        .collect::<Result<Vec<_>, crate::db::QueryError>>()?;
    let horizons = reader
        .query(HORIZONS_SQL, &[&tenant])
        .await?
        .iter()
        .map(|r| {
            Ok(HorizonView {
                metric: r.try_get(0)?,
                raw_from: r.try_get(1)?,
                points_deleted: r.try_get(2)?,
                updated_at: r.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, crate::db::QueryError>>()?;
    let owner = state.admin_scan().await?;
    let owner: &tokio_postgres::Client = &owner;
    let runs = retention::runs(owner, 20)
        .await
        .map_err(ApiError::Internal)?;
    Ok(HttpResponse::Ok().json(RetentionStatus {
        default_days: state.settings.metrics_retention_days,
        metrics,
        horizons,
        runs,
    }))
}

/// Request retention now, for every tenant (it also runs on its own every
/// `CLOUDLENS_METRICS_RETENTION_INTERVAL_SECONDS`): the metrics whose cutoff moved get a
/// `RawPointsExpired`; read with `min_position` = `position` to see it applied. Admin
/// keys only.
#[utoipa::path(post, path = "/api/v1/admin/metrics/retention:run",
    responses((status = 202, body = RetentionRun), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 503, body = Problem)))]
#[post("/api/v1/admin/metrics/retention:run")]
pub async fn run_retention(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let owner = state.admin_scan().await?;
    let owner: &tokio_postgres::Client = &owner;
    let run = retention::request(
        owner,
        &state.store,
        state.settings.metrics_retention_days,
        Trigger::Admin,
    )
    .await
    .map_err(ApiError::Internal)?;
    Ok(HttpResponse::Accepted().json(run))
}
