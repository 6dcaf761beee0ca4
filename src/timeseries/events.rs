//! Events of the time-series context. `event_type` and `event_version` are stable: they
//! are stored with every event forever.
//!
//! A batch request becomes one stream (`metric_batch` or `bar_batch`): blocks of up to
//! [`super::ingest::POINTS_PER_EVENT`] points each, then a completion event. A block
//! carries its points compactly: the distinct names once, then the points as binary runs
//! (one run per series, times as varint deltas, values as 8 bytes), base64 in the JSON
//! payload. PostgreSQL then parses one string per event, not a JSON object per point.
//! Retention is in the log too: a `metric_batch` stream of one `RawPointsExpired`.

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Tags of a series: text keys and values.
pub type Tags = BTreeMap<String, String>;

/// A block of points. Points are ordered by (key, time) and distinct in (key, time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointsBlock {
    /// Distinct `[series, metric]` pairs; runs refer to them by index.
    pub keys: Vec<(String, String)>,
    /// Tags given with a key's points in this block (the last given), by key index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(u32, Tags)>,
    pub count: u32,
    /// Microseconds since the Unix epoch that the first time of each run is relative to.
    pub base: i64,
    /// base64 of the runs: per key `varint(key) varint(n)`, n zigzag-varint time deltas
    /// (the first from `base`), n little-endian f64 values.
    pub runs: String,
}

/// A block of 1-minute bars, ordered by (symbol, time) and distinct in (symbol, time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BarsBlock {
    pub symbols: Vec<String>,
    pub count: u32,
    pub base: i64,
    /// base64 of the runs: per symbol `varint(symbol) varint(n)`, n time deltas as for
    /// points, then per bar open, high, low, close, volume, each exact as
    /// `zigzag-varint(mantissa) u8(scale)`.
    pub runs: String,
}

/// Raw points of a metric before `before` (a chunk boundary) are dropped, and raw points
/// written later for that range are not kept (their rollups are).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cutoff {
    pub metric: String,
    pub before: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum MetricBatchEvent {
    PointsWritten(PointsBlock),
    MetricBatchCompleted {
        points: i64,
        series: i64,
    },
    /// Retention of a tenant's raw points (ADR 0021): what `trigger` (`schedule`,
    /// `admin`) found past its retention.
    RawPointsExpired {
        trigger: String,
        cutoffs: Vec<Cutoff>,
    },
}

impl DomainEvent for MetricBatchEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PointsWritten(_) => "PointsWritten",
            Self::MetricBatchCompleted { .. } => "MetricBatchCompleted",
            Self::RawPointsExpired { .. } => "RawPointsExpired",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum BarBatchEvent {
    BarsWritten(BarsBlock),
    BarBatchCompleted { bars: i64, symbols: i64 },
}

impl DomainEvent for BarBatchEvent {
    fn event_type(&self) -> String {
        match self {
            Self::BarsWritten(_) => "BarsWritten",
            Self::BarBatchCompleted { .. } => "BarBatchCompleted",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// The raw-point retention of one metric of a tenant; `None`: the server's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum RetentionEvent {
    RetentionSet {
        metric: String,
        raw_days: Option<i32>,
    },
}

impl DomainEvent for RetentionEvent {
    fn event_type(&self) -> String {
        "RetentionSet".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

// --- the binary runs --------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
#[error("a block's runs are damaged: {0}")]
pub struct BlockError(&'static str);

/// One point of a block: key index, microseconds since the epoch, value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub key: u32,
    pub time: i64,
    pub value: f64,
}

/// One bar of a block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub symbol: u32,
    pub time: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
}

fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

fn unzigzag(v: u128) -> i128 {
    ((v >> 1) as i128) ^ -((v & 1) as i128)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u128, BlockError> {
        let mut v = 0_u128;
        for shift in (0..128).step_by(7) {
            let b = *self.bytes.get(self.at).ok_or(BlockError("truncated"))?;
            self.at += 1;
            v |= u128::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(BlockError("varint too long"))
    }

    fn small(&mut self) -> Result<u32, BlockError> {
        u32::try_from(self.varint()?).map_err(|_| BlockError("index out of range"))
    }

    fn delta(&mut self) -> Result<i64, BlockError> {
        i64::try_from(unzigzag(self.varint()?)).map_err(|_| BlockError("time out of range"))
    }

    fn f64(&mut self) -> Result<f64, BlockError> {
        let b = self
            .bytes
            .get(self.at..self.at + 8)
            .ok_or(BlockError("truncated"))?;
        self.at += 8;
        let mut a = [0_u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    fn decimal(&mut self) -> Result<Decimal, BlockError> {
        let mantissa = unzigzag(self.varint()?);
        let scale = *self.bytes.get(self.at).ok_or(BlockError("truncated"))?;
        self.at += 1;
        Decimal::try_from_i128_with_scale(mantissa, u32::from(scale))
            .map_err(|_| BlockError("decimal out of range"))
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD_NO_PAD
}

/// Runs of items sorted by (key, time): for each key its index, its count and time deltas.
fn encode_runs<T>(
    items: &[T],
    key: impl Fn(&T) -> u32,
    time: impl Fn(&T) -> i64,
    mut values: impl FnMut(&mut Vec<u8>, &T),
) -> (i64, String) {
    let base = items.iter().map(&time).min().unwrap_or(0);
    let mut out = Vec::with_capacity(items.len() * 12);
    let mut start = 0;
    while start < items.len() {
        let k = key(&items[start]);
        let end = start + items[start..].iter().take_while(|i| key(i) == k).count();
        put_varint(&mut out, u128::from(k));
        put_varint(&mut out, (end - start) as u128);
        let mut prev = base;
        for i in &items[start..end] {
            put_varint(&mut out, zigzag(i128::from(time(i)) - i128::from(prev)));
            prev = time(i);
        }
        for i in &items[start..end] {
            values(&mut out, i);
        }
        start = end;
    }
    (base, b64().encode(out))
}

fn decode_runs<T>(
    base: i64,
    runs: &str,
    count: u32,
    keys: usize,
    mut item: impl FnMut(&mut Reader<'_>, u32, i64) -> Result<T, BlockError>,
) -> Result<Vec<T>, BlockError> {
    let bytes = b64().decode(runs).map_err(|_| BlockError("not base64"))?;
    let mut r = Reader {
        bytes: &bytes,
        at: 0,
    };
    let mut out = Vec::with_capacity(count as usize);
    let mut times = Vec::new();
    while r.at < bytes.len() {
        let k = r.small()?;
        if k as usize >= keys {
            return Err(BlockError("key index out of range"));
        }
        let n = r.small()? as usize;
        if out.len() + n > count as usize {
            return Err(BlockError("more items than counted"));
        }
        times.clear();
        let mut t = base;
        for _ in 0..n {
            t = t
                .checked_add(r.delta()?)
                .ok_or(BlockError("time out of range"))?;
            times.push(t);
        }
        for &t in &times {
            out.push(item(&mut r, k, t)?);
        }
    }
    if out.len() != count as usize {
        return Err(BlockError("fewer items than counted"));
    }
    Ok(out)
}

impl PointsBlock {
    /// A block of `points` (sorted by key and time, distinct).
    pub fn new(keys: Vec<(String, String)>, tags: Vec<(u32, Tags)>, points: &[Point]) -> Self {
        let (base, runs) = encode_runs(
            points,
            |p| p.key,
            |p| p.time,
            |out, p| out.extend_from_slice(&p.value.to_le_bytes()),
        );
        Self {
            keys,
            tags,
            count: u32::try_from(points.len()).unwrap_or(u32::MAX),
            base,
            runs,
        }
    }

    pub fn points(&self) -> Result<Vec<Point>, BlockError> {
        decode_runs(
            self.base,
            &self.runs,
            self.count,
            self.keys.len(),
            |r, key, time| {
                Ok(Point {
                    key,
                    time,
                    value: r.f64()?,
                })
            },
        )
    }
}

fn put_decimal(out: &mut Vec<u8>, d: &Decimal) {
    put_varint(out, zigzag(d.mantissa()));
    out.push(d.scale() as u8);
}

impl BarsBlock {
    pub fn new(symbols: Vec<String>, bars: &[Bar]) -> Self {
        let (base, runs) = encode_runs(
            bars,
            |b| b.symbol,
            |b| b.time,
            |out, b| {
                for d in [&b.open, &b.high, &b.low, &b.close, &b.volume] {
                    put_decimal(out, d);
                }
            },
        );
        Self {
            symbols,
            count: u32::try_from(bars.len()).unwrap_or(u32::MAX),
            base,
            runs,
        }
    }

    pub fn bars(&self) -> Result<Vec<Bar>, BlockError> {
        decode_runs(
            self.base,
            &self.runs,
            self.count,
            self.symbols.len(),
            |r, symbol, time| {
                Ok(Bar {
                    symbol,
                    time,
                    open: r.decimal()?,
                    high: r.decimal()?,
                    low: r.decimal()?,
                    close: r.decimal()?,
                    volume: r.decimal()?,
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_survive_the_binary_runs() {
        let points = vec![
            Point {
                key: 0,
                time: -5,
                value: 1.5,
            },
            Point {
                key: 0,
                time: 60_000_000,
                value: -0.0,
            },
            Point {
                key: 0,
                time: 120_000_000,
                value: f64::MAX,
            },
            Point {
                key: 1,
                time: -1_000_000_000_000_000,
                value: 3.0,
            },
            Point {
                key: 1,
                time: i64::MAX / 2,
                value: f64::MIN_POSITIVE,
            },
        ];
        let block = PointsBlock::new(
            vec![("a".into(), "cpu".into()), ("b".into(), "cpu".into())],
            vec![],
            &points,
        );
        let json = serde_json::to_string(&block).unwrap();
        let back: PointsBlock = serde_json::from_str(&json).unwrap();
        assert_eq!(back.points().unwrap(), points);
    }

    #[test]
    fn bars_keep_exact_decimals() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let bars = vec![Bar {
            symbol: 0,
            time: 1_700_000_040_000_000,
            open: d("10.01"),
            high: d("10.0500"),
            low: d("-9.99"),
            close: d("79228162514264337593543950335"),
            volume: d("0.000000000000000000000000001"),
        }];
        let block = BarsBlock::new(vec!["AAPL".into()], &bars);
        let back = block.bars().unwrap();
        assert_eq!(back, bars);
        assert_eq!(back[0].high.to_string(), "10.0500");
    }

    #[test]
    fn damaged_runs_are_an_error_not_a_panic() {
        let block = PointsBlock::new(
            vec![("a".into(), "cpu".into())],
            vec![],
            &[Point {
                key: 0,
                time: 1,
                value: 1.0,
            }],
        );
        let mut bad = block.clone();
        bad.count = 2;
        assert!(bad.points().is_err());
        let mut bad = block.clone();
        bad.keys.clear();
        assert!(bad.points().is_err());
        let mut bad = block;
        bad.runs.truncate(3);
        assert!(bad.points().is_err());
    }
}
