//! HTTP scenarios against a running server. Each connection is one task sending requests
//! back to back; a request counts as served only with the status the operation expects.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::stats::Report;

#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// write-heavy | read-heavy | mixed | lag
    #[arg(long, default_value = "write-heavy")]
    pub scenario: String,
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Requests per second for the `lag` scenario (light load).
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
}

pub fn budget(i: u64) -> Value {
    json!({
        "name": format!("load budget {i}"), "amount": "1200.50", "currency": "CNY",
        "period": "monthly", "type": "cost", "start_date": "2026-01-01", "end_date": "2026-12-31",
        "tag_filter": {"team": format!("team-{}", i % 16), "env": "prod"},
        "service_filter": ["ecs", "oss"], "alert_thresholds": [80, 100, 120],
        "account": format!("account-{}", i % 8)
    })
}

struct Worker {
    client: awc::Client,
    base: String,
    report: Report,
    /// Budgets this worker created: (id, version), and the last position it saw.
    mine: Vec<(String, i64)>,
    last_position: i64,
    n: u64,
}

impl Worker {
    fn new(base: &str, seed: u64) -> Self {
        let client = awc::Client::builder()
            .connector(awc::Connector::new().limit(1))
            .timeout(Duration::from_secs(30))
            .finish();
        Self {
            client,
            base: base.to_owned(),
            report: Report::default(),
            mine: Vec::new(),
            last_position: 0,
            n: seed,
        }
    }

    fn fail(&mut self, op: &'static str, status: String) {
        *self.report.errors.entry((op, status)).or_default() += 1;
    }

    async fn create(&mut self) -> Option<i64> {
        self.n += 1;
        let started = Instant::now();
        let res = self
            .client
            .post(format!("{}/api/v1/budgets", self.base))
            .send_json(&budget(self.n))
            .await;
        match res {
            Ok(mut r) if r.status() == 201 => {
                let body: Value = r.json().await.ok()?;
                self.report
                    .ok
                    .entry("create")
                    .or_default()
                    .add(started.elapsed());
                let id = body["id"].as_str()?.to_owned();
                let pos = body["position"].as_i64()?;
                self.last_position = pos;
                self.mine.push((id, 1));
                Some(pos)
            }
            Ok(r) => {
                self.fail("create", r.status().as_u16().to_string());
                None
            }
            Err(e) => {
                self.fail("create", format!("io: {e}"));
                None
            }
        }
    }

    async fn update(&mut self) {
        let Some((id, version)) = self.mine.last().cloned() else {
            return;
        };
        self.n += 1;
        let started = Instant::now();
        let res = self
            .client
            .put(format!("{}/api/v1/budgets/{id}", self.base))
            .insert_header(("If-Match", format!("\"{version}\"")))
            .send_json(&budget(self.n))
            .await;
        match res {
            Ok(mut r) if r.status() == 200 => {
                if let Ok(body) = r.json::<Value>().await {
                    self.report
                        .ok
                        .entry("update")
                        .or_default()
                        .add(started.elapsed());
                    self.last_position = body["position"].as_i64().unwrap_or(self.last_position);
                    if let Some(last) = self.mine.last_mut() {
                        last.1 = body["version"].as_i64().unwrap_or(version + 1);
                    }
                }
            }
            Ok(r) => self.fail("update", r.status().as_u16().to_string()),
            Err(e) => self.fail("update", format!("io: {e}")),
        }
    }

    /// GET one of its budgets with min_position = its last write (read-your-writes).
    async fn read(&mut self, op: &'static str, pick: usize) -> Option<Duration> {
        if self.mine.is_empty() {
            return None;
        }
        let (id, _) = self.mine[pick % self.mine.len()].clone();
        let started = Instant::now();
        let url = format!(
            "{}/api/v1/budgets/{id}?min_position={}",
            self.base, self.last_position
        );
        match self.client.get(url).send().await {
            Ok(mut r) if r.status() == 200 => {
                let _ = r.body().await;
                let d = started.elapsed();
                self.report.ok.entry(op).or_default().add(d);
                Some(d)
            }
            Ok(r) => {
                self.fail(op, r.status().as_u16().to_string());
                None
            }
            Err(e) => {
                self.fail(op, format!("io: {e}"));
                None
            }
        }
    }

    async fn list(&mut self) {
        let started = Instant::now();
        let url = format!(
            "{}/api/v1/budgets?tag=team:team-{}&limit=20&min_position={}",
            self.base,
            self.n % 16,
            self.last_position
        );
        match self.client.get(url).send().await {
            Ok(mut r) if r.status() == 200 => {
                let _ = r.body().limit(1 << 24).await;
                self.report
                    .ok
                    .entry("list")
                    .or_default()
                    .add(started.elapsed());
            }
            Ok(r) => self.fail("list", r.status().as_u16().to_string()),
            Err(e) => self.fail("list", format!("io: {e}")),
        }
    }
}

async fn worker(base: String, scenario: String, seed: u64, until: Instant) -> Report {
    let mut w = Worker::new(&base, seed * 1_000_000_000);
    if scenario != "write-heavy" {
        for _ in 0..10 {
            w.create().await;
        }
        w.report = Report::default();
    }
    let mut i: usize = 0;
    while Instant::now() < until {
        i += 1;
        match scenario.as_str() {
            "write-heavy" => {
                w.create().await;
            }
            "read-heavy" => {
                if i.is_multiple_of(10) {
                    w.list().await;
                } else {
                    w.read("get", i).await;
                }
            }
            _ => match i % 10 {
                0..=3 => {
                    w.create().await;
                }
                4..=5 => w.update().await,
                6..=8 => {
                    w.read("get", i).await;
                }
                _ => w.list().await,
            },
        }
    }
    w.report
}

/// Light load: create, then read it back with min_position; the time from the command's
/// acknowledgement to the query's answer is the event-to-view lag (upper bound: it
/// includes the query's own round trip).
async fn lag(base: String, rate: u64, until: Instant) -> Report {
    let mut w = Worker::new(&base, 7);
    let gap = Duration::from_micros(1_000_000 / rate.max(1));
    let mut next = Instant::now();
    while Instant::now() < until {
        if w.create().await.is_some() {
            let idx = w.mine.len() - 1;
            w.read("ack_to_visible", idx).await;
        }
        next += gap;
        if let Some(sleep) = next.checked_duration_since(Instant::now()) {
            actix_rt::time::sleep(sleep).await;
        }
    }
    w.report
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let known = ["write-heavy", "read-heavy", "mixed", "lag"];
    anyhow::ensure!(
        known.contains(&args.scenario.as_str()),
        "unknown scenario {:?}; one of {known:?}",
        args.scenario
    );
    actix_rt::System::new().block_on(async move {
        let started = Instant::now();
        let until = started + Duration::from_secs(args.seconds);
        let mut report = Report::default();
        if args.scenario == "lag" {
            report = lag(args.url.clone(), args.rate, until).await;
        } else {
            let tasks: Vec<_> = (0..args.connections)
                .map(|c| {
                    actix_rt::spawn(worker(
                        args.url.clone(),
                        args.scenario.clone(),
                        c as u64 + 1,
                        until,
                    ))
                })
                .collect();
            for t in tasks {
                report.merge(t.await?);
            }
        }
        let elapsed = started.elapsed();
        println!(
            "scenario {} connections {} duration {:.1}s",
            args.scenario,
            if args.scenario == "lag" {
                1
            } else {
                args.connections
            },
            elapsed.as_secs_f64()
        );
        report.print(elapsed);
        anyhow::Ok(())
    })
}
