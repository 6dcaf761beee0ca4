//! Virtual tags on bill lines (seed 000): a name, values with tagging rules over the line's
//! fields (the first value whose rule matches wins) and a default. The rule engine is the
//! tagging context's (`tagging::rules`, ADR 0008): the same rule gives the same answer as
//! SQL (`case_sql`, the backfill of existing lines) and in Rust (`evaluate`, lines
//! projected after the tag was saved).

use chrono::DateTime;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::events::VirtualTagDefinition;
use crate::tagging::rules::{self, AttrType, Rule, SqlParam};

/// The text fields of a line a rule may read; `cost` is a number and `tags.KEY` a string.
const TEXT_FIELDS: &[&str] = &[
    "account",
    "service",
    "region",
    "resource",
    "currency",
    "category",
    "charge_category",
    "sub_account",
];

/// A tag key a rule may name after `tags.`: it goes into SQL as a string literal, so it is
/// held to letters, digits and `_ . : / -` (1-100 characters).
fn tag_key(field: &str) -> Option<&str> {
    let key = field.strip_prefix("tags.")?;
    let ok = !key.is_empty()
        && key.len() <= 100
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'));
    ok.then_some(key)
}

/// The type of a line field, `None` for an unknown field.
pub fn field_type(field: &str) -> Option<AttrType> {
    if TEXT_FIELDS.contains(&field) || tag_key(field).is_some() {
        Some(AttrType::String)
    } else if field == "cost" {
        Some(AttrType::Number)
    } else {
        None
    }
}

/// The SQL of a line field over `cost_lines` (names from the whitelist above only).
fn field_sql(field: &str, _: AttrType) -> String {
    match tag_key(field) {
        Some(key) => format!("(tags ->> '{key}')"),
        None if field == "cost" || TEXT_FIELDS.contains(&field) => field.to_owned(),
        // Unreachable for parsed rules; a NULL never matches.
        None => "NULL".to_owned(),
    }
}

/// A definition with its rules parsed.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub name: String,
    pub values: Vec<(String, Rule)>,
    pub default: Option<String>,
}

impl Compiled {
    pub fn new(d: &VirtualTagDefinition) -> Result<Self, rules::RuleError> {
        Ok(Self {
            name: d.name.clone(),
            values: d
                .values
                .iter()
                .map(|v| Ok((v.value.clone(), rules::parse(&v.rule, &field_type)?)))
                .collect::<Result<_, rules::RuleError>>()?,
            default: d.default.clone(),
        })
    }

    /// `CASE WHEN rule THEN $v … ELSE $default END`, parameters from `$first_param`.
    pub fn case_sql(&self, first_param: usize) -> (String, Vec<SqlParam>) {
        let mut params = Vec::new();
        let mut sql = String::from("CASE");
        for (value, rule) in &self.values {
            let c = rules::compile(rule, &field_sql, epoch(), first_param + params.len());
            params.extend(c.params);
            params.push(SqlParam::Text(value.clone()));
            sql.push_str(&format!(
                " WHEN {} THEN ${}::text",
                c.sql,
                first_param + params.len() - 1
            ));
        }
        match &self.default {
            Some(d) => {
                params.push(SqlParam::Text(d.clone()));
                sql.push_str(&format!(
                    " ELSE ${}::text END",
                    first_param + params.len() - 1
                ));
            }
            None => sql.push_str(" ELSE NULL END"),
        }
        (sql, params)
    }

    /// The value of one line: `text(field)` gives its text fields, `cost` its cost and
    /// `tags` its tags.
    pub fn evaluate(
        &self,
        text: &dyn Fn(&str) -> Option<String>,
        cost: Decimal,
        tags: &Map<String, Value>,
    ) -> Option<String> {
        let value_of = |field: &str| -> Option<rules::Value> {
            if field == "cost" {
                return Some(rules::Value::Number(cost));
            }
            let v = match tag_key(field) {
                Some(key) => tags.get(key)?.as_str()?.to_owned(),
                None => text(field)?,
            };
            Some(rules::Value::Text(v))
        };
        self.values
            .iter()
            .find(|(_, rule)| rules::explain(rule, &value_of, epoch()).result)
            .map(|(v, _)| v.clone())
            .or_else(|| self.default.clone())
    }
}

/// Rules over bill lines have no date field: `as_of` never matters.
fn epoch() -> chrono::DateTime<chrono::Utc> {
    DateTime::UNIX_EPOCH
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::costs::events::VirtualTagValue;
    use serde_json::json;

    fn def() -> VirtualTagDefinition {
        VirtualTagDefinition {
            name: "owner".into(),
            values: vec![
                VirtualTagValue {
                    value: "web".into(),
                    rule: json!({"logic": "AND", "conditions": [
                        {"field": "tags.team", "operator": "=", "value": "web"}]}),
                },
                VirtualTagValue {
                    value: "big-storage".into(),
                    rule: json!({"logic": "AND", "conditions": [
                        {"field": "service", "operator": "=", "value": "oss"},
                        {"field": "cost", "operator": ">", "value": 100}]}),
                },
            ],
            default: Some("other".into()),
        }
    }

    #[test]
    fn the_first_matching_value_wins_and_the_default_takes_the_rest() {
        let c = Compiled::new(&def()).unwrap();
        let tags = |t: Value| t.as_object().cloned().unwrap();
        let svc = |s: &'static str| move |f: &str| (f == "service").then(|| s.to_owned());
        let web = tags(json!({"team": "web"}));
        let none = Map::new();
        assert_eq!(
            c.evaluate(&svc("oss"), Decimal::from(500), &web).as_deref(),
            Some("web")
        );
        assert_eq!(
            c.evaluate(&svc("oss"), Decimal::from(500), &none)
                .as_deref(),
            Some("big-storage")
        );
        assert_eq!(
            c.evaluate(&svc("oss"), Decimal::from(5), &none).as_deref(),
            Some("other")
        );
    }

    #[test]
    fn the_case_expression_binds_every_value_and_tag_keys_are_whitelisted() {
        let (sql, params) = Compiled::new(&def()).unwrap().case_sql(3);
        assert!(sql.starts_with("CASE WHEN "), "{sql}");
        assert!(sql.contains("(tags ->> 'team')"), "{sql}");
        assert!(
            sql.ends_with(&format!("ELSE ${}::text END", 3 + params.len() - 1)),
            "{sql}"
        );
        assert!(
            !sql.contains("'web'") && !sql.contains("'other'"),
            "values are parameters"
        );
        assert_eq!(field_type("tags.cost-center"), Some(AttrType::String));
        assert_eq!(field_type("tags.a'b"), None);
        assert_eq!(field_type("tags."), None);
        assert_eq!(field_type("colour"), None);
        assert_eq!(field_type("cost"), Some(AttrType::Number));
    }
}
