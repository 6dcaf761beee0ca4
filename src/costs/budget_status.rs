//! Budget status: the budget's period around a day, what was spent in it, and the forecast
//! for its end (ADR 0010). Pure functions over dates and daily sums; the query in
//! `queries::budget_status` feeds them.
//!
//! - Periods are UTC calendar periods: `monthly` the month of the day, `quarterly` its
//!   quarter (Jan, Apr, Jul, Oct), `yearly` its year, `custom` the budget's
//!   `start_date ..= end_date`; each clipped to the budget's own start and end dates.
//!   `end` is exclusive.
//! - Spent counts every cost line charged in the period on or before the `as_of` day.
//! - Forecast `linear_run_rate`: mean daily cost over the days elapsed (days without lines
//!   count as zero) times the days left, plus what was spent; a 95 % range of
//!   ±1.96·s·√(days left), s the sample standard deviation of the elapsed days' costs.
//!   With fewer than 3 days that have cost lines, no forecast (`insufficient_data`).
//!   Once the period is over the forecast is the spent amount (`final`).

use chrono::{Datelike, Months, NaiveDate};
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::Decimal;

/// Days with cost lines needed before a forecast is made.
pub const MIN_DAYS_FOR_FORECAST: usize = 3;

/// A budget period, `[start, end)` in UTC days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Window {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl Window {
    pub fn days(&self) -> i64 {
        (self.end - self.start).num_days()
    }
}

/// The period of a budget (`monthly`, `quarterly`, `yearly`, `custom`) that holds `day`,
/// clipped to the budget's dates. `None` when `day` lies outside the budget's dates.
pub fn window(
    period: &str,
    start_date: NaiveDate,
    end_date: Option<NaiveDate>,
    day: NaiveDate,
) -> Option<Window> {
    let last = end_date.and_then(|e| e.succ_opt());
    if day < start_date || last.is_some_and(|l| day >= l) {
        return None;
    }
    let first_of = |y: i32, m: u32| NaiveDate::from_ymd_opt(y, m, 1);
    let (start, end) = match period {
        "monthly" => {
            let s = first_of(day.year(), day.month())?;
            (s, s.checked_add_months(Months::new(1))?)
        }
        "quarterly" => {
            let s = first_of(day.year(), (day.month0() / 3) * 3 + 1)?;
            (s, s.checked_add_months(Months::new(3))?)
        }
        "yearly" => {
            let s = first_of(day.year(), 1)?;
            (s, s.checked_add_months(Months::new(12))?)
        }
        "custom" => (start_date, last?),
        _ => return None,
    };
    Some(Window {
        start: start.max(start_date),
        end: last.map_or(end, |l| end.min(l)),
    })
}

/// The forecast of a period's total.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// `linear_run_rate`, `final` (the period is over) or `insufficient_data`.
    pub method: &'static str,
    pub amount: Option<Decimal>,
    pub low: Option<Decimal>,
    pub high: Option<Decimal>,
    /// Days of the period with cost lines, up to `as_of`.
    pub days_with_data: i64,
    pub days_elapsed: i64,
}

/// Forecasts the total of `window` from its daily sums up to and including `as_of`
/// (`daily` holds only days with lines; each inside the window and not after `as_of`).
/// Amounts are rounded to `scale` decimals (the currency's minor unit).
pub fn forecast(
    window: Window,
    as_of: NaiveDate,
    daily: &[(NaiveDate, Decimal)],
    scale: u32,
) -> Forecast {
    let elapsed = ((as_of - window.start).num_days() + 1).clamp(0, window.days());
    let spent: Decimal = daily.iter().map(|(_, c)| *c).sum();
    let with_data = daily.len() as i64;
    let base = Forecast {
        method: "insufficient_data",
        amount: None,
        low: None,
        high: None,
        days_with_data: with_data,
        days_elapsed: elapsed,
    };
    if elapsed >= window.days() {
        return Forecast {
            method: "final",
            amount: Some(spent),
            low: Some(spent),
            high: Some(spent),
            ..base
        };
    }
    if daily.len() < MIN_DAYS_FOR_FORECAST {
        return base;
    }
    let left = Decimal::from(window.days() - elapsed);
    let n = Decimal::from(elapsed);
    let mean = spent / n;
    let amount = spent + mean * left;
    // Sample variance over the elapsed days, missing days as zero.
    let zeros = Decimal::from(elapsed - with_data);
    let squares: Decimal = daily
        .iter()
        .map(|(_, c)| (*c - mean) * (*c - mean))
        .sum::<Decimal>()
        + zeros * mean * mean;
    let variance = if elapsed > 1 {
        squares / Decimal::from(elapsed - 1)
    } else {
        Decimal::ZERO
    };
    // The spread is an estimate: computed in floating point, then made exact at the
    // currency's scale.
    let half = variance
        .to_f64()
        .zip(left.to_f64())
        .map(|(v, l)| 1.96 * v.max(0.0).sqrt() * l.sqrt())
        .and_then(Decimal::from_f64)
        .unwrap_or_default();
    let never_negative = daily.iter().all(|(_, c)| !c.is_sign_negative());
    let low = if never_negative {
        (amount - half).max(spent)
    } else {
        amount - half
    };
    Forecast {
        method: "linear_run_rate",
        amount: Some(amount.round_dp(scale)),
        low: Some(low.round_dp(scale)),
        high: Some((amount + half).round_dp(scale)),
        ..base
    }
}

/// A budget's figures in one period as of a day.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub spent: Decimal,
    pub percent_used: Decimal,
    pub forecast: Forecast,
    pub forecast_percent: Option<Decimal>,
    /// Per threshold and basis (`actual`, `forecast`): crossed or not.
    pub thresholds: Vec<(Decimal, &'static str, bool)>,
}

/// Spent, forecast and thresholds of a budget of `amount` (scale: the currency's minor
/// unit) from its daily sums in `window` up to `as_of`.
pub fn figures(
    amount: Decimal,
    thresholds: &[Decimal],
    window: Window,
    as_of: NaiveDate,
    daily: &[(NaiveDate, Decimal)],
    scale: u32,
) -> Figures {
    let spent: Decimal = daily.iter().map(|(_, c)| *c).sum();
    let forecast = forecast(window, as_of, daily, scale);
    let percent_used = percent(spent, amount).unwrap_or_default();
    let forecast_percent = forecast.amount.and_then(|a| percent(a, amount));
    let thresholds = thresholds
        .iter()
        .flat_map(|p| {
            [
                (*p, "actual", percent_used >= *p),
                (*p, "forecast", forecast_percent.is_some_and(|f| f >= *p)),
            ]
        })
        .collect();
    Figures {
        spent,
        percent_used,
        forecast,
        forecast_percent,
        thresholds,
    }
}

/// `part / whole` in percent, two decimals (not capped at 100).
pub fn percent(part: Decimal, whole: Decimal) -> Option<Decimal> {
    (!whole.is_zero()).then(|| (part * Decimal::ONE_HUNDRED / whole).round_dp(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn periods_are_utc_calendar_periods_of_every_length() {
        let start = d("2020-01-01");
        let w = |p, day| window(p, start, None, d(day)).unwrap();
        assert_eq!(w("monthly", "2024-02-10").days(), 29, "leap February");
        assert_eq!(w("monthly", "2023-02-10").days(), 28);
        assert_eq!(w("monthly", "2024-04-30").days(), 30);
        assert_eq!(w("monthly", "2024-12-31").days(), 31);
        assert_eq!(w("monthly", "2024-12-31").end, d("2025-01-01"));
        assert_eq!(w("quarterly", "2024-02-29").start, d("2024-01-01"));
        assert_eq!(w("quarterly", "2024-02-29").days(), 91, "Q1 of a leap year");
        assert_eq!(w("quarterly", "2023-11-15").days(), 92);
        assert_eq!(w("yearly", "2024-07-01").days(), 366);
        assert_eq!(w("yearly", "2023-07-01").days(), 365);
    }

    #[test]
    fn periods_are_clipped_to_the_budget_dates() {
        let w = window(
            "monthly",
            d("2024-03-10"),
            Some(d("2024-05-20")),
            d("2024-03-15"),
        );
        assert_eq!(
            w.map(|w| (w.start, w.end)),
            Some((d("2024-03-10"), d("2024-04-01")))
        );
        let w = window(
            "monthly",
            d("2024-03-10"),
            Some(d("2024-05-20")),
            d("2024-05-20"),
        );
        assert_eq!(
            w.map(|w| (w.start, w.end)),
            Some((d("2024-05-01"), d("2024-05-21")))
        );
        assert_eq!(
            window("monthly", d("2024-03-10"), None, d("2024-03-09")),
            None
        );
        let c = window(
            "custom",
            d("2024-01-15"),
            Some(d("2024-02-14")),
            d("2024-02-01"),
        )
        .unwrap();
        assert_eq!((c.start, c.days()), (d("2024-01-15"), 31));
    }

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_steady_spend_forecasts_its_run_rate_with_no_spread() {
        let w = window("monthly", d("2020-01-01"), None, d("2024-02-10")).unwrap();
        let daily: Vec<_> = (1..=10)
            .map(|i| (d(&format!("2024-02-{i:02}")), dec("10.00")))
            .collect();
        let f = forecast(w, d("2024-02-10"), &daily, 2);
        assert_eq!(f.method, "linear_run_rate");
        assert_eq!(
            f.amount,
            Some(dec("290.00")),
            "29 days of February 2024 at 10"
        );
        assert_eq!((f.low, f.high), (Some(dec("290.00")), Some(dec("290.00"))));
        assert_eq!((f.days_elapsed, f.days_with_data), (10, 10));
        // The same in a 31-day month and in a non-leap February.
        let w = window("monthly", d("2020-01-01"), None, d("2024-03-10")).unwrap();
        let march: Vec<_> = (1..=10)
            .map(|i| (d(&format!("2024-03-{i:02}")), dec("10")))
            .collect();
        assert_eq!(
            forecast(w, d("2024-03-10"), &march, 2).amount,
            Some(dec("310"))
        );
        let w = window("monthly", d("2020-01-01"), None, d("2023-02-10")).unwrap();
        let feb: Vec<_> = (1..=10)
            .map(|i| (d(&format!("2023-02-{i:02}")), dec("10")))
            .collect();
        assert_eq!(
            forecast(w, d("2023-02-10"), &feb, 2).amount,
            Some(dec("280"))
        );
    }

    #[test]
    fn an_uneven_spend_gets_a_range_around_the_forecast() {
        let w = window("quarterly", d("2020-01-01"), None, d("2024-01-10")).unwrap();
        let daily = vec![
            (d("2024-01-01"), dec("5")),
            (d("2024-01-04"), dec("50")),
            (d("2024-01-10"), dec("15")),
        ];
        let f = forecast(w, d("2024-01-10"), &daily, 2);
        // 70 over 10 days (7 missing as zero), 81 days left of 91.
        assert_eq!(f.amount, Some(dec("637.00")));
        let (low, high) = (f.low.unwrap(), f.high.unwrap());
        assert!(low < dec("637") && high > dec("637"), "{low} {high}");
        assert!(low >= dec("70"), "never below what was spent");
        assert_eq!(
            high - dec("637"),
            dec("637") - low,
            "symmetric when not clipped"
        );
    }

    #[test]
    fn fewer_than_three_days_of_data_give_no_forecast_and_a_past_period_is_final() {
        let w = window("monthly", d("2020-01-01"), None, d("2024-02-10")).unwrap();
        let two = vec![(d("2024-02-01"), dec("1")), (d("2024-02-09"), dec("1"))];
        let f = forecast(w, d("2024-02-10"), &two, 2);
        assert_eq!((f.method, f.amount), ("insufficient_data", None));
        assert_eq!(f.days_with_data, 2);
        let f = forecast(w, d("2024-03-05"), &two, 2);
        assert_eq!((f.method, f.amount), ("final", Some(dec("2"))));
        assert_eq!(f.days_elapsed, 29);
    }

    #[test]
    fn percent_is_not_capped() {
        assert_eq!(percent(dec("150"), dec("100")), Some(dec("150.00")));
        assert_eq!(percent(dec("1"), dec("3")), Some(dec("33.33")));
        assert_eq!(percent(dec("1"), Decimal::ZERO), None);
    }
}
