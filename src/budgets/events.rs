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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", content = "data")]
pub enum BudgetEvent {
    BudgetCreated(BudgetDetails),
    BudgetUpdated(BudgetDetails),
    BudgetDeleted {},
}

impl DomainEvent for BudgetEvent {
    fn event_type(&self) -> String {
        match self {
            BudgetEvent::BudgetCreated(_) => "BudgetCreated",
            BudgetEvent::BudgetUpdated(_) => "BudgetUpdated",
            BudgetEvent::BudgetDeleted {} => "BudgetDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            // v2: `thresholds` renamed `alert_thresholds`, `currency` made explicit.
            BudgetEvent::BudgetCreated(_) | BudgetEvent::BudgetUpdated(_) => "2",
            BudgetEvent::BudgetDeleted {} => "1",
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
