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
