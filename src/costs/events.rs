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

/// One line of a bill, normalised over both formats. Stored as a JSON array (no keys per
/// line: a thousand-line event is a third of the size, and PostgreSQL parses and prints
/// it that much faster), in the order of the fields here.
#[derive(Debug, Clone, PartialEq)]
pub struct BillLine {
    /// 1-based line number in the file.
    pub line: i32,
    pub charge_start: DateTime<Utc>,
    pub charge_end: Option<DateTime<Utc>>,
    /// First day of the billing period.
    pub billing_period: NaiveDate,
    pub currency: String,
    /// The cost that is summed: `pretax_amount` (cloudlens) or `BilledCost` (FOCUS).
    pub cost: Decimal,
    pub effective_cost: Option<Decimal>,
    pub list_cost: Option<Decimal>,
    pub service: String,
    pub service_name: String,
    pub category: String,
    pub region: String,
    pub resource: String,
    pub sub_account: String,
    pub charge_category: String,
    /// The line's tags, a JSON object of strings (kept as JSON text).
    pub tags: JsonText,
    /// The other columns of the file, in the order of `LinesImported::extra_columns`
    /// (`None`: empty cell).
    pub extra: Vec<Option<String>>,
}

/// A decimal as a JSON string (exact).
struct DecimalText<'a>(&'a Decimal);

impl Serialize for DecimalText<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        rust_decimal::serde::str::serialize(self.0, s)
    }
}

impl Serialize for BillLine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(17)?;
        t.serialize_element(&self.line)?;
        t.serialize_element(&self.charge_start)?;
        t.serialize_element(&self.charge_end)?;
        t.serialize_element(&self.billing_period)?;
        t.serialize_element(&self.currency)?;
        t.serialize_element(&DecimalText(&self.cost))?;
        t.serialize_element(&self.effective_cost.as_ref().map(DecimalText))?;
        t.serialize_element(&self.list_cost.as_ref().map(DecimalText))?;
        t.serialize_element(&self.service)?;
        t.serialize_element(&self.service_name)?;
        t.serialize_element(&self.category)?;
        t.serialize_element(&self.region)?;
        t.serialize_element(&self.resource)?;
        t.serialize_element(&self.sub_account)?;
        t.serialize_element(&self.charge_category)?;
        t.serialize_element(&self.tags)?;
        t.serialize_element(&self.extra)?;
        t.end()
    }
}

/// The stored array form of a [`BillLine`].
#[derive(Deserialize)]
struct LineTuple(
    i32,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    NaiveDate,
    String,
    #[serde(with = "rust_decimal::serde::str")] Decimal,
    #[serde(with = "rust_decimal::serde::str_option")] Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")] Option<Decimal>,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    JsonText,
    Vec<Option<String>>,
);

impl<'de> Deserialize<'de> for BillLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = LineTuple::deserialize(d)?;
        Ok(BillLine {
            line: t.0,
            charge_start: t.1,
            charge_end: t.2,
            billing_period: t.3,
            currency: t.4,
            cost: t.5,
            effective_cost: t.6,
            list_cost: t.7,
            service: t.8,
            service_name: t.9,
            category: t.10,
            region: t.11,
            resource: t.12,
            sub_account: t.13,
            charge_category: t.14,
            tags: t.15,
            extra: t.16,
        })
    }
}

/// Up to `import::LINES_PER_EVENT` lines of an import.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct LinesImported {
    pub account: String,
    pub provider: Provider,
    /// Names of the file's other columns (each line's `extra` follows this order).
    pub extra_columns: Vec<String>,
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

/// One value of a virtual tag: the lines its rule matches get it (the first match wins).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct VirtualTagValue {
    pub value: String,
    /// A tagging rule over bill-line fields, in canonical form.
    #[schema(value_type = Object)]
    pub rule: serde_json::Value,
}

/// A virtual tag as saved: values in order, and the value of lines no rule matches.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct VirtualTagDefinition {
    pub name: String,
    pub values: Vec<VirtualTagValue>,
    pub default: Option<String>,
}

/// One step of recomputing a saved definition over the lines that existed when it was
/// saved: every line of the tenant charged in `[from, to)` gets the tag again.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RecomputeStep {
    /// The virtual tag's name.
    pub name: String,
    /// The stream version of the `VirtualTagSaved` this step recomputes.
    pub revision: i64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Lines in the step, and in the whole recomputation (as counted when it began).
    pub lines: i64,
    pub total: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum VirtualTagEvent {
    /// The lines projected from here on get the new definition; the lines already there
    /// get it step by step (`VirtualTagRecomputed`, written by the recompute job).
    VirtualTagSaved(VirtualTagDefinition),
    VirtualTagRecomputed(RecomputeStep),
    /// Every line that existed at the save carries the definition of `revision`.
    VirtualTagRecomputeCompleted {
        name: String,
        revision: i64,
        lines: i64,
    },
}

impl DomainEvent for VirtualTagEvent {
    fn event_type(&self) -> String {
        match self {
            VirtualTagEvent::VirtualTagSaved(_) => "VirtualTagSaved",
            VirtualTagEvent::VirtualTagRecomputed(_) => "VirtualTagRecomputed",
            VirtualTagEvent::VirtualTagRecomputeCompleted { .. } => "VirtualTagRecomputeCompleted",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AllocationRuleEvent {
    AllocationRuleSaved(super::allocation::AllocationRuleDef),
}

impl DomainEvent for AllocationRuleEvent {
    fn event_type(&self) -> String {
        "AllocationRuleSaved".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A dimension of an anomalous day with its cost against its own trailing median.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct Contributor {
    /// `region`, `resource` or `tag:<key>`.
    pub dimension: String,
    pub value: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "812.40")]
    pub actual: Decimal,
    /// The dimension's median over the trailing 28 days (the lower middle value).
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "20.10")]
    pub expected: Decimal,
    /// `actual − expected`.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "792.30")]
    pub delta: Decimal,
}

/// The first anomalous day of an episode of one account × service (ADR 0026). These names
/// and fields are a contract (alert rules consume them): fields may be added, never
/// renamed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct AnomalyDetected {
    pub anomaly_id: uuid::Uuid,
    pub account_id: String,
    pub service: String,
    /// The currency of the series (the account's).
    #[serde(default)]
    pub currency: String,
    /// The first anomalous day.
    pub day: NaiveDate,
    #[serde(with = "rust_decimal::serde::str")]
    pub actual: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub expected: Decimal,
    /// The robust z of the day (negative for a drop).
    pub deviation: f64,
    pub severity: super::anomaly::Severity,
    pub contributors: Vec<Contributor>,
}

/// A later day of an open episode was worse (a higher severity): no new anomaly.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct AnomalyUpdated {
    pub anomaly_id: uuid::Uuid,
    pub account_id: String,
    pub service: String,
    /// The day that was worse.
    pub day: NaiveDate,
    #[serde(with = "rust_decimal::serde::str")]
    pub actual: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub expected: Decimal,
    pub deviation: f64,
    pub severity: super::anomaly::Severity,
    pub contributors: Vec<Contributor>,
}

/// The episode is over: `day` is its first normal day.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct AnomalyEnded {
    pub anomaly_id: uuid::Uuid,
    pub account_id: String,
    pub service: String,
    /// The first normal day.
    pub day: NaiveDate,
    /// The last anomalous day (`day` − 1, or the first day when `restated`).
    pub last_day: NaiveDate,
    /// A restated bill made the first anomalous day normal: the anomaly is withdrawn.
    #[serde(default)]
    pub restated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CostAnomalyEvent {
    CostAnomalyDetected(AnomalyDetected),
    CostAnomalyUpdated(AnomalyUpdated),
    CostAnomalyEnded(AnomalyEnded),
}

impl DomainEvent for CostAnomalyEvent {
    fn event_type(&self) -> String {
        match self {
            CostAnomalyEvent::CostAnomalyDetected(_) => "CostAnomalyDetected",
            CostAnomalyEvent::CostAnomalyUpdated(_) => "CostAnomalyUpdated",
            CostAnomalyEvent::CostAnomalyEnded(_) => "CostAnomalyEnded",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
