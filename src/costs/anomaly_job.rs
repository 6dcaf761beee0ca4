//! The anomaly process manager (ADR 0026): after every bill import (`BillImportCompleted`)
//! one job judges each service of the import's account, day by day from the first day of
//! the import's billing periods to the account's last day with cost (never past today;
//! days after the last bill are unknown, not zero), with `anomaly::detect` (the seasonal
//! method) over the daily rollup `cost_daily`, and records what it finds on the service's
//! `cost_anomaly` stream through `pipeline::execute`: the aggregate turns the day-by-day
//! findings into episodes and answers days judged before with no event, so a job run
//! again, a re-import or a restatement with the same costs records nothing new.
//!
//! Series are in the account's currency (costs of other currencies are never summed with
//! them). Contributors (top 3 regions, resources, tag values by delta against their own
//! trailing median) are read for every anomalous day in one statement.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{Duration as Days, NaiveDate, Utc};
use cqrs_es::Aggregate;
use serde_json::{json, Value};
use uuid::Uuid;

use super::aggregate::{BillImport, CostAnomalyStream};
use super::anomaly::{self, Method, Series, WINDOW_DAYS};
use super::commands::{CostAnomalyCommand, DayFinding, Finding};
use super::events::CostAnomalyEvent;
use super::metrics::COSTS;
use super::projection::COST_LINES;
use super::queries;
use crate::eventstore::RecordedEvent;
use crate::jobs::{Job, JobEnv, JobHandler};
use crate::pipeline::{self, CommandContext, EventSourced, Expect};

pub const JOB_KIND: &str = "costs.anomalies";
/// How long the job waits for the cost read models to reach its import.
const CATCH_UP: Duration = Duration::from_secs(120);

/// The stream of an account × service's anomalies, within its tenant.
pub fn anomaly_stream(tenant: &str, account: &str, service: &str) -> Uuid {
    // Account names cannot hold control characters: `\u{1f}` keeps the pair unambiguous.
    super::stream_id(tenant, "cost_anomaly", &format!("{account}\u{1f}{service}"))
}

pub struct CostAnomalyJob;

#[async_trait]
impl JobHandler for CostAnomalyJob {
    fn kind(&self) -> &'static str {
        JOB_KIND
    }

    fn requested_by(&self) -> (&'static str, &'static str) {
        (BillImport::STREAM_TYPE, "BillImportCompleted")
    }

    /// Not the import's id: the threshold job already has it (one `jobs` row per id).
    fn job_id(&self, e: &RecordedEvent) -> Uuid {
        Uuid::new_v5(&e.stream_id, JOB_KIND.as_bytes())
    }

    fn job_params(&self, e: &RecordedEvent) -> anyhow::Result<Value> {
        Ok(json!({ "import_id": e.stream_id }))
    }

    async fn run(&self, job: &Job, env: &JobEnv) -> anyhow::Result<Value> {
        let started = Instant::now();
        let result = detect_after_import(job, env).await;
        COSTS
            .anomaly_job_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

async fn detect_after_import(job: &Job, env: &JobEnv) -> anyhow::Result<Value> {
    let import_id: Uuid = serde_json::from_value(job.params["import_id"].clone())?;
    env.wait_for(COST_LINES, job.position, CATCH_UP).await?;
    let conn = env.reads.get().await?;
    let tenant = &job.tenant_id;
    let Some(import) = queries::import(&conn, tenant, import_id).await? else {
        return Ok(json!({"import_id": import_id, "services": 0}));
    };
    let client = conn.client();
    let Some(currency) = queries::account_currency(client, tenant, &import.account).await? else {
        return Ok(json!({"import_id": import_id, "services": 0}));
    };
    let (services, last) =
        queries::anomaly_services(client, tenant, &import.account, &currency).await?;
    let today = Utc::now().date_naive();
    let (Some(from), Some(last)) = (import.periods.iter().min().copied(), last) else {
        return Ok(json!({"import_id": import_id, "services": 0}));
    };
    let to = last.min(today);
    if to < from {
        return Ok(json!({"import_id": import_id, "services": 0}));
    }
    let window_start = from - Days::days(WINDOW_DAYS as i64);
    let series =
        queries::anomaly_series(client, tenant, &import.account, &currency, window_start, to)
            .await?;

    // Verdicts per service, then the contributors of every anomalous day at once.
    let mut judged: Vec<(String, Vec<anomaly::Verdict>)> = Vec::new();
    for (service, first) in &services {
        let start = (*first).max(window_start);
        let days = series.get(service).cloned().unwrap_or_default();
        let s = Series::from_days(start, Some(to), days);
        judged.push((
            service.clone(),
            anomaly::detect(&s, from.max(start), to, Method::Seasonal),
        ));
    }
    let flagged: Vec<(String, NaiveDate, i32)> = judged
        .iter()
        .flat_map(|(service, verdicts)| {
            verdicts.iter().filter(|v| v.anomalous()).map(|v| {
                let sign = if v.deviation < 0.0 { -1 } else { 1 };
                (service.clone(), v.day, sign)
            })
        })
        .collect();
    let mut contributors =
        queries::anomaly_contributors(client, tenant, &import.account, &currency, &flagged).await?;
    drop(conn);

    let mut ctx = CommandContext::new(tenant.clone());
    ctx.actor = "cloudlens:cost-anomalies".into();
    ctx.correlation_id = job.id;
    let (mut detected, mut updated, mut ended) = (0u64, 0u64, 0u64);
    for (service, verdicts) in judged {
        job.check_stop()?;
        let days: Vec<DayFinding> = verdicts
            .into_iter()
            .map(|v| DayFinding {
                day: v.day,
                anomaly: v.severity.map(|severity| Finding {
                    actual: v.actual,
                    expected: v.expected,
                    deviation: v.deviation,
                    severity,
                    contributors: contributors
                        .remove(&(service.clone(), v.day))
                        .unwrap_or_default(),
                }),
            })
            .collect();
        let stream_id = anomaly_stream(tenant, &import.account, &service);
        let loaded = pipeline::load::<CostAnomalyStream>(&env.store, tenant, stream_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if loaded.aggregate.open.is_none() && days.iter().all(|d| d.anomaly.is_none()) {
            continue; // nothing open, nothing found
        }
        let command = CostAnomalyCommand::RecordFindings {
            stream_id,
            account_id: import.account.clone(),
            service: service.clone(),
            currency: currency.clone(),
            days,
        };
        // Decided here first (the aggregate is pure) so that days judged before cost no
        // append; the pipeline decides again on the stream it loads, at that version.
        let events = loaded.aggregate.handle(command.clone(), &()).await?;
        if events.is_empty() {
            continue;
        }
        pipeline::execute::<CostAnomalyStream>(
            &env.store,
            &ctx,
            "RecordCostAnomalyFindings",
            stream_id,
            Expect::Version(loaded.version),
            command,
            &(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("recording anomalies of {service}: {e}"))?;
        for e in &events {
            match e {
                CostAnomalyEvent::CostAnomalyDetected(d) => {
                    detected += 1;
                    COSTS
                        .anomalies_detected
                        .with_label_values(&[d.severity.as_str()])
                        .inc();
                }
                CostAnomalyEvent::CostAnomalyUpdated(_) => updated += 1,
                CostAnomalyEvent::CostAnomalyEnded(_) => ended += 1,
            }
        }
    }
    Ok(json!({
        "import_id": import_id,
        "account": import.account,
        "from": from.to_string(),
        "to": to.to_string(),
        "services": services.len(),
        "anomalous_days": flagged.len(),
        "detected": detected,
        "updated": updated,
        "ended": ended,
    }))
}
