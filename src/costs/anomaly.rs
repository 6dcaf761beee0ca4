//! Cost anomalies, the pure part (ADR 0026): a daily cost series of one account × service
//! judged day by day against its trailing 28 days with the median and the MAD, and the
//! episodes those verdicts make. No database, no HTTP: the job (`anomaly_job.rs`) reads
//! the series, `loadtest anomalies` evaluates the method on generated series.
//!
//! - `Method::Robust`: expected = median of the window; robust z = (x − median) /
//!   max(1.4826 · MAD, floor).
//! - `Method::Seasonal` (what the server runs): the window deseasonalised by weekday:
//!   expected = the median of the same weekday in the window; z = (x − expected) /
//!   max(1.4826 · MAD of the residuals x − median of their weekday, floor). Falls back to
//!   `Robust` for a day whose weekday has fewer than two values in the window.
//! - `mean_two_sigma`: the old system's rule (seed 000), mean + 2σ over the same window,
//!   for comparison only (floating point; never used for money the server records).
//!
//! floor = 5 % of |expected| + 0.5 (currency units): a flat series does not divide by ~0,
//! and a service that costs cents a day is not flagged for a few cents more.
//! Money stays `Decimal` throughout; only the deviation (a ratio) is a float.

use chrono::{Datelike, Duration, NaiveDate};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Trailing days a day is judged against (the day itself excluded).
pub const WINDOW_DAYS: usize = 28;
/// Days of history in the window before anything is flagged.
pub const MIN_HISTORY: usize = 14;
/// Robust z from which a day is anomalous (the `low` threshold).
pub const THRESHOLD: f64 = 3.5;

/// 1.4826: the MAD of a normal distribution times this is its σ.
fn mad_scale() -> Decimal {
    Decimal::new(14826, 4)
}

/// The floor of the scale: 5 % of |expected| plus 0.5.
fn floor(expected: Decimal) -> Decimal {
    expected.abs() * Decimal::new(5, 2) + Decimal::new(5, 1)
}

/// How far off a day is, by |robust z|: low ≥ 3.5, medium ≥ 5, high ≥ 8, critical ≥ 12.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The severity of a robust z, `None` below the threshold.
    pub fn of(z: f64) -> Option<Severity> {
        let a = z.abs();
        if !a.is_finite() {
            return Some(Severity::Critical);
        }
        match a {
            a if a >= 12.0 => Some(Severity::Critical),
            a if a >= 8.0 => Some(Severity::High),
            a if a >= 5.0 => Some(Severity::Medium),
            a if a >= THRESHOLD => Some(Severity::Low),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The detection methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Median and MAD of the whole window.
    Robust,
    /// Median per weekday, MAD of the residuals (the server's method).
    Seasonal,
}

/// A daily series, dense: `costs[i]` is the cost of `start + i` days (0 for a day without
/// lines). `start` is the first day the series has history for.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub start: NaiveDate,
    pub costs: Vec<Decimal>,
}

impl Series {
    /// From (day, cost) pairs in any order, summed per day, zero-filled between `start` and
    /// the last day (`end` if given: days up to it without lines cost 0).
    pub fn from_days(
        start: NaiveDate,
        end: Option<NaiveDate>,
        days: impl IntoIterator<Item = (NaiveDate, Decimal)>,
    ) -> Series {
        let mut costs: Vec<Decimal> = Vec::new();
        for (day, cost) in days {
            let Ok(i) = usize::try_from((day - start).num_days()) else {
                continue; // before the start: not history
            };
            if costs.len() <= i {
                costs.resize(i + 1, Decimal::ZERO);
            }
            costs[i] += cost;
        }
        if let Some(end) = end {
            let n = usize::try_from((end - start).num_days() + 1).unwrap_or(0);
            if costs.len() < n {
                costs.resize(n, Decimal::ZERO);
            }
        }
        Series { start, costs }
    }

    pub fn day(&self, i: usize) -> NaiveDate {
        self.start + Duration::days(i as i64)
    }

    /// The index of `day`, if the series holds it.
    pub fn index(&self, day: NaiveDate) -> Option<usize> {
        usize::try_from((day - self.start).num_days())
            .ok()
            .filter(|i| *i < self.costs.len())
    }
}

/// The judgement of one day.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub day: NaiveDate,
    pub actual: Decimal,
    pub expected: Decimal,
    /// Robust z (signed: negative for a drop).
    pub deviation: f64,
    /// `None`: a normal day (or not enough history to judge).
    pub severity: Option<Severity>,
    /// Days of history in the window.
    pub history: usize,
}

impl Verdict {
    pub fn anomalous(&self) -> bool {
        self.severity.is_some()
    }
}

/// The median of `v` (sorted in place); the mean of the two middle values for an even
/// count, exact in `Decimal`.
fn median(v: &mut [Decimal]) -> Decimal {
    if v.is_empty() {
        return Decimal::ZERO;
    }
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / Decimal::TWO
    }
}

/// Median of `window` and its MAD.
fn median_mad(window: &[Decimal]) -> (Decimal, Decimal) {
    let mut v = window.to_vec();
    let m = median(&mut v);
    let mut dev: Vec<Decimal> = window.iter().map(|x| (*x - m).abs()).collect();
    (m, median(&mut dev))
}

fn z_score(actual: Decimal, expected: Decimal, mad: Decimal) -> f64 {
    let scale = (mad * mad_scale()).max(floor(expected));
    (actual - expected)
        .checked_div(scale)
        .and_then(|z| z.to_f64())
        .unwrap_or(1e9) // overflow only: an amount beyond any bill
}

/// Judges the day at index `i` against the window before it.
fn judge(series: &Series, i: usize, method: Method) -> Verdict {
    let lo = i.saturating_sub(WINDOW_DAYS);
    let window = &series.costs[lo..i];
    let actual = series.costs[i];
    let day = series.day(i);
    let history = window.len();
    if history < MIN_HISTORY {
        return Verdict {
            day,
            actual,
            expected: actual,
            deviation: 0.0,
            severity: None,
            history,
        };
    }
    let seasonal = match method {
        Method::Robust => None,
        Method::Seasonal => seasonal_expectation(series, lo, i),
    };
    let (expected, mad) = seasonal.unwrap_or_else(|| median_mad(window));
    let deviation = z_score(actual, expected, mad);
    Verdict {
        day,
        actual,
        expected,
        deviation,
        severity: Severity::of(deviation),
        history,
    }
}

/// The median of the day's weekday in the window, and the MAD of the window's prediction
/// errors: each value against the median of the *other* values of its weekday, as today
/// is against values that do not include it (residuals against a median of 4 that holds
/// the value itself are about half as wide, and the scale would be too small); `None`
/// when the weekday has fewer than two values.
fn seasonal_expectation(series: &Series, lo: usize, i: usize) -> Option<(Decimal, Decimal)> {
    let mut by_weekday: [Vec<Decimal>; 7] = Default::default();
    for j in lo..i {
        let w = series.day(j).weekday().num_days_from_monday() as usize;
        by_weekday[w].push(series.costs[j]);
    }
    let today = series.day(i).weekday().num_days_from_monday() as usize;
    if by_weekday[today].len() < 2 {
        return None;
    }
    let mut residuals = Vec::with_capacity(i - lo);
    let mut others = Vec::with_capacity(4);
    for values in &by_weekday {
        if values.len() < 2 {
            continue;
        }
        for (k, x) in values.iter().enumerate() {
            others.clear();
            others.extend(
                values
                    .iter()
                    .enumerate()
                    .filter(|(l, _)| *l != k)
                    .map(|(_, v)| *v),
            );
            residuals.push(*x - median(&mut others));
        }
    }
    let (_, mad) = median_mad(&residuals);
    Some((median(&mut by_weekday[today]), mad))
}

/// Verdicts for the days of `series` from `from` to `to` (inclusive; clipped to the
/// series).
pub fn detect(series: &Series, from: NaiveDate, to: NaiveDate, method: Method) -> Vec<Verdict> {
    let first = series.index(from).unwrap_or(if from < series.start {
        0
    } else {
        series.costs.len()
    });
    let last = series
        .index(to)
        .map(|i| i + 1)
        .unwrap_or(if to < series.start {
            0
        } else {
            series.costs.len()
        });
    (first..last.max(first))
        .map(|i| judge(series, i, method))
        .collect()
}

/// The old rule, for comparison only: |x − mean| > 2σ over the same trailing window
/// (population σ, in f64), with the same minimum history. `deviation` is (x − mean)/σ;
/// a flagged day is `low`.
pub fn mean_two_sigma(series: &Series, from: NaiveDate, to: NaiveDate) -> Vec<Verdict> {
    let values: Vec<f64> = series
        .costs
        .iter()
        .map(|c| c.to_f64().unwrap_or(0.0))
        .collect();
    detect(series, from, to, Method::Robust)
        .into_iter()
        .map(|v| {
            let Some(i) = series.index(v.day) else {
                return v;
            };
            let lo = i.saturating_sub(WINDOW_DAYS);
            let w = &values[lo..i];
            if w.len() < MIN_HISTORY {
                return v;
            }
            let n = w.len() as f64;
            let mean = w.iter().sum::<f64>() / n;
            let sd = (w.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
            let x = values[i];
            let deviation = if sd > 0.0 {
                (x - mean) / sd
            } else if x == mean {
                0.0
            } else {
                f64::INFINITY.copysign(x - mean)
            };
            Verdict {
                expected: Decimal::from_f64_retain(mean).unwrap_or_default(),
                deviation,
                severity: (deviation.abs() > 2.0).then_some(Severity::Low),
                ..v
            }
        })
        .collect()
}

/// A run of consecutive anomalous days: one anomaly. It ends at the first normal day.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    /// The first normal day after it (`None`: still open at the end of the verdicts).
    pub ended: Option<NaiveDate>,
    pub severity: Severity,
    /// The verdict of the first day (what `CostAnomalyDetected` reports).
    pub first: Verdict,
}

/// The episodes of consecutive verdicts (days in order, without gaps).
pub fn episodes(verdicts: &[Verdict]) -> Vec<Episode> {
    let mut out: Vec<Episode> = Vec::new();
    let mut open: Option<Episode> = None;
    for v in verdicts {
        match (v.severity, open.as_mut()) {
            (Some(s), Some(e)) => {
                e.last_day = v.day;
                e.severity = e.severity.max(s);
            }
            (Some(s), None) => {
                open = Some(Episode {
                    first_day: v.day,
                    last_day: v.day,
                    ended: None,
                    severity: s,
                    first: v.clone(),
                })
            }
            (None, Some(_)) => {
                if let Some(mut e) = open.take() {
                    e.ended = Some(v.day);
                    out.push(e);
                }
            }
            (None, None) => {}
        }
    }
    out.extend(open);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    /// Weekdays 100 ± a little, weekends 40 ± a little, from a Monday.
    fn weekly(days: usize) -> Vec<Decimal> {
        (0..days)
            .map(|i| {
                let noise = Decimal::from(((i * 7919) % 11) as i64 - 5);
                let base = if i % 7 >= 5 { 40 } else { 100 };
                Decimal::from(base) + noise
            })
            .collect()
    }

    fn series(costs: Vec<Decimal>) -> Series {
        Series {
            start: d("2024-01-01"), // a Monday
            costs,
        }
    }

    #[test]
    fn severities_follow_the_thresholds() {
        assert_eq!(Severity::of(3.4), None);
        assert_eq!(Severity::of(-3.5), Some(Severity::Low));
        assert_eq!(Severity::of(5.0), Some(Severity::Medium));
        assert_eq!(Severity::of(8.0), Some(Severity::High));
        assert_eq!(Severity::of(12.0), Some(Severity::Critical));
        assert_eq!(Severity::of(f64::INFINITY), Some(Severity::Critical));
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn nothing_is_flagged_before_fourteen_days_of_history() {
        let mut c = vec![Decimal::from(10); 13];
        c.push(Decimal::from(10_000));
        let s = series(c);
        let v = detect(&s, s.start, s.day(13), Method::Seasonal);
        assert_eq!(v.len(), 14);
        assert!(v.iter().all(|v| !v.anomalous()));
    }

    #[test]
    fn a_flat_series_divides_by_the_floor_not_by_zero() {
        let mut c = vec![Decimal::from(100); 40];
        c[35] = Decimal::from(104); // 4 %: below 5 % + 0.5
        c[38] = Decimal::from(150);
        let s = series(c);
        let v = detect(&s, s.day(28), s.day(39), Method::Robust);
        let flagged: Vec<_> = v.iter().filter(|v| v.anomalous()).map(|v| v.day).collect();
        assert_eq!(flagged, vec![s.day(38)]);
        let spike = &v[10];
        assert_eq!(spike.expected, Decimal::from(100));
        assert!((spike.deviation - 50.0 / 5.5).abs() < 1e-9, "{spike:?}");
        assert_eq!(spike.severity, Some(Severity::High));
    }

    #[test]
    fn weekends_are_normal_for_the_seasonal_method_and_a_spike_is_one_episode() {
        let mut c = weekly(70);
        c[50] = Decimal::from(400); // a Thursday
        c[51] = Decimal::from(380);
        let s = series(c);
        let v = detect(&s, s.day(28), s.day(69), Method::Seasonal);
        let e = episodes(&v);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].first_day, s.day(50));
        assert_eq!(e[0].last_day, s.day(51));
        assert_eq!(e[0].ended, Some(s.day(52)));
        assert_eq!(e[0].severity, Severity::Critical);
        // The median of the four Thursdays before, not of the whole window.
        let expected = e[0].first.expected;
        assert!(expected >= Decimal::from(95) && expected <= Decimal::from(105));
        // The plain robust method calls every weekend a drop.
        let plain = episodes(&detect(&s, s.day(28), s.day(69), Method::Robust));
        assert!(plain.len() > 4, "{plain:?}");
    }

    #[test]
    fn a_level_shift_is_absorbed_by_the_window() {
        let mut c = weekly(120);
        for x in c.iter_mut().skip(60) {
            *x *= Decimal::TWO;
        }
        let s = series(c);
        let v = detect(&s, s.day(28), s.day(119), Method::Seasonal);
        let e = episodes(&v);
        assert_eq!(e[0].first_day, s.day(60));
        let ended = e[0].ended.unwrap();
        let days = (ended - s.day(60)).num_days();
        // Each weekday's median moves once 2 of its 4 window values are at the new
        // level, and the residuals' MAD grows meanwhile: the episode ends after one and
        // a half to three weeks (10 days here; ADR 0026). While a weekday's median sits
        // between the levels a short `low` episode may follow; nothing after 4 weeks.
        assert!((8..=21).contains(&days), "ended after {days} days");
        assert!(e.len() <= 2, "{e:?}");
        assert!(e.iter().all(|e| e.first_day < s.day(60 + 28)), "{e:?}");
        let robust = episodes(&detect(&s, s.day(28), s.day(119), Method::Robust));
        assert!(robust.iter().any(|e| e.first_day == s.day(60)));
    }

    #[test]
    fn a_drop_is_negative() {
        let mut c = vec![Decimal::from(100); 40];
        c[30] = Decimal::from(10);
        let s = series(c);
        let v = detect(&s, s.day(30), s.day(30), Method::Seasonal);
        assert!(v[0].deviation < -12.0);
        assert_eq!(v[0].severity, Some(Severity::Critical));
    }

    #[test]
    fn one_spike_masks_the_next_for_mean_two_sigma_but_not_for_the_median() {
        let mut c: Vec<Decimal> = (0..60)
            .map(|i| Decimal::from(100 + ((i * 7919) % 7) as i64 - 3))
            .collect();
        c[30] = Decimal::from(1000);
        c[36] = Decimal::from(300);
        let s = series(c);
        let flagged = |v: Vec<Verdict>| -> Vec<NaiveDate> {
            v.into_iter()
                .filter(|v| v.anomalous())
                .map(|v| v.day)
                .collect()
        };
        let old = flagged(mean_two_sigma(&s, s.day(28), s.day(59)));
        let new = flagged(detect(&s, s.day(28), s.day(59), Method::Seasonal));
        assert_eq!(new, vec![s.day(30), s.day(36)]);
        assert!(
            old.contains(&s.day(30)) && !old.contains(&s.day(36)),
            "{old:?}"
        );
    }

    #[test]
    fn series_from_days_sums_and_zero_fills() {
        let s = Series::from_days(
            d("2024-01-01"),
            Some(d("2024-01-05")),
            [
                (d("2024-01-03"), Decimal::ONE),
                (d("2024-01-03"), Decimal::TWO),
                (d("2023-12-31"), Decimal::TEN),
            ],
        );
        assert_eq!(s.costs.len(), 5);
        assert_eq!(s.costs[2], Decimal::from(3));
        assert_eq!(s.costs[0], Decimal::ZERO);
    }

    proptest! {
        /// Scaling a series scales nothing else: the same days are flagged (the floor is
        /// mostly relative; amounts are kept large enough that the absolute part is moot).
        #[test]
        fn episodes_partition_the_flagged_days(xs in proptest::collection::vec(0u32..1000, 20..80)) {
            let s = series(xs.into_iter().map(Decimal::from).collect());
            let to = s.day(s.costs.len() - 1);
            let v = detect(&s, s.start, to, Method::Seasonal);
            prop_assert_eq!(v.len(), s.costs.len());
            let flagged = v.iter().filter(|v| v.anomalous()).count() as i64;
            let e = episodes(&v);
            let covered: i64 = e.iter().map(|e| (e.last_day - e.first_day).num_days() + 1).sum();
            prop_assert_eq!(flagged, covered);
            for w in e.windows(2) {
                // Episodes are separated by at least one normal day.
                prop_assert!(w[0].ended.unwrap() <= w[1].first_day);
                prop_assert!(w[0].last_day < w[0].ended.unwrap());
            }
        }

        /// A verdict never depends on days after it (detection over a prefix agrees).
        #[test]
        fn a_verdict_depends_only_on_the_past(xs in proptest::collection::vec(0u32..500, 30..60), cut in 15usize..29) {
            let s = series(xs.into_iter().map(Decimal::from).collect());
            let prefix = Series { start: s.start, costs: s.costs[..cut + 1].to_vec() };
            let a = detect(&s, s.day(cut), s.day(cut), Method::Seasonal);
            let b = detect(&prefix, s.day(cut), s.day(cut), Method::Seasonal);
            prop_assert_eq!(a, b);
        }
    }
}
