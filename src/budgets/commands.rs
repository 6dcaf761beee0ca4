//! Commands of the budgets context and the drafts they carry (unvalidated input).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::events::{BudgetType, Period};

/// What a client sends to create or replace a budget. Validated by the aggregate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetDraft {
    /// 1–200 characters, not only blanks.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// Decimal amount; a JSON string (`"1200.50"`) or number.
    #[schema(value_type = String, example = "1200.50", pattern = "^(?=.*[1-9])[0-9]{1,17}(\\.[0-9]{1,10})?$")]
    pub amount: Decimal,
    /// ISO 4217 code; CNY when omitted.
    #[serde(default)]
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    pub period: Period,
    #[serde(rename = "type")]
    pub budget_type: BudgetType,
    #[schema(value_type = String, format = Date, example = "2026-01-01")]
    pub start_date: chrono::NaiveDate,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Date)]
    pub end_date: Option<chrono::NaiveDate>,
    /// Tags a cost line must carry to count, e.g. `{"team": "data"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tag_filter: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub service_filter: Option<Vec<String>>,
    /// Percent of the amount at which to alert, 1..=1000 (above 100 % is allowed).
    #[serde(default)]
    #[schema(value_type = Option<Vec<f64>>)]
    pub alert_thresholds: Option<Vec<Decimal>>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub account: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BudgetCommand {
    CreateBudget(BudgetDraft),
    UpdateBudget(BudgetDraft),
    DeleteBudget,
    /// From the costs context's threshold process manager: records a crossing once per
    /// (period, percent, basis); a repeat appends nothing.
    RecordThresholdCrossing(super::events::ThresholdCrossing),
}
