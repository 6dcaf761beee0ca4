//! `anomalies`: the cost-anomaly methods (ADR 0026) evaluated on generated series, no
//! database. SERIES account × service series of DAYS days, seeded: a level between 5 and
//! 5,000 a day, weekend dips on most series (weekends at 30–80 % of weekdays),
//! multiplicative noise (σ 3–15 %), and injected anomalies on known days: spikes (1–2
//! days at 1.6–4×), drops (1–3 days at 10–50 %) and level shifts (a permanent step of
//! 1.4–2.5×); about a third of the series get none.
//!
//! Every method judges days 29… of each series against the trailing 28 days; consecutive
//! anomalous days are one episode. An injected anomaly is found when an episode overlaps
//! its days (a shift: its first 3 days). An episode that overlaps no injected anomaly (a
//! shift: its first 28 days, while the window absorbs the new level) is a false alarm.
//!
//! Numbers are printed, never asserted (loadtest/anomalies.sh, loadtest/RESULTS.md).

use std::time::Instant;

use chrono::{Duration, NaiveDate};
use cloudlens::costs::anomaly::{self, Episode, Method, Series, Verdict, WINDOW_DAYS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 2_000)]
    pub series: usize,
    #[arg(long, default_value_t = 180)]
    pub days: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Spike,
    Drop,
    Shift,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Spike => "spike",
            Kind::Drop => "drop",
            Kind::Shift => "level shift",
        }
    }
}

struct Injected {
    kind: Kind,
    /// Index of the first day.
    day: usize,
    len: usize,
}

impl Injected {
    /// Days an episode must overlap to find it.
    fn hit(&self) -> (usize, usize) {
        match self.kind {
            Kind::Shift => (self.day, self.day + 3),
            _ => (self.day, self.day + self.len),
        }
    }

    /// Days whose episodes it explains (not false alarms).
    fn explains(&self) -> (usize, usize) {
        match self.kind {
            Kind::Shift => (self.day, self.day + WINDOW_DAYS),
            _ => (self.day, self.day + self.len),
        }
    }
}

struct Generated {
    series: Series,
    injected: Vec<Injected>,
    weekly: bool,
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn generate(rng: &mut StdRng, start: NaiveDate, days: usize) -> Generated {
    let level = (rng.gen_range(5f64.ln()..5000f64.ln())).exp();
    let weekly = rng.gen_bool(0.7);
    let weekend = if weekly { rng.gen_range(0.3..0.8) } else { 1.0 };
    let sigma = rng.gen_range(0.03..0.15);
    let mut factor = vec![1.0f64; days];
    let mut injected = Vec::new();
    let n = match rng.gen_range(0..3) {
        0 => 0,
        1 => 1,
        _ => 2,
    };
    let mut next = WINDOW_DAYS + 7;
    for _ in 0..n {
        if next + 10 >= days {
            break;
        }
        let day = rng.gen_range(next..(next + 40).min(days - 5));
        let kind = match rng.gen_range(0..20) {
            0..=10 => Kind::Spike,
            11..=14 => Kind::Drop,
            _ => Kind::Shift,
        };
        let (len, f) = match kind {
            Kind::Spike => (rng.gen_range(1..=2), rng.gen_range(1.6..4.0)),
            Kind::Drop => (rng.gen_range(1..=3), rng.gen_range(0.1..0.5)),
            Kind::Shift => (days - day, rng.gen_range(1.4..2.5)),
        };
        for x in factor.iter_mut().skip(day).take(len) {
            *x *= f;
        }
        injected.push(Injected { kind, day, len });
        if kind == Kind::Shift {
            break; // the rest of the series is at the new level
        }
        next = day + len + WINDOW_DAYS;
    }
    let costs = (0..days)
        .map(|i| {
            let d = start + Duration::days(i as i64);
            let w = if chrono::Datelike::weekday(&d).number_from_monday() >= 6 {
                weekend
            } else {
                1.0
            };
            let x = (level * w * factor[i] * (1.0 + sigma * normal(rng))).max(0.0);
            Decimal::from_f64_retain(x).unwrap_or_default().round_dp(2)
        })
        .collect();
    Generated {
        series: Series { start, costs },
        injected,
        weekly,
    }
}

#[derive(Default)]
struct Score {
    found: [usize; 3],
    total: [usize; 3],
    episodes: usize,
    false_alarms: usize,
    false_alarms_weekly: usize,
    false_alarms_clean: usize,
    anomalous_days: usize,
    nanos: u128,
}

fn index(k: Kind) -> usize {
    match k {
        Kind::Spike => 0,
        Kind::Drop => 1,
        Kind::Shift => 2,
    }
}

fn score(g: &Generated, verdicts: &[Verdict], s: &mut Score) {
    let at = |day: NaiveDate| (day - g.series.start).num_days() as usize;
    let eps: Vec<Episode> = anomaly::episodes(verdicts);
    s.anomalous_days += verdicts.iter().filter(|v| v.anomalous()).count();
    s.episodes += eps.len();
    let span = |e: &Episode| (at(e.first_day), at(e.last_day) + 1);
    let overlaps = |(a, b): (usize, usize), (c, d): (usize, usize)| a < d && c < b;
    for inj in &g.injected {
        s.total[index(inj.kind)] += 1;
        if eps.iter().any(|e| overlaps(span(e), inj.hit())) {
            s.found[index(inj.kind)] += 1;
        }
    }
    for e in &eps {
        if !g.injected.iter().any(|i| overlaps(span(e), i.explains())) {
            s.false_alarms += 1;
            if g.weekly {
                s.false_alarms_weekly += 1;
            }
            if g.injected.is_empty() {
                s.false_alarms_clean += 1;
            }
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default(); // a Monday
    let mut rng = StdRng::seed_from_u64(args.seed);
    let generated: Vec<Generated> = (0..args.series)
        .map(|_| generate(&mut rng, start, args.days))
        .collect();
    let from = start + Duration::days(WINDOW_DAYS as i64);
    let to = start + Duration::days(args.days as i64 - 1);
    let judged_days = args.series * (args.days - WINDOW_DAYS);
    let weekly = generated.iter().filter(|g| g.weekly).count();
    let clean = generated.iter().filter(|g| g.injected.is_empty()).count();
    println!(
        "== {} series × {} days (seed {}): {} with weekend dips, {} without injected anomalies; {} series-days judged",
        args.series, args.days, args.seed, weekly, clean, judged_days
    );
    type Detector = fn(&Series, NaiveDate, NaiveDate) -> Vec<Verdict>;
    let methods: [(&str, Detector); 3] = [
        ("mean + 2σ (seed 000)", |s, f, t| {
            anomaly::mean_two_sigma(s, f, t)
        }),
        ("median/MAD", |s, f, t| {
            anomaly::detect(s, f, t, Method::Robust)
        }),
        ("median/MAD by weekday", |s, f, t| {
            anomaly::detect(s, f, t, Method::Seasonal)
        }),
    ];
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8} {:>9} {:>12} {:>10} {:>10} {:>10} {:>9}",
        "method",
        "spikes",
        "drops",
        "shifts",
        "recall",
        "episodes",
        "false alarms",
        "per 1k sd",
        "on weekly",
        "on clean",
        "time ms"
    );
    for (name, detect) in methods {
        let mut s = Score::default();
        for g in &generated {
            let t = Instant::now();
            let v = detect(&g.series, from, to);
            s.nanos += t.elapsed().as_nanos();
            score(g, &v, &mut s);
        }
        let pct = |k: usize| 100.0 * s.found[k] as f64 / s.total[k].max(1) as f64;
        let all: usize = s.found.iter().sum();
        let total: usize = s.total.iter().sum();
        println!(
            "{:<24} {:>7.1}% {:>7.1}% {:>7.1}% {:>7.1}% {:>9} {:>12} {:>10.2} {:>10} {:>10} {:>9.0}",
            name,
            pct(0),
            pct(1),
            pct(2),
            100.0 * all as f64 / total.max(1) as f64,
            s.episodes,
            s.false_alarms,
            1000.0 * s.false_alarms as f64 / judged_days as f64,
            s.false_alarms_weekly,
            s.false_alarms_clean,
            s.nanos as f64 / 1e6
        );
    }
    let mut totals = [0usize; 3];
    for g in &generated {
        for i in &g.injected {
            totals[index(i.kind)] += 1;
        }
    }
    println!(
        "injected: {} {}s, {} {}s, {} {}s; recall per injected episode, false alarms = episodes overlapping nothing injected",
        totals[0],
        Kind::Spike.name(),
        totals[1],
        Kind::Drop.name(),
        totals[2],
        Kind::Shift.name()
    );
    Ok(())
}
