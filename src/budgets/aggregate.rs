//! The Budget aggregate: validates commands against the budget's state and emits events.
//! Knows nothing of HTTP or the database.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::commands::{BudgetCommand, BudgetDraft};
use super::events::{BudgetDetails, BudgetEvent, Period};
use crate::eventstore::codec::Upcaster;
use crate::pipeline::EventSourced;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub details: Option<BudgetDetails>,
    pub deleted: bool,
    /// Thresholds crossed: (period start, percent, basis). Each is recorded once.
    pub crossed: std::collections::BTreeSet<(chrono::NaiveDate, String, String)>,
}

/// Why a budget command was refused. HTTP: `Invalid` → 422 `validation_failed` (with
/// the field), `NotFound` → 404, `AlreadyExists` → 409.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("budget not found")]
    NotFound,
    #[error("budget already exists")]
    AlreadyExists,
}

impl crate::pipeline::DomainError for BudgetError {
    fn rejection(&self) -> crate::pipeline::Rejection {
        use crate::pipeline::Rejection;
        match self {
            BudgetError::Invalid { field, message } => Rejection::Invalid {
                field: field.clone(),
                message: message.clone(),
            },
            BudgetError::NotFound => Rejection::NotFound {
                what: "budget".into(),
            },
            BudgetError::AlreadyExists => Rejection::AlreadyExists {
                what: "budget".into(),
            },
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> BudgetError {
    BudgetError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

const MAX_TEXT: usize = 200;

impl BudgetDetails {
    /// Checks a draft and fills defaults. The first problem found is reported.
    pub fn validate(draft: BudgetDraft) -> Result<Self, BudgetError> {
        let name = draft.name.trim().to_owned();
        if name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if name.chars().count() > MAX_TEXT {
            return Err(invalid(
                "name",
                format!("must be at most {MAX_TEXT} characters"),
            ));
        }
        if draft.amount <= Decimal::ZERO {
            return Err(invalid("amount", "must be greater than 0"));
        }
        if draft.amount >= Decimal::from(1_000_000_000_000_000_i64) {
            return Err(invalid("amount", "must be less than 10^18"));
        }
        let currency = draft.currency.unwrap_or_else(|| "CNY".to_owned());
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid(
                "currency",
                "must be a three-letter ISO 4217 code such as CNY",
            ));
        }
        match draft.end_date {
            Some(end) if end <= draft.start_date => {
                return Err(invalid("end_date", "must be after start_date"));
            }
            None if draft.period == Period::Custom => {
                return Err(invalid("end_date", "is required for a custom period"));
            }
            _ => {}
        }
        let tag_filter = draft.tag_filter.unwrap_or_default();
        for (k, v) in &tag_filter {
            if k.is_empty() || k.chars().count() > MAX_TEXT {
                return Err(invalid("tag_filter", "keys must be 1 to 200 characters"));
            }
            if !v.is_string() {
                return Err(invalid(
                    "tag_filter",
                    format!("value of {k:?} must be a string"),
                ));
            }
        }
        let service_filter = draft.service_filter.unwrap_or_default();
        if service_filter.iter().any(|s| s.trim().is_empty()) {
            return Err(invalid("service_filter", "entries must not be empty"));
        }
        let alert_thresholds = draft.alert_thresholds.unwrap_or_default();
        let (lo, hi) = (Decimal::ONE, Decimal::from(1000));
        if alert_thresholds.iter().any(|t| *t < lo || *t > hi) {
            return Err(invalid(
                "alert_thresholds",
                "each threshold must be between 1 and 1000 (percent)",
            ));
        }
        let mut sorted = alert_thresholds.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != alert_thresholds.len() {
            return Err(invalid("alert_thresholds", "thresholds must not repeat"));
        }
        if let Some(a) = &draft.account {
            if a.trim().is_empty() || a.chars().count() > MAX_TEXT {
                return Err(invalid("account", "must be 1 to 200 characters"));
            }
        }
        Ok(BudgetDetails {
            name,
            amount: draft.amount,
            currency,
            period: draft.period,
            budget_type: draft.budget_type,
            start_date: draft.start_date,
            end_date: draft.end_date,
            tag_filter,
            service_filter,
            alert_thresholds,
            account: draft.account,
        })
    }
}

#[async_trait]
impl Aggregate for Budget {
    type Command = BudgetCommand;
    type Event = BudgetEvent;
    type Error = BudgetError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: BudgetCommand,
        _: &(),
    ) -> Result<Vec<BudgetEvent>, BudgetError> {
        let exists = self.details.is_some() && !self.deleted;
        match command {
            BudgetCommand::CreateBudget(draft) => {
                if self.details.is_some() {
                    return Err(BudgetError::AlreadyExists);
                }
                Ok(vec![BudgetEvent::BudgetCreated(BudgetDetails::validate(
                    draft,
                )?)])
            }
            BudgetCommand::UpdateBudget(draft) => {
                if !exists {
                    return Err(BudgetError::NotFound);
                }
                let details = BudgetDetails::validate(draft)?;
                if self.details.as_ref() == Some(&details) {
                    return Ok(vec![]); // nothing changes: no event
                }
                Ok(vec![BudgetEvent::BudgetUpdated(details)])
            }
            BudgetCommand::DeleteBudget => {
                if !exists {
                    return Err(BudgetError::NotFound);
                }
                Ok(vec![BudgetEvent::BudgetDeleted {}])
            }
            BudgetCommand::RecordThresholdCrossing(c) => {
                if !exists {
                    return Err(BudgetError::NotFound);
                }
                if c.basis != "actual" && c.basis != "forecast" {
                    return Err(invalid("basis", "must be actual or forecast"));
                }
                if self.crossed.contains(&crossing_key(&c)) {
                    return Ok(vec![]); // crossed before in this period: never twice
                }
                Ok(vec![BudgetEvent::BudgetThresholdCrossed(c)])
            }
        }
    }

    fn apply(&mut self, event: BudgetEvent) {
        match event {
            BudgetEvent::BudgetCreated(d) | BudgetEvent::BudgetUpdated(d) => self.details = Some(d),
            BudgetEvent::BudgetDeleted {} => self.deleted = true,
            BudgetEvent::BudgetThresholdCrossed(c) => {
                self.crossed.insert(crossing_key(&c));
            }
        }
    }
}

impl Budget {
    /// Whether this crossing (its period, percent and basis) was recorded before.
    pub fn has_crossed(&self, c: &super::events::ThresholdCrossing) -> bool {
        self.crossed.contains(&crossing_key(c))
    }
}

/// What makes a crossing the same one: its period, percent (normalised: `80` = `80.0`)
/// and basis.
fn crossing_key(c: &super::events::ThresholdCrossing) -> (chrono::NaiveDate, String, String) {
    (
        c.period_start,
        c.percent.normalize().to_string(),
        c.basis.clone(),
    )
}

/// v1 of `BudgetCreated`/`BudgetUpdated` called the thresholds `thresholds` and had no
/// `currency` (always CNY).
fn details_v1_to_v2(mut data: Value) -> Value {
    if let Value::Object(map) = &mut data {
        if let Some(t) = map.remove("thresholds") {
            map.insert("alert_thresholds".into(), t);
        }
        map.entry("currency")
            .or_insert_with(|| Value::String("CNY".into()));
    }
    data
}

static UPCASTERS: [Upcaster; 2] = [
    Upcaster {
        event_type: "BudgetCreated",
        from_version: 1,
        upcast: details_v1_to_v2,
    },
    Upcaster {
        event_type: "BudgetUpdated",
        from_version: 1,
        upcast: details_v1_to_v2,
    },
];

impl EventSourced for Budget {
    const STREAM_TYPE: &'static str = "budget";

    fn upcasters() -> &'static [Upcaster] {
        &UPCASTERS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budgets::events::BudgetType;
    use crate::eventstore::codec;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    type BudgetTest = TestFramework<Budget>;

    fn draft() -> BudgetDraft {
        serde_json::from_value(json!({
            "name": "Data team", "amount": "1200.50", "period": "monthly", "type": "cost",
            "start_date": "2026-01-01", "tag_filter": {"team": "data"},
            "service_filter": ["ecs"], "alert_thresholds": [80, 100, 120], "account": "aliyun-main"
        }))
        .unwrap()
    }

    fn details() -> BudgetDetails {
        BudgetDetails::validate(draft()).unwrap()
    }

    #[test]
    fn create_emits_created_with_defaults() {
        let d = details();
        assert_eq!(d.currency, "CNY");
        assert_eq!(d.amount.to_string(), "1200.50");
        BudgetTest::with(())
            .given_no_previous_events()
            .when(BudgetCommand::CreateBudget(draft()))
            .then_expect_events(vec![BudgetEvent::BudgetCreated(d)]);
    }

    #[test]
    fn create_twice_is_refused() {
        BudgetTest::with(())
            .given(vec![BudgetEvent::BudgetCreated(details())])
            .when(BudgetCommand::CreateBudget(draft()))
            .then_expect_error(BudgetError::AlreadyExists);
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("amount", json!({"amount": "0"})),
            ("amount", json!({"amount": "-5"})),
            ("end_date", json!({"end_date": "2025-12-31"})),
            ("end_date", json!({"end_date": "2026-01-01"})),
            ("end_date", json!({"period": "custom"})),
            ("alert_thresholds", json!({"alert_thresholds": [0]})),
            ("alert_thresholds", json!({"alert_thresholds": [1001]})),
            ("alert_thresholds", json!({"alert_thresholds": [80, 80]})),
            ("name", json!({"name": "  "})),
            ("currency", json!({"currency": "cny"})),
            ("tag_filter", json!({"tag_filter": {"team": 5}})),
        ];
        for (field, patch) in cases {
            let mut v = serde_json::to_value(draft()).unwrap();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let d: BudgetDraft = serde_json::from_value(v).unwrap();
            let err = BudgetTest::with(())
                .given_no_previous_events()
                .when(BudgetCommand::CreateBudget(d))
                .inspect_result()
                .unwrap_err();
            match err {
                BudgetError::Invalid { field: f, .. } => assert_eq!(f, field, "patch {patch}"),
                other => panic!("expected Invalid for {patch}, got {other:?}"),
            }
        }
    }

    #[test]
    fn thresholds_above_100_percent_are_allowed() {
        let mut d = draft();
        d.alert_thresholds = Some(vec![Decimal::from(150), Decimal::from(1000)]);
        assert!(BudgetDetails::validate(d).is_ok());
    }

    #[test]
    fn update_of_unknown_or_deleted_budget_is_not_found() {
        BudgetTest::with(())
            .given_no_previous_events()
            .when(BudgetCommand::UpdateBudget(draft()))
            .then_expect_error(BudgetError::NotFound);
        BudgetTest::with(())
            .given(vec![
                BudgetEvent::BudgetCreated(details()),
                BudgetEvent::BudgetDeleted {},
            ])
            .when(BudgetCommand::UpdateBudget(draft()))
            .then_expect_error(BudgetError::NotFound);
    }

    #[test]
    fn update_with_same_content_emits_nothing_and_change_emits_updated() {
        BudgetTest::with(())
            .given(vec![BudgetEvent::BudgetCreated(details())])
            .when(BudgetCommand::UpdateBudget(draft()))
            .then_expect_events(vec![]);
        let mut changed = draft();
        changed.budget_type = BudgetType::Usage;
        let expected = BudgetDetails::validate(changed.clone()).unwrap();
        BudgetTest::with(())
            .given(vec![BudgetEvent::BudgetCreated(details())])
            .when(BudgetCommand::UpdateBudget(changed))
            .then_expect_events(vec![BudgetEvent::BudgetUpdated(expected)]);
    }

    #[test]
    fn delete_twice_is_not_found() {
        BudgetTest::with(())
            .given(vec![BudgetEvent::BudgetCreated(details())])
            .when(BudgetCommand::DeleteBudget)
            .then_expect_events(vec![BudgetEvent::BudgetDeleted {}]);
        BudgetTest::with(())
            .given(vec![
                BudgetEvent::BudgetCreated(details()),
                BudgetEvent::BudgetDeleted {},
            ])
            .when(BudgetCommand::DeleteBudget)
            .then_expect_error(BudgetError::NotFound);
    }

    #[test]
    fn version_1_event_is_upcast() {
        let v1 = json!({
            "name": "Old", "amount": "10", "period": "yearly", "budget_type": "usage",
            "start_date": "2024-01-01", "end_date": null, "tag_filter": {}, "service_filter": [],
            "thresholds": ["50", "90"], "account": null
        });
        let raw = serde_json::value::to_raw_value(&v1).unwrap();
        let e: BudgetEvent = codec::decode("BudgetCreated", 1, &raw, Budget::upcasters()).unwrap();
        let BudgetEvent::BudgetCreated(d) = e else {
            panic!("wrong variant")
        };
        assert_eq!(d.currency, "CNY");
        assert_eq!(
            d.alert_thresholds,
            vec![Decimal::from(50), Decimal::from(90)]
        );
    }

    #[test]
    fn events_round_trip_through_the_codec() {
        for e in [
            BudgetEvent::BudgetCreated(details()),
            BudgetEvent::BudgetDeleted {},
        ] {
            let row = codec::encode(&e).unwrap();
            let raw = row.payload;
            let back: BudgetEvent = codec::decode(
                &row.event_type,
                row.schema_version,
                &raw,
                Budget::upcasters(),
            )
            .unwrap();
            assert_eq!(back, e);
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_details() -> impl Strategy<Value = BudgetDetails> {
            (
                "[a-zA-Z0-9 ]{1,40}",
                (1i64..1_000_000_000_000, 0u32..5),
                prop::sample::select(vec![Period::Monthly, Period::Quarterly, Period::Yearly]),
                prop::collection::btree_set(1u32..=1000, 0..5),
                prop::collection::vec("[a-z]{1,10}", 0..4),
                0u32..3000,
            )
                .prop_map(
                    |(name, (mantissa, scale), period, thresholds, services, days)| {
                        let start = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap()
                            + chrono::Days::new(u64::from(days));
                        BudgetDetails {
                            name,
                            amount: Decimal::new(mantissa, scale),
                            currency: "CNY".into(),
                            period,
                            budget_type: crate::budgets::events::BudgetType::Cost,
                            start_date: start,
                            end_date: None,
                            tag_filter: serde_json::Map::new(),
                            service_filter: services,
                            alert_thresholds: thresholds.into_iter().map(Decimal::from).collect(),
                            account: None,
                        }
                    },
                )
        }

        proptest! {
            /// Whatever a budget holds survives the trip through the store's encoding
            /// exactly (decimals keep their scale), so replays rebuild the same state.
            #[test]
            fn events_round_trip_exactly(d in any_details()) {
                let e = BudgetEvent::BudgetUpdated(d);
                let row = codec::encode(&e).unwrap();
                let raw = row.payload;
                let back: BudgetEvent =
                    codec::decode(&row.event_type, row.schema_version, &raw, Budget::upcasters()).unwrap();
                prop_assert_eq!(&back, &e);
                let BudgetEvent::BudgetUpdated(d2) = back else { unreachable!() };
                let BudgetEvent::BudgetUpdated(d1) = e else { unreachable!() };
                prop_assert_eq!(d1.amount.to_string(), d2.amount.to_string());
            }
        }
    }
}
