//! What an alert rule watches: one condition per rule type, checked here (pure domain
//! code: the evaluator in `evaluate.rs` measures, this module decides).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::aggregate::{invalid, AlertError};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Comparator {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
    Ne,
}

impl Comparator {
    /// Whether `value <comparator> threshold` holds.
    pub fn holds(self, value: Decimal, threshold: Decimal) -> bool {
        match self {
            Comparator::Gt => value > threshold,
            Comparator::Gte => value >= threshold,
            Comparator::Lt => value < threshold,
            Comparator::Lte => value <= threshold,
            Comparator::Eq => value == threshold,
            Comparator::Ne => value != threshold,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Last,
}

impl Aggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Avg => "avg",
            Aggregation::Min => "min",
            Aggregation::Max => "max",
            Aggregation::Sum => "sum",
            Aggregation::Count => "count",
            Aggregation::Last => "last",
        }
    }
}

/// Anomaly severities as the costs context records them, in order.
pub const ANOMALY_SEVERITIES: [&str; 4] = ["low", "medium", "high", "critical"];

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetThreshold {
    /// One budget, or every budget of the tenant.
    #[serde(default)]
    pub budget_id: Option<Uuid>,
    /// Only crossings of at least this percent of the budget.
    #[serde(default)]
    pub min_percent: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CostThreshold {
    /// The window: the last `window_days` days up to and including today (UTC).
    pub window_days: u32,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Costs of this currency only (CNY when omitted).
    #[serde(default = "cny")]
    pub currency: String,
    pub comparator: Comparator,
    pub threshold: Decimal,
}

fn cny() -> String {
    "CNY".to_owned()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CostAnomaly {
    /// `low`, `medium`, `high` or `critical` (default `low`: every anomaly).
    #[serde(default = "low")]
    pub min_severity: String,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
}

fn low() -> String {
    "low".to_owned()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricThreshold {
    pub metric: String,
    /// One series, or every series of the metric (each is an episode key of its own).
    #[serde(default)]
    pub series: Option<String>,
    /// Series whose tags contain these.
    #[serde(default)]
    pub tags: Map<String, Value>,
    pub aggregation: Aggregation,
    /// The window: the last `window_seconds` seconds.
    pub window_seconds: u32,
    pub comparator: Comparator,
    pub threshold: Decimal,
    /// The condition must hold this long before the episode fires (0: at once).
    #[serde(default)]
    pub for_seconds: u32,
}

/// A rule's condition; its variant is the rule's `type`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    BudgetThreshold(BudgetThreshold),
    CostThreshold(CostThreshold),
    CostAnomaly(CostAnomaly),
    MetricThreshold(MetricThreshold),
}

/// The rule types, as the API names them.
pub const TYPES: [&str; 4] = [
    "budget_threshold",
    "cost_threshold",
    "cost_anomaly",
    "metric_threshold",
];

const MAX_TEXT: usize = 200;
const MAX_WINDOW_SECONDS: u32 = 31 * 86_400;

impl Condition {
    pub fn type_name(&self) -> &'static str {
        match self {
            Condition::BudgetThreshold(_) => "budget_threshold",
            Condition::CostThreshold(_) => "cost_threshold",
            Condition::CostAnomaly(_) => "cost_anomaly",
            Condition::MetricThreshold(_) => "metric_threshold",
        }
    }

    /// The condition as the client writes it (without the type around it): what the
    /// read model stores and `GET` answers, so a rule read can be sent back as it is.
    pub fn to_json(&self) -> serde_json::Result<Value> {
        match self {
            Condition::BudgetThreshold(c) => serde_json::to_value(c),
            Condition::CostThreshold(c) => serde_json::to_value(c),
            Condition::CostAnomaly(c) => serde_json::to_value(c),
            Condition::MetricThreshold(c) => serde_json::to_value(c),
        }
    }

    /// The condition of a rule of type `rule_type` from the client's JSON, checked.
    /// Errors name the field as `condition.<field>`.
    pub fn parse(rule_type: &str, raw: Value) -> Result<Self, AlertError> {
        fn de<T: serde::de::DeserializeOwned>(raw: Value) -> Result<T, AlertError> {
            serde_path_to_error::deserialize(raw).map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                // serde names a missing or unknown field only in its message.
                let named = ["missing field `", "unknown field `"]
                    .iter()
                    .find_map(|p| message.strip_prefix(p))
                    .and_then(|rest| rest.split('`').next());
                // (An unknown field is in the path already, a missing one is not.)
                let field = match (path.as_str(), named) {
                    (".", Some(name)) => format!("condition.{name}"),
                    (".", None) => "condition".to_owned(),
                    (path, Some(name)) if !path.ends_with(name) => {
                        format!("condition.{path}.{name}")
                    }
                    (path, _) => format!("condition.{path}"),
                };
                invalid(&field, message)
            })
        }
        let condition = match rule_type {
            "budget_threshold" => Condition::BudgetThreshold(de(raw)?),
            "cost_threshold" => Condition::CostThreshold(de(raw)?),
            "cost_anomaly" => Condition::CostAnomaly(de(raw)?),
            "metric_threshold" => Condition::MetricThreshold(de(raw)?),
            _ => {
                return Err(invalid(
                    "type",
                    format!("must be one of {}", TYPES.join(", ")),
                ))
            }
        };
        condition.check()?;
        Ok(condition)
    }

    fn check(&self) -> Result<(), AlertError> {
        let text = |field: &str, v: &Option<String>| match v {
            Some(s) if s.trim().is_empty() || s.chars().count() > MAX_TEXT => Err(invalid(
                &format!("condition.{field}"),
                "must be 1 to 200 characters",
            )),
            _ => Ok(()),
        };
        match self {
            Condition::BudgetThreshold(c) => {
                if let Some(p) = c.min_percent {
                    if p <= Decimal::ZERO || p > Decimal::from(1000) {
                        return Err(invalid(
                            "condition.min_percent",
                            "must be above 0 and at most 1000",
                        ));
                    }
                }
            }
            Condition::CostThreshold(c) => {
                if !(1..=366).contains(&c.window_days) {
                    return Err(invalid(
                        "condition.window_days",
                        "must be between 1 and 366",
                    ));
                }
                text("account", &c.account)?;
                text("service", &c.service)?;
                text("region", &c.region)?;
                if c.currency.len() != 3 || !c.currency.chars().all(|x| x.is_ascii_uppercase()) {
                    return Err(invalid(
                        "condition.currency",
                        "must be a three-letter ISO 4217 code",
                    ));
                }
                check_threshold(c.threshold)?;
            }
            Condition::CostAnomaly(c) => {
                if !ANOMALY_SEVERITIES.contains(&c.min_severity.as_str()) {
                    return Err(invalid(
                        "condition.min_severity",
                        "must be low, medium, high or critical",
                    ));
                }
                text("account", &c.account)?;
                text("service", &c.service)?;
            }
            Condition::MetricThreshold(c) => {
                text("metric", &Some(c.metric.clone()))?;
                text("series", &c.series)?;
                if c.tags.len() > 20 {
                    return Err(invalid("condition.tags", "at most 20 tags"));
                }
                for (k, v) in &c.tags {
                    if k.is_empty() || k.chars().count() > MAX_TEXT || !v.is_string() {
                        return Err(invalid(
                            "condition.tags",
                            format!("{k:?}: keys must be 1 to 200 characters and values strings"),
                        ));
                    }
                }
                if !(1..=MAX_WINDOW_SECONDS).contains(&c.window_seconds) {
                    return Err(invalid(
                        "condition.window_seconds",
                        format!("must be between 1 and {MAX_WINDOW_SECONDS}"),
                    ));
                }
                if c.for_seconds > MAX_WINDOW_SECONDS {
                    return Err(invalid(
                        "condition.for_seconds",
                        format!("must be at most {MAX_WINDOW_SECONDS}"),
                    ));
                }
                check_threshold(c.threshold)?;
            }
        }
        Ok(())
    }
}

fn check_threshold(t: Decimal) -> Result<(), AlertError> {
    if t.abs() >= Decimal::from(1_000_000_000_000_000_i64) {
        return Err(invalid(
            "condition.threshold",
            "must be less than 10^18 in size",
        ));
    }
    Ok(())
}

/// Whether an anomaly of `severity` is at least `min`.
pub fn anomaly_at_least(severity: &str, min: &str) -> bool {
    let rank = |s: &str| ANOMALY_SEVERITIES.iter().position(|x| *x == s);
    match (rank(severity), rank(min)) {
        (Some(s), Some(m)) => s >= m,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_metric_condition_parses_and_its_errors_name_the_field() {
        let ok = Condition::parse(
            "metric_threshold",
            json!({"metric": "cpu", "aggregation": "avg", "window_seconds": 300,
                   "comparator": "gt", "threshold": 80.5}),
        )
        .unwrap();
        assert_eq!(ok.type_name(), "metric_threshold");
        let err = |t: &str, v: Value| match Condition::parse(t, v) {
            Err(AlertError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(
            err(
                "metric_threshold",
                json!({"metric": "cpu", "aggregation": "median", "window_seconds": 300,
                       "comparator": "gt", "threshold": 1})
            ),
            "condition.aggregation"
        );
        assert_eq!(
            err(
                "metric_threshold",
                json!({"metric": "cpu", "aggregation": "avg", "window_seconds": 0,
                       "comparator": "gt", "threshold": 1})
            ),
            "condition.window_seconds"
        );
        assert_eq!(
            err(
                "cost_threshold",
                json!({"window_days": 7, "comparator": "gt"})
            ),
            "condition.threshold"
        );
        assert_eq!(
            err("cost_anomaly", json!({"min_severity": "huge"})),
            "condition.min_severity"
        );
        assert_eq!(err("disk_full", json!({})), "type");
        assert_eq!(
            err("budget_threshold", json!({"budget": "x"})),
            "condition.budget"
        );
    }

    #[test]
    fn comparators_and_anomaly_severities_order() {
        let (a, b) = (Decimal::from(5), Decimal::from(7));
        assert!(Comparator::Lt.holds(a, b) && Comparator::Lte.holds(a, a));
        assert!(Comparator::Gt.holds(b, a) && !Comparator::Gt.holds(a, a));
        assert!(Comparator::Ne.holds(a, b) && Comparator::Eq.holds(b, b));
        assert!(anomaly_at_least("high", "medium"));
        assert!(!anomaly_at_least("low", "medium"));
        assert!(!anomaly_at_least("bogus", "low"));
    }
}
