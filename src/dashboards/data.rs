//! `GET /api/v1/dashboards/{id}/data`: every widget's data source run through the code of
//! the endpoint it names (ADR 0027), a few at a time. A widget that fails carries its own
//! problem document; the others still answer.

use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::events::{DataSource, Widget};
use super::metrics::DASHBOARDS;
use crate::http::error::{ApiError, Problem};
use crate::http::AppState;

/// Widgets run at once per request: they take scan connections from the shared pool.
pub const CONCURRENCY: usize = 4;

/// The answer of one widget: `result` (the body its endpoint would answer) or `error`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WidgetData {
    pub id: String,
    /// The data-source kind.
    pub kind: &'static str,
    /// What the data source's own endpoint answers for these parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// The problem document that endpoint would answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardData {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// In the dashboard's order.
    pub widgets: Vec<WidgetData>,
}

/// What a widget's run gives: the endpoint's body, or its problem.
type Outcome = Result<Value, Box<Problem>>;

/// The default range: the 30 days up to the end of today (UTC), whole days so cost
/// breakdowns read the daily rollup.
pub fn default_range(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let tomorrow = now.date_naive() + chrono::Days::new(1);
    let to = tomorrow.and_time(chrono::NaiveTime::MIN).and_utc();
    (to - Duration::days(30), to)
}

/// The day a budget's figures are taken for: the last day of the range.
fn as_of(to: DateTime<Utc>) -> NaiveDate {
    (to - Duration::microseconds(1)).date_naive()
}

fn body(v: impl Serialize) -> Outcome {
    serde_json::to_value(v).map_err(|e| Box::new(ApiError::Internal(e.into()).problem()))
}

/// Runs one widget. Every arm calls the function its endpoint's handler calls.
async fn run(
    state: &AppState,
    tenant: &str,
    widget: &Widget,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    min_position: Option<i64>,
) -> Outcome {
    let answer = match &widget.data_source {
        DataSource::CostBreakdown {
            group_by,
            granularity,
            filters,
        } => {
            let params = crate::costs::routes::CostParams {
                from: from.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                to: to.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                bucket: Some(granularity.clone()),
                group_by: Some(group_by.join(",")),
                account: filters.account.clone(),
                service: filters.service.clone(),
                region: filters.region.clone(),
                tag: filters.tag.clone(),
                currency: filters.currency.clone(),
                source: None,
                allocated: None,
                min_position,
            };
            crate::costs::routes::breakdown(state, tenant, params)
                .await
                .map(body)
        }
        DataSource::MetricSeries {
            series,
            metric,
            aggregation,
            step,
            fill,
        } => {
            use crate::timeseries::queries::{Agg, Bucket, Fill};
            let parsed = (
                Agg::parse(aggregation),
                Bucket::parse(step, &Bucket::FOR_POINTS),
                Fill::parse(fill),
            );
            let (Some(agg), Some(bucket), Some(fill)) = parsed else {
                // The aggregate checked these names against the same lists.
                return Err(Box::new(
                    ApiError::validation("data_source", "unknown parameter value").problem(),
                ));
            };
            let q = crate::timeseries::routes::SeriesQuery {
                series,
                metric,
                span: (from, to),
                bucket,
                aggs: &[agg],
                fill,
            };
            crate::timeseries::routes::one_series(state, tenant, &q, min_position)
                .await
                .map(body)
        }
        DataSource::BudgetStatus { budget_id } => {
            crate::costs::routes::status_of(state, tenant, *budget_id, as_of(to), min_position)
                .await
                .map(body)
        }
        DataSource::TagStats { tag_id } => {
            crate::tagging::routes::stats_of(state, tenant, *tag_id, min_position)
                .await
                .map(body)
        }
        DataSource::AlertList {
            state: which,
            limit,
        } => {
            // `firing`: open episodes whenever they fired; `resolved` or no state:
            // the episodes fired in the span.
            let (states, from, to) = match which.as_deref() {
                Some("firing") => {
                    let (from, to) = crate::alerts::queries::all_time();
                    (vec!["firing".to_owned()], from, to)
                }
                Some(s) => (vec![s.to_owned()], from, to),
                None => (vec!["firing".to_owned(), "resolved".to_owned()], from, to),
            };
            let filter = crate::alerts::queries::AlertFilter {
                states,
                rule: None,
                from,
                to,
                after: None,
                limit: *limit,
            };
            crate::alerts::routes::alerts_of(state, tenant, &filter, min_position)
                .await
                .map(body)
        }
    };
    answer.map_err(|e| Box::new(e.problem()))?
}

/// Runs every widget, at most [`CONCURRENCY`] at once, and answers them in order.
pub async fn run_all(
    state: &AppState,
    tenant: &str,
    widgets: &[Widget],
    span: (DateTime<Utc>, DateTime<Utc>),
    min_position: Option<i64>,
) -> DashboardData {
    let started = std::time::Instant::now();
    let mut answers: Vec<(usize, WidgetData)> = futures::stream::iter(widgets.iter().enumerate())
        .map(|(i, w)| async move {
            let kind = w.data_source.kind();
            let outcome = run(state, tenant, w, span, min_position).await;
            DASHBOARDS
                .widget_queries
                .with_label_values(&[kind, if outcome.is_ok() { "ok" } else { "error" }])
                .inc();
            let (result, error) = match outcome {
                Ok(v) => (Some(v), None),
                Err(p) => (None, Some(*p)),
            };
            (
                i,
                WidgetData {
                    id: w.id.clone(),
                    kind,
                    result,
                    error,
                },
            )
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    answers.sort_by_key(|(i, _)| *i);
    DASHBOARDS
        .data_duration
        .observe(started.elapsed().as_secs_f64());
    DashboardData {
        from: span.0,
        to: span.1,
        widgets: answers.into_iter().map(|(_, w)| w).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::aggregate::{is_cost_dimension, AGGREGATIONS, FILLS, GRANULARITIES, STEPS};
    use crate::costs::queries::{Bucket as CostBucket, Dim};
    use crate::timeseries::queries::{Agg, Bucket, Fill};

    /// The names the aggregate accepts are exactly the ones the endpoints parse.
    #[test]
    fn the_domain_lists_match_the_endpoints_parsers() {
        for a in AGGREGATIONS {
            assert!(Agg::parse(a).is_some(), "{a}");
        }
        assert_eq!(AGGREGATIONS.len(), Agg::ALL.len());
        for s in STEPS {
            assert!(Bucket::parse(s, &Bucket::FOR_POINTS).is_some(), "{s}");
        }
        assert_eq!(STEPS.len(), Bucket::FOR_POINTS.len());
        for f in FILLS {
            assert!(Fill::parse(f).is_some(), "{f}");
        }
        for g in GRANULARITIES {
            assert!(CostBucket::parse(g).is_some(), "{g}");
        }
        for d in [
            "account", "service", "region", "resource", "tag:team", "tag:", "vtag:env", "vtag:Env",
            "vtag:", "colour", "tag:a,b", "",
        ] {
            let endpoint = Dim::parse(d).filter(|d| *d != Dim::Resource).is_some();
            let domain = is_cost_dimension(d);
            // The domain may be stricter (no comma), never looser.
            assert!(!domain || endpoint, "{d}");
            if !d.contains(',') {
                assert_eq!(domain, endpoint, "{d}");
            }
        }
    }

    #[test]
    fn the_default_range_is_thirty_whole_days_up_to_tomorrow() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-03-10T15:00:00Z")
            .unwrap()
            .to_utc();
        let (from, to) = super::default_range(now);
        assert_eq!(to.to_rfc3339(), "2026-03-11T00:00:00+00:00");
        assert_eq!(from.to_rfc3339(), "2026-02-09T00:00:00+00:00");
        assert_eq!(super::as_of(to).to_string(), "2026-03-10");
    }
}
