//! Commands of the costs context and the drafts they carry (unvalidated input).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::events::Provider;

/// `POST /api/v1/accounts`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountDraft {
    pub provider: Provider,
    /// Unique per tenant; imports name the account by it.
    #[schema(min_length = 1, max_length = 100, example = "aliyun-prod")]
    pub name: String,
    /// The provider's own id of the account.
    #[schema(min_length = 1, max_length = 200)]
    pub external_id: Option<String>,
    /// ISO 4217 code of the account's billing currency.
    #[schema(pattern = "^[A-Z]{3}$", example = "CNY")]
    pub currency: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub enum AccountCommand {
    OpenAccount(AccountDraft),
}

/// Imports are appended in bulk by the import itself; no command goes through `handle`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub enum BillImportCommand {}

/// `POST /api/v1/costs/virtual-tags`: creates or replaces a virtual tag.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualTagDraft {
    #[schema(pattern = "^[a-z][a-z0-9_]{0,62}$", example = "owner")]
    pub name: String,
    /// In order: a line gets the first value whose rule matches it.
    #[schema(min_items = 1, max_items = 50)]
    pub values: Vec<VirtualTagValueDraft>,
    /// The value of lines no rule matches (`null` when absent).
    #[schema(min_length = 1, max_length = 200)]
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualTagValueDraft {
    #[schema(min_length = 1, max_length = 200)]
    pub value: String,
    /// A tagging rule (`{"logic": "AND", "conditions": [...]}`) over the line fields
    /// `account`, `service`, `region`, `resource`, `currency`, `category`,
    /// `charge_category`, `sub_account` (strings), `cost` (number) and `tags.KEY`.
    #[schema(value_type = Object)]
    pub rule: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub enum VirtualTagCommand {
    SaveVirtualTag(VirtualTagDraft),
    /// From the recompute job: one step done (no event when `revision` is no longer the
    /// current definition, or the step is already recorded).
    RecordRecompute(super::events::RecomputeStep),
    /// From the recompute job: every step done.
    CompleteRecompute {
        name: String,
        revision: i64,
        lines: i64,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub enum AllocationRuleCommand {
    /// `POST /api/v1/costs/allocation-rules`: creates or replaces a rule.
    SaveAllocationRule(super::allocation::AllocationRuleDef),
}

/// What the anomaly job found on one day of an account × service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct DayFinding {
    pub day: chrono::NaiveDate,
    /// `None`: a normal day.
    pub anomaly: Option<Finding>,
}

/// An anomalous day.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Finding {
    pub actual: rust_decimal::Decimal,
    pub expected: rust_decimal::Decimal,
    pub deviation: f64,
    pub severity: super::anomaly::Severity,
    pub contributors: Vec<super::events::Contributor>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub enum CostAnomalyCommand {
    /// From the anomaly job: the verdicts of consecutive days, in order. Days already
    /// judged the same way record nothing (ADR 0026).
    RecordFindings {
        /// The stream's id (anomaly ids are derived from it).
        stream_id: uuid::Uuid,
        account_id: String,
        service: String,
        currency: String,
        days: Vec<DayFinding>,
    },
}
