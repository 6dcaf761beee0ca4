//! Events of the costs context. `event_type` and `event_version` are stable: they are
//! stored with every event forever.

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::DomainEvent;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Aliyun,
    Tencent,
    Aws,
    Azure,
    Gcp,
    Other,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Aliyun => "aliyun",
            Provider::Tencent => "tencent",
            Provider::Aws => "aws",
            Provider::Azure => "azure",
            Provider::Gcp => "gcp",
            Provider::Other => "other",
        }
    }
}

/// A cloud account, as opened.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct AccountDetails {
    pub name: String,
    pub provider: Provider,
    pub external_id: Option<String>,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    AccountOpened(AccountDetails),
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        "AccountOpened".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// The column layout of a bill file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BillFormat {
    /// The Alibaba Cloud bill columns seed 000 stores.
    Cloudlens,
    /// FOCUS 1.2 / 1.3 column names.
    Focus,
}

impl BillFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BillFormat::Cloudlens => "cloudlens",
            BillFormat::Focus => "focus",
        }
    }
}

/// The sum of an import's lines in one currency.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct CurrencyTotal {
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "1234.56")]
    pub total: Decimal,
    pub lines: i64,
}

/// The first event of an import's stream, written once the whole file was read: what the
/// file holds. The billing periods it names are restated: earlier lines of the account in
/// those periods are superseded by this file's.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ImportStarted {
    pub account: String,
    pub provider: Provider,
    pub format: BillFormat,
    /// SHA-256 of the body, hex: a byte-identical file is the same import.
    pub sha256: String,
    pub periods: Vec<NaiveDate>,
    pub lines: i64,
    pub totals: Vec<CurrencyTotal>,
}

/// A JSON value kept as its text (equal when the texts are).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(pub Box<RawValue>);

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// One line of a bill, normalised over both formats.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct BillLine {
    /// 1-based line number in the file.
    pub line: i32,
    pub charge_start: DateTime<Utc>,
    pub charge_end: Option<DateTime<Utc>>,
    /// First day of the billing period.
    pub billing_period: NaiveDate,
    pub currency: String,
    /// The cost that is summed: `pretax_amount` (cloudlens) or `BilledCost` (FOCUS).
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
    #[serde(with = "rust_decimal::serde::str_option", default)]
    pub effective_cost: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option", default)]
    pub list_cost: Option<Decimal>,
    pub service: String,
    #[serde(default)]
    pub service_name: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub sub_account: String,
    #[serde(default)]
    pub charge_category: String,
    /// The line's tags, a JSON object of strings (kept as JSON text: a batch of a thousand
    /// lines is written and read without building a JSON tree per line).
    pub tags: JsonText,
    /// Every other column of the file with a value, as text: a JSON object.
    pub extra: JsonText,
}

/// Up to `import::LINES_PER_EVENT` lines of an import.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct LinesImported {
    pub account: String,
    pub provider: Provider,
    pub lines: Vec<BillLine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum BillImportEvent {
    BillImportStarted(ImportStarted),
    BillLinesImported(LinesImported),
    BillImportCompleted { lines: i64 },
}

impl DomainEvent for BillImportEvent {
    fn event_type(&self) -> String {
        match self {
            BillImportEvent::BillImportStarted(_) => "BillImportStarted",
            BillImportEvent::BillLinesImported(_) => "BillLinesImported",
            BillImportEvent::BillImportCompleted { .. } => "BillImportCompleted",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
