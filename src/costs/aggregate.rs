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

// --- cost anomalies --------------------------------------------------------------------

/// The open episode of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAnomaly {
    pub anomaly_id: uuid::Uuid,
    pub first_day: chrono::NaiveDate,
    pub severity: super::anomaly::Severity,
}

/// The anomalies of one account × service (ADR 0026): at most one open episode. Episodes
/// are decided day by day from the job's findings:
///
/// - no open episode, an anomalous day on or after the last episode's end: `Detected`;
/// - open, a later anomalous day of a higher severity: `Updated`;
/// - open, a normal day after the first: `Ended` at that day; a normal first day (a
///   restated bill removed the cost): `Ended` with `restated`;
/// - anything else (a day judged again the same way, days before the open episode or
///   before the last end) records nothing, so a job run again appends nothing.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostAnomalyStream {
    pub open: Option<OpenAnomaly>,
    /// The first normal day after the last episode.
    pub last_ended: Option<chrono::NaiveDate>,
    /// Events so far (anomaly ids are derived from it).
    pub events: i64,
}

impl EventSourced for CostAnomalyStream {
    const STREAM_TYPE: &'static str = "cost_anomaly";
}

impl CostAnomalyStream {
    fn decide(
        &self,
        stream_id: uuid::Uuid,
        account_id: &str,
        service: &str,
        currency: &str,
        d: super::commands::DayFinding,
    ) -> Option<super::events::CostAnomalyEvent> {
        use super::events::{AnomalyDetected, AnomalyEnded, AnomalyUpdated, CostAnomalyEvent};
        match (&self.open, d.anomaly) {
            (Some(o), Some(f)) => (d.day > o.first_day && f.severity > o.severity).then(|| {
                CostAnomalyEvent::CostAnomalyUpdated(AnomalyUpdated {
                    anomaly_id: o.anomaly_id,
                    account_id: account_id.to_owned(),
                    service: service.to_owned(),
                    day: d.day,
                    actual: f.actual,
                    expected: f.expected,
                    deviation: f.deviation,
                    severity: f.severity,
                    contributors: f.contributors,
                })
            }),
            (Some(o), None) => (d.day >= o.first_day).then(|| {
                let restated = d.day == o.first_day;
                CostAnomalyEvent::CostAnomalyEnded(AnomalyEnded {
                    anomaly_id: o.anomaly_id,
                    account_id: account_id.to_owned(),
                    service: service.to_owned(),
                    day: d.day,
                    last_day: if restated {
                        d.day
                    } else {
                        d.day.pred_opt().unwrap_or(d.day)
                    },
                    restated,
                })
            }),
            (None, Some(f)) => (self.last_ended.is_none_or(|e| d.day >= e)).then(|| {
                let anomaly_id =
                    uuid::Uuid::new_v5(&stream_id, format!("{}/{}", d.day, self.events).as_bytes());
                CostAnomalyEvent::CostAnomalyDetected(AnomalyDetected {
                    anomaly_id,
                    account_id: account_id.to_owned(),
                    service: service.to_owned(),
                    currency: currency.to_owned(),
                    day: d.day,
                    actual: f.actual,
                    expected: f.expected,
                    deviation: f.deviation,
                    severity: f.severity,
                    contributors: f.contributors,
                })
            }),
            (None, None) => None,
        }
    }
}

#[async_trait]
impl Aggregate for CostAnomalyStream {
    type Command = super::commands::CostAnomalyCommand;
    type Event = super::events::CostAnomalyEvent;
    type Error = CostsError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(&self, command: Self::Command, _: &()) -> Result<Vec<Self::Event>, CostsError> {
        let super::commands::CostAnomalyCommand::RecordFindings {
            stream_id,
            account_id,
            service,
            currency,
            mut days,
        } = command;
        days.sort_by_key(|d| d.day);
        // Decided one day after the other on a copy that takes its own events.
        let mut state = self.clone();
        let mut out = Vec::new();
        for d in days {
            if let Some(e) = state.decide(stream_id, &account_id, &service, &currency, d) {
                state.apply(e.clone());
                out.push(e);
            }
        }
        Ok(out)
    }

    fn apply(&mut self, event: Self::Event) {
        use super::events::CostAnomalyEvent as E;
        self.events += 1;
        match event {
            E::CostAnomalyDetected(d) => {
                self.open = Some(OpenAnomaly {
                    anomaly_id: d.anomaly_id,
                    first_day: d.day,
                    severity: d.severity,
                })
            }
            E::CostAnomalyUpdated(u) => {
                if let Some(o) = self.open.as_mut() {
                    o.severity = o.severity.max(u.severity);
                }
            }
            E::CostAnomalyEnded(e) => {
                self.open = None;
                self.last_ended = Some(e.day);
            }
        }
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

    mod anomalies {
        use super::super::*;
        use crate::costs::anomaly::Severity;
        use crate::costs::commands::{CostAnomalyCommand, DayFinding, Finding};
        use crate::costs::events::CostAnomalyEvent as E;
        use chrono::NaiveDate;
        use rust_decimal::Decimal;

        fn day(n: u32) -> NaiveDate {
            NaiveDate::from_ymd_opt(2024, 3, n).unwrap()
        }

        fn finding(severity: Option<Severity>) -> Option<Finding> {
            severity.map(|severity| Finding {
                actual: Decimal::from(500),
                expected: Decimal::from(100),
                deviation: 9.0,
                severity,
                contributors: Vec::new(),
            })
        }

        /// Days `from..` with the given verdicts.
        fn record(from: u32, verdicts: &[Option<Severity>]) -> CostAnomalyCommand {
            CostAnomalyCommand::RecordFindings {
                stream_id: uuid::Uuid::nil(),
                account_id: "prod".into(),
                service: "ecs".into(),
                currency: "CNY".into(),
                days: verdicts
                    .iter()
                    .enumerate()
                    .map(|(i, s)| DayFinding {
                        day: day(from + i as u32),
                        anomaly: finding(*s),
                    })
                    .collect(),
            }
        }

        async fn when(a: &mut CostAnomalyStream, c: CostAnomalyCommand) -> Vec<E> {
            let events = a.handle(c, &()).await.unwrap();
            for e in &events {
                a.apply(e.clone());
            }
            events
        }

        const N: Option<Severity> = None;
        const LOW: Option<Severity> = Some(Severity::Low);
        const HIGH: Option<Severity> = Some(Severity::High);

        #[tokio::test]
        async fn an_episode_is_detected_once_worsens_and_ends_at_the_first_normal_day() {
            let mut a = CostAnomalyStream::default();
            let v = [N, LOW, HIGH, LOW, N, N];
            let events = when(&mut a, record(1, &v)).await;
            assert_eq!(events.len(), 3, "{events:?}");
            assert!(
                matches!(&events[0], E::CostAnomalyDetected(d) if d.day == day(2) && d.severity == Severity::Low)
            );
            assert!(
                matches!(&events[1], E::CostAnomalyUpdated(u) if u.day == day(3) && u.severity == Severity::High)
            );
            assert!(
                matches!(&events[2], E::CostAnomalyEnded(e) if e.day == day(5) && e.last_day == day(4) && !e.restated)
            );
            // The same days again, or a part of them: nothing.
            assert!(when(&mut a, record(1, &v)).await.is_empty());
            assert!(when(&mut a, record(3, &v[2..])).await.is_empty());
            // A new episode later gets a new id.
            let later = when(&mut a, record(10, &[LOW])).await;
            let (E::CostAnomalyDetected(first), E::CostAnomalyDetected(second)) =
                (&events[0], &later[0])
            else {
                panic!("{later:?}");
            };
            assert_ne!(first.anomaly_id, second.anomaly_id);
        }

        #[tokio::test]
        async fn a_restatement_that_removes_the_first_day_withdraws_the_open_episode() {
            let mut a = CostAnomalyStream::default();
            when(&mut a, record(1, &[N, HIGH, HIGH])).await;
            let events = when(&mut a, record(1, &[N, N, N])).await;
            assert_eq!(events.len(), 1, "{events:?}");
            assert!(matches!(&events[0], E::CostAnomalyEnded(e) if e.day == day(2) && e.restated));
            // Restored again: a new anomaly on the same day, with another id.
            let again = when(&mut a, record(1, &[N, HIGH])).await;
            assert!(matches!(&again[0], E::CostAnomalyDetected(d) if d.day == day(2)));
        }

        #[tokio::test]
        async fn replaying_the_events_rebuilds_the_same_state() {
            let mut a = CostAnomalyStream::default();
            let mut all = when(&mut a, record(1, &[LOW, HIGH, N])).await;
            all.extend(when(&mut a, record(9, &[LOW])).await);
            let mut b = CostAnomalyStream::default();
            for e in all {
                b.apply(e);
            }
            assert_eq!(a, b);
        }
    }
}
