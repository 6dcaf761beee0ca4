//! Latency samples → percentiles.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Default)]
pub struct Samples {
    micros: Vec<u64>,
}

impl Samples {
    pub fn add(&mut self, d: Duration) {
        self.micros.push(d.as_micros() as u64);
    }

    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// p in 0..=100, in milliseconds.
    pub fn percentile(&mut self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        self.micros.sort_unstable();
        let idx = ((p / 100.0) * (self.micros.len() - 1) as f64).round() as usize;
        self.micros[idx] as f64 / 1000.0
    }
}

/// Per-operation results of a load run.
#[derive(Default)]
pub struct Report {
    pub ok: BTreeMap<&'static str, Samples>,
    pub errors: BTreeMap<(&'static str, String), u64>,
}

impl Report {
    pub fn merge(&mut self, other: Report) {
        for (k, v) in other.ok {
            self.ok.entry(k).or_default().merge(v);
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    pub fn print(&mut self, elapsed: Duration) {
        println!(
            "{:<14} {:>9} {:>10} {:>9} {:>9} {:>9}",
            "operation", "ok", "req/s", "p50 ms", "p95 ms", "p99 ms"
        );
        let secs = elapsed.as_secs_f64();
        for (op, s) in self.ok.iter_mut() {
            let n = s.len();
            println!(
                "{:<14} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
                op,
                n,
                n as f64 / secs,
                s.percentile(50.0),
                s.percentile(95.0),
                s.percentile(99.0)
            );
        }
        if self.errors.is_empty() {
            println!("errors: none");
        } else {
            for ((op, status), n) in &self.errors {
                println!("errors: {op} {status}: {n}");
            }
        }
    }
}

/// Median, smallest and largest of a set of figures (one per round).
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// Figures of repeated rounds, by name, printed as `median [min–max]` in insertion order.
#[derive(Default)]
pub struct Rounds {
    series: Vec<Series>,
}

struct Series {
    name: String,
    unit: &'static str,
    decimals: usize,
    values: Vec<f64>,
}

impl Rounds {
    /// Records one round's figure for `name`, shown with `unit` and no decimals.
    pub fn add(&mut self, name: &str, unit: &'static str, value: f64) {
        self.add_with(name, unit, 0, value);
    }

    /// Records one round's figure for `name`, shown with `unit` and `decimals`.
    pub fn add_with(&mut self, name: &str, unit: &'static str, decimals: usize, value: f64) {
        match self.series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.values.push(value),
            None => self.series.push(Series {
                name: name.to_owned(),
                unit,
                decimals,
                values: vec![value],
            }),
        }
    }

    pub fn print(&self) {
        let width = self.series.iter().map(|s| s.name.len()).max().unwrap_or(0);
        for s in &self.series {
            let (median, min, max) = spread(&s.values);
            let d = s.decimals;
            println!(
                "  {:<width$}  {median:>9.d$} {:<9} [{min:.d$}–{max:.d$}] over {} rounds",
                s.name,
                s.unit,
                s.values.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn spread_of_odd_and_even_counts() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(spread(&[]).0.is_nan());
    }
}
