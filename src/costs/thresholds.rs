//! The budget-threshold process manager: every threshold crossed is recorded on the
//! budget's stream as `BudgetThresholdCrossed` (ADR 0010). It evaluates
//!
//! - after every bill import (`BillImportCompleted`), the budgets that count the import's
//!   account, for the budget periods that hold a day of the import's billing periods;
//! - after budgets are created or changed (`BudgetCreated`, `BudgetUpdated`), the budgets
//!   changed since the previous such evaluation, each for its current period (as of
//!   today): a budget set up, or lowered, under costs already imported alerts without
//!   waiting for the next bill. One coalescing job per tenant (ADR 0007), so a burst of
//!   budget changes is one run.
//!
//! Each runs as a job: enqueued under the `jobs` projector's checkpoint, run by one
//! elected runner, surviving restarts. The budget aggregate records a (period, percent, basis) once
//! and answers a repeat with no event, so a job run again, a restated bill or a replay
//! never records a crossing twice.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{Datelike, Months, NaiveDate, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::aggregate::BillImport;
use super::budget_status::{self as status, Window};
use super::projection::COST_LINES;
use super::queries::{self, BudgetScope};
use crate::budgets::events::ThresholdCrossing;
use crate::budgets::{Budget, BudgetCommand, BudgetError};
use crate::eventstore::RecordedEvent;
use crate::jobs::{Job, JobEnv, JobHandler};
use crate::pipeline::{self, CommandContext, CommandError, EventSourced, Expect};

pub const JOB_KIND: &str = "costs.budget_thresholds";
pub const CHANGE_JOB_KIND: &str = "costs.budget_thresholds_on_change";
/// How long the job waits for the read models to reach its event.
const CATCH_UP: Duration = Duration::from_secs(120);

/// Evaluates one budget in `windows` and records the crossings not recorded before;
/// answers how many it recorded.
async fn evaluate(
    job: &Job,
    env: &JobEnv,
    conn: &tokio_postgres::Client,
    b: &BudgetScope,
    windows: BTreeSet<Window>,
    import_id: Option<Uuid>,
) -> anyhow::Result<u64> {
    let loaded = pipeline::load::<Budget>(&env.store, &job.tenant_id, b.id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if loaded.aggregate.details.is_none() || loaded.aggregate.deleted {
        return Ok(0);
    }
    let mut ctx = CommandContext::new(job.tenant_id.clone());
    ctx.actor = "cloudlens:budget-thresholds".into();
    ctx.correlation_id = job.id;
    let today = Utc::now().date_naive();
    let mut crossings = 0;
    for window in windows {
        let as_of = today.min(window.end.pred_opt().unwrap_or(window.end));
        if as_of < window.start {
            continue;
        }
        let (fig, _) = queries::budget_figures(conn, &job.tenant_id, b, window, as_of).await?;
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
                import_id,
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
        job.check_stop()?;
    }
    super::metrics::COSTS.threshold_crossings.inc_by(crossings);
    Ok(crossings)
}

/// After a bill import.
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
        let budgets =
            queries::alerting_budgets(conn.client(), &job.tenant_id, &import.account).await?;
        let mut crossings = 0;
        for b in &budgets {
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
            crossings += evaluate(job, env, conn.client(), b, windows, Some(job.id)).await?;
        }
        Ok(json!({
            "import_id": job.id,
            "account": import.account,
            "budgets_evaluated": budgets.len(),
            "crossings": crossings,
            "as_of": Utc::now().date_naive().to_string(),
            "periods": import.periods.iter().map(|p| format!("{}-{:02}", p.year(), p.month())).collect::<Vec<_>>(),
        }))
    }
}

/// After budgets are created or changed: one coalescing job per tenant (one handler per
/// event type, same job), which evaluates the budgets changed since its previous run. A
/// burst of budget changes is one run, not one job per budget.
pub struct BudgetChangedThresholdJob(pub &'static str);

#[async_trait]
impl JobHandler for BudgetChangedThresholdJob {
    fn kind(&self) -> &'static str {
        CHANGE_JOB_KIND
    }

    fn requested_by(&self) -> (&'static str, &'static str) {
        (Budget::STREAM_TYPE, self.0)
    }

    fn job_id(&self, e: &RecordedEvent) -> Uuid {
        super::stream_id(&e.tenant_id, CHANGE_JOB_KIND, "")
    }

    fn job_params(&self, _: &RecordedEvent) -> anyhow::Result<Value> {
        Ok(json!({}))
    }

    fn coalesce(&self) -> bool {
        true
    }

    async fn run(&self, job: &Job, env: &JobEnv) -> anyhow::Result<Value> {
        env.wait_for(crate::budgets::projection::NAME, job.position, CATCH_UP)
            .await?;
        let since = job
            .previous
            .as_ref()
            .and_then(|p| p["evaluated_through"].as_i64())
            .unwrap_or(0);
        let conn = env.reads.get().await?;
        let today: NaiveDate = Utc::now().date_naive();
        let budgets = if queries::has_costs(conn.client(), &job.tenant_id).await? {
            queries::changed_alerting_budgets(conn.client(), &job.tenant_id, since).await?
        } else {
            Vec::new() // nothing spent: nothing to cross
        };
        let mut crossings = 0;
        for b in &budgets {
            let windows: BTreeSet<Window> =
                status::window(&b.period, b.start_date, b.end_date, today)
                    .into_iter()
                    .collect();
            crossings += evaluate(job, env, conn.client(), b, windows, None).await?;
        }
        Ok(json!({
            "evaluated_through": job.position,
            "budgets_evaluated": budgets.len(),
            "as_of": today.to_string(),
            "crossings": crossings,
        }))
    }
}
