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
