//! Aggregates of the costs context: cloud accounts (decide on `OpenAccount`) and bill
//! imports (written by `import` through a staged append; the aggregate only folds them).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::commands::{
    AccountCommand, AccountDraft, BillImportCommand, VirtualTagCommand, VirtualTagDraft,
};
use super::events::{
    AccountDetails, AccountEvent, BillImportEvent, VirtualTagDefinition, VirtualTagEvent,
    VirtualTagValue,
};
use super::reference::CURRENCIES;
use crate::pipeline::{DomainError, EventSourced, Rejection};

#[derive(Debug, thiserror::Error)]
pub enum CostsError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
}

impl DomainError for CostsError {
    fn rejection(&self) -> Rejection {
        match self {
            CostsError::Invalid { field, message } => Rejection::Invalid {
                field: field.clone(),
                message: message.clone(),
            },
            CostsError::NotFound(what) => Rejection::NotFound {
                what: (*what).to_owned(),
            },
            CostsError::AlreadyExists(what) => Rejection::AlreadyExists {
                what: (*what).to_owned(),
            },
        }
    }
}

pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> CostsError {
    CostsError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Whether `code` is an ISO 4217 currency code.
pub fn is_currency(code: &str) -> bool {
    CURRENCIES.binary_search(&code).is_ok()
}

/// A name clients choose (account names): 1-100 characters, no control characters, no
/// leading or trailing space.
pub fn check_name(field: &str, value: &str) -> Result<(), CostsError> {
    if value.is_empty() || value.chars().count() > 100 || value.trim() != value {
        return Err(invalid(
            field,
            "must be 1 to 100 characters without leading or trailing spaces",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

// --- accounts --------------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub details: Option<AccountDetails>,
}

impl EventSourced for Account {
    const STREAM_TYPE: &'static str = "cost_account";
}

#[async_trait]
impl Aggregate for Account {
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = CostsError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: AccountCommand,
        _: &(),
    ) -> Result<Vec<AccountEvent>, CostsError> {
        let AccountCommand::OpenAccount(AccountDraft {
            provider,
            name,
            external_id,
            currency,
        }) = command;
        check_name("name", &name)?;
        if let Some(id) = &external_id {
            if id.is_empty() || id.chars().count() > 200 || id.chars().any(char::is_control) {
                return Err(invalid(
                    "external_id",
                    "must be 1 to 200 characters without control characters",
                ));
            }
        }
        if !is_currency(&currency) {
            return Err(invalid("currency", "is not an ISO 4217 currency code"));
        }
        if self.details.is_some() {
            return Err(CostsError::AlreadyExists("account"));
        }
        Ok(vec![AccountEvent::AccountOpened(AccountDetails {
            name,
            provider,
            external_id,
            currency,
        })])
    }

    fn apply(&mut self, event: AccountEvent) {
        let AccountEvent::AccountOpened(details) = event;
        self.details = Some(details);
    }
}

// --- bill imports ----------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillImport {
    pub lines: i64,
    pub completed: bool,
}

impl EventSourced for BillImport {
    const STREAM_TYPE: &'static str = "bill_import";
}

#[async_trait]
impl Aggregate for BillImport {
    type Command = BillImportCommand;
    type Event = BillImportEvent;
    type Error = CostsError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: BillImportCommand,
        _: &(),
    ) -> Result<Vec<BillImportEvent>, CostsError> {
        match command {}
    }

    fn apply(&mut self, event: BillImportEvent) {
        match event {
            BillImportEvent::BillImportStarted(s) => self.lines = s.lines,
            BillImportEvent::BillLinesImported(_) => {}
            BillImportEvent::BillImportCompleted { .. } => self.completed = true,
        }
    }
}

// --- virtual tags ----------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualTag {
    pub definition: Option<VirtualTagDefinition>,
    /// Events applied so far: the stream version.
    pub version: i64,
    /// The stream version of the last save (the revision being recomputed).
    pub revision: i64,
    /// How far the current revision's recomputation has got, and whether it is done.
    pub recomputed_until: Option<DateTime<Utc>>,
    pub recompute_complete: bool,
}

impl EventSourced for VirtualTag {
    const STREAM_TYPE: &'static str = "virtual_tag";
}

/// A value or default of a virtual tag: 1-200 characters, no control characters.
fn check_value(field: &str, v: &str) -> Result<(), CostsError> {
    if v.is_empty() || v.chars().count() > 200 || v.chars().any(char::is_control) {
        return Err(invalid(
            field,
            "must be 1 to 200 characters without control characters",
        ));
    }
    Ok(())
}

#[async_trait]
impl Aggregate for VirtualTag {
    type Command = VirtualTagCommand;
    type Event = VirtualTagEvent;
    type Error = CostsError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: VirtualTagCommand,
        _: &(),
    ) -> Result<Vec<VirtualTagEvent>, CostsError> {
        let (name, values, default) = match command {
            VirtualTagCommand::SaveVirtualTag(VirtualTagDraft {
                name,
                values,
                default,
            }) => (name, values, default),
            VirtualTagCommand::RecordRecompute(step) => {
                let done = self.recomputed_until.is_some_and(|u| u >= step.to);
                let current = step.revision == self.revision && !self.recompute_complete;
                return Ok(if current && !done {
                    vec![VirtualTagEvent::VirtualTagRecomputed(step)]
                } else {
                    vec![]
                });
            }
            VirtualTagCommand::CompleteRecompute {
                name,
                revision,
                lines,
            } => {
                let current = revision == self.revision && !self.recompute_complete;
                return Ok(if current {
                    vec![VirtualTagEvent::VirtualTagRecomputeCompleted {
                        name,
                        revision,
                        lines,
                    }]
                } else {
                    vec![]
                });
            }
        };
        if !crate::projections::readmodel::is_identifier(&name) {
            return Err(invalid(
                "name",
                "must match [a-z][a-z0-9_]* and be at most 63 characters",
            ));
        }
        if values.is_empty() || values.len() > 50 {
            return Err(invalid("values", "must hold 1 to 50 values"));
        }
        let mut checked = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            check_value(&format!("values/{i}/value"), &v.value)?;
            if checked.iter().any(|c: &VirtualTagValue| c.value == v.value) {
                return Err(invalid(format!("values/{i}/value"), "appears twice"));
            }
            let rule = crate::tagging::rules::parse(&v.rule, &super::vtags::field_type)
                .map_err(|e| invalid(format!("values/{i}/rule{}", e.pointer), e.message))?;
            checked.push(VirtualTagValue {
                value: v.value,
                rule: rule.to_json(),
            });
        }
        if let Some(d) = &default {
            check_value("default", d)?;
        }
        let definition = VirtualTagDefinition {
            name,
            values: checked,
            default,
        };
        if self.definition.as_ref() == Some(&definition) {
            return Ok(vec![]); // nothing changes: no event, no recomputation
        }
        Ok(vec![VirtualTagEvent::VirtualTagSaved(definition)])
    }

    fn apply(&mut self, event: VirtualTagEvent) {
        self.version += 1;
        match event {
            VirtualTagEvent::VirtualTagSaved(d) => {
                self.definition = Some(d);
                self.revision = self.version;
                self.recomputed_until = None;
                self.recompute_complete = false;
            }
            VirtualTagEvent::VirtualTagRecomputed(step) => {
                self.recomputed_until = Some(step.to);
            }
            VirtualTagEvent::VirtualTagRecomputeCompleted { .. } => {
                self.recompute_complete = true;
            }
        }
    }
}

// --- allocation rules ------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationRule {
    pub definition: Option<super::allocation::AllocationRuleDef>,
}

impl EventSourced for AllocationRule {
    const STREAM_TYPE: &'static str = "allocation_rule";
}

#[async_trait]
impl Aggregate for AllocationRule {
    type Command = super::commands::AllocationRuleCommand;
    type Event = super::events::AllocationRuleEvent;
    type Error = CostsError;
    /// The tenant's other rules (for the cycle check).
    type Services = Vec<super::allocation::AllocationRuleDef>;

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: Self::Command,
        others: &Self::Services,
    ) -> Result<Vec<Self::Event>, CostsError> {
        let super::commands::AllocationRuleCommand::SaveAllocationRule(def) = command;
        def.validate(others)
            .map_err(|e| invalid(e.field, e.message))?;
        if self.definition.as_ref() == Some(&def) {
            return Ok(vec![]);
        }
        Ok(vec![
            super::events::AllocationRuleEvent::AllocationRuleSaved(def),
        ])
    }

    fn apply(&mut self, event: Self::Event) {
        let super::events::AllocationRuleEvent::AllocationRuleSaved(d) = event;
        self.definition = Some(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::costs::events::Provider;

    fn draft(name: &str, currency: &str) -> AccountCommand {
        AccountCommand::OpenAccount(AccountDraft {
            provider: Provider::Aliyun,
            name: name.into(),
            external_id: None,
            currency: currency.into(),
        })
    }

    #[tokio::test]
    async fn an_account_is_opened_once_with_a_known_currency() {
        let mut a = Account::default();
        let events = a.handle(draft("prod", "CNY"), &()).await.unwrap();
        assert_eq!(events.len(), 1);
        a.apply(events[0].clone());
        assert!(matches!(
            a.handle(draft("prod", "CNY"), &()).await,
            Err(CostsError::AlreadyExists(_))
        ));
        let err = Account::default()
            .handle(draft("prod", "ABC"), &())
            .await
            .unwrap_err();
        assert!(matches!(err, CostsError::Invalid { ref field, .. } if field == "currency"));
        let err = Account::default()
            .handle(draft(" prod", "CNY"), &())
            .await
            .unwrap_err();
        assert!(matches!(err, CostsError::Invalid { ref field, .. } if field == "name"));
    }
}
