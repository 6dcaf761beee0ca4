//! The tag rule engine, independent of what a subject is (users, resources and cloud bill
//! lines all use it): the JSON rule format, its validation against a schema of typed
//! attributes, its compilation to one parameterised SQL boolean expression, and its
//! evaluation in Rust for one subject, to explain a result.
//!
//! Semantics (the contract shared by the SQL and the Rust evaluation):
//! - logic is two-valued: a null attribute satisfies no operator except `is_null`, so `!=`
//!   and `not_in` are false on null;
//! - `AND` holds when all conditions hold, `OR` when any does, `NOT` when none does
//!   (a null attribute can therefore make a `NOT` rule match);
//! - numbers compare as exact decimals, strings byte for byte (`contains` is a
//!   case-sensitive substring), dates as instants at microsecond precision (PostgreSQL's);
//! - `in_range` and `recent_days` are inclusive at both ends.
//!
//! Both sides are driven by one [`Plan`] per condition, built by the same function, so the
//! SQL and the Rust evaluation cannot drift apart; a condition that cannot be planned
//! (only possible for a hand-built, unvalidated [`Rule`]) is false on both sides.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, SubsecRound, TimeDelta, Timelike, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;

/// Groups nest at most this deep; the root group is depth 1.
pub const MAX_DEPTH: usize = 8;
/// Entries of one group's `conditions`.
pub const MAX_CONDITIONS_PER_GROUP: usize = 100;
/// Leaf conditions in a whole rule: keeps the SQL and its parameter count (PostgreSQL
/// allows 65535) bounded whatever the nesting.
pub const MAX_CONDITIONS_PER_RULE: usize = 1000;
/// Elements of an `in`/`not_in` list.
pub const MAX_LIST_LEN: usize = 1000;
/// Largest `recent_days`.
pub const MAX_RECENT_DAYS: u32 = 36_500;

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// The declared type of an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttrType {
    Number,
    String,
    Date,
    Boolean,
}

impl AttrType {
    /// The name used in the rule format (`"number"`, …).
    pub fn name(self) -> &'static str {
        match self {
            AttrType::Number => "number",
            AttrType::String => "string",
            AttrType::Date => "date",
            AttrType::Boolean => "boolean",
        }
    }

    pub fn from_name(s: &str) -> Option<AttrType> {
        match s {
            "number" => Some(AttrType::Number),
            "string" => Some(AttrType::String),
            "date" => Some(AttrType::Date),
            "boolean" => Some(AttrType::Boolean),
            _ => None,
        }
    }

    /// The PostgreSQL type a parameter of this type is cast to.
    fn sql_cast(self) -> &'static str {
        match self {
            AttrType::Number => "numeric",
            AttrType::String => "text",
            AttrType::Date => "timestamptz",
            AttrType::Boolean => "boolean",
        }
    }
}

impl fmt::Display for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A typed value (also what imports store); `Number` is exact.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(Decimal),
    Text(String),
    Date(DateTime<Utc>),
    Bool(bool),
}

impl Value {
    pub fn ty(&self) -> AttrType {
        match self {
            Value::Number(_) => AttrType::Number,
            Value::Text(_) => AttrType::String,
            Value::Date(_) => AttrType::Date,
            Value::Bool(_) => AttrType::Boolean,
        }
    }

    /// Number → exact JSON number, text → string, date → RFC 3339 `…Z`, bool → bool.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Number(d) => decimal_json(*d),
            Value::Text(s) => Json::String(s.clone()),
            Value::Date(t) => Json::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            Value::Bool(b) => Json::Bool(*b),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// An exact JSON number (the crate enables serde_json's `arbitrary_precision`, so the
/// digits are kept as written); a string only if that ever failed, which keeps it exact.
fn decimal_json(d: Decimal) -> Json {
    let text = d.to_string();
    match serde_json::Number::from_str(&text) {
        Ok(n) => Json::Number(n),
        Err(_) => Json::String(text),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Logic {
    #[serde(rename = "AND")]
    And,
    #[serde(rename = "OR")]
    Or,
    #[serde(rename = "NOT")]
    Not,
}

impl Logic {
    pub fn name(self) -> &'static str {
        match self {
            Logic::And => "AND",
            Logic::Or => "OR",
            Logic::Not => "NOT",
        }
    }

    pub fn from_name(s: &str) -> Option<Logic> {
        match s {
            "AND" => Some(Logic::And),
            "OR" => Some(Logic::Or),
            "NOT" => Some(Logic::Not),
            _ => None,
        }
    }
}

impl fmt::Display for Logic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "in")]
    In,
    #[serde(rename = "not_in")]
    NotIn,
    #[serde(rename = "in_range")]
    InRange,
    #[serde(rename = "contains")]
    Contains,
    #[serde(rename = "recent_days")]
    RecentDays,
    #[serde(rename = "is_null")]
    IsNull,
    #[serde(rename = "is_not_null")]
    IsNotNull,
}

const OPERATORS: [Operator; 13] = [
    Operator::Eq,
    Operator::Ne,
    Operator::Gt,
    Operator::Lt,
    Operator::Ge,
    Operator::Le,
    Operator::In,
    Operator::NotIn,
    Operator::InRange,
    Operator::Contains,
    Operator::RecentDays,
    Operator::IsNull,
    Operator::IsNotNull,
];

impl Operator {
    /// The name used in the rule format (`">="`, `"not_in"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Operator::Eq => "=",
            Operator::Ne => "!=",
            Operator::Gt => ">",
            Operator::Lt => "<",
            Operator::Ge => ">=",
            Operator::Le => "<=",
            Operator::In => "in",
            Operator::NotIn => "not_in",
            Operator::InRange => "in_range",
            Operator::Contains => "contains",
            Operator::RecentDays => "recent_days",
            Operator::IsNull => "is_null",
            Operator::IsNotNull => "is_not_null",
        }
    }

    pub fn from_name(s: &str) -> Option<Operator> {
        OPERATORS.into_iter().find(|op| op.name() == s)
    }

    /// Whether the operator may be used on an attribute of this type.
    pub fn applies_to(self, ty: AttrType) -> bool {
        use Operator::*;
        match ty {
            AttrType::Number => matches!(
                self,
                Eq | Ne | Gt | Lt | Ge | Le | In | NotIn | InRange | IsNull | IsNotNull
            ),
            AttrType::Date => matches!(
                self,
                Eq | Ne | Gt | Lt | Ge | Le | InRange | RecentDays | IsNull | IsNotNull
            ),
            AttrType::String => {
                matches!(self, Eq | Ne | In | NotIn | Contains | IsNull | IsNotNull)
            }
            AttrType::Boolean => matches!(self, Eq | Ne | IsNull | IsNotNull),
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The operator's name in the rule format.
pub fn operator_name(op: Operator) -> &'static str {
    op.name()
}

/// A group of conditions. Serializes to the canonical JSON format; deserializing uses the
/// types stored in that format (see [`parse_stored`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub logic: Logic,
    pub conditions: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Condition(Condition),
    Group(Rule),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: String,
    pub operator: Operator,
    /// The field's declared type.
    pub ty: AttrType,
    pub operand: Operand,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// `is_null`, `is_not_null`.
    None,
    /// Comparisons and `contains`.
    One(Value),
    /// `in`, `not_in`.
    Many(Vec<Value>),
    /// `in_range`; an absent bound is open.
    Range {
        lo: Option<Value>,
        hi: Option<Value>,
    },
    /// `recent_days`.
    Days(u32),
}

impl Operand {
    /// The operand as written in the canonical format (`null` for none; a range as
    /// `{"min", "max"}` without the absent bound).
    pub fn to_json(&self) -> Json {
        match self {
            Operand::None => Json::Null,
            Operand::One(v) => v.to_json(),
            Operand::Many(vs) => Json::Array(vs.iter().map(Value::to_json).collect()),
            Operand::Range { lo, hi } => {
                let mut m = serde_json::Map::new();
                if let Some(lo) = lo {
                    m.insert("min".into(), lo.to_json());
                }
                if let Some(hi) = hi {
                    m.insert("max".into(), hi.to_json());
                }
                Json::Object(m)
            }
            Operand::Days(n) => Json::from(*n),
        }
    }
}

impl Condition {
    /// `{"field", "operator", "type", "value"}`; `value` is left out for the null tests.
    pub fn to_json(&self) -> Json {
        let mut m = serde_json::Map::new();
        m.insert("field".into(), Json::String(self.field.clone()));
        m.insert("operator".into(), Json::String(self.operator.name().into()));
        m.insert("type".into(), Json::String(self.ty.name().into()));
        if !matches!(self.operand, Operand::None) {
            m.insert("value".into(), self.operand.to_json());
        }
        Json::Object(m)
    }
}

impl Node {
    pub fn to_json(&self) -> Json {
        match self {
            Node::Condition(c) => c.to_json(),
            Node::Group(g) => g.to_json(),
        }
    }
}

impl Rule {
    /// The canonical JSON form: `parse(&r.to_json(), schema) == Ok(r)`.
    pub fn to_json(&self) -> Json {
        let mut m = serde_json::Map::new();
        m.insert("logic".into(), Json::String(self.logic.name().into()));
        m.insert(
            "conditions".into(),
            Json::Array(self.conditions.iter().map(Node::to_json).collect()),
        );
        Json::Object(m)
    }

    /// The fields the rule reads, distinct and sorted.
    pub fn fields(&self) -> Vec<&str> {
        fn walk<'a>(r: &'a Rule, out: &mut BTreeSet<&'a str>) {
            for n in &r.conditions {
                match n {
                    Node::Condition(c) => {
                        out.insert(c.field.as_str());
                    }
                    Node::Group(g) => walk(g, out),
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self, &mut out);
        out.into_iter().collect()
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Rule {
    /// Reads a stored rule (e.g. from an event) with the types written in it, so that
    /// replaying history does not depend on today's schema.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rule, D::Error> {
        let v = Json::deserialize(d)?;
        parse_stored(&v).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------------------

/// A validation error at an RFC 6901 pointer into the submitted rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{pointer}: {message}")]
pub struct RuleError {
    pub pointer: String,
    pub message: String,
}

fn fail<T>(pointer: &str, message: impl Into<String>) -> Result<T, RuleError> {
    Err(RuleError {
        pointer: pointer.to_owned(),
        message: message.into(),
    })
}

/// `pointer` extended by one reference token, escaped as RFC 6901 requires.
fn child(pointer: &str, token: &str) -> String {
    format!("{pointer}/{}", token.replace('~', "~0").replace('/', "~1"))
}

/// Validates a submitted rule against the schema (attribute name → declared type) and
/// returns the first error in document order. Keys inside one object are checked in a
/// fixed order (unknown keys first, then `field`/`logic`, `type`, `operator`, `value`):
/// the JSON object does not keep the order the client wrote.
pub fn parse(rule: &Json, schema: &dyn Fn(&str) -> Option<AttrType>) -> Result<Rule, RuleError> {
    Parser { schema, leaves: 0 }.group(rule, "", 1)
}

/// Parses a rule in the canonical format using the `type` written in each condition as
/// the schema: for rules stored in events, which must stay readable after the schema
/// changes. A condition without `type` is an unknown field.
pub fn parse_stored(rule: &Json) -> Result<Rule, RuleError> {
    fn collect(v: &Json, depth: usize, out: &mut BTreeMap<String, AttrType>) {
        // Deeper than allowed is reported by `parse`; no need to walk it.
        if depth > MAX_DEPTH + 1 {
            return;
        }
        let Some(list) = v.get("conditions").and_then(Json::as_array) else {
            return;
        };
        for c in list {
            if c.get("logic").is_some() {
                collect(c, depth + 1, out);
            } else if let (Some(f), Some(t)) = (
                c.get("field").and_then(Json::as_str),
                c.get("type")
                    .and_then(Json::as_str)
                    .and_then(AttrType::from_name),
            ) {
                // The first declaration wins; a disagreeing one is then reported at its
                // `type` by `parse`.
                out.entry(f.to_owned()).or_insert(t);
            }
        }
    }
    let mut types = BTreeMap::new();
    collect(rule, 1, &mut types);
    parse(rule, &|f| types.get(f).copied())
}

struct Parser<'a> {
    schema: &'a dyn Fn(&str) -> Option<AttrType>,
    leaves: usize,
}

impl Parser<'_> {
    fn group(&mut self, v: &Json, ptr: &str, depth: usize) -> Result<Rule, RuleError> {
        if depth > MAX_DEPTH {
            return fail(ptr, format!("groups nest at most {MAX_DEPTH} deep"));
        }
        let Some(obj) = v.as_object() else {
            return fail(ptr, "expected a group {\"logic\", \"conditions\"}");
        };
        if let Some(k) = obj.keys().find(|k| *k != "logic" && *k != "conditions") {
            return fail(&child(ptr, k), "unknown key");
        }
        let lptr = child(ptr, "logic");
        let logic = match obj.get("logic") {
            None => return fail(&lptr, "required"),
            Some(l) => match l.as_str().and_then(Logic::from_name) {
                Some(l) => l,
                None => return fail(&lptr, "must be \"AND\", \"OR\" or \"NOT\""),
            },
        };
        let cptr = child(ptr, "conditions");
        let list = match obj.get("conditions") {
            None => return fail(&cptr, "required"),
            Some(Json::Array(list)) => list,
            Some(_) => return fail(&cptr, "must be an array"),
        };
        if list.is_empty() {
            return fail(&cptr, "must not be empty");
        }
        if list.len() > MAX_CONDITIONS_PER_GROUP {
            return fail(
                &cptr,
                format!("at most {MAX_CONDITIONS_PER_GROUP} conditions per group"),
            );
        }
        let mut conditions = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let p = child(&cptr, &i.to_string());
            // An object with "logic" is a group, anything else must be a condition.
            let node = if c.as_object().is_some_and(|o| o.contains_key("logic")) {
                Node::Group(self.group(c, &p, depth + 1)?)
            } else {
                Node::Condition(self.condition(c, &p)?)
            };
            conditions.push(node);
        }
        Ok(Rule { logic, conditions })
    }

    fn condition(&mut self, v: &Json, ptr: &str) -> Result<Condition, RuleError> {
        self.leaves += 1;
        if self.leaves > MAX_CONDITIONS_PER_RULE {
            return fail(
                ptr,
                format!("a rule has at most {MAX_CONDITIONS_PER_RULE} conditions"),
            );
        }
        let Some(obj) = v.as_object() else {
            return fail(
                ptr,
                "expected a condition {\"field\", \"operator\", \"value\", \"type\"} \
                 or a group {\"logic\", \"conditions\"}",
            );
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "field" | "operator" | "value" | "type"))
        {
            return fail(&child(ptr, k), "unknown key");
        }

        let fptr = child(ptr, "field");
        let field = match obj.get("field") {
            None => return fail(&fptr, "required"),
            Some(Json::String(s)) => s,
            Some(_) => return fail(&fptr, "must be a string"),
        };
        let Some(ty) = (self.schema)(field) else {
            return fail(&fptr, format!("unknown field \"{field}\""));
        };

        let tptr = child(ptr, "type");
        if let Some(t) = obj.get("type") {
            match t.as_str().and_then(AttrType::from_name) {
                None => {
                    return fail(
                        &tptr,
                        "must be \"number\", \"string\", \"date\" or \"boolean\"",
                    )
                }
                Some(t) if t != ty => {
                    return fail(&tptr, format!("field \"{field}\" is a {ty}, not a {t}"))
                }
                Some(_) => {}
            }
        }

        let optr = child(ptr, "operator");
        let operator = match obj.get("operator") {
            None => return fail(&optr, "required"),
            Some(o) => match o.as_str().and_then(Operator::from_name) {
                Some(op) => op,
                None => return fail(&optr, "unknown operator"),
            },
        };
        if !operator.applies_to(ty) {
            return fail(
                &optr,
                format!("operator \"{operator}\" does not apply to a {ty}"),
            );
        }

        let operand = operand(operator, ty, obj.get("value"), &child(ptr, "value"))?;
        Ok(Condition {
            field: field.clone(),
            operator,
            ty,
            operand,
        })
    }
}

fn expected(ty: AttrType) -> &'static str {
    match ty {
        AttrType::Number => "expected a number (a JSON number or a string like \"12.50\")",
        AttrType::String => "expected a string (without NUL characters)",
        AttrType::Date => "expected a date (\"YYYY-MM-DD\", \"YYYY-MM-DD HH:MM:SS\" or RFC 3339)",
        AttrType::Boolean => "expected a boolean (true, false, \"1\" or \"0\")",
    }
}

/// One non-null value of the type at `ptr`.
fn one(ty: AttrType, v: Option<&Json>, ptr: &str) -> Result<Value, RuleError> {
    match v {
        None => fail(ptr, "required"),
        Some(Json::Null) => fail(ptr, "must not be null (use is_null)"),
        Some(v) => match parse_value(ty, v) {
            Some(x) => Ok(x),
            None => fail(ptr, expected(ty)),
        },
    }
}

fn operand(op: Operator, ty: AttrType, v: Option<&Json>, ptr: &str) -> Result<Operand, RuleError> {
    match op {
        Operator::IsNull | Operator::IsNotNull => match v {
            None | Some(Json::Null) => Ok(Operand::None),
            Some(_) => fail(ptr, format!("\"{op}\" takes no value")),
        },
        Operator::Eq | Operator::Ne | Operator::Gt | Operator::Lt | Operator::Ge | Operator::Le => {
            Ok(Operand::One(one(ty, v, ptr)?))
        }
        Operator::In | Operator::NotIn => {
            let list = match v {
                None => return fail(ptr, "required"),
                Some(Json::Array(list)) => list,
                Some(_) => return fail(ptr, "expected an array"),
            };
            if list.is_empty() {
                return fail(ptr, "must not be empty");
            }
            if list.len() > MAX_LIST_LEN {
                return fail(ptr, format!("at most {MAX_LIST_LEN} values"));
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, x) in list.iter().enumerate() {
                out.push(one(ty, Some(x), &child(ptr, &i.to_string()))?);
            }
            Ok(Operand::Many(out))
        }
        Operator::InRange => {
            const SHAPE: &str = "expected [min, max] or {\"min\": …, \"max\": …}";
            let (lo, hi) = match v {
                None => return fail(ptr, "required"),
                Some(Json::Array(pair)) => {
                    let [lo, hi] = pair.as_slice() else {
                        return fail(ptr, SHAPE);
                    };
                    (
                        Some(one(ty, Some(lo), &child(ptr, "0"))?),
                        Some(one(ty, Some(hi), &child(ptr, "1"))?),
                    )
                }
                Some(Json::Object(m)) => {
                    if let Some(k) = m.keys().find(|k| *k != "min" && *k != "max") {
                        return fail(&child(ptr, k), "unknown key");
                    }
                    // A null bound is an absent one: the open end of the range.
                    let bound = |k: &str| match m.get(k) {
                        None | Some(Json::Null) => Ok(None),
                        Some(x) => one(ty, Some(x), &child(ptr, k)).map(Some),
                    };
                    let (lo, hi) = (bound("min")?, bound("max")?);
                    if lo.is_none() && hi.is_none() {
                        return fail(ptr, "needs \"min\", \"max\" or both");
                    }
                    (lo, hi)
                }
                Some(_) => return fail(ptr, SHAPE),
            };
            if let (Some(l), Some(h)) = (&lo, &hi) {
                if order(l, h) == Some(Ordering::Greater) {
                    return fail(ptr, "min is greater than max");
                }
            }
            Ok(Operand::Range { lo, hi })
        }
        Operator::Contains => match v {
            None => fail(ptr, "required"),
            Some(Json::String(s)) if s.is_empty() => fail(ptr, "must not be empty"),
            Some(x) => match parse_value(AttrType::String, x) {
                Some(s) => Ok(Operand::One(s)),
                None => fail(ptr, expected(AttrType::String)),
            },
        },
        Operator::RecentDays => {
            let n = match v {
                None => return fail(ptr, "required"),
                Some(Json::Number(n)) => n.as_u64(),
                Some(Json::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    s.parse::<u64>().ok()
                }
                Some(_) => None,
            };
            match n.and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n <= MAX_RECENT_DAYS => Ok(Operand::Days(n)),
                _ => fail(
                    ptr,
                    format!("expected a whole number of days from 0 to {MAX_RECENT_DAYS}"),
                ),
            }
        }
    }
}

/// A value of the type as it may appear in a rule: a number as a JSON number or a string
/// holding one; a date as a string; a boolean as a JSON bool or a string (`parse_bool`); a
/// string as a JSON string. `null` is not a value.
pub fn parse_value(ty: AttrType, v: &Json) -> Option<Value> {
    match (ty, v) {
        // With `arbitrary_precision` the number's text is kept exactly as written.
        (AttrType::Number, Json::Number(n)) => parse_number(&n.to_string()).map(Value::Number),
        (AttrType::Number, Json::String(s)) => parse_number(s).map(Value::Number),
        // PostgreSQL text cannot hold NUL: such a string could never be compared there.
        (AttrType::String, Json::String(s)) if !s.contains('\0') => Some(Value::Text(s.clone())),
        (AttrType::Date, Json::String(s)) => parse_date(s).map(Value::Date),
        (AttrType::Boolean, Json::Bool(b)) => Some(Value::Bool(*b)),
        (AttrType::Boolean, Json::String(s)) => parse_bool(s).map(Value::Bool),
        _ => None,
    }
}

/// A plain decimal: optional sign, digits, optional `.` and digits (`"12"`, `"-3.50"`,
/// `"+4"`). No exponent, no blanks, no NaN or infinity; `None` when it does not fit a
/// [`Decimal`] exactly (rather than rounding it).
pub fn parse_number(s: &str) -> Option<Decimal> {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !frac.is_none_or(all_digits) {
        return None;
    }
    let d = Decimal::from_str_exact(body).ok()?;
    Some(if negative { -d } else { d })
}

/// `true`/`false`/`1`/`0`, case-insensitive.
pub fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") || s == "1" {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") || s == "0" {
        Some(false)
    } else {
        None
    }
}

/// An instant: RFC 3339 with any offset (converted to UTC), `YYYY-MM-DD HH:MM:SS[.f]` or
/// `YYYY-MM-DDTHH:MM:SS[.f]` without offset (UTC), or `YYYY-MM-DD` (midnight UTC).
/// Fractions are truncated to microseconds, PostgreSQL's precision, so that a value
/// compares the same in Rust and in SQL; leap seconds and years outside 1–9999 (after
/// conversion to UTC) are refused, as PostgreSQL would refuse or shift them.
pub fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    let t = parse_naive_utc(s).or_else(|| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })?;
    if t.nanosecond() >= 1_000_000_000 || !(1..=9999).contains(&t.year()) {
        return None;
    }
    Some(t.trunc_subsecs(6))
}

/// The formats without an offset, checked byte by byte (chrono's `%Y` would also take
/// signs and other widths).
fn parse_naive_utc(s: &str) -> Option<DateTime<Utc>> {
    fn num(b: &[u8]) -> Option<u32> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    }
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(num(&b[0..4])?).ok()?,
        num(&b[5..7])?,
        num(&b[8..10])?,
    )?;
    if b.len() == 10 {
        return date.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    if b.len() < 19 || !matches!(b[10], b' ' | b'T') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let nanos = match &b[19..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            num(frac)? * 10u32.pow(9 - u32::try_from(frac.len()).ok()?)
        }
        _ => return None,
    };
    date.and_hms_nano_opt(num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?, nanos)
        .map(|t| t.and_utc())
}

// ---------------------------------------------------------------------------------------
// The plan of one condition: shared by the SQL and the Rust evaluation
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

impl Cmp {
    fn sql(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Ne => "<>",
            Cmp::Gt => ">",
            Cmp::Lt => "<",
            Cmp::Ge => ">=",
            Cmp::Le => "<=",
        }
    }

    fn accepts(self, o: Ordering) -> bool {
        match self {
            Cmp::Eq => o == Ordering::Equal,
            Cmp::Ne => o != Ordering::Equal,
            Cmp::Gt => o == Ordering::Greater,
            Cmp::Lt => o == Ordering::Less,
            Cmp::Ge => o != Ordering::Less,
            Cmp::Le => o != Ordering::Greater,
        }
    }
}

/// What one condition tests, with every constant checked against the field's type. On a
/// null field every plan but `IsNull` is false (in SQL through `COALESCE(…, false)`).
#[derive(Debug, Clone)]
enum Plan {
    Compare(Cmp, Value),
    /// `in`; the values and the same values as one array parameter.
    AnyOf(Vec<Value>, SqlParam),
    /// `not_in`, likewise.
    NoneOf(Vec<Value>, SqlParam),
    /// Inclusive; at least one bound.
    Between(Option<Value>, Option<Value>),
    Contains(String),
    IsNull,
    IsNotNull,
}

/// The value if it has the type, in the form both sides compare: dates at microsecond
/// precision (floored, so the instant is exactly what PostgreSQL receives).
fn typed(ty: AttrType, v: &Value) -> Option<Value> {
    match v {
        _ if v.ty() != ty => None,
        Value::Date(t) => Some(Value::Date(t.trunc_subsecs(6))),
        Value::Text(s) if s.contains('\0') => None,
        _ => Some(v.clone()),
    }
}

/// `as_of` at PostgreSQL's precision; `recent_days` bounds are computed from it.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

fn array_param(values: &[Value]) -> Option<SqlParam> {
    let it = values.iter();
    Some(match values.first()? {
        Value::Number(_) => SqlParam::Numbers(
            it.map(|v| match v {
                Value::Number(d) => Some(*d),
                _ => None,
            })
            .collect::<Option<_>>()?,
        ),
        Value::Text(_) => SqlParam::Texts(
            it.map(|v| match v {
                Value::Text(s) => Some(s.clone()),
                _ => None,
            })
            .collect::<Option<_>>()?,
        ),
        Value::Date(_) => SqlParam::Dates(
            it.map(|v| match v {
                Value::Date(t) => Some(*t),
                _ => None,
            })
            .collect::<Option<_>>()?,
        ),
        // No list operator applies to booleans.
        Value::Bool(_) => return None,
    })
}

/// `None` only for conditions validation would have refused; such a condition is false.
fn plan(c: &Condition, as_of: DateTime<Utc>) -> Option<Plan> {
    if !c.operator.applies_to(c.ty) {
        return None;
    }
    let ty = c.ty;
    let list = |vs: &[Value]| -> Option<(Vec<Value>, SqlParam)> {
        let vs = vs
            .iter()
            .map(|v| typed(ty, v))
            .collect::<Option<Vec<_>>>()?;
        let p = array_param(&vs)?;
        Some((vs, p))
    };
    let bound = |b: &Option<Value>| -> Option<Option<Value>> {
        match b {
            None => Some(None),
            Some(v) => typed(ty, v).map(Some),
        }
    };
    let cmp = |op: Cmp, v: &Value| Some(Plan::Compare(op, typed(ty, v)?));
    match (c.operator, &c.operand) {
        (Operator::Eq, Operand::One(v)) => cmp(Cmp::Eq, v),
        (Operator::Ne, Operand::One(v)) => cmp(Cmp::Ne, v),
        (Operator::Gt, Operand::One(v)) => cmp(Cmp::Gt, v),
        (Operator::Lt, Operand::One(v)) => cmp(Cmp::Lt, v),
        (Operator::Ge, Operand::One(v)) => cmp(Cmp::Ge, v),
        (Operator::Le, Operand::One(v)) => cmp(Cmp::Le, v),
        (Operator::In, Operand::Many(vs)) => list(vs).map(|(v, p)| Plan::AnyOf(v, p)),
        // An empty list would make `<> ALL` true on null: refused like in validation.
        (Operator::NotIn, Operand::Many(vs)) => list(vs).map(|(v, p)| Plan::NoneOf(v, p)),
        (Operator::InRange, Operand::Range { lo, hi }) => match (bound(lo)?, bound(hi)?) {
            (None, None) => None,
            (lo, hi) => Some(Plan::Between(lo, hi)),
        },
        (Operator::Contains, Operand::One(Value::Text(s)))
            if !s.is_empty() && !s.contains('\0') =>
        {
            Some(Plan::Contains(s.clone()))
        }
        (Operator::RecentDays, Operand::Days(n)) => {
            let hi = micros(as_of);
            let lo = hi.checked_sub_signed(TimeDelta::try_days(i64::from(*n))?)?;
            Some(Plan::Between(Some(Value::Date(lo)), Some(Value::Date(hi))))
        }
        (Operator::IsNull, Operand::None) => Some(Plan::IsNull),
        (Operator::IsNotNull, Operand::None) => Some(Plan::IsNotNull),
        _ => None,
    }
}

/// Order of two values of the same type, as PostgreSQL orders them (`None` across types).
/// Text is only ever tested for equality, which is byte equality there too.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Some(x.cmp(y)),
        (Value::Text(x), Value::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Date(x), Value::Date(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// The Rust side of a plan, `x` being the typed field value (`None` for null).
fn holds(plan: &Plan, x: Option<&Value>) -> bool {
    let is = |x: &Value, v: &Value, f: fn(Ordering) -> bool| order(x, v).is_some_and(f);
    match (plan, x) {
        (Plan::IsNull, x) => x.is_none(),
        (Plan::IsNotNull, x) => x.is_some(),
        (_, None) => false,
        (Plan::Compare(op, v), Some(x)) => order(x, v).is_some_and(|o| op.accepts(o)),
        (Plan::AnyOf(vs, _), Some(x)) => vs.iter().any(|v| is(x, v, Ordering::is_eq)),
        (Plan::NoneOf(vs, _), Some(x)) => vs.iter().all(|v| is(x, v, Ordering::is_ne)),
        (Plan::Between(lo, hi), Some(x)) => {
            lo.as_ref().is_none_or(|lo| is(x, lo, Ordering::is_ge))
                && hi.as_ref().is_none_or(|hi| is(x, hi, Ordering::is_le))
        }
        (Plan::Contains(s), Some(Value::Text(t))) => t.contains(s.as_str()),
        (Plan::Contains(_), Some(_)) => false,
    }
}

// ---------------------------------------------------------------------------------------
// Compiling to SQL
// ---------------------------------------------------------------------------------------

/// A SQL boolean expression and its parameters, `$first_param` onwards in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub sql: String,
    pub params: Vec<SqlParam>,
}

/// A parameter of a compiled rule; the SQL casts it (`$N::numeric`, `$N::text[]`, …).
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Number(Decimal),
    Text(String),
    Date(DateTime<Utc>),
    Bool(bool),
    Numbers(Vec<Decimal>),
    Texts(Vec<String>),
    Dates(Vec<DateTime<Utc>>),
}

impl SqlParam {
    fn of(v: &Value) -> SqlParam {
        match v {
            Value::Number(d) => SqlParam::Number(*d),
            Value::Text(s) => SqlParam::Text(s.clone()),
            Value::Date(t) => SqlParam::Date(*t),
            Value::Bool(b) => SqlParam::Bool(*b),
        }
    }
}

/// Compiles a rule to one boolean SQL expression. `field(name, type)` gives the SQL of
/// the typed field value (trusted: the caller builds it from the schema); every constant
/// is a parameter `$N::type`, N counting from `first_param`. `as_of` anchors
/// `recent_days`. Deterministic: the same input gives the same text and parameters.
pub fn compile(
    rule: &Rule,
    field: &dyn Fn(&str, AttrType) -> String,
    as_of: DateTime<Utc>,
    first_param: usize,
) -> Compiled {
    let mut c = SqlWriter {
        field,
        as_of,
        first_param,
        params: Vec::new(),
    };
    let sql = c.group(rule);
    Compiled {
        sql,
        params: c.params,
    }
}

struct SqlWriter<'a> {
    field: &'a dyn Fn(&str, AttrType) -> String,
    as_of: DateTime<Utc>,
    first_param: usize,
    params: Vec<SqlParam>,
}

impl SqlWriter<'_> {
    fn param(&mut self, p: SqlParam, cast: &str) -> String {
        let n = self.first_param + self.params.len();
        self.params.push(p);
        format!("${n}::{cast}")
    }

    fn group(&mut self, r: &Rule) -> String {
        let parts: Vec<String> = r.conditions.iter().map(|n| self.node(n)).collect();
        // Empty groups only come from hand-built rules; they mean what `explain` gives.
        match (r.logic, parts.is_empty()) {
            (Logic::And | Logic::Not, true) => "true".into(),
            (Logic::Or, true) => "false".into(),
            (Logic::And, false) => format!("({})", parts.join(" AND ")),
            (Logic::Or, false) => format!("({})", parts.join(" OR ")),
            (Logic::Not, false) => format!("(NOT ({}))", parts.join(" OR ")),
        }
    }

    fn node(&mut self, n: &Node) -> String {
        match n {
            Node::Group(g) => self.group(g),
            Node::Condition(c) => self.leaf(c),
        }
    }

    /// Every leaf is `COALESCE(…, false)`: SQL's unknown never reaches the logic, which
    /// is what makes `!=`, `not_in` and `NOT` two-valued like in Rust.
    fn leaf(&mut self, c: &Condition) -> String {
        let Some(plan) = plan(c, self.as_of) else {
            return "false".into();
        };
        let f = format!("({})", (self.field)(&c.field, c.ty));
        let cast = c.ty.sql_cast();
        let test = match plan {
            Plan::Compare(op, v) => {
                let p = self.param(SqlParam::of(&v), cast);
                format!("{f} {} {p}", op.sql())
            }
            Plan::AnyOf(_, list) => {
                let p = self.param(list, &format!("{cast}[]"));
                format!("{f} = ANY({p})")
            }
            // `NULL <> ALL(non-empty)` is NULL, made false by the COALESCE.
            Plan::NoneOf(_, list) => {
                let p = self.param(list, &format!("{cast}[]"));
                format!("{f} <> ALL({p})")
            }
            Plan::Between(lo, hi) => {
                let mut parts = Vec::new();
                if let Some(lo) = lo {
                    parts.push(format!("{f} >= {}", self.param(SqlParam::of(&lo), cast)));
                }
                if let Some(hi) = hi {
                    parts.push(format!("{f} <= {}", self.param(SqlParam::of(&hi), cast)));
                }
                if parts.is_empty() {
                    // Unreachable from `plan`; matches `holds` should it ever happen.
                    format!("{f} IS NOT NULL")
                } else {
                    parts.join(" AND ")
                }
            }
            Plan::Contains(s) => {
                let p = self.param(SqlParam::Text(s), "text");
                format!("strpos({f}, {p}) > 0")
            }
            Plan::IsNull => format!("{f} IS NULL"),
            Plan::IsNotNull => format!("{f} IS NOT NULL"),
        };
        format!("COALESCE({test}, false)")
    }
}

// ---------------------------------------------------------------------------------------
// Evaluating in Rust
// ---------------------------------------------------------------------------------------

/// Why a rule did or did not match one subject.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub result: bool,
    /// Every leaf condition, depth first in document order.
    pub conditions: Vec<ConditionCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConditionCheck {
    /// JSON pointer of the condition in the rule, e.g. `/conditions/1/conditions/0`.
    pub path: String,
    pub field: String,
    /// As in the rule format, e.g. `">="`.
    pub operator: String,
    /// The subject's value; `null` when it has none.
    pub actual: Json,
    /// The operand as in the canonical format; `null` for the null tests.
    pub expected: Json,
    pub held: bool,
}

/// Evaluates a rule for one subject with the semantics of [`compile`]. `value_of(field)`
/// gives the subject's value; a value of another type than the field's counts as null
/// (the SQL field expression cannot yield it either). All conditions are evaluated and
/// listed, even those the logic did not need.
pub fn explain(
    rule: &Rule,
    value_of: &dyn Fn(&str) -> Option<Value>,
    as_of: DateTime<Utc>,
) -> Explanation {
    fn group(
        r: &Rule,
        path: &str,
        value_of: &dyn Fn(&str) -> Option<Value>,
        as_of: DateTime<Utc>,
        out: &mut Vec<ConditionCheck>,
    ) -> bool {
        let cptr = child(path, "conditions");
        // Collected first so that no condition is skipped by short-circuiting.
        let results: Vec<bool> = r
            .conditions
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let p = child(&cptr, &i.to_string());
                match n {
                    Node::Group(g) => group(g, &p, value_of, as_of, out),
                    Node::Condition(c) => leaf(c, p, value_of, as_of, out),
                }
            })
            .collect();
        match r.logic {
            Logic::And => results.iter().all(|b| *b),
            Logic::Or => results.iter().any(|b| *b),
            Logic::Not => !results.iter().any(|b| *b),
        }
    }

    fn leaf(
        c: &Condition,
        path: String,
        value_of: &dyn Fn(&str) -> Option<Value>,
        as_of: DateTime<Utc>,
        out: &mut Vec<ConditionCheck>,
    ) -> bool {
        let actual = value_of(&c.field);
        let x = actual.as_ref().and_then(|v| typed(c.ty, v));
        let held = plan(c, as_of).is_some_and(|p| holds(&p, x.as_ref()));
        out.push(ConditionCheck {
            path,
            field: c.field.clone(),
            operator: c.operator.name().into(),
            actual: actual.as_ref().map_or(Json::Null, Value::to_json),
            expected: c.operand.to_json(),
            held,
        });
        held
    }

    let mut conditions = Vec::new();
    let result = group(rule, "", value_of, as_of, &mut conditions);
    Explanation { result, conditions }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn schema(f: &str) -> Option<AttrType> {
        match f {
            "amount" => Some(AttrType::Number),
            "name" => Some(AttrType::String),
            "created" => Some(AttrType::Date),
            "active" => Some(AttrType::Boolean),
            _ => None,
        }
    }

    fn p(v: Json) -> Result<Rule, RuleError> {
        parse(&v, &schema)
    }

    /// The pointer of the error for a rule with this one condition.
    fn err_at(cond: Json) -> String {
        match p(json!({"logic": "AND", "conditions": [cond]})) {
            Ok(r) => panic!("accepted: {r:?}"),
            Err(e) => e.pointer,
        }
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        parse_date(s).unwrap()
    }

    fn as_of() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 10, 12, 0, 0).unwrap()
    }

    fn field_of_type(ty: AttrType) -> &'static str {
        match ty {
            AttrType::Number => "amount",
            AttrType::String => "name",
            AttrType::Date => "created",
            AttrType::Boolean => "active",
        }
    }

    /// Whether one condition holds for a subject whose field has `actual`.
    fn holds_for(ty: AttrType, op: &str, value: Json, actual: Option<Value>) -> bool {
        let mut cond = json!({"field": field_of_type(ty), "operator": op});
        if !value.is_null() {
            cond["value"] = value;
        }
        let rule = p(json!({"logic": "AND", "conditions": [cond]})).unwrap();
        let e = explain(&rule, &|_| actual.clone(), as_of());
        assert_eq!(e.conditions.len(), 1);
        assert_eq!(e.result, e.conditions[0].held);
        e.result
    }

    fn n(s: &str) -> Option<Value> {
        Some(Value::Number(dec(s)))
    }
    fn t(s: &str) -> Option<Value> {
        Some(Value::Text(s.into()))
    }
    fn d(s: &str) -> Option<Value> {
        Some(Value::Date(at(s)))
    }
    fn b(x: bool) -> Option<Value> {
        Some(Value::Bool(x))
    }

    // --- validation -----------------------------------------------------------------

    #[test]
    fn errors_point_at_the_offending_part() {
        let cases = [
            (
                json!({"field": "nope", "operator": "=", "value": 1}),
                "/conditions/0/field",
            ),
            (
                json!({"field": 3, "operator": "=", "value": 1}),
                "/conditions/0/field",
            ),
            (json!({"operator": "=", "value": 1}), "/conditions/0/field"),
            (
                json!({"field": "amount", "operator": "=", "value": 1, "type": "money"}),
                "/conditions/0/type",
            ),
            (
                json!({"field": "amount", "operator": "=", "value": 1, "type": "string"}),
                "/conditions/0/type",
            ),
            (
                json!({"field": "amount", "operator": "~", "value": 1}),
                "/conditions/0/operator",
            ),
            (
                json!({"field": "amount", "operator": "contains", "value": "1"}),
                "/conditions/0/operator",
            ),
            (
                json!({"field": "name", "operator": ">", "value": "a"}),
                "/conditions/0/operator",
            ),
            (
                json!({"field": "active", "operator": "in", "value": [true]}),
                "/conditions/0/operator",
            ),
            (
                json!({"field": "created", "operator": "not_in", "value": ["2024-01-01"]}),
                "/conditions/0/operator",
            ),
            (
                json!({"field": "amount", "operator": "="}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "=", "value": null}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "=", "value": "ten"}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "=", "value": [1]}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "name", "operator": "=", "value": 5}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "name", "operator": "=", "value": "a\u{0}b"}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "active", "operator": "=", "value": "yes"}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "created", "operator": "<", "value": "soon"}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "in", "value": 1}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "in", "value": []}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "in", "value": [1, 2, 3, "x"]}),
                "/conditions/0/value/3",
            ),
            (
                json!({"field": "name", "operator": "not_in", "value": ["a", null]}),
                "/conditions/0/value/1",
            ),
            (
                json!({"field": "amount", "operator": "in_range", "value": [5, 1]}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "created", "operator": "in_range",
                       "value": {"min": "2024-02-01", "max": "2024-01-01"}}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "in_range", "value": [1]}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "in_range", "value": [1, null]}),
                "/conditions/0/value/1",
            ),
            (
                json!({"field": "amount", "operator": "in_range", "value": {}}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "in_range", "value": {"min": "x"}}),
                "/conditions/0/value/min",
            ),
            (
                json!({"field": "amount", "operator": "in_range", "value": {"min": 1, "to": 2}}),
                "/conditions/0/value/to",
            ),
            (
                json!({"field": "name", "operator": "contains", "value": ""}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "name", "operator": "contains", "value": 1}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "created", "operator": "recent_days", "value": -1}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "created", "operator": "recent_days", "value": 1.5}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "created", "operator": "recent_days", "value": 36501}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "created", "operator": "recent_days", "value": "7 days"}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "is_null", "value": 0}),
                "/conditions/0/value",
            ),
            (
                json!({"field": "amount", "operator": "=", "value": 1, "vaule": 1}),
                "/conditions/0/vaule",
            ),
            (
                json!({"field": "a/b~c", "operator": "=", "value": 1, "a/b~c": 1}),
                "/conditions/0/a~1b~0c",
            ),
            (json!("amount = 1"), "/conditions/0"),
        ];
        for (cond, pointer) in cases {
            assert_eq!(err_at(cond.clone()), pointer, "{cond}");
        }
    }

    #[test]
    fn group_errors() {
        let ok = json!({"field": "amount", "operator": "is_null"});
        let ptr = |v: Json| p(v).unwrap_err().pointer;
        assert_eq!(ptr(json!([])), "");
        assert_eq!(ptr(json!({"conditions": [ok]})), "/logic");
        assert_eq!(ptr(json!({"logic": "XOR", "conditions": [ok]})), "/logic");
        assert_eq!(ptr(json!({"logic": "AND"})), "/conditions");
        assert_eq!(
            ptr(json!({"logic": "AND", "conditions": []})),
            "/conditions"
        );
        assert_eq!(
            ptr(json!({"logic": "AND", "conditions": ok})),
            "/conditions"
        );
        assert_eq!(
            ptr(json!({"logic": "AND", "conditions": [ok], "name": "x"})),
            "/name"
        );
        assert_eq!(
            ptr(json!({"logic": "AND", "conditions": [ok,
                {"logic": "OR", "conditions": []}]})),
            "/conditions/1/conditions"
        );
        assert_eq!(
            ptr(json!({"logic": "AND", "conditions": [ok,
                {"logic": "OR", "conditions": [{"field": "zzz", "operator": "is_null"}]}]})),
            "/conditions/1/conditions/0/field"
        );
        let many = json!({"logic": "OR", "conditions": vec![ok.clone(); 101]});
        assert_eq!(ptr(many), "/conditions");
        let list: Vec<u32> = (0..1001).collect();
        assert_eq!(
            ptr(json!({"logic": "OR", "conditions":
                [{"field": "amount", "operator": "in", "value": list}]})),
            "/conditions/0/value"
        );
        // The first error in document order wins.
        assert_eq!(
            ptr(json!({"logic": "AND", "conditions": [
                {"field": "amount", "operator": "~"}, {"field": "zzz"}]})),
            "/conditions/0/operator"
        );
        let e = p(json!({"logic": "AND", "conditions": [{"field": "zzz", "operator": "="}]}))
            .unwrap_err();
        assert_eq!(e.to_string(), "/conditions/0/field: unknown field \"zzz\"");
    }

    #[test]
    fn nesting_is_limited_to_eight_groups() {
        // `depth` groups, the innermost holding one condition.
        fn nested(depth: usize) -> Json {
            let mut v = json!({"logic": "AND", "conditions": [
                {"field": "amount", "operator": "is_null"}]});
            for _ in 1..depth {
                v = json!({"logic": "OR", "conditions": [v]});
            }
            v
        }
        assert!(p(nested(8)).is_ok());
        let e = p(nested(9)).unwrap_err();
        assert_eq!(e.pointer, format!("{}", "/conditions/0".repeat(8)));
    }

    #[test]
    fn conditions_per_rule_are_limited() {
        let ok = json!({"field": "amount", "operator": "is_null"});
        let group = json!({"logic": "OR", "conditions": vec![ok; 100]});
        let full = json!({"logic": "AND", "conditions": vec![group.clone(); 10]});
        assert!(p(full).is_ok());
        let over = json!({"logic": "AND", "conditions": vec![group; 11]});
        assert_eq!(p(over).unwrap_err().pointer, "/conditions/10/conditions/0");
    }

    #[test]
    fn accepted_operand_forms() {
        let one = |cond: Json| match p(json!({"logic": "AND", "conditions": [cond]})) {
            Ok(Rule { conditions, .. }) => match &conditions[0] {
                Node::Condition(c) => c.operand.clone(),
                Node::Group(_) => panic!("group"),
            },
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            one(json!({"field": "amount", "operator": "=", "value": "12.50", "type": "number"})),
            Operand::One(Value::Number(dec("12.5")))
        );
        assert_eq!(
            one(json!({"field": "active", "operator": "!=", "value": "TRUE"})),
            Operand::One(Value::Bool(true))
        );
        assert_eq!(
            one(json!({"field": "amount", "operator": "in_range", "value": [1, "2"]})),
            Operand::Range {
                lo: Some(Value::Number(dec("1"))),
                hi: Some(Value::Number(dec("2")))
            }
        );
        assert_eq!(
            one(
                json!({"field": "amount", "operator": "in_range", "value": {"min": 3, "max": null}})
            ),
            Operand::Range {
                lo: Some(Value::Number(dec("3"))),
                hi: None
            }
        );
        assert_eq!(
            one(json!({"field": "amount", "operator": "in_range", "value": [2, 2]})),
            Operand::Range {
                lo: Some(Value::Number(dec("2"))),
                hi: Some(Value::Number(dec("2")))
            }
        );
        assert_eq!(
            one(json!({"field": "created", "operator": "recent_days", "value": "030"})),
            Operand::Days(30)
        );
        assert_eq!(
            one(json!({"field": "created", "operator": "recent_days", "value": 0})),
            Operand::Days(0)
        );
        assert_eq!(
            one(json!({"field": "name", "operator": "is_not_null", "value": null})),
            Operand::None
        );
    }

    // --- serialization --------------------------------------------------------------

    fn every_operator() -> Json {
        json!({"logic": "OR", "conditions": [
            {"field": "amount", "operator": "=", "value": "0.1000000000000000000000000001"},
            {"field": "amount", "operator": "!=", "value": "-3.50"},
            {"field": "amount", "operator": ">", "value": 1},
            {"field": "amount", "operator": "<", "value": 2},
            {"field": "amount", "operator": ">=", "value": 3},
            {"field": "amount", "operator": "<=", "value": 4},
            {"field": "amount", "operator": "in", "value": [1, "2.0"]},
            {"field": "amount", "operator": "not_in", "value": [5]},
            {"field": "amount", "operator": "in_range", "value": [1, 9]},
            {"field": "amount", "operator": "in_range", "value": {"max": 9}},
            {"logic": "NOT", "conditions": [
                {"field": "name", "operator": "=", "value": "a \"quoted\" 'name'"},
                {"field": "name", "operator": "in", "value": ["x", "y"]},
                {"field": "name", "operator": "not_in", "value": ["z"]},
                {"field": "name", "operator": "contains", "value": "ell"},
                {"logic": "AND", "conditions": [
                    {"field": "created", "operator": "=", "value": "2024-03-01"},
                    {"field": "created", "operator": ">", "value": "2024-03-01T10:00:00.5+02:00"},
                    {"field": "created", "operator": "in_range",
                     "value": {"min": "2024-01-01 00:00:00"}},
                    {"field": "created", "operator": "recent_days", "value": 7},
                    {"field": "active", "operator": "=", "value": true},
                    {"field": "active", "operator": "!=", "value": "0"},
                    {"field": "active", "operator": "is_null"},
                    {"field": "name", "operator": "is_not_null", "value": null}
                ]}
            ]}
        ]})
    }

    #[test]
    fn canonical_json_round_trips() {
        let r = p(every_operator()).unwrap();
        let j = r.to_json();
        assert_eq!(p(j.clone()).unwrap(), r);
        assert_eq!(serde_json::to_value(&r).unwrap(), j);
        // Stored rules read back without a schema, from their own types.
        assert_eq!(serde_json::from_value::<Rule>(j.clone()).unwrap(), r);
        assert_eq!(parse_stored(&j).unwrap(), r);
        let text = j.to_string();
        // Exact JSON numbers, dates in UTC with Z, types written out.
        assert!(
            text.contains(r#""value":0.1000000000000000000000000001"#),
            "{text}"
        );
        assert!(text.contains(r#""value":-3.50"#), "{text}");
        assert!(
            text.contains(r#""value":"2024-03-01T08:00:00.500Z""#),
            "{text}"
        );
        assert!(text.contains(r#""value":{"max":9}"#), "{text}");
        assert_eq!(
            j["conditions"][0],
            json!({"field": "amount", "operator": "=", "type": "number",
                   "value": serde_json::Number::from_str("0.1000000000000000000000000001").unwrap()})
        );
        assert_eq!(
            j["conditions"][10]["conditions"][4]["conditions"][6],
            json!({"field": "active", "operator": "is_null", "type": "boolean"})
        );
        assert_eq!(r.fields(), vec!["active", "amount", "created", "name"]);
    }

    #[test]
    fn stored_rule_with_conflicting_types_is_refused() {
        let j = json!({"logic": "AND", "conditions": [
            {"field": "x", "operator": "=", "type": "number", "value": 1},
            {"field": "x", "operator": "=", "type": "string", "value": "1"}]});
        assert_eq!(parse_stored(&j).unwrap_err().pointer, "/conditions/1/type");
    }

    // --- compile --------------------------------------------------------------------

    #[test]
    fn compiles_a_nested_rule() {
        let r = p(json!({"logic": "AND", "conditions": [
            {"field": "amount", "operator": ">=", "value": "100.50"},
            {"logic": "OR", "conditions": [
                {"field": "name", "operator": "in", "value": ["a", "b'; DROP TABLE x; --"]},
                {"field": "created", "operator": "recent_days", "value": 30},
                {"field": "name", "operator": "contains", "value": "ell"}
            ]},
            {"logic": "NOT", "conditions": [
                {"field": "active", "operator": "is_null"},
                {"field": "amount", "operator": "in_range", "value": {"max": 5}},
                {"field": "amount", "operator": "not_in", "value": [1, 2]},
                {"field": "active", "operator": "!=", "value": false}
            ]},
            {"field": "created", "operator": "in_range", "value": ["2024-01-01", "2024-02-01"]}
        ]}))
        .unwrap();
        let field = |name: &str, ty: AttrType| format!("a.{name}::{ty}");
        let c = compile(&r, &field, as_of(), 3);
        let expected = "(COALESCE((a.amount::number) >= $3::numeric, false) \
            AND (COALESCE((a.name::string) = ANY($4::text[]), false) \
            OR COALESCE((a.created::date) >= $5::timestamptz AND (a.created::date) <= $6::timestamptz, false) \
            OR COALESCE(strpos((a.name::string), $7::text) > 0, false)) \
            AND (NOT (COALESCE((a.active::boolean) IS NULL, false) \
            OR COALESCE((a.amount::number) <= $8::numeric, false) \
            OR COALESCE((a.amount::number) <> ALL($9::numeric[]), false) \
            OR COALESCE((a.active::boolean) <> $10::boolean, false))) \
            AND COALESCE((a.created::date) >= $11::timestamptz AND (a.created::date) <= $12::timestamptz, false))";
        assert_eq!(c.sql, expected);
        assert_eq!(
            c.params,
            vec![
                SqlParam::Number(dec("100.50")),
                SqlParam::Texts(vec!["a".into(), "b'; DROP TABLE x; --".into()]),
                SqlParam::Date(at("2024-02-09T12:00:00Z")),
                SqlParam::Date(as_of()),
                SqlParam::Text("ell".into()),
                SqlParam::Number(dec("5")),
                SqlParam::Numbers(vec![dec("1"), dec("2")]),
                SqlParam::Bool(false),
                SqlParam::Date(at("2024-01-01")),
                SqlParam::Date(at("2024-02-01")),
            ]
        );
        // Deterministic.
        assert_eq!(compile(&r, &field, as_of(), 3), c);
    }

    #[test]
    fn as_of_is_taken_at_microseconds_on_both_sides() {
        let r = p(json!({"logic": "AND", "conditions": [
            {"field": "created", "operator": "recent_days", "value": 1}]}))
        .unwrap();
        let now = as_of() + TimeDelta::nanoseconds(1_500);
        let c = compile(&r, &|f, _| f.to_owned(), now, 1);
        let hi = as_of() + TimeDelta::microseconds(1);
        assert_eq!(
            c.params,
            vec![SqlParam::Date(hi - TimeDelta::days(1)), SqlParam::Date(hi)]
        );
        // Exactly the floored lower bound holds in Rust too.
        let e = explain(&r, &|_| Some(Value::Date(hi - TimeDelta::days(1))), now);
        assert!(e.result);
    }

    #[test]
    fn hand_built_invalid_conditions_are_false_on_both_sides() {
        let bad = Condition {
            field: "name".into(),
            operator: Operator::NotIn,
            ty: AttrType::String,
            operand: Operand::Many(vec![]),
        };
        let r = Rule {
            logic: Logic::Or,
            conditions: vec![Node::Condition(bad)],
        };
        let c = compile(&r, &|f, _| f.to_owned(), as_of(), 1);
        assert_eq!(c.sql, "(false)");
        assert!(c.params.is_empty());
        assert!(!explain(&r, &|_| None, as_of()).result);
    }

    // --- explain --------------------------------------------------------------------

    #[test]
    fn number_operators() {
        use AttrType::Number as N;
        assert!(holds_for(N, "=", json!(10), n("10.00")));
        assert!(!holds_for(N, "=", json!(10), n("11")));
        assert!(!holds_for(N, "=", json!(10), None));
        assert!(holds_for(N, "!=", json!(10), n("11")));
        assert!(!holds_for(N, "!=", json!(10), n("10")));
        assert!(!holds_for(N, "!=", json!(10), None));
        assert!(holds_for(N, ">", json!(10), n("10.01")));
        assert!(!holds_for(N, ">", json!(10), n("10")));
        assert!(!holds_for(N, ">", json!(10), None));
        assert!(holds_for(N, "<", json!(10), n("9.99")));
        assert!(!holds_for(N, "<", json!(10), n("10")));
        assert!(!holds_for(N, "<", json!(10), None));
        assert!(holds_for(N, ">=", json!(10), n("10")));
        assert!(!holds_for(N, ">=", json!(10), n("9.99")));
        assert!(!holds_for(N, ">=", json!(10), None));
        assert!(holds_for(N, "<=", json!(10), n("10")));
        assert!(!holds_for(N, "<=", json!(10), n("10.01")));
        assert!(!holds_for(N, "<=", json!(10), None));
        assert!(holds_for(N, "in", json!([1, 2, 3]), n("2.0")));
        assert!(!holds_for(N, "in", json!([1, 2, 3]), n("4")));
        assert!(!holds_for(N, "in", json!([1, 2, 3]), None));
        assert!(holds_for(N, "not_in", json!([1, 2]), n("3")));
        assert!(!holds_for(N, "not_in", json!([1, 2]), n("2")));
        assert!(!holds_for(N, "not_in", json!([1, 2]), None));
        let range = json!([1, 5]);
        assert!(holds_for(N, "in_range", range.clone(), n("1")));
        assert!(holds_for(N, "in_range", range.clone(), n("5")));
        assert!(!holds_for(N, "in_range", range.clone(), n("0.99")));
        assert!(!holds_for(N, "in_range", range.clone(), n("5.01")));
        assert!(!holds_for(N, "in_range", range, None));
        assert!(holds_for(N, "in_range", json!({"min": 1}), n("1000")));
        assert!(!holds_for(N, "in_range", json!({"min": 1}), n("0")));
        assert!(holds_for(N, "in_range", json!({"max": 5}), n("-100")));
        assert!(!holds_for(N, "in_range", json!({"max": 5}), n("6")));
        assert!(holds_for(N, "is_null", Json::Null, None));
        assert!(!holds_for(N, "is_null", Json::Null, n("0")));
        assert!(holds_for(N, "is_not_null", Json::Null, n("0")));
        assert!(!holds_for(N, "is_not_null", Json::Null, None));
    }

    #[test]
    fn string_operators() {
        use AttrType::String as S;
        assert!(holds_for(S, "=", json!("abc"), t("abc")));
        assert!(!holds_for(S, "=", json!("abc"), t("ABC")));
        assert!(!holds_for(S, "=", json!("abc"), None));
        assert!(holds_for(S, "!=", json!("abc"), t("abd")));
        assert!(!holds_for(S, "!=", json!("abc"), t("abc")));
        assert!(!holds_for(S, "!=", json!("abc"), None));
        assert!(holds_for(S, "in", json!(["a", "b"]), t("b")));
        assert!(!holds_for(S, "in", json!(["a", "b"]), t("c")));
        assert!(!holds_for(S, "in", json!(["a", "b"]), None));
        assert!(holds_for(S, "not_in", json!(["a"]), t("b")));
        assert!(!holds_for(S, "not_in", json!(["a"]), t("a")));
        assert!(!holds_for(S, "not_in", json!(["a"]), None));
        assert!(holds_for(S, "contains", json!("ell"), t("Hello")));
        assert!(holds_for(S, "contains", json!("ell"), t("ell")));
        assert!(!holds_for(S, "contains", json!("ell"), t("HELLO")));
        assert!(!holds_for(S, "contains", json!("ell"), None));
        assert!(holds_for(S, "is_null", Json::Null, None));
        assert!(!holds_for(S, "is_null", Json::Null, t("")));
        assert!(holds_for(S, "is_not_null", Json::Null, t("")));
        assert!(!holds_for(S, "is_not_null", Json::Null, None));
    }

    #[test]
    fn date_operators() {
        use AttrType::Date as D;
        let day = json!("2024-03-01");
        assert!(holds_for(D, "=", day.clone(), d("2024-03-01T00:00:00Z")));
        assert!(holds_for(
            D,
            "=",
            day.clone(),
            d("2024-03-01T01:00:00+01:00")
        ));
        assert!(!holds_for(
            D,
            "=",
            day.clone(),
            d("2024-03-01T00:00:00.000001Z")
        ));
        assert!(!holds_for(D, "=", day.clone(), None));
        assert!(holds_for(D, "!=", day.clone(), d("2024-03-02")));
        assert!(!holds_for(D, "!=", day.clone(), d("2024-03-01")));
        assert!(!holds_for(D, "!=", day.clone(), None));
        assert!(holds_for(D, ">", day.clone(), d("2024-03-01T00:00:01Z")));
        assert!(!holds_for(D, ">", day.clone(), d("2024-03-01")));
        assert!(!holds_for(D, ">", day.clone(), None));
        assert!(holds_for(D, "<", day.clone(), d("2024-02-29T23:59:59Z")));
        assert!(!holds_for(D, "<", day.clone(), d("2024-03-01")));
        assert!(!holds_for(D, "<", day.clone(), None));
        assert!(holds_for(D, ">=", day.clone(), d("2024-03-01")));
        assert!(!holds_for(
            D,
            ">=",
            day.clone(),
            d("2024-02-29T23:59:59.999999Z")
        ));
        assert!(!holds_for(D, ">=", day.clone(), None));
        assert!(holds_for(D, "<=", day.clone(), d("2024-03-01")));
        assert!(!holds_for(
            D,
            "<=",
            day.clone(),
            d("2024-03-01T00:00:00.000001Z")
        ));
        assert!(!holds_for(D, "<=", day, None));
        let range = json!(["2024-01-01", "2024-01-31"]);
        assert!(holds_for(D, "in_range", range.clone(), d("2024-01-01")));
        assert!(holds_for(D, "in_range", range.clone(), d("2024-01-31")));
        assert!(!holds_for(
            D,
            "in_range",
            range.clone(),
            d("2023-12-31T23:59:59Z")
        ));
        assert!(!holds_for(
            D,
            "in_range",
            range.clone(),
            d("2024-01-31T00:00:01Z")
        ));
        assert!(!holds_for(D, "in_range", range, None));
        assert!(holds_for(
            D,
            "in_range",
            json!({"min": "2024-01-01"}),
            d("2030-01-01")
        ));
        assert!(!holds_for(
            D,
            "in_range",
            json!({"max": "2024-01-01"}),
            d("2030-01-01")
        ));
        assert!(holds_for(D, "is_null", Json::Null, None));
        assert!(!holds_for(D, "is_null", Json::Null, d("2024-01-01")));
        assert!(holds_for(D, "is_not_null", Json::Null, d("2024-01-01")));
        assert!(!holds_for(D, "is_not_null", Json::Null, None));
    }

    #[test]
    fn recent_days_is_inclusive_at_both_ends() {
        use AttrType::Date as D;
        // as_of is 2024-03-10T12:00:00Z.
        let week = json!(7);
        assert!(holds_for(
            D,
            "recent_days",
            week.clone(),
            d("2024-03-03T12:00:00Z")
        ));
        assert!(holds_for(
            D,
            "recent_days",
            week.clone(),
            d("2024-03-10T12:00:00Z")
        ));
        assert!(holds_for(D, "recent_days", week.clone(), d("2024-03-05")));
        assert!(!holds_for(
            D,
            "recent_days",
            week.clone(),
            d("2024-03-03T11:59:59.999999Z")
        ));
        assert!(!holds_for(
            D,
            "recent_days",
            week.clone(),
            d("2024-03-10T12:00:00.000001Z")
        ));
        assert!(!holds_for(D, "recent_days", week, None));
        assert!(holds_for(
            D,
            "recent_days",
            json!(0),
            d("2024-03-10T12:00:00Z")
        ));
        assert!(!holds_for(
            D,
            "recent_days",
            json!(0),
            d("2024-03-10T11:59:59Z")
        ));
    }

    #[test]
    fn boolean_operators() {
        use AttrType::Boolean as B;
        assert!(holds_for(B, "=", json!(true), b(true)));
        assert!(!holds_for(B, "=", json!(true), b(false)));
        assert!(!holds_for(B, "=", json!(true), None));
        assert!(holds_for(B, "=", json!("false"), b(false)));
        assert!(holds_for(B, "!=", json!(true), b(false)));
        assert!(!holds_for(B, "!=", json!(true), b(true)));
        assert!(!holds_for(B, "!=", json!(true), None));
        assert!(holds_for(B, "is_null", Json::Null, None));
        assert!(!holds_for(B, "is_null", Json::Null, b(false)));
        assert!(holds_for(B, "is_not_null", Json::Null, b(false)));
        assert!(!holds_for(B, "is_not_null", Json::Null, None));
    }

    #[test]
    fn a_value_of_another_type_counts_as_null() {
        assert!(!holds_for(AttrType::Number, "!=", json!(1), t("2")));
        assert!(holds_for(AttrType::Number, "is_null", Json::Null, t("2")));
    }

    #[test]
    fn logic_and_listing() {
        let r = p(json!({"logic": "OR", "conditions": [
            {"field": "amount", "operator": ">", "value": 5},
            {"logic": "NOT", "conditions": [
                {"field": "name", "operator": "=", "value": "x"},
                {"field": "active", "operator": "=", "value": true}
            ]}
        ]}))
        .unwrap();
        let subject = |f: &str| match f {
            "amount" => n("6"),
            "name" => t("x"),
            _ => None,
        };
        let e = explain(&r, &subject, as_of());
        assert!(e.result);
        // Listed although OR already held after the first.
        let paths: Vec<&str> = e.conditions.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/conditions/0",
                "/conditions/1/conditions/0",
                "/conditions/1/conditions/1"
            ]
        );
        assert_eq!(
            serde_json::to_value(&e.conditions[0]).unwrap(),
            json!({"path": "/conditions/0", "field": "amount", "operator": ">",
                   "actual": 6, "expected": 5, "held": true})
        );
        assert_eq!(e.conditions[2].actual, Json::Null);
        assert_eq!(e.conditions[2].expected, json!(true));
        assert_eq!(
            e.conditions.iter().map(|c| c.held).collect::<Vec<_>>(),
            [true, true, false]
        );

        let and = p(json!({"logic": "AND", "conditions": [
            {"field": "amount", "operator": ">", "value": 5},
            {"field": "name", "operator": "=", "value": "y"}]}))
        .unwrap();
        assert!(!explain(&and, &subject, as_of()).result);
    }

    #[test]
    fn not_matches_a_null_field() {
        let r = p(json!({"logic": "NOT", "conditions": [
            {"field": "amount", "operator": ">", "value": 5}]}))
        .unwrap();
        assert!(explain(&r, &|_| None, as_of()).result);
        assert!(explain(&r, &|_| n("5"), as_of()).result);
        assert!(!explain(&r, &|_| n("6"), as_of()).result);
        let ne = p(json!({"logic": "NOT", "conditions": [
            {"field": "amount", "operator": "!=", "value": 5}]}))
        .unwrap();
        assert!(explain(&ne, &|_| None, as_of()).result);
    }

    #[test]
    fn values_to_json() {
        assert_eq!(Value::Number(dec("-0.50")).to_json().to_string(), "-0.50");
        assert_eq!(Value::Text("a".into()).to_json(), json!("a"));
        assert_eq!(
            Value::Date(at("2024-03-01")).to_json(),
            json!("2024-03-01T00:00:00Z")
        );
        assert_eq!(
            Value::Date(at("2024-03-01T00:00:00.25-01:00")).to_json(),
            json!("2024-03-01T01:00:00.250Z")
        );
        assert_eq!(Value::Bool(false).to_json(), json!(false));
    }

    // --- value parsing --------------------------------------------------------------

    #[test]
    fn parse_date_accepts_and_rejects() {
        let utc = |y, mo, d, h, mi, s, micro| {
            Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap() + TimeDelta::microseconds(micro)
        };
        let accepted = [
            ("2024-03-01", utc(2024, 3, 1, 0, 0, 0, 0)),
            ("2024-03-01T00:00:00Z", utc(2024, 3, 1, 0, 0, 0, 0)),
            ("2024-03-01T10:20:30+02:00", utc(2024, 3, 1, 8, 20, 30, 0)),
            ("2024-03-01T01:00:00-05:30", utc(2024, 3, 1, 6, 30, 0, 0)),
            ("2024-03-01 10:20:30", utc(2024, 3, 1, 10, 20, 30, 0)),
            ("2024-03-01T10:20:30", utc(2024, 3, 1, 10, 20, 30, 0)),
            (
                "2024-03-01T10:20:30.123",
                utc(2024, 3, 1, 10, 20, 30, 123_000),
            ),
            (
                "2024-03-01 10:20:30.5",
                utc(2024, 3, 1, 10, 20, 30, 500_000),
            ),
            (
                "2024-03-01T10:20:30.123456789Z",
                utc(2024, 3, 1, 10, 20, 30, 123_456),
            ),
            (
                "2024-03-01T10:20:30.123456789",
                utc(2024, 3, 1, 10, 20, 30, 123_456),
            ),
            ("2024-02-29", utc(2024, 2, 29, 0, 0, 0, 0)),
        ];
        for (s, want) in accepted {
            assert_eq!(parse_date(s), Some(want), "{s}");
        }
        let rejected = [
            "",
            "2024-3-1",
            "2023-02-29",
            "2024-03-01T25:00:00",
            "2024-03-01T10:20",
            "2024-03-01T10:20:30.",
            "2024-03-01T10:20:30.1234567891",
            "2024-03-01 10:20:30 ",
            " 2024-03-01",
            "01/03/2024",
            "2024-03-01T23:59:60Z",
            "0000-01-01",
            "9999-12-31T23:00:00-05:00",
            "+2024-03-01",
            "20240301",
            "soon",
        ];
        for s in rejected {
            assert_eq!(parse_date(s), None, "{s}");
        }
    }

    #[test]
    fn parse_number_accepts_and_rejects() {
        for (s, want) in [
            ("12", "12"),
            ("-3.50", "-3.5"),
            ("+4", "4"),
            ("0.0001", "0.0001"),
            ("007", "7"),
            (
                "79228162514264337593543950335",
                "79228162514264337593543950335",
            ),
        ] {
            assert_eq!(parse_number(s), Some(dec(want)), "{s}");
        }
        // Negative zero is zero, as in PostgreSQL.
        assert_eq!(
            parse_number("-0").unwrap().cmp(&Decimal::ZERO),
            Ordering::Equal
        );
        // Scale is kept: "-3.50" stays "-3.50" for display and round trips.
        assert_eq!(parse_number("-3.50").unwrap().to_string(), "-3.50");
        for s in [
            "",
            "-",
            "+",
            "1e3",
            "NaN",
            "inf",
            "1.",
            ".5",
            "1,5",
            " 1",
            "1 ",
            "1.2.3",
            "0x10",
            "--1",
            "79228162514264337593543950336",
            "0.00000000000000000000000000001",
        ] {
            assert_eq!(parse_number(s), None, "{s}");
        }
    }

    #[test]
    fn parse_bool_accepts_and_rejects() {
        for (s, want) in [
            ("true", true),
            ("TRUE", true),
            ("False", false),
            ("1", true),
            ("0", false),
        ] {
            assert_eq!(parse_bool(s), Some(want), "{s}");
        }
        for s in ["", "yes", "t", "2", " true", "01"] {
            assert_eq!(parse_bool(s), None, "{s}");
        }
    }

    #[test]
    fn parse_value_by_type() {
        assert_eq!(parse_value(AttrType::Number, &json!(1.25)), n("1.25"));
        assert_eq!(parse_value(AttrType::Number, &json!("1.25")), n("1.25"));
        assert_eq!(parse_value(AttrType::Number, &json!(true)), None);
        assert_eq!(parse_value(AttrType::String, &json!("x")), t("x"));
        assert_eq!(parse_value(AttrType::String, &json!(1)), None);
        assert_eq!(
            parse_value(AttrType::Date, &json!("2024-03-01")),
            d("2024-03-01")
        );
        assert_eq!(parse_value(AttrType::Date, &json!(20240301)), None);
        assert_eq!(parse_value(AttrType::Boolean, &json!("0")), b(false));
        assert_eq!(parse_value(AttrType::Boolean, &json!(1)), None);
        assert_eq!(parse_value(AttrType::Boolean, &Json::Null), None);
    }
}
