//! Shared-cost allocation (seed 000): a rule names the lines whose cost is shared (its
//! source filters), the dimension it is shared along (`by`: `account`, `tag:KEY` or
//! `vtag:NAME`), the targets (values of that dimension) and the method: `even`,
//! `proportional` (to each target's own direct cost in the same bucket and currency) or
//! `fixed` (weights summing to 100). Pure functions: validation, the cycle check and the
//! split with its remainder rule (ADR 0011).

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a rule splits its source's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Even,
    Proportional,
    Fixed,
}

/// The lines whose cost a rule shares: every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceFilters {
    pub account: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
    /// `KEY:VALUE`.
    pub tag: Option<String>,
}

impl SourceFilters {
    /// True when no line can match both: some filter both give differs (for tags, the
    /// same key with another value).
    pub fn disjoint(&self, other: &SourceFilters) -> bool {
        let differ =
            |a: &Option<String>, b: &Option<String>| matches!((a, b), (Some(a), Some(b)) if a != b);
        let tags = match (&self.tag, &other.tag) {
            (Some(a), Some(b)) => match (a.split_once(':'), b.split_once(':')) {
                (Some((ka, va)), Some((kb, vb))) => ka == kb && va != vb,
                _ => false,
            },
            _ => false,
        };
        differ(&self.account, &other.account)
            || differ(&self.service, &other.service)
            || differ(&self.region, &other.region)
            || tags
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[schema(min_length = 1, max_length = 200)]
    pub key: String,
    /// Percent, for `fixed` only; the weights sum to 100.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    #[schema(value_type = Option<String>, example = "60")]
    pub weight: Option<Decimal>,
}

/// An allocation rule as saved.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationRuleDef {
    #[schema(pattern = "^[a-z][a-z0-9_]{0,62}$")]
    pub name: String,
    pub source: SourceFilters,
    pub method: Method,
    #[schema(min_items = 1, max_items = 100)]
    pub targets: Vec<Target>,
    /// `account`, `tag:KEY` or `vtag:NAME`.
    pub by: String,
}

/// A refused rule: the offending field and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl AllocationRuleDef {
    /// The value of `by` that the source names, if it names one (`by: tag:team` with a
    /// source `tag: team:shared` → `shared`): the source's place in the allocation graph.
    fn source_key(&self) -> Option<&str> {
        if self.by == "account" {
            return self.source.account.as_deref();
        }
        let key = self.by.strip_prefix("tag:")?;
        let (k, v) = self.source.tag.as_deref()?.split_once(':')?;
        (k == key).then_some(v)
    }

    /// Checks the rule on its own and against the tenant's `others` (no cycles).
    pub fn validate(&self, others: &[AllocationRuleDef]) -> Result<(), Invalid> {
        if !crate::projections::readmodel::is_identifier(&self.name) {
            return Err(invalid(
                "name",
                "must match [a-z][a-z0-9_]* and be at most 63 characters",
            ));
        }
        let dim_ok = self.by == "account"
            || self
                .by
                .strip_prefix("tag:")
                .is_some_and(|k| !k.is_empty() && k.len() <= 200)
            || self
                .by
                .strip_prefix("vtag:")
                .is_some_and(crate::projections::readmodel::is_identifier);
        if !dim_ok {
            return Err(invalid("by", "must be account, tag:KEY or vtag:NAME"));
        }
        let s = &self.source;
        if s.account.is_none() && s.service.is_none() && s.region.is_none() && s.tag.is_none() {
            return Err(invalid("source", "needs at least one filter"));
        }
        if let Some(t) = &s.tag {
            if t.split_once(':').is_none_or(|(k, _)| k.is_empty()) {
                return Err(invalid("source/tag", "must be KEY:VALUE"));
            }
        }
        if self.targets.is_empty() || self.targets.len() > 100 {
            return Err(invalid("targets", "must hold 1 to 100 targets"));
        }
        let mut keys = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if t.key.is_empty() || t.key.chars().count() > 200 || t.key.contains('\0') {
                return Err(invalid(
                    format!("targets/{i}/key"),
                    "must be 1 to 200 characters",
                ));
            }
            if !keys.insert(t.key.as_str()) {
                return Err(invalid(format!("targets/{i}/key"), "appears twice"));
            }
            match (self.method, t.weight) {
                (Method::Fixed, None) => {
                    return Err(invalid(
                        format!("targets/{i}/weight"),
                        "is required for fixed",
                    ))
                }
                (Method::Fixed, Some(w)) if w <= Decimal::ZERO => {
                    return Err(invalid(format!("targets/{i}/weight"), "must be positive"))
                }
                (Method::Even | Method::Proportional, Some(_)) => {
                    return Err(invalid(
                        format!("targets/{i}/weight"),
                        "only a fixed split takes weights",
                    ))
                }
                _ => {}
            }
        }
        if self.method == Method::Fixed {
            let sum: Decimal = self.targets.iter().filter_map(|t| t.weight).sum();
            if sum != Decimal::ONE_HUNDRED {
                return Err(invalid(
                    "targets",
                    format!("fixed weights sum to {sum}, not 100"),
                ));
            }
        }
        if self.source_key().is_some_and(|k| keys.contains(k)) {
            return Err(invalid("targets", "the source cannot be its own target"));
        }
        // A line is shared by one rule at most: the sources must be disjoint.
        if let Some(o) = others
            .iter()
            .find(|o| o.name != self.name && !self.source.disjoint(&o.source))
        {
            return Err(invalid(
                "source",
                format!(
                    "may hold the same lines as the source of allocation rule {:?}: give \
                     one filter (account, service, region or the value of one tag key) \
                     different values in the two",
                    o.name
                ),
            ));
        }
        // No chains and no cycles: a rule's source is never another rule's target (along
        // the same dimension), so every rule applies to direct costs only.
        for o in others
            .iter()
            .filter(|o| o.name != self.name && o.by == self.by)
        {
            if let Some(k) = self.source_key() {
                if o.targets.iter().any(|t| t.key == k) {
                    return Err(invalid(
                        "source",
                        format!("is a target of allocation rule {:?}", o.name),
                    ));
                }
            }
            if let Some(k) = o.source_key() {
                if keys.contains(k) {
                    return Err(invalid(
                        "targets",
                        format!("{k:?} is the source of allocation rule {:?}", o.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Splits `amount` over `weights` (key → weight ≥ 0; all zero or negative: evenly) so that
/// the shares add up to `amount` exactly. Each share is the exact proportional amount cut
/// to `scale` decimals (the currency's minor unit) toward zero; the whole minor units
/// left go one each to the largest cut-off fractions (ties: key order); a residue below
/// one minor unit (when `amount` has more decimals than the currency) goes to the first
/// key. Deterministic.
pub fn split(
    amount: Decimal,
    weights: &BTreeMap<String, Decimal>,
    scale: u32,
) -> Vec<(String, Decimal)> {
    if weights.is_empty() {
        return Vec::new();
    }
    let positive = weights.values().all(|w| *w >= Decimal::ZERO)
        && weights.values().any(|w| *w > Decimal::ZERO);
    let total: Decimal = if positive {
        weights.values().sum()
    } else {
        Decimal::from(weights.len())
    };
    let sign = if amount.is_sign_negative() {
        Decimal::NEGATIVE_ONE
    } else {
        Decimal::ONE
    };
    let abs = amount.abs();
    let unit = Decimal::new(1, scale);
    let mut shares: Vec<(String, Decimal, Decimal)> = weights
        .iter()
        .map(|(k, w)| {
            let w = if positive { *w } else { Decimal::ONE };
            let exact = abs * w / total;
            let cut = exact.trunc_with_scale(scale);
            (k.clone(), cut, exact - cut)
        })
        .collect();
    let given: Decimal = shares.iter().map(|s| s.1).sum();
    let mut left = abs - given;
    // Whole units to the largest cut-off fractions, ties by key (already in key order).
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|a, b| shares[*b].2.cmp(&shares[*a].2).then(a.cmp(b)));
    for i in order {
        if left < unit {
            break;
        }
        shares[i].1 += unit;
        left -= unit;
    }
    if !left.is_zero() {
        shares[0].1 += left;
    }
    shares
        .into_iter()
        .map(|(k, share, _)| (k, share * sign))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(pairs: &[(&str, i64)]) -> BTreeMap<String, Decimal> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Decimal::from(*v)))
            .collect()
    }

    #[test]
    fn a_cent_left_over_goes_to_the_largest_fraction_then_by_key() {
        let s = split(Decimal::new(100, 2), &w(&[("a", 1), ("b", 1), ("c", 1)]), 2);
        assert_eq!(
            s,
            vec![
                ("a".into(), Decimal::new(34, 2)),
                ("b".into(), Decimal::new(33, 2)),
                ("c".into(), Decimal::new(33, 2))
            ]
        );
        let s = split(Decimal::new(-100, 2), &w(&[("a", 1), ("b", 2)]), 2);
        assert_eq!(
            s.iter().map(|x| x.1).sum::<Decimal>(),
            Decimal::new(-100, 2)
        );
        // Zero weights everywhere: an even split.
        let s = split(Decimal::from(9), &w(&[("a", 0), ("b", 0), ("c", 0)]), 0);
        assert!(s.iter().all(|x| x.1 == Decimal::from(3)));
    }

    proptest! {
        /// The invariant of the issue: allocated totals equal the source total exactly,
        /// and no share is more than a unit (plus the sub-unit residue) off its exact part.
        #[test]
        fn shares_always_add_up_to_the_amount(
            cents in -10_000_000_000i64..10_000_000_000i64,
            extra in 0i64..100,
            ws in proptest::collection::vec(0i64..1_000, 1..12),
            scale in 0u32..4,
        ) {
            let amount = Decimal::new(cents * 100 + extra, 4);
            let weights: BTreeMap<String, Decimal> = ws
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("t{i:02}"), Decimal::from(*v)))
                .collect();
            let shares = split(amount, &weights, scale);
            prop_assert_eq!(shares.len(), weights.len());
            prop_assert_eq!(shares.iter().map(|s| s.1).sum::<Decimal>(), amount);
            let total: Decimal = weights.values().sum();
            let unit = Decimal::new(1, scale);
            for (k, share) in &shares {
                let exact = if total.is_zero() {
                    amount / Decimal::from(weights.len())
                } else {
                    amount * weights[k] / total
                };
                prop_assert!((*share - exact).abs() <= unit * Decimal::from(2), "{k}: {share} vs {exact}");
            }
        }
    }

    fn rule(name: &str, source_tag: &str, targets: &[&str]) -> AllocationRuleDef {
        AllocationRuleDef {
            name: name.into(),
            source: SourceFilters {
                tag: Some(format!("team:{source_tag}")),
                ..SourceFilters::default()
            },
            method: Method::Even,
            targets: targets
                .iter()
                .map(|k| Target {
                    key: (*k).into(),
                    weight: None,
                })
                .collect(),
            by: "tag:team".into(),
        }
    }

    #[test]
    fn a_source_that_is_another_rules_target_is_refused() {
        let a = rule("a", "shared", &["web", "data"]);
        assert!(a.validate(&[]).is_ok());
        let b = rule("b", "web", &["ml"]);
        assert_eq!(
            b.validate(std::slice::from_ref(&a)).unwrap_err().field,
            "source"
        );
        let c = rule("c", "ops", &["shared"]);
        assert_eq!(
            c.validate(std::slice::from_ref(&a)).unwrap_err().field,
            "targets"
        );
        let own = rule("d", "x", &["x"]);
        assert_eq!(own.validate(&[]).unwrap_err().field, "targets");
        // Replacing a rule is checked against the others only.
        assert!(a.validate(std::slice::from_ref(&a)).is_ok());
    }

    #[test]
    fn sources_that_may_share_a_line_are_refused() {
        let a = rule("a", "shared", &["web", "data"]);
        // Another tag value, or another account: disjoint.
        let b = rule("b", "ops", &["web"]);
        assert!(b.validate(std::slice::from_ref(&a)).is_ok());
        let mut c = rule("c", "shared", &["web"]);
        c.source.tag = None;
        c.source.service = Some("slb".into());
        // team:shared lines of service slb would be shared twice.
        let err = c.validate(std::slice::from_ref(&a)).unwrap_err();
        assert_eq!(err.field, "source");
        assert!(err.message.contains("\"a\""), "{}", err.message);
        c.source.tag = Some("team:ops".into());
        assert!(c.validate(std::slice::from_ref(&a)).is_ok());
        let mut d = a.clone();
        d.name = "d".into();
        d.source.account = Some("prod".into());
        assert!(d.validate(std::slice::from_ref(&a)).is_err());
        let mut e = d.clone();
        e.name = "e".into();
        e.source.account = Some("dev".into());
        assert!(e.validate(std::slice::from_ref(&d)).is_ok());
    }

    #[test]
    fn fixed_weights_must_sum_to_100() {
        let mut r = rule("a", "shared", &["web", "data"]);
        r.method = Method::Fixed;
        r.targets[0].weight = Some(Decimal::from(60));
        assert_eq!(r.validate(&[]).unwrap_err().field, "targets/1/weight");
        r.targets[1].weight = Some(Decimal::from(30));
        assert_eq!(r.validate(&[]).unwrap_err().field, "targets");
        r.targets[1].weight = Some(Decimal::from(40));
        assert!(r.validate(&[]).is_ok());
    }
}
