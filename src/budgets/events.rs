//! Events of the budgets context. `event_type` and `event_version` are stable: they are
//! stored with every event forever (see the upcaster in `aggregate.rs` for version 1).

use cqrs_es::DomainEvent;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Monthly,
    Quarterly,
    Yearly,
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetType {
    Cost,
    Usage,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Monthly => "monthly",
            Period::Quarterly => "quarterly",
            Period::Yearly => "yearly",
            Period::Custom => "custom",
        }
    }
}

impl BudgetType {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetType::Cost => "cost",
            BudgetType::Usage => "usage",
        }
    }
}

/// A validated budget, as carried by `BudgetCreated` / `BudgetUpdated` (full state, so
/// the projection never needs to read before it writes).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct BudgetDetails {
    pub name: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub period: Period,
    pub budget_type: BudgetType,
    pub start_date: chrono::NaiveDate,
    pub end_date: Option<chrono::NaiveDate>,
    pub tag_filter: serde_json::Map<String, serde_json::Value>,
    pub service_filter: Vec<String>,
    #[serde(with = "decimal_vec_str")]
    pub alert_thresholds: Vec<Decimal>,
    pub account: Option<String>,
}

/// A threshold of a budget crossed for the first time in one of its periods, on one
/// basis (`actual`: spent; `forecast`: the forecast of the period's total).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ThresholdCrossing {
    pub period_start: chrono::NaiveDate,
    /// First day after the period.
    pub period_end: chrono::NaiveDate,
    #[serde(with = "rust_decimal::serde::str")]
    pub percent: Decimal,
    /// `actual` or `forecast`.
    pub basis: String,
    /// The percent of the amount observed (spent or forecast).
    #[serde(with = "rust_decimal::serde::str")]
    pub observed_percent: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub spent: Decimal,
    #[serde(with = "rust_decimal::serde::str_option", default)]
    pub forecast: Option<Decimal>,
    /// The day the figures are as of.
    pub as_of: chrono::NaiveDate,
    /// The bill import whose lines made the difference.
    pub import_id: Option<uuid::Uuid>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", content = "data")]
pub enum BudgetEvent {
    BudgetCreated(BudgetDetails),
    BudgetUpdated(BudgetDetails),
    BudgetDeleted {},
    BudgetThresholdCrossed(ThresholdCrossing),
}

impl DomainEvent for BudgetEvent {
    fn event_type(&self) -> String {
        match self {
            BudgetEvent::BudgetCreated(_) => "BudgetCreated",
            BudgetEvent::BudgetUpdated(_) => "BudgetUpdated",
            BudgetEvent::BudgetDeleted {} => "BudgetDeleted",
            BudgetEvent::BudgetThresholdCrossed(_) => "BudgetThresholdCrossed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            // v2: `thresholds` renamed `alert_thresholds`, `currency` made explicit.
            BudgetEvent::BudgetCreated(_) | BudgetEvent::BudgetUpdated(_) => "2",
            BudgetEvent::BudgetDeleted {} | BudgetEvent::BudgetThresholdCrossed(_) => "1",
        }
        .to_owned()
    }
}

/// Decimals in events are strings: exact, and independent of JSON number handling.
mod decimal_vec_str {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Decimal], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|d| d.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Decimal>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}
