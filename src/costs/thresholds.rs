//! The budget-threshold process manager: after every bill import, the budgets that count
//! the import's account are evaluated for the periods the import touched, and every
//! threshold crossed is recorded on the budget's stream as `BudgetThresholdCrossed`
//! (ADR 0010).
//!
//! It runs as a job (`costs.budget_thresholds`) requested by `BillImportCompleted`, so it
//! is enqueued exactly once per import, by one elected runner, and survives restarts. The
//! budget aggregate records a (period, percent, basis) once and answers a repeat with no
//! event, so a job run again, a restated bill or a replay never records a crossing twice.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{Datelike, Months, Utc};
use serde_json::{json, Value};

use super::aggregate::BillImport;
use super::budget_status as status;
use super::projection::COST_LINES;
use super::queries;
use crate::budgets::events::ThresholdCrossing;
use crate::budgets::{Budget, BudgetCommand, BudgetError};
use crate::jobs::{Job, JobEnv, JobHandler};
use crate::pipeline::{self, CommandContext, CommandError, EventSourced, Expect};

pub const JOB_KIND: &str = "costs.budget_thresholds";
/// How long the job waits for the read models to reach its import.
const CATCH_UP: Duration = Duration::from_secs(120);

pub struct BudgetThresholdJob;

#[async_trait]
impl JobHandler for BudgetThresholdJob {
    fn kind(&self) -> &'static str {
        JOB_KIND
    }

    fn requested_by(&self) -> (&'static str, &'static str) {
        (BillImport::STREAM_TYPE, "BillImportCompleted")
    }

    async fn run(&self, job: &Job, env: &JobEnv) -> anyhow::Result<Value> {
        env.wait_for(COST_LINES, job.position, CATCH_UP).await?;
        env.wait_for(crate::budgets::projection::NAME, job.position, CATCH_UP)
            .await?;
        let conn = env.reads.get().await?;
        let Some(import) = queries::import(&conn, &job.tenant_id, job.id).await? else {
            return Ok(json!({"budgets_evaluated": 0, "crossings": 0}));
        };
        let today = Utc::now().date_naive();
        let budgets =
            queries::alerting_budgets(conn.client(), &job.tenant_id, &import.account).await?;
        let mut ctx = CommandContext::new(job.tenant_id.clone());
        ctx.actor = "cloudlens:budget-thresholds".into();
        ctx.correlation_id = job.id;
        let mut crossings = 0;
        for b in &budgets {
            let loaded = pipeline::load::<Budget>(&env.store, &job.tenant_id, b.id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if loaded.aggregate.details.is_none() || loaded.aggregate.deleted {
                continue;
            }
            // The budget's periods that hold a day of the import's billing periods.
            let mut windows = BTreeSet::new();
            for p in &import.periods {
                let end = p.checked_add_months(Months::new(1)).unwrap_or(*p);
                let mut day = *p;
                while day < end {
                    if let Some(w) = status::window(&b.period, b.start_date, b.end_date, day) {
                        windows.insert(w);
                    }
                    day = day.succ_opt().unwrap_or(end);
                }
            }
            for window in windows {
                let as_of = today.min(window.end.pred_opt().unwrap_or(window.end));
                if as_of < window.start {
                    continue;
                }
                let (fig, _) =
                    queries::budget_figures(conn.client(), &job.tenant_id, b, window, as_of)
                        .await?;
                for (percent, basis, crossed) in fig.thresholds {
                    if !crossed {
                        continue;
                    }
                    let observed = if basis == "actual" {
                        fig.percent_used
                    } else {
                        fig.forecast_percent.unwrap_or_default()
                    };
                    let crossing = ThresholdCrossing {
                        period_start: window.start,
                        period_end: window.end,
                        percent,
                        basis: basis.into(),
                        observed_percent: observed,
                        spent: fig.spent,
                        forecast: fig.forecast.amount,
                        as_of,
                        import_id: Some(job.id),
                    };
                    if loaded.aggregate.has_crossed(&crossing) {
                        continue; // recorded before: never twice
                    }
                    let command = BudgetCommand::RecordThresholdCrossing(crossing);
                    let outcome = pipeline::execute::<Budget>(
                        &env.store,
                        &ctx,
                        "RecordThresholdCrossing",
                        b.id,
                        Expect::Any,
                        command,
                        &(),
                    )
                    .await;
                    match outcome {
                        Ok(_) => crossings += 1,
                        // Deleted meanwhile: nothing to alert.
                        Err(CommandError::Domain(BudgetError::NotFound)) => {}
                        Err(e) => anyhow::bail!("recording a crossing of budget {}: {e}", b.id),
                    }
                }
            }
            job.check_stop()?;
        }
        super::metrics::COSTS
            .threshold_crossings
            .inc_by(crossings as u64);
        Ok(json!({
            "import_id": job.id,
            "account": import.account,
            "budgets_evaluated": budgets.len(),
            "crossings": crossings,
            "as_of": today.to_string(),
            "periods": import.periods.iter().map(|p| format!("{}-{:02}", p.year(), p.month())).collect::<Vec<_>>(),
        }))
    }
}
