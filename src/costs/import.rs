//! Bill imports: a CSV body in the `cloudlens` (Alibaba Cloud bill) or `focus` layout,
//! streamed line by line, checked, and staged as `BillLinesImported` events of up to
//! [`LINES_PER_EVENT`] lines (shared `imports` infrastructure). When the whole body was
//! read, the head event (`BillImportStarted`: periods, totals, SHA-256) and the tail are
//! written and everything moves into the import's stream in one statement.
//!
//! The stream id derives from the account and the SHA-256 of the body, so a byte-identical
//! file finds its stream taken and returns the first import, changing nothing. The first
//! bad line rejects the whole file and nothing reaches the log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use uuid::Uuid;

use super::aggregate::{is_currency, BillImport};
use super::events::{
    AccountDetails, BillFormat, BillImportEvent, BillLine, CurrencyTotal, ImportStarted, JsonText,
    LinesImported,
};
use super::reference::FOCUS_COLUMNS;
use crate::eventstore::{codec, EventStore, StoreError};
use crate::imports::{bad_row, CsvRows, Hashed, ImportError, Staging};
use crate::pipeline::EventSourced;
use crate::tagging::rules::{parse_date, parse_number};

/// Lines per `BillLinesImported` event.
pub const LINES_PER_EVENT: usize = 1_000;
/// At most this many lines per file.
pub const MAX_LINES: i64 = 20_000_000;

/// What an import appended, or the earlier import of the same bytes.
#[derive(Debug, Clone)]
pub struct Imported {
    pub import_id: Uuid,
    pub lines: i64,
    pub position: i64,
    /// The file was imported before (byte-identical): nothing changed.
    pub duplicate: bool,
}

/// What a column of the file means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `billing_cycle` (`YYYY-MM`) or `BillingPeriodStart` (an instant; its UTC date).
    Period,
    /// `billing_date`: the charge day; empty means the period's first day.
    ChargeDay,
    ChargeStart,
    ChargeEnd,
    Currency,
    Cost,
    EffectiveCost,
    ListCost,
    Service,
    ServiceName,
    Category,
    Region,
    Resource,
    SubAccount,
    ChargeCategory,
    Tags,
    /// Kept as text after checking it is a decimal.
    DecimalExtra,
    /// Kept as text after checking it is a JSON object (`AllocatedTags`).
    ObjectExtra,
    /// Kept as text.
    Extra,
}

/// The cloudlens layout: seed 000's Alibaba Cloud bill columns.
const CLOUDLENS_COLUMNS: &[(&str, Field)] = &[
    ("billing_cycle", Field::Period),
    ("billing_date", Field::ChargeDay),
    ("product_code", Field::Service),
    ("product_name", Field::ServiceName),
    ("product_type", Field::Category),
    ("subscription_type", Field::Extra),
    ("instance_id", Field::Resource),
    ("region", Field::Region),
    ("zone", Field::Extra),
    ("resource_group", Field::Extra),
    ("billing_item", Field::Extra),
    ("list_price", Field::ListCost),
    ("invoice_discount", Field::DecimalExtra),
    ("pretax_amount", Field::Cost),
    ("deducted_by_coupons", Field::DecimalExtra),
    ("payment_amount", Field::DecimalExtra),
    ("currency", Field::Currency),
    ("tag", Field::Tags),
];
const CLOUDLENS_REQUIRED: &[&str] = &["billing_cycle", "product_code", "pretax_amount", "currency"];

/// FOCUS columns with a meaning here; every other FOCUS column and `x_` column is kept.
const FOCUS_FIELDS: &[(&str, Field)] = &[
    ("BillingPeriodStart", Field::Period),
    ("ChargePeriodStart", Field::ChargeStart),
    ("ChargePeriodEnd", Field::ChargeEnd),
    ("BillingCurrency", Field::Currency),
    ("BilledCost", Field::Cost),
    ("EffectiveCost", Field::EffectiveCost),
    ("ListCost", Field::ListCost),
    ("ContractedCost", Field::DecimalExtra),
    ("ServiceName", Field::Service),
    ("ServiceCategory", Field::Category),
    ("RegionId", Field::Region),
    ("ResourceId", Field::Resource),
    ("SubAccountId", Field::SubAccount),
    ("ChargeCategory", Field::ChargeCategory),
    ("Tags", Field::Tags),
    ("AllocatedTags", Field::ObjectExtra),
];
const FOCUS_REQUIRED: &[&str] = &[
    "BilledCost",
    "BillingCurrency",
    "BillingPeriodStart",
    "ChargePeriodStart",
];

/// The header of a file, resolved against its layout.
struct Layout {
    format: BillFormat,
    columns: Vec<(String, Field)>,
    /// The columns kept as text, in header order, and each column's place among them.
    extra_columns: Vec<String>,
    extra_slot: Vec<usize>,
}

impl Layout {
    fn new(format: BillFormat, headers: &[String]) -> Result<Self, ImportError> {
        let mut columns = Vec::with_capacity(headers.len());
        for h in headers {
            let field = match format {
                BillFormat::Cloudlens => CLOUDLENS_COLUMNS
                    .iter()
                    .find(|(name, _)| name == h)
                    .map(|(_, f)| *f),
                BillFormat::Focus => FOCUS_FIELDS
                    .iter()
                    .find(|(name, _)| name == h)
                    .map(|(_, f)| *f)
                    .or_else(|| {
                        (FOCUS_COLUMNS.binary_search(&h.as_str()).is_ok()
                            || (h.starts_with("x_") && h.len() > 2 && h.len() <= 100))
                            .then_some(Field::Extra)
                    }),
            };
            let field = field.ok_or_else(|| {
                bad_row(
                    0,
                    h,
                    format!("is not a column of the {} format", format.as_str()),
                )
            })?;
            columns.push((h.clone(), field));
        }
        let required = match format {
            BillFormat::Cloudlens => CLOUDLENS_REQUIRED,
            BillFormat::Focus => FOCUS_REQUIRED,
        };
        for r in required {
            if !headers.iter().any(|h| h == r) {
                return Err(bad_row(0, r, "is a required column and is missing"));
            }
        }
        let kept = |f: &Field| matches!(f, Field::Extra | Field::DecimalExtra | Field::ObjectExtra);
        let extra_columns = columns
            .iter()
            .filter(|(_, f)| kept(f))
            .map(|(n, _)| n.clone())
            .collect();
        let extra_slot = columns
            .iter()
            .scan(0, |next, (_, f)| {
                let slot = *next;
                *next += usize::from(kept(f));
                Some(slot)
            })
            .collect();
        Ok(Self {
            format,
            columns,
            extra_columns,
            extra_slot,
        })
    }

    /// One record as a bill line. `row` counts data rows from 1.
    fn line(&self, row: i64, record: &csv_async::StringRecord) -> Result<BillLine, ImportError> {
        let mut period = None;
        let mut day = None;
        let mut start = None;
        let mut end = None;
        let mut line = BillLine {
            line: i32::try_from(row).unwrap_or(i32::MAX),
            charge_start: DateTime::<Utc>::MIN_UTC,
            charge_end: None,
            billing_period: NaiveDate::MIN,
            currency: String::new(),
            cost: Decimal::ZERO,
            effective_cost: None,
            list_cost: None,
            service: String::new(),
            service_name: String::new(),
            category: String::new(),
            region: String::new(),
            resource: String::new(),
            sub_account: String::new(),
            charge_category: String::new(),
            tags: JsonText(json_object(&[])),
            extra: vec![None; self.extra_columns.len()],
        };
        let mut cost = None;
        for (i, ((name, field), cell)) in self.columns.iter().zip(record.iter()).enumerate() {
            let slot = self.extra_slot[i];
            let cell = cell.trim();
            if cell.is_empty() {
                continue;
            }
            if cell.contains('\0') {
                return Err(bad_row(row, name, "must not contain NUL characters"));
            }
            let bad = |what: &str| bad_row(row, name, format!("{cell:?} is not {what}"));
            match field {
                Field::Period => {
                    period = Some(
                        match self.format {
                            BillFormat::Cloudlens => parse_month(cell),
                            BillFormat::Focus => parse_date(cell).map(|t| t.date_naive()),
                        }
                        .ok_or_else(|| bad("a billing period (YYYY-MM or a UTC timestamp)"))?,
                    )
                }
                Field::ChargeDay => day = Some(parse_date(cell).ok_or_else(|| bad("a date"))?),
                Field::ChargeStart => start = Some(parse_date(cell).ok_or_else(|| bad("a date"))?),
                Field::ChargeEnd => end = Some(parse_date(cell).ok_or_else(|| bad("a date"))?),
                Field::Currency => {
                    if !is_currency(cell) {
                        return Err(bad("an ISO 4217 currency code"));
                    }
                    cell.clone_into(&mut line.currency);
                }
                Field::Cost => cost = Some(decimal(cell).ok_or_else(|| bad("a decimal number"))?),
                Field::EffectiveCost => {
                    line.effective_cost =
                        Some(decimal(cell).ok_or_else(|| bad("a decimal number"))?)
                }
                Field::ListCost => {
                    line.list_cost = Some(decimal(cell).ok_or_else(|| bad("a decimal number"))?)
                }
                Field::Service => cell.clone_into(&mut line.service),
                Field::ServiceName => cell.clone_into(&mut line.service_name),
                Field::Category => cell.clone_into(&mut line.category),
                Field::Region => cell.clone_into(&mut line.region),
                Field::Resource => cell.clone_into(&mut line.resource),
                Field::SubAccount => cell.clone_into(&mut line.sub_account),
                Field::ChargeCategory => cell.clone_into(&mut line.charge_category),
                Field::Tags => {
                    let tags = parse_tags(cell, self.format == BillFormat::Cloudlens)
                        .map_err(|m| bad_row(row, name, m))?;
                    line.tags = JsonText(
                        serde_json::value::to_raw_value(&tags)
                            .map_err(|e| bad_row(row, name, e.to_string()))?,
                    );
                }
                Field::DecimalExtra => {
                    decimal(cell).ok_or_else(|| bad("a decimal number"))?;
                    line.extra[slot] = Some(cell.to_owned());
                }
                Field::ObjectExtra => {
                    parse_tags(cell, false).map_err(|m| bad_row(row, name, m))?;
                    line.extra[slot] = Some(cell.to_owned());
                }
                Field::Extra => line.extra[slot] = Some(cell.to_owned()),
            }
        }
        let (period_column, cost_column, currency_column, start_column) = match self.format {
            BillFormat::Cloudlens => ("billing_cycle", "pretax_amount", "currency", "billing_date"),
            BillFormat::Focus => (
                "BillingPeriodStart",
                "BilledCost",
                "BillingCurrency",
                "ChargePeriodStart",
            ),
        };
        line.billing_period = period.ok_or_else(|| bad_row(row, period_column, "is empty"))?;
        line.cost = cost.ok_or_else(|| bad_row(row, cost_column, "is empty"))?;
        if line.currency.is_empty() {
            return Err(bad_row(row, currency_column, "is empty"));
        }
        match self.format {
            BillFormat::Cloudlens => {
                // A line without a charge day is charged on the period's first day: never
                // a line without a date (seed 000 dropped them).
                let start = day.unwrap_or_else(|| {
                    line.billing_period
                        .and_hms_opt(0, 0, 0)
                        .unwrap_or_default()
                        .and_utc()
                });
                line.charge_start = start;
                line.charge_end = Some(start + Duration::days(1));
                line.effective_cost = Some(line.cost);
            }
            BillFormat::Focus => {
                line.charge_start = start.ok_or_else(|| bad_row(row, start_column, "is empty"))?;
                if let Some(e) = end {
                    if e < line.charge_start {
                        return Err(bad_row(
                            row,
                            "ChargePeriodEnd",
                            "is before ChargePeriodStart",
                        ));
                    }
                }
                line.charge_end = end;
            }
        }
        Ok(line)
    }
}

/// A JSON object of text values, written straight to text (header names are distinct).
pub fn json_object(pairs: &[(&str, &str)]) -> Box<RawValue> {
    let mut out = Vec::with_capacity(
        2 + pairs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>(),
    );
    out.push(b'{');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, k);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, v);
    }
    out.push(b'}');
    // Text written by serde_json from `&str`s is UTF-8 and a valid object: the checks of
    // `from_utf8_lossy` and `from_string` never fail (`null` would stand in).
    RawValue::from_string(String::from_utf8_lossy(&out).into_owned())
        .unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// `YYYY-MM` as the month's first day.
fn parse_month(s: &str) -> Option<NaiveDate> {
    let (y, m) = s.split_once('-')?;
    if y.len() != 4 || m.len() != 2 || !s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return None;
    }
    NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, 1)
}

/// A plain decimal (`-12.345`) or one in scientific notation (`1.5E-7`), exactly.
fn decimal(s: &str) -> Option<Decimal> {
    parse_number(s).or_else(|| {
        s.bytes()
            .any(|b| b == b'e' || b == b'E')
            .then(|| Decimal::from_scientific(s).ok())
            .flatten()
    })
}

/// A tags cell: a JSON object of scalars, or (cloudlens) `k:v;k:v`. Values become text.
pub fn parse_tags(cell: &str, pairs: bool) -> Result<Value, String> {
    let mut tags = Map::new();
    if cell.starts_with('{') {
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(cell) else {
            return Err("is not a JSON object".into());
        };
        for (k, v) in object {
            let text = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => continue,
                _ => return Err(format!("tag {k:?} has a value that is not text")),
            };
            tags.insert(k, Value::String(text));
        }
    } else if pairs {
        for pair in cell.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once(':')
                .ok_or_else(|| format!("{pair:?} is not key:value"))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(format!("{pair:?} has an empty key"));
            }
            tags.insert(k.to_owned(), Value::String(v.trim().to_owned()));
        }
    } else {
        return Err("is not a JSON object".into());
    }
    if tags.keys().any(|k| k.chars().count() > 200) {
        return Err("has a key longer than 200 characters".into());
    }
    Ok(Value::Object(tags))
}

/// The stream of an import of these bytes into this account.
pub fn import_stream(tenant: &str, account: &str, sha256: &str) -> Uuid {
    super::stream_id(tenant, "bill_import", &format!("{account}/{sha256}"))
}

/// Sums and periods of the lines read so far.
#[derive(Default)]
struct Totals {
    lines: i64,
    periods: BTreeSet<NaiveDate>,
    by_currency: BTreeMap<String, (Decimal, i64)>,
}

/// Streams `body` into the store as an import of `account`'s bill.
pub async fn import<R: AsyncRead + Unpin + Send + 'static>(
    store: &EventStore,
    tenant: &str,
    account: &AccountDetails,
    format: BillFormat,
    body: R,
    metadata: &Value,
) -> Result<Imported, ImportError> {
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let body = Hashed::new(body, hasher.clone());
    let mut staging = Staging::new(store, Uuid::now_v7());
    let mut totals = Totals::default();
    let outcome = async {
        let mut rows = CsvRows::open(body).await?;
        let layout = Layout::new(format, rows.headers())?;
        let mut batch = Vec::with_capacity(LINES_PER_EVENT);
        while let Some(record) = rows.next().await? {
            let row = rows.row();
            if row > MAX_LINES {
                return Err(bad_row(
                    row,
                    "",
                    format!("at most {MAX_LINES} lines per file"),
                ));
            }
            let line = layout.line(row, &record)?;
            totals.lines += 1;
            totals.periods.insert(line.billing_period);
            let t = totals.by_currency.entry(line.currency.clone()).or_default();
            t.0 += line.cost;
            t.1 += 1;
            batch.push(line);
            if batch.len() == LINES_PER_EVENT {
                staging
                    .push(&lines_event(account, &layout, std::mem::take(&mut batch)))
                    .await?;
            }
        }
        if totals.lines == 0 {
            return Err(bad_row(1, "", "the file has no lines"));
        }
        if !batch.is_empty() {
            staging.push(&lines_event(account, &layout, batch)).await?;
        }
        let sha256 = hasher
            .lock()
            .map(|h| hex(&h.clone().finalize()))
            .map_err(|_| ImportError::Body("hash state poisoned".into()))?;
        let stream = import_stream(tenant, &account.name, &sha256);
        staging
            .head(&BillImportEvent::BillImportStarted(ImportStarted {
                account: account.name.clone(),
                provider: account.provider,
                format,
                sha256,
                periods: totals.periods.iter().copied().collect(),
                lines: totals.lines,
                totals: totals
                    .by_currency
                    .iter()
                    .map(|(c, (total, lines))| CurrencyTotal {
                        currency: c.clone(),
                        total: *total,
                        lines: *lines,
                    })
                    .collect(),
            }))
            .await?;
        let tail = codec::encode(&BillImportEvent::BillImportCompleted {
            lines: totals.lines,
        })?;
        match staging
            .commit(
                tenant,
                (BillImport::STREAM_TYPE, stream, 0),
                &[tail],
                metadata,
                // A bill's identity is its bytes (ADR 0009): a retry finds its import.
                None,
            )
            .await
        {
            Ok(appended) => Ok(Imported {
                import_id: stream,
                lines: totals.lines,
                position: appended.position,
                duplicate: false,
            }),
            Err(StoreError::Conflict) => {
                staging.discard().await;
                earlier(store, stream).await
            }
            Err(e) => Err(e.into()),
        }
    }
    .await;
    if outcome.is_err() {
        staging.discard().await;
    }
    outcome
}

/// The import that holds these bytes already.
async fn earlier(store: &EventStore, stream: Uuid) -> Result<Imported, ImportError> {
    let last = store
        .last_event(BillImport::STREAM_TYPE, stream)
        .await?
        .ok_or(ImportError::Store(StoreError::Conflict))?;
    let lines = match BillImport::decode(&last)? {
        BillImportEvent::BillImportCompleted { lines } => lines,
        _ => 0,
    };
    Ok(Imported {
        import_id: stream,
        lines,
        position: last.position,
        duplicate: true,
    })
}

fn lines_event(account: &AccountDetails, layout: &Layout, lines: Vec<BillLine>) -> BillImportEvent {
    BillImportEvent::BillLinesImported(LinesImported {
        account: account.name.clone(),
        provider: account.provider,
        extra_columns: layout.extra_columns.clone(),
        lines,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_json_objects_or_key_value_pairs() {
        assert_eq!(
            parse_tags(r#"{"team":"a","n":1}"#, true).unwrap(),
            serde_json::json!({"team": "a", "n": "1"})
        );
        assert_eq!(
            parse_tags("team:a; env : prod", true).unwrap(),
            serde_json::json!({"team": "a", "env": "prod"})
        );
        assert!(parse_tags("team=a", true).is_err());
        assert!(parse_tags(":a", true).is_err());
        assert!(parse_tags("team:a", false).is_err());
        assert!(parse_tags(r#"{"a":{"b":1}}"#, false).is_err());
        assert!(parse_tags("[1]", false).is_err());
    }

    #[test]
    fn months_and_decimals_parse_strictly() {
        assert_eq!(parse_month("2024-02"), NaiveDate::from_ymd_opt(2024, 2, 1));
        assert_eq!(parse_month("2024-13"), None);
        assert_eq!(parse_month("24-02"), None);
        assert_eq!(parse_month("2024-2"), None);
        assert_eq!(decimal("12.345"), Some(Decimal::new(12345, 3)));
        assert_eq!(decimal("1.5E-3"), Some(Decimal::new(15, 4)));
        assert_eq!(decimal("12,3"), None);
        assert_eq!(decimal("NaN"), None);
    }

    fn layout(format: BillFormat, headers: &[&str]) -> Result<Layout, ImportError> {
        let h: Vec<String> = headers.iter().map(|s| s.to_string()).collect();
        Layout::new(format, &h)
    }

    #[test]
    fn a_header_must_name_known_and_required_columns() {
        assert!(layout(
            BillFormat::Cloudlens,
            &["billing_cycle", "product_code", "pretax_amount", "currency"]
        )
        .is_ok());
        let err = layout(
            BillFormat::Cloudlens,
            &["billing_cycle", "product_code", "currency"],
        )
        .err()
        .unwrap();
        assert!(matches!(err, ImportError::BadRow { ref column, .. } if column == "pretax_amount"));
        let err = layout(
            BillFormat::Cloudlens,
            &[
                "billing_cycle",
                "product_code",
                "pretax_amount",
                "currency",
                "color",
            ],
        )
        .err()
        .unwrap();
        assert!(matches!(err, ImportError::BadRow { ref column, .. } if column == "color"));
        let focus = [
            "BilledCost",
            "BillingCurrency",
            "BillingPeriodStart",
            "ChargePeriodStart",
            "AllocatedMethodId",
            "x_CostCenter",
            "SkuId",
        ];
        assert!(layout(BillFormat::Focus, &focus).is_ok());
        assert!(layout(BillFormat::Focus, &["BilledCost", "Colour"]).is_err());
    }

    #[test]
    fn an_empty_charge_day_is_the_first_day_of_the_period() {
        let l = layout(
            BillFormat::Cloudlens,
            &[
                "billing_cycle",
                "billing_date",
                "product_code",
                "pretax_amount",
                "currency",
            ],
        )
        .unwrap();
        let rec = csv_async::StringRecord::from(vec!["2024-02", "", "ecs", "1.10", "CNY"]);
        let line = l.line(1, &rec).unwrap();
        assert_eq!(line.charge_start.to_rfc3339(), "2024-02-01T00:00:00+00:00");
        assert_eq!(line.cost, Decimal::new(110, 2));
        let rec = csv_async::StringRecord::from(vec!["2024-02", "2024-02-29", "ecs", "x", "CNY"]);
        let err = l.line(7, &rec).unwrap_err();
        assert!(
            matches!(err, ImportError::BadRow { row: 7, ref column, .. } if column == "pretax_amount")
        );
        let rec = csv_async::StringRecord::from(vec!["2024-02", "", "ecs", "1", "RMB"]);
        assert!(l.line(1, &rec).is_err());
    }
}
