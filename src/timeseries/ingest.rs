//! Batched ingest of points and bars: a body in JSON (`{"points": […]}` /
//! `{"bars": […]}`), NDJSON or CSV, read as it streams, checked item by item and staged
//! as blocks of up to [`POINTS_PER_EVENT`] items (shared `imports` infrastructure). When
//! the whole body was read the completion event is written and everything moves into the
//! batch's own stream in one statement; the first bad item rejects the whole request
//! (422 `invalid_row` naming the item: its line for NDJSON and CSV, its place in the
//! array for JSON) and nothing reaches the log.
//!
//! Within a block, items are sorted by (series, time) and a later item with the same
//! (series, metric, time) replaces an earlier one (last write wins; the projector applies
//! the same rule across blocks and batches).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use uuid::Uuid;

use super::aggregate::{check_name, BarBatch, MetricBatch, TimeseriesError};
use super::events::{Bar, BarBatchEvent, BarsBlock, MetricBatchEvent, Point, PointsBlock, Tags};
use crate::eventstore::{codec, Appended, EventStore, NewEvent};
use crate::imports::{bad_row, CsvRows, ImportError, Staging, StreamedKey};
use crate::pipeline::EventSourced;
use crate::tagging::rules::parse_date;

/// Items per `PointsWritten` / `BarsWritten` event.
pub const POINTS_PER_EVENT: usize = 10_000;
/// At most this many items per request.
pub const MAX_ITEMS: i64 = 1_000_000;
/// Seed 000's monitoring fields that become tags of their point.
const TAG_FIELDS: [&str; 3] = ["resource_type", "account", "region"];

/// How the body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Csv,
}

/// What a batch appended.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub batch_id: Uuid,
    pub items: i64,
    pub series: i64,
    pub appended: Appended,
}

/// One kind of item a batch carries (points or bars).
trait Item: Sized + Send + 'static {
    /// The JSON body's array member.
    const MEMBER: &'static str;
    /// A JSON object (one array element or NDJSON line); `row` counts from 1.
    fn from_json(row: i64, text: &str, now: DateTime<Utc>) -> Result<Self, ImportError>;
    /// A CSV record under `header`.
    fn from_csv(
        row: i64,
        header: &CsvHeader,
        record: &csv_async::StringRecord,
        now: DateTime<Utc>,
    ) -> Result<Self, ImportError>;
    fn required_columns() -> &'static [&'static str];
    /// Columns that are neither required nor known: allowed (points: tags) or not.
    const OTHER_COLUMNS_ARE_TAGS: bool;
    /// The stream type of a batch of these.
    const STREAM_TYPE: &'static str;
    /// A chunk as one block event; adds its distinct series to `seen`.
    fn block(chunk: Vec<Self>, seen: &mut HashSet<(String, String)>) -> impl BlockEvent;
    /// The event that ends a batch.
    fn completed(items: i64, series: i64) -> Result<NewEvent, codec::CodecError>;
}

/// A block event, as staging takes it.
trait BlockEvent: serde::Serialize + cqrs_es::DomainEvent + Send + Sync {}
impl<E: serde::Serialize + cqrs_es::DomainEvent + Send + Sync> BlockEvent for E {}

/// A point as read, before it joins a block.
#[derive(Debug, Clone)]
pub struct PointIn {
    pub series: String,
    pub metric: String,
    pub time: i64,
    pub value: f64,
    pub tags: Option<Tags>,
}

/// A bar as read.
#[derive(Debug, Clone)]
pub struct BarIn {
    pub symbol: String,
    pub time: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
}

/// The resolved header of a CSV body: each column's place.
pub struct CsvHeader {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl CsvHeader {
    fn new<I: Item>(names: &[String]) -> Result<Self, ImportError> {
        let mut index = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            let canonical = canonical(n);
            if index.insert(canonical.to_owned(), i).is_some() {
                return Err(bad_row(0, n, "names a column given twice (an alias?)"));
            }
        }
        for r in I::required_columns() {
            if !index.contains_key(*r) {
                return Err(bad_row(0, r, "is a required column and is missing"));
            }
        }
        if !I::OTHER_COLUMNS_ARE_TAGS {
            if let Some(n) = names
                .iter()
                .find(|n| !I::required_columns().contains(&canonical(n)))
            {
                return Err(bad_row(0, n, "is not a column of this format"));
            }
        }
        Ok(Self {
            names: names.to_vec(),
            index,
        })
    }

    fn cell<'r>(&self, record: &'r csv_async::StringRecord, name: &str) -> &'r str {
        self.index
            .get(name)
            .and_then(|i| record.get(*i))
            .map(str::trim)
            .unwrap_or("")
    }
}

/// Seed 000's monitoring column names are aliases of the point fields.
fn canonical(name: &str) -> &str {
    match name {
        "resource_id" => "series",
        "metric_name" => "metric",
        "metric_value" => "value",
        "timestamp" => "time",
        other => other,
    }
}

/// Microseconds since the epoch of an RFC 3339 / ISO 8601 time, or of a number of
/// seconds since the epoch (fractions allowed).
fn parse_time(row: i64, column: &str, t: &Value, now: DateTime<Utc>) -> Result<i64, ImportError> {
    // Years 1 to 9999, as for RFC 3339 times (PostgreSQL takes them all).
    let epoch = |s: f64| {
        (-62_135_596_800.0..253_402_300_800.0)
            .contains(&s)
            .then(|| (s * 1e6).round() as i64)
    };
    let parsed = match t {
        Value::String(s) => parse_date(s.trim()).map(|t| t.timestamp_micros()),
        Value::Number(n) => n.as_f64().and_then(epoch),
        _ => None,
    };
    let micros = parsed.ok_or_else(|| {
        bad_row(
            row,
            column,
            format!("{t} is not a time (RFC 3339, or a JSON number of seconds since the epoch)"),
        )
    })?;
    if micros > (now + Duration::days(1)).timestamp_micros() {
        return Err(bad_row(row, column, "is more than a day in the future"));
    }
    Ok(micros)
}

fn parse_value(row: i64, column: &str, v: &Value) -> Result<f64, ImportError> {
    let x = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match x {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(bad_row(row, column, format!("{v} is not a finite number"))),
    }
}

fn name(row: i64, column: &str, v: Option<&Value>) -> Result<String, ImportError> {
    let s = match v {
        Some(Value::String(s)) => s.trim().to_owned(),
        None | Some(Value::Null) => String::new(),
        Some(other) => return Err(bad_row(row, column, format!("{other} is not text"))),
    };
    check_name(column, &s).map_err(|e| match e {
        TimeseriesError::Invalid { message, .. } => bad_row(row, column, message),
    })?;
    Ok(s)
}

/// Tags: an object of scalars, values as text (a null value is ignored).
fn tags_of(row: i64, column: &str, v: &Value, into: &mut Tags) -> Result<(), ImportError> {
    let Value::Object(map) = v else {
        return Err(bad_row(row, column, "is not a JSON object"));
    };
    for (k, v) in map {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            _ => return Err(bad_row(row, column, format!("tag {k:?} is not text"))),
        };
        add_tag(row, column, k, text, into)?;
    }
    Ok(())
}

fn add_tag(row: i64, column: &str, k: &str, v: String, into: &mut Tags) -> Result<(), ImportError> {
    if k.is_empty() || k.chars().count() > 200 || v.chars().count() > 1000 {
        return Err(bad_row(
            row,
            column,
            format!("tag {k:?}: keys are 1-200 characters, values at most 1,000"),
        ));
    }
    if k.contains('\0') || v.contains('\0') {
        return Err(bad_row(row, column, "tags must not contain NUL characters"));
    }
    into.insert(k.to_owned(), v);
    Ok(())
}

fn object(row: i64, text: &str) -> Result<serde_json::Map<String, Value>, ImportError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_row(row, "", "is not a JSON object")),
        Err(e) => Err(bad_row(row, "", format!("is not valid JSON: {e}"))),
    }
}

fn field<'m>(m: &'m serde_json::Map<String, Value>, name: &str, alias: &str) -> Option<&'m Value> {
    m.get(name).or_else(|| m.get(alias))
}

impl Item for PointIn {
    const MEMBER: &'static str = "points";
    const OTHER_COLUMNS_ARE_TAGS: bool = true;
    const STREAM_TYPE: &'static str = MetricBatch::STREAM_TYPE;

    fn block(chunk: Vec<Self>, seen: &mut HashSet<(String, String)>) -> impl BlockEvent {
        let mut keys = Names::default();
        let mut tags: HashMap<u32, Tags> = HashMap::new();
        let mut points = Vec::with_capacity(chunk.len());
        for p in chunk {
            let key = keys.of((p.series, p.metric), seen);
            if let Some(t) = p.tags {
                tags.entry(key).or_default().extend(t);
            }
            points.push(Point {
                key,
                time: p.time,
                value: p.value,
            });
        }
        let points = last_wins(points, |p| (p.key, p.time));
        let mut tags: Vec<(u32, Tags)> = tags.into_iter().collect();
        tags.sort_by_key(|(k, _)| *k);
        MetricBatchEvent::PointsWritten(PointsBlock::new(keys.list, tags, &points))
    }

    fn completed(points: i64, series: i64) -> Result<NewEvent, codec::CodecError> {
        codec::encode(&MetricBatchEvent::MetricBatchCompleted { points, series })
    }

    fn required_columns() -> &'static [&'static str] {
        &["series", "metric", "time", "value"]
    }

    fn from_json(row: i64, text: &str, now: DateTime<Utc>) -> Result<Self, ImportError> {
        let m = object(row, text)?;
        for k in m.keys() {
            if !matches!(
                k.as_str(),
                "series"
                    | "metric"
                    | "time"
                    | "value"
                    | "tags"
                    | "resource_id"
                    | "metric_name"
                    | "timestamp"
                    | "metric_value"
                    | "resource_type"
                    | "account"
                    | "region"
            ) {
                return Err(bad_row(row, k, "is not a field of a point"));
            }
        }
        let series = name(row, "series", field(&m, "series", "resource_id"))?;
        let metric = name(row, "metric", field(&m, "metric", "metric_name"))?;
        let time =
            field(&m, "time", "timestamp").ok_or_else(|| bad_row(row, "time", "is missing"))?;
        let time = parse_time(row, "time", time, now)?;
        let value = field(&m, "value", "metric_value")
            .ok_or_else(|| bad_row(row, "value", "is missing"))?;
        let value = parse_value(row, "value", value)?;
        let mut tags = None;
        if let Some(t) = m.get("tags").filter(|t| !t.is_null()) {
            tags_of(row, "tags", t, tags.get_or_insert_with(Tags::new))?;
        }
        for f in TAG_FIELDS {
            match m.get(f) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    add_tag(row, f, f, s.clone(), tags.get_or_insert_with(Tags::new))?
                }
                Some(other) => return Err(bad_row(row, f, format!("{other} is not text"))),
            }
        }
        Ok(Self {
            series,
            metric,
            time,
            value,
            tags,
        })
    }

    fn from_csv(
        row: i64,
        header: &CsvHeader,
        record: &csv_async::StringRecord,
        now: DateTime<Utc>,
    ) -> Result<Self, ImportError> {
        let text = |c: &str| Value::String(header.cell(record, c).to_owned());
        let series = name(row, "series", Some(&text("series")))?;
        let metric = name(row, "metric", Some(&text("metric")))?;
        let time = parse_time(row, "time", &text("time"), now)?;
        let value = parse_value(row, "value", &text("value"))?;
        let mut tags = None;
        for (i, column) in header.names.iter().enumerate() {
            let c = canonical(column);
            let cell = record.get(i).map(str::trim).unwrap_or("");
            if cell.is_empty() || PointIn::required_columns().contains(&c) {
                continue;
            }
            let into = tags.get_or_insert_with(Tags::new);
            if c == "tags" {
                let v = serde_json::from_str::<Value>(cell)
                    .map_err(|_| bad_row(row, "tags", "is not a JSON object"))?;
                tags_of(row, "tags", &v, into)?;
            } else {
                add_tag(row, column, column, cell.to_owned(), into)?;
            }
        }
        Ok(Self {
            series,
            metric,
            time,
            value,
            tags,
        })
    }
}

fn decimal(row: i64, column: &str, v: Option<&Value>) -> Result<Decimal, ImportError> {
    let d = match v {
        Some(Value::Number(n)) => n
            .as_str()
            .parse::<Decimal>()
            .ok()
            .or_else(|| Decimal::from_scientific(n.as_str()).ok()),
        Some(Value::String(s)) => s.trim().parse::<Decimal>().ok(),
        None | Some(Value::Null) => return Err(bad_row(row, column, "is missing")),
        _ => None,
    };
    d.ok_or_else(|| bad_row(row, column, "is not a decimal number"))
}

impl BarIn {
    fn from_map(
        row: i64,
        m: &serde_json::Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<Self, ImportError> {
        let symbol = name(row, "symbol", m.get("symbol"))?;
        let time = m
            .get("time")
            .ok_or_else(|| bad_row(row, "time", "is missing"))?;
        let time = parse_time(row, "time", time, now)?;
        if time.rem_euclid(60_000_000) != 0 {
            return Err(bad_row(
                row,
                "time",
                "a 1-minute bar starts on a whole minute",
            ));
        }
        let bar = Self {
            symbol,
            time,
            open: decimal(row, "open", m.get("open"))?,
            high: decimal(row, "high", m.get("high"))?,
            low: decimal(row, "low", m.get("low"))?,
            close: decimal(row, "close", m.get("close"))?,
            volume: decimal(row, "volume", m.get("volume"))?,
        };
        if bar.low > bar.high {
            return Err(bad_row(row, "low", "is above high"));
        }
        for (c, v) in [("open", bar.open), ("close", bar.close)] {
            if v < bar.low || v > bar.high {
                return Err(bad_row(row, c, "is outside low..high"));
            }
        }
        if bar.volume.is_sign_negative() && !bar.volume.is_zero() {
            return Err(bad_row(row, "volume", "is negative"));
        }
        Ok(bar)
    }
}

impl Item for BarIn {
    const MEMBER: &'static str = "bars";
    const OTHER_COLUMNS_ARE_TAGS: bool = false;
    const STREAM_TYPE: &'static str = BarBatch::STREAM_TYPE;

    fn block(chunk: Vec<Self>, seen: &mut HashSet<(String, String)>) -> impl BlockEvent {
        let mut symbols = Names::default();
        let mut bars = Vec::with_capacity(chunk.len());
        for b in chunk {
            bars.push(Bar {
                symbol: symbols.of((b.symbol, String::new()), seen),
                time: b.time,
                open: b.open,
                high: b.high,
                low: b.low,
                close: b.close,
                volume: b.volume,
            });
        }
        let bars = last_wins(bars, |b| (b.symbol, b.time));
        let names = symbols.list.into_iter().map(|(s, _)| s).collect();
        BarBatchEvent::BarsWritten(BarsBlock::new(names, &bars))
    }

    fn completed(bars: i64, symbols: i64) -> Result<NewEvent, codec::CodecError> {
        codec::encode(&BarBatchEvent::BarBatchCompleted { bars, symbols })
    }

    fn required_columns() -> &'static [&'static str] {
        &["symbol", "time", "open", "high", "low", "close", "volume"]
    }

    fn from_json(row: i64, text: &str, now: DateTime<Utc>) -> Result<Self, ImportError> {
        let m = object(row, text)?;
        if let Some(k) = m
            .keys()
            .find(|k| !Self::required_columns().contains(&k.as_str()))
        {
            return Err(bad_row(row, k, "is not a field of a bar"));
        }
        Self::from_map(row, &m, now)
    }

    fn from_csv(
        row: i64,
        header: &CsvHeader,
        record: &csv_async::StringRecord,
        now: DateTime<Utc>,
    ) -> Result<Self, ImportError> {
        let m = Self::required_columns()
            .iter()
            .map(|c| {
                let cell = header.cell(record, c);
                let v = if cell.is_empty() {
                    Value::Null
                } else {
                    Value::String(cell.to_owned())
                };
                ((*c).to_owned(), v)
            })
            .collect();
        Self::from_map(row, &m, now)
    }
}

// --- reading a body -----------------------------------------------------------------------

/// Reads every item of `body` and hands them to `sink` in order, in chunks.
async fn read_items<I: Item, R: AsyncRead + Unpin + Send + 'static>(
    format: Format,
    body: R,
    sink: &mut Blocks<'_>,
) -> Result<(), ImportError> {
    let now = Utc::now();
    let too_many = |row| bad_row(row, "", format!("at most {MAX_ITEMS} items per request"));
    match format {
        Format::Ndjson => {
            let mut lines = BufReader::with_capacity(256 * 1024, body).lines();
            let mut row = 0_i64;
            let mut chunk = Vec::with_capacity(POINTS_PER_EVENT);
            while let Some(line) = lines
                .next_line()
                .await
                .map_err(|e| crate::imports::body_error(&e))?
            {
                row += 1;
                if line.trim().is_empty() {
                    continue;
                }
                if row > MAX_ITEMS {
                    return Err(too_many(row));
                }
                chunk.push(I::from_json(row, &line, now)?);
                if chunk.len() == POINTS_PER_EVENT {
                    sink.take(std::mem::take(&mut chunk)).await?;
                }
            }
            sink.take(chunk).await
        }
        Format::Csv => {
            let mut rows = CsvRows::open(body).await?;
            let header = CsvHeader::new::<I>(rows.headers())?;
            let mut chunk = Vec::with_capacity(POINTS_PER_EVENT);
            while let Some(record) = rows.next().await? {
                let row = rows.row();
                if row > MAX_ITEMS {
                    return Err(too_many(row));
                }
                chunk.push(I::from_csv(row, &header, &record, now)?);
                if chunk.len() == POINTS_PER_EVENT {
                    sink.take(std::mem::take(&mut chunk)).await?;
                }
            }
            sink.take(chunk).await
        }
        Format::Json => {
            // serde_json reads from a blocking reader: parse on a blocking thread and
            // hand the chunks over as they fill.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<I>, ImportError>>(2);
            let reader = tokio_util::io::SyncIoBridge::new(body);
            let parser = tokio::task::spawn_blocking(move || {
                let outcome = parse_json_body::<I>(reader, now, &tx);
                if let Err(e) = outcome {
                    let _ = tx.blocking_send(Err(e));
                }
            });
            let mut failed = None;
            while let Some(chunk) = rx.recv().await {
                match chunk {
                    Ok(c) => {
                        if let Err(e) = sink.take(c).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            drop(rx);
            let parsed = parser.await;
            match (failed, parsed) {
                (Some(e), _) => Err(e),
                // The parser died: what it sent may be incomplete.
                (None, Err(e)) => Err(ImportError::Body(format!("the JSON parser failed: {e}"))),
                (None, Ok(())) => Ok(()),
            }
        }
    }
}

/// `{"points": [ … ]}` read element by element from a blocking reader.
fn parse_json_body<I: Item>(
    reader: impl std::io::Read,
    now: DateTime<Utc>,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<I>, ImportError>>,
) -> Result<(), ImportError> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    struct Body<'a, I> {
        now: DateTime<Utc>,
        tx: &'a tokio::sync::mpsc::Sender<Result<Vec<I>, ImportError>>,
        failed: &'a mut Option<ImportError>,
        seen: &'a mut bool,
    }
    struct Items<'b, 'a, I>(&'b mut Body<'a, I>);

    impl<'de, I: Item> Visitor<'de> for Body<'_, I> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "an object with the member {:?}", I::MEMBER)
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == I::MEMBER {
                    *self.seen = true;
                    map.next_value_seed(Items(&mut self))?;
                } else {
                    *self.failed = Some(bad_row(0, &key, "is not a member of a batch body"));
                    return Err(serde::de::Error::custom("refused"));
                }
            }
            Ok(())
        }
    }

    impl<'de, I: Item> DeserializeSeed<'de> for Items<'_, '_, I> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de, I: Item> Visitor<'de> for Items<'_, '_, I> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "an array of items")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let body = self.0;
            let mut row = 0_i64;
            let mut chunk = Vec::with_capacity(POINTS_PER_EVENT);
            let refuse = |failed: &mut Option<ImportError>, e| {
                *failed = Some(e);
                serde::de::Error::custom("refused")
            };
            while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
                row += 1;
                if row > MAX_ITEMS {
                    return Err(refuse(
                        body.failed,
                        bad_row(row, "", format!("at most {MAX_ITEMS} items per request")),
                    ));
                }
                match I::from_json(row, raw.get(), body.now) {
                    Ok(item) => chunk.push(item),
                    Err(e) => return Err(refuse(body.failed, e)),
                }
                if chunk.len() == POINTS_PER_EVENT
                    && body
                        .tx
                        .blocking_send(Ok(std::mem::take(&mut chunk)))
                        .is_err()
                {
                    return Err(serde::de::Error::custom("the request stopped"));
                }
            }
            if !chunk.is_empty() && body.tx.blocking_send(Ok(chunk)).is_err() {
                return Err(serde::de::Error::custom("the request stopped"));
            }
            Ok(())
        }
    }

    let mut failed = None;
    let mut seen = false;
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(
        256 * 1024,
        reader,
    ));
    let outcome = de
        .deserialize_map(Body::<I> {
            now,
            tx,
            failed: &mut failed,
            seen: &mut seen,
        })
        .and_then(|()| de.end());
    if let Some(e) = failed {
        return Err(e);
    }
    match outcome {
        Err(e) if e.is_io() => Err(crate::imports::body_error(&std::io::Error::from(e))),
        Err(e) => Err(bad_row(0, "", format!("the body is not valid JSON: {e}"))),
        Ok(()) if !seen => Err(bad_row(0, I::MEMBER, "is missing")),
        Ok(()) => Ok(()),
    }
}

/// One batch's blocks, staged as their chunks fill.
struct Blocks<'s> {
    staging: Staging<'s>,
    items: i64,
    /// Distinct (series, metric) pairs, or (symbol, "").
    series: HashSet<(String, String)>,
}

impl Blocks<'_> {
    async fn take<I: Item>(&mut self, chunk: Vec<I>) -> Result<(), ImportError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.items += chunk.len() as i64;
        let event = I::block(chunk, &mut self.series);
        self.staging.push(&event).await
    }
}

/// Names in order of first appearance, each with its index.
#[derive(Default)]
struct Names<K> {
    list: Vec<K>,
    index: HashMap<K, u32>,
}

impl<K: std::hash::Hash + Eq + Clone> Names<K> {
    fn of(&mut self, k: K, seen: &mut HashSet<K>) -> u32 {
        if let Some(i) = self.index.get(&k) {
            return *i;
        }
        let i = self.list.len() as u32;
        if !seen.contains(&k) {
            seen.insert(k.clone());
        }
        self.index.insert(k.clone(), i);
        self.list.push(k);
        i
    }
}

/// Sorted by `key`; of items with the same key only the last given stays.
pub fn last_wins<T, K: Ord + Copy>(mut items: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    // A stable sort keeps equal keys in input order; keep the last of each run.
    items.sort_by_key(|i| key(i));
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for i in items {
        match out.last_mut() {
            Some(last) if key(last) == key(&i) => *last = i,
            _ => out.push(i),
        }
    }
    out
}

/// Streams a body of points into a new `metric_batch` stream.
pub async fn ingest_points<R: AsyncRead + Unpin + Send + 'static>(
    store: &EventStore,
    tenant: &str,
    format: Format,
    body: R,
    metadata: &Value,
    key: Option<&StreamedKey>,
) -> Result<Ingested, ImportError> {
    ingest::<PointIn, R>(store, tenant, format, body, metadata, key).await
}

/// Streams a body of bars into a new `bar_batch` stream.
pub async fn ingest_bars<R: AsyncRead + Unpin + Send + 'static>(
    store: &EventStore,
    tenant: &str,
    format: Format,
    body: R,
    metadata: &Value,
    key: Option<&StreamedKey>,
) -> Result<Ingested, ImportError> {
    ingest::<BarIn, R>(store, tenant, format, body, metadata, key).await
}

/// Stages the blocks of `body` and commits them with the completion event, all or
/// nothing.
async fn ingest<I: Item, R: AsyncRead + Unpin + Send + 'static>(
    store: &EventStore,
    tenant: &str,
    format: Format,
    body: R,
    metadata: &Value,
    key: Option<&StreamedKey>,
) -> Result<Ingested, ImportError> {
    let batch_id = Uuid::now_v7();
    let mut blocks = Blocks {
        staging: Staging::new(store, batch_id),
        items: 0,
        series: HashSet::new(),
    };
    let read = async {
        read_items::<I, R>(format, body, &mut blocks).await?;
        if blocks.items == 0 {
            return Err(bad_row(1, "", format!("the batch has no {}", I::MEMBER)));
        }
        Ok(I::completed(blocks.items, blocks.series.len() as i64)?)
    }
    .await;
    let stream = (I::STREAM_TYPE, batch_id, 0);
    let appended = blocks
        .staging
        .finish(tenant, stream, read, metadata, key)
        .await?;
    Ok(Ingested {
        batch_id,
        items: blocks.items,
        series: blocks.series.len() as i64,
        appended,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn a_point_takes_seed_000_names_and_monitoring_tags() {
        let p = PointIn::from_json(
            1,
            r#"{"resource_id":"i-1","metric_name":"cpu","timestamp":"2024-01-01T00:00:00Z",
                "metric_value":"1.5","region":"cn-hangzhou","tags":{"team":"a","n":2}}"#,
            now(),
        )
        .unwrap();
        assert_eq!((p.series.as_str(), p.metric.as_str()), ("i-1", "cpu"));
        assert_eq!(p.value, 1.5);
        assert_eq!(p.time, 1_704_067_200_000_000);
        let tags = p.tags.unwrap();
        assert_eq!(tags["region"], "cn-hangzhou");
        assert_eq!(tags["n"], "2");
    }

    #[test]
    fn bad_points_name_their_field() {
        let bad = |json: &str| match PointIn::from_json(7, json, now()) {
            Err(ImportError::BadRow { row, column, .. }) => (row, column),
            other => panic!("{json}: {other:?}"),
        };
        let t = r#""time":"2024-01-01T00:00:00Z""#;
        assert_eq!(
            bad(&format!(r#"{{"series":"","metric":"m",{t},"value":1}}"#)),
            (7, "series".into())
        );
        assert_eq!(
            bad(&format!(
                r#"{{"series":"s","metric":"m",{t},"value":"NaN"}}"#
            ))
            .1,
            "value"
        );
        assert_eq!(
            bad(&format!(
                r#"{{"series":"s","metric":"m",{t},"value":1e999}}"#
            ))
            .1,
            "value"
        );
        assert_eq!(
            bad(r#"{"series":"s","metric":"m","time":"yesterday","value":1}"#).1,
            "time"
        );
        assert_eq!(
            bad(r#"{"series":"s","metric":"m","time":"2999-01-01T00:00:00Z","value":1}"#).1,
            "time"
        );
        assert_eq!(
            bad(&format!(
                r#"{{"series":"s","metric":"m",{t},"value":1,"colour":1}}"#
            ))
            .1,
            "colour"
        );
    }

    #[test]
    fn times_are_rfc3339_or_epoch_seconds() {
        let t = |v: Value| parse_time(1, "time", &v, now()).ok();
        assert_eq!(t(Value::from(1.5)), Some(1_500_000));
        assert_eq!(t(Value::from("1970-01-01T00:00:01.25Z")), Some(1_250_000));
        assert_eq!(t(Value::from(true)), None);
    }

    #[test]
    fn the_last_of_equal_keys_wins_and_the_rest_is_sorted() {
        let v = last_wins(vec![(2, 'a'), (1, 'b'), (2, 'c'), (1, 'd')], |x| x.0);
        assert_eq!(v, vec![(1, 'd'), (2, 'c')]);
    }

    #[test]
    fn a_bar_must_be_consistent() {
        let bar = |o: &str, h: &str, l: &str, c: &str| {
            BarIn::from_json(
                1,
                &format!(
                    r#"{{"symbol":"A","time":"2024-01-02T09:30:00Z","open":{o},"high":{h},"low":{l},"close":{c},"volume":"100"}}"#
                ),
                now(),
            )
        };
        assert!(bar("10.01", "10.50", "9.90", "10.20").is_ok());
        assert!(bar("10.01", "9.50", "9.90", "10.20").is_err());
        assert!(bar("11", "10.50", "9.90", "10.20").is_err());
        let unaligned = BarIn::from_json(
            1,
            r#"{"symbol":"A","time":"2024-01-02T09:30:01Z","open":1,"high":1,"low":1,"close":1,"volume":1}"#,
            now(),
        );
        assert!(
            matches!(unaligned, Err(ImportError::BadRow { ref column, .. }) if column == "time")
        );
    }
}
