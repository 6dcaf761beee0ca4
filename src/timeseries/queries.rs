//! Reads of the time-series read models: bucketed series (one, or many grouped), the
//! latest point, the series catalog and OHLCV bars. Buckets are whole: `from` is
//! rounded down and `to` up to the bucket, so the rollup of 1-hour and 1-day buckets
//! answers exactly what the raw points would, and a query takes the coarsest table that
//! does (`Source`). Gaps are absent buckets unless a fill is asked for.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use utoipa::ToSchema;

use crate::db::QueryError;

/// Width of a bucket (points) or interval (bars).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bucket {
    M1,
    M5,
    M15,
    H1,
    D1,
}

impl Bucket {
    pub const FOR_POINTS: [Bucket; 4] = [Bucket::M1, Bucket::M5, Bucket::H1, Bucket::D1];
    pub const FOR_BARS: [Bucket; 5] = [Bucket::M1, Bucket::M5, Bucket::M15, Bucket::H1, Bucket::D1];

    pub fn parse(s: &str, allowed: &[Bucket]) -> Option<Bucket> {
        allowed.iter().copied().find(|b| b.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::M1 => "1m",
            Bucket::M5 => "5m",
            Bucket::M15 => "15m",
            Bucket::H1 => "1h",
            Bucket::D1 => "1d",
        }
    }

    pub fn micros(self) -> i64 {
        60_000_000
            * match self {
                Bucket::M1 => 1,
                Bucket::M5 => 5,
                Bucket::M15 => 15,
                Bucket::H1 => 60,
                Bucket::D1 => 1440,
            }
    }

    fn interval(self) -> String {
        format!("{} seconds", self.micros() / 1_000_000)
    }
}

/// An aggregate of the points in a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    First,
    Last,
    P95,
}

impl Agg {
    pub const ALL: [Agg; 8] = [
        Agg::Avg,
        Agg::Min,
        Agg::Max,
        Agg::Sum,
        Agg::Count,
        Agg::First,
        Agg::Last,
        Agg::P95,
    ];

    pub fn parse(s: &str) -> Option<Agg> {
        Self::ALL.iter().copied().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Sum => "sum",
            Agg::Count => "count",
            Agg::First => "first",
            Agg::Last => "last",
            Agg::P95 => "p95",
        }
    }

    /// Column of the bucket rows the queries return.
    fn column(self) -> usize {
        match self {
            Agg::Sum => 2,
            Agg::Count => 3,
            Agg::Min => 4,
            Agg::Max => 5,
            Agg::First => 6,
            Agg::Last => 7,
            Agg::P95 => 8,
            Agg::Avg => usize::MAX, // sum / count
        }
    }
}

/// How absent buckets are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// They stay absent.
    None,
    Null,
    Previous,
    Linear,
}

impl Fill {
    pub fn parse(s: &str) -> Option<Fill> {
        match s {
            "none" => Some(Fill::None),
            "null" => Some(Fill::Null),
            "previous" => Some(Fill::Previous),
            "linear" => Some(Fill::Linear),
            _ => None,
        }
    }
}

/// The table that answers a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum Source {
    #[serde(rename = "raw")]
    Raw,
    #[serde(rename = "rollup_1h")]
    Rollup1h,
    #[serde(rename = "rollup_1d")]
    Rollup1d,
}

impl Source {
    /// The coarsest table that answers `bucket` with `aggs` exactly (p95 needs the points).
    pub fn for_query(bucket: Bucket, aggs: &[Agg]) -> Source {
        match bucket {
            _ if aggs.contains(&Agg::P95) => Source::Raw,
            Bucket::D1 => Source::Rollup1d,
            Bucket::H1 => Source::Rollup1h,
            _ => Source::Raw,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Raw => "raw",
            Source::Rollup1h => "rollup_1h",
            Source::Rollup1d => "rollup_1d",
        }
    }
}

/// A whole-bucket range.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub from: i64,
    pub to: i64,
    pub bucket: Bucket,
}

impl Range {
    /// `from` rounded down and `to` rounded up to the bucket.
    pub fn whole(from: DateTime<Utc>, to: DateTime<Utc>, bucket: Bucket) -> Range {
        let w = bucket.micros();
        let f = from.timestamp_micros().div_euclid(w) * w;
        let t = to.timestamp_micros();
        let t = if t.rem_euclid(w) == 0 {
            t
        } else {
            (t.div_euclid(w) + 1) * w
        };
        Range {
            from: f,
            to: t.max(f),
            bucket,
        }
    }

    pub fn buckets(&self) -> i64 {
        (self.to - self.from) / self.bucket.micros()
    }

    fn start(&self) -> DateTime<Utc> {
        micros(self.from)
    }

    fn end(&self) -> DateTime<Utc> {
        micros(self.to)
    }
}

fn micros(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The smallest bucket of `allowed` whose count over the range, times `groups`, stays
/// within `max_points`.
pub fn bucket_that_fits(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    groups: i64,
    max_points: i64,
    allowed: &[Bucket],
) -> Option<Bucket> {
    allowed
        .iter()
        .copied()
        .find(|b| Range::whole(from, to, *b).buckets().saturating_mul(groups) <= max_points)
}

/// One bucket of a series: its start and the asked aggregates (`null` when filled).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BucketView {
    pub time: DateTime<Utc>,
    /// The asked aggregates by name (`avg`, `p95`, …); `null` in a bucket filled with nulls.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub values: Map<String, Value>,
}

/// Buckets of one series or group.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeriesBuckets {
    pub series: String,
    pub metric: String,
    pub bucket: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub source: Source,
    pub points: Vec<BucketView>,
}

/// A group of series (one series, or the series with one value of the grouping tag).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GroupBuckets {
    /// The series name, or the grouping tag's value (`null`: series without the tag).
    pub group: Option<String>,
    /// How many series the group holds.
    pub series: i64,
    pub points: Vec<BucketView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CrossSeries {
    pub metric: String,
    pub bucket: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub source: Source,
    /// `tag:KEY` when grouped by a tag, else `series`.
    pub group_by: String,
    pub groups: Vec<GroupBuckets>,
}

/// A raw row per bucket: (group, bucket, sum, count, min, max, first, last, p95).
type BucketRow = (
    Option<String>,
    i64,
    f64,
    f64,
    f64,
    f64,
    f64,
    f64,
    Option<f64>,
);

/// Raw points of the series in `$1` (ids; `$2` their group), bucketed by `$5`.
const RAW_SQL: &str = "
SELECT g.grp, time_bucket($5::text::interval, p.time) AS b, sum(p.value), count(*)::float8,
       min(p.value), max(p.value), first(p.value, p.time), last(p.value, p.time), {p95}
FROM metric_points p
JOIN unnest($1::bigint[], $2::text[]) AS g(id, grp) ON p.series_id = g.id
WHERE p.time >= $3 AND p.time < $4
GROUP BY g.grp, b ORDER BY g.grp, b";

const P95_SQL: &str = "percentile_cont(0.95) WITHIN GROUP (ORDER BY p.value)";

/// The same from a rollup (`{table}`); buckets of the rollup's width, merged per group.
const ROLLUP_SQL: &str = "
SELECT g.grp, r.bucket, sum(r.sum), sum(r.count)::float8, min(r.min), max(r.max),
       first(r.first_value, r.first_time), last(r.last_value, r.last_time), NULL::float8
FROM {table} r
JOIN unnest($1::bigint[], $2::text[]) AS g(id, grp) ON r.series_id = g.id
WHERE r.bucket >= $3 AND r.bucket < $4 AND $5::text::interval IS NOT NULL
GROUP BY g.grp, r.bucket ORDER BY g.grp, r.bucket";

fn bucket_sql(source: Source, p95: bool) -> String {
    match source {
        Source::Raw => RAW_SQL.replace("{p95}", if p95 { P95_SQL } else { "NULL::float8" }),
        Source::Rollup1h => ROLLUP_SQL.replace("{table}", "metric_points_1h"),
        Source::Rollup1d => ROLLUP_SQL.replace("{table}", "metric_points_1d"),
    }
}

/// Bucket rows of the series `ids` (grouped by `groups`), in group and time order.
async fn bucket_rows<C: GenericClient + Sync>(
    client: &C,
    ids: &[i64],
    groups: &[Option<String>],
    range: &Range,
    source: Source,
    aggs: &[Agg],
) -> Result<Vec<BucketRow>, QueryError> {
    let sql = bucket_sql(source, aggs.contains(&Agg::P95));
    let stmt = client.prepare_cached(&sql).await?;
    let interval = range.bucket.interval();
    let (from, to) = (range.start(), range.end());
    let params: [&(dyn ToSql + Sync); 5] = [&ids, &groups, &from, &to, &interval];
    let rows = client.query(&stmt, &params).await?;
    rows.iter()
        .map(|r| {
            let b: DateTime<Utc> = r.try_get(1)?;
            Ok((
                r.try_get(0)?,
                b.timestamp_micros(),
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
                r.try_get(7)?,
                r.try_get(8)?,
            ))
        })
        .collect()
}

fn agg_value(row: &BucketRow, agg: Agg) -> Option<f64> {
    match agg.column() {
        2 => Some(row.2),
        3 => Some(row.3),
        4 => Some(row.4),
        5 => Some(row.5),
        6 => Some(row.6),
        7 => Some(row.7),
        8 => row.8,
        _ => (row.3 > 0.0).then(|| row.2 / row.3),
    }
}

fn number(v: Option<f64>) -> Value {
    v.and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The buckets of one group's rows, filled as asked.
fn fill_buckets(rows: &[&BucketRow], range: &Range, aggs: &[Agg], fill: Fill) -> Vec<BucketView> {
    let view = |time: i64, vals: Vec<Option<f64>>| BucketView {
        time: micros(time),
        values: aggs
            .iter()
            .zip(vals)
            .map(|(a, v)| (a.as_str().to_owned(), number(v)))
            .collect(),
    };
    let present: Vec<(i64, Vec<Option<f64>>)> = rows
        .iter()
        .map(|r| (r.1, aggs.iter().map(|a| agg_value(r, *a)).collect()))
        .collect();
    if fill == Fill::None {
        return present.into_iter().map(|(t, v)| view(t, v)).collect();
    }
    let w = range.bucket.micros();
    let mut out = Vec::with_capacity(range.buckets() as usize);
    let mut next = 0; // index into `present` of the first bucket at or after `t`
    let mut t = range.from;
    while t < range.to {
        while next < present.len() && present[next].0 < t {
            next += 1;
        }
        if next < present.len() && present[next].0 == t {
            out.push(view(t, present[next].1.clone()));
        } else {
            let before = next.checked_sub(1).map(|i| &present[i]);
            let after = present.get(next);
            let vals = match (fill, before, after) {
                (Fill::Previous, Some(b), _) => b.1.clone(),
                (Fill::Linear, Some(b), Some(a)) => {
                    b.1.iter()
                        .zip(&a.1)
                        .map(|(x, y)| match (x, y) {
                            (Some(x), Some(y)) => {
                                Some(x + (y - x) * (t - b.0) as f64 / (a.0 - b.0) as f64)
                            }
                            _ => None,
                        })
                        .collect()
                }
                _ => vec![None; aggs.len()],
            };
            out.push(view(t, vals));
        }
        t += w;
    }
    out
}

/// A series' catalog row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeriesView {
    pub series: String,
    pub metric: String,
    #[schema(value_type = Object)]
    pub tags: Value,
    pub first_time: DateTime<Utc>,
    pub last_time: DateTime<Utc>,
    pub last_value: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeriesList {
    pub items: Vec<SeriesView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

pub const SERIES_BY_ID: &str = "SELECT series, metric, tags, first_time, last_time, last_value
 FROM metric_series WHERE tenant_id = $1 AND id = $2";

pub fn series_view(r: &tokio_postgres::Row) -> Result<SeriesView, QueryError> {
    Ok(SeriesView {
        series: r.try_get(0)?,
        metric: r.try_get(1)?,
        tags: r.try_get(2)?,
        first_time: r.try_get(3)?,
        last_time: r.try_get(4)?,
        last_value: r.try_get(5)?,
    })
}

/// A series by id, `None` when the tenant has no such series.
pub async fn series<C: GenericClient + Sync>(
    client: &C,
    tenant: &str,
    id: i64,
) -> Result<Option<SeriesView>, QueryError> {
    let stmt = client.prepare_cached(SERIES_BY_ID).await?;
    client
        .query_opt(&stmt, &[&tenant, &id])
        .await?
        .as_ref()
        .map(series_view)
        .transpose()
}

/// One series, bucketed.
pub async fn one_series<C: GenericClient + Sync>(
    client: &C,
    view: &SeriesView,
    id: i64,
    range: &Range,
    aggs: &[Agg],
    fill: Fill,
) -> Result<SeriesBuckets, QueryError> {
    let source = Source::for_query(range.bucket, aggs);
    let rows = bucket_rows(client, &[id], &[None], range, source, aggs).await?;
    let refs: Vec<&BucketRow> = rows.iter().collect();
    Ok(SeriesBuckets {
        series: view.series.clone(),
        metric: view.metric.clone(),
        bucket: range.bucket.as_str().to_owned(),
        from: range.start(),
        to: range.end(),
        source,
        points: fill_buckets(&refs, range, aggs, fill),
    })
}

/// Which series a cross-series query takes and how it groups them.
pub struct CrossQuery<'a> {
    pub metric: &'a str,
    /// `{"k": "v", …}`: series whose tags hold all of these.
    pub tags: &'a Value,
    /// Group by this tag's value; `None`: each series is its own group.
    pub group_by: Option<&'a str>,
    pub range: Range,
    pub aggs: &'a [Agg],
    pub fill: Fill,
    /// Only the top N groups by the first aggregate over the whole range.
    pub top: Option<i64>,
}

const MATCHING_SERIES_SQL: &str = "SELECT id, series, tags ->> $3
 FROM metric_series WHERE tenant_id = $1 AND metric = $2 AND tags @> $4::jsonb
 ORDER BY series";

/// The series a cross-series query takes: (id, group).
pub async fn matching_series<C: GenericClient + Sync>(
    client: &C,
    tenant: &str,
    q: &CrossQuery<'_>,
) -> Result<Vec<(i64, Option<String>)>, QueryError> {
    let stmt = client.prepare_cached(MATCHING_SERIES_SQL).await?;
    let key = q.group_by.unwrap_or("");
    let rows = client
        .query(&stmt, &[&tenant, &q.metric, &key, q.tags])
        .await?;
    rows.iter()
        .map(|r| {
            let series: String = r.try_get(1)?;
            let group = match q.group_by {
                Some(_) => r.try_get(2)?,
                None => Some(series),
            };
            Ok((r.try_get(0)?, group))
        })
        .collect()
}

/// Groups of `series` (from [`matching_series`]), bucketed.
pub async fn cross_series<C: GenericClient + Sync>(
    client: &C,
    q: &CrossQuery<'_>,
    series: &[(i64, Option<String>)],
) -> Result<CrossSeries, QueryError> {
    let source = Source::for_query(q.range.bucket, q.aggs);
    let ids: Vec<i64> = series.iter().map(|s| s.0).collect();
    let groups: Vec<Option<String>> = series.iter().map(|s| s.1.clone()).collect();
    let rows = bucket_rows(client, &ids, &groups, &q.range, source, q.aggs).await?;
    let mut by_group: Vec<(Option<String>, Vec<&BucketRow>)> = Vec::new();
    for r in &rows {
        match by_group.last_mut() {
            Some((g, list)) if *g == r.0 => list.push(r),
            _ => by_group.push((r.0.clone(), vec![r])),
        }
    }
    if let Some(n) = q.top {
        let rank = q.aggs.first().copied().unwrap_or(Agg::Avg);
        let mut scored: Vec<(f64, usize)> = by_group
            .iter()
            .enumerate()
            .filter_map(|(i, (_, list))| total(list, rank).map(|v| (v, i)))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let place: std::collections::HashMap<usize, usize> = scored
            .iter()
            .take(usize::try_from(n).unwrap_or(usize::MAX))
            .enumerate()
            .map(|(place, s)| (s.1, place))
            .collect();
        let mut kept: Vec<_> = by_group
            .into_iter()
            .enumerate()
            .filter_map(|(i, g)| place.get(&i).map(|p| (*p, g)))
            .collect();
        kept.sort_by_key(|(p, _)| *p);
        by_group = kept.into_iter().map(|(_, g)| g).collect();
    }
    let mut sizes: std::collections::HashMap<&Option<String>, i64> = Default::default();
    for s in series {
        *sizes.entry(&s.1).or_default() += 1;
    }
    let count = |g: &Option<String>| sizes.get(g).copied().unwrap_or(0);
    Ok(CrossSeries {
        metric: q.metric.to_owned(),
        bucket: q.range.bucket.as_str().to_owned(),
        from: q.range.start(),
        to: q.range.end(),
        source,
        group_by: q
            .group_by
            .map_or_else(|| "series".to_owned(), |k| format!("tag:{k}")),
        groups: by_group
            .iter()
            .map(|(g, list)| GroupBuckets {
                group: g.clone(),
                series: count(g),
                points: fill_buckets(list, &q.range, q.aggs, q.fill),
            })
            .collect(),
    })
}

/// An aggregate over all of a group's buckets (for ranking).
fn total(rows: &[&BucketRow], agg: Agg) -> Option<f64> {
    let sum: f64 = rows.iter().map(|r| r.2).sum();
    let count: f64 = rows.iter().map(|r| r.3).sum();
    match agg {
        Agg::Sum => Some(sum),
        Agg::Count => Some(count),
        Agg::Avg => (count > 0.0).then(|| sum / count),
        Agg::Min => rows.iter().map(|r| r.4).reduce(f64::min),
        Agg::Max => rows.iter().map(|r| r.5).reduce(f64::max),
        Agg::First => rows.first().map(|r| r.6),
        Agg::Last => rows.last().map(|r| r.7),
        // Not additive over buckets: the largest bucket p95.
        Agg::P95 => rows.iter().filter_map(|r| r.8).reduce(f64::max),
    }
}

const LIST_BY_METRIC_SQL: &str = "SELECT series, metric, tags, first_time, last_time, last_value
 FROM metric_series
 WHERE tenant_id = $1 AND metric = $2 AND tags @> $3::jsonb AND series > $4
 ORDER BY series LIMIT $5";

const LIST_ALL_SQL: &str = "SELECT series, metric, tags, first_time, last_time, last_value
 FROM metric_series
 WHERE tenant_id = $1 AND tags @> $2::jsonb AND (metric, series) > ($3, $4)
 ORDER BY metric, series LIMIT $5";

/// The catalog, keyset-paginated by (metric, series); `after` is the last (metric,
/// series) of the previous page.
pub async fn list_series<C: GenericClient + Sync>(
    client: &C,
    tenant: &str,
    metric: Option<&str>,
    tags: &Value,
    after: Option<(String, String)>,
    limit: i64,
) -> Result<Vec<SeriesView>, QueryError> {
    let (after_metric, after_series) = after.unwrap_or_default();
    let rows = match metric {
        Some(m) => {
            let stmt = client.prepare_cached(LIST_BY_METRIC_SQL).await?;
            client
                .query(&stmt, &[&tenant, &m, tags, &after_series, &limit])
                .await?
        }
        None => {
            let stmt = client.prepare_cached(LIST_ALL_SQL).await?;
            client
                .query(
                    &stmt,
                    &[&tenant, tags, &after_metric, &after_series, &limit],
                )
                .await?
        }
    };
    rows.iter().map(series_view).collect()
}

// --- bars -------------------------------------------------------------------------------

/// One OHLCV bar of an interval.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BarView {
    pub time: DateTime<Utc>,
    #[schema(value_type = String)]
    pub open: rust_decimal::Decimal,
    #[schema(value_type = String)]
    pub high: rust_decimal::Decimal,
    #[schema(value_type = String)]
    pub low: rust_decimal::Decimal,
    #[schema(value_type = String)]
    pub close: rust_decimal::Decimal,
    #[schema(value_type = String)]
    pub volume: rust_decimal::Decimal,
    /// How many 1-minute bars it rolls up.
    pub bars: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BarSeries {
    pub symbol: String,
    pub interval: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bars: Vec<BarView>,
}

const BARS_SQL: &str = "
SELECT time_bucket($5::text::interval, time) AS b, first(open, time), max(high), min(low),
       last(close, time), sum(volume), count(*)
FROM bars_1m WHERE tenant_id = $1 AND symbol = $2 AND time >= $3 AND time < $4
GROUP BY b ORDER BY b";

pub async fn bars<C: GenericClient + Sync>(
    client: &C,
    tenant: &str,
    symbol: &str,
    range: &Range,
) -> Result<BarSeries, QueryError> {
    let stmt = client.prepare_cached(BARS_SQL).await?;
    let interval = range.bucket.interval();
    let rows = client
        .query(
            &stmt,
            &[&tenant, &symbol, &range.start(), &range.end(), &interval],
        )
        .await?;
    let bars = rows
        .iter()
        .map(|r| {
            Ok(BarView {
                time: r.try_get(0)?,
                open: r.try_get(1)?,
                high: r.try_get(2)?,
                low: r.try_get(3)?,
                close: r.try_get(4)?,
                volume: r.try_get(5)?,
                bars: r.try_get(6)?,
            })
        })
        .collect::<Result<Vec<_>, QueryError>>()?;
    Ok(BarSeries {
        symbol: symbol.to_owned(),
        interval: range.bucket.as_str().to_owned(),
        from: range.start(),
        to: range.end(),
        bars,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_are_whole_buckets() {
        let r = Range::whole(
            t("2024-01-01T10:30:00Z"),
            t("2024-01-01T12:10:00Z"),
            Bucket::H1,
        );
        assert_eq!(r.start(), t("2024-01-01T10:00:00Z"));
        assert_eq!(r.end(), t("2024-01-01T13:00:00Z"));
        assert_eq!(r.buckets(), 3);
        let r = Range::whole(
            t("2024-01-01T00:00:00Z"),
            t("2024-01-02T00:00:00Z"),
            Bucket::D1,
        );
        assert_eq!(r.buckets(), 1);
    }

    #[test]
    fn the_coarsest_exact_table_answers() {
        assert_eq!(Source::for_query(Bucket::D1, &[Agg::Avg]), Source::Rollup1d);
        assert_eq!(
            Source::for_query(Bucket::H1, &[Agg::Last]),
            Source::Rollup1h
        );
        assert_eq!(Source::for_query(Bucket::H1, &[Agg::P95]), Source::Raw);
        assert_eq!(Source::for_query(Bucket::M5, &[Agg::Avg]), Source::Raw);
    }

    #[test]
    fn a_fitting_bucket_is_the_smallest_that_fits() {
        let (from, to) = (t("2024-01-01T00:00:00Z"), t("2024-01-08T00:00:00Z"));
        assert_eq!(
            bucket_that_fits(from, to, 1, 10_000, &Bucket::FOR_POINTS),
            Some(Bucket::M5)
        );
        assert_eq!(
            bucket_that_fits(from, to, 50, 10_000, &Bucket::FOR_POINTS),
            Some(Bucket::H1)
        );
        assert_eq!(
            bucket_that_fits(from, to, 10_000, 10_000, &Bucket::FOR_POINTS),
            None
        );
    }

    fn row(b: i64, v: f64) -> BucketRow {
        (None, b, v, 1.0, v, v, v, v, None)
    }

    #[test]
    fn gaps_fill_with_null_previous_or_a_line() {
        let w = Bucket::M1.micros();
        let range = Range {
            from: 0,
            to: 4 * w,
            bucket: Bucket::M1,
        };
        let rows = [row(0, 1.0), row(3 * w, 4.0)];
        let refs: Vec<&BucketRow> = rows.iter().collect();
        let vals = |fill| -> Vec<Value> {
            fill_buckets(&refs, &range, &[Agg::Avg], fill)
                .iter()
                .map(|b| b.values["avg"].clone())
                .collect()
        };
        assert_eq!(vals(Fill::None).len(), 2);
        let n = |v: f64| Value::from(v);
        assert_eq!(
            vals(Fill::Null),
            vec![n(1.0), Value::Null, Value::Null, n(4.0)]
        );
        assert_eq!(vals(Fill::Previous), vec![n(1.0), n(1.0), n(1.0), n(4.0)]);
        assert_eq!(vals(Fill::Linear), vec![n(1.0), n(2.0), n(3.0), n(4.0)]);
    }
}
