//! The virtual-tag recompute job (ADR 0012): after `VirtualTagSaved`, the lines that
//! existed at the save get the new definition step by step, each step an event
//! (`VirtualTagRecomputed`) that the `cost_lines` projector applies set-wise to the lines
//! charged in its time range. Lines projected after the save get the definition as they
//! are written, so once the job has recorded every step every line carries it.
//!
//! - **Progress** is in the job's row and in `cost_virtual_tags` (lines done of total).
//! - **Small transactions.** A step covers about `CLOUDLENS_RECOMPUTE_STEP_LINES` lines
//!   (200,000 by default), so an import
//!   waits behind one step, never behind the whole recomputation.
//! - **Restarts and saves.** The aggregate records a step only for its current revision
//!   and past the last recorded one: a restarted job skips what is done; a job whose
//!   definition was saved again meanwhile stops (the new save has its own job).
//! - **Replays** apply the same steps at the same places in the log: a rebuild equals the
//!   live tables.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::aggregate::VirtualTag;
use super::commands::VirtualTagCommand;
use super::events::RecomputeStep;
use super::projection::COST_LINES;
use crate::eventstore::RecordedEvent;
use crate::jobs::{Job, JobEnv, JobHandler};
use crate::pipeline::{self, CommandContext, EventSourced, Expect};

pub const JOB_KIND: &str = "costs.virtual_tag_recompute";
/// How long the job waits for the `cost_lines` projector to apply a step.
const CATCH_UP: Duration = Duration::from_secs(600);

/// Lines per UTC week (weeks start on Monday), from the daily rollup: the plan of the
/// steps, without reading a line.
const WEEKS_SQL: &str = "\
SELECT time_bucket('7 days', day), sum(lines)::bigint FROM cost_daily
 WHERE tenant_id = $1 GROUP BY 1 ORDER BY 1";

/// Groups consecutive weeks into steps of at least `per_step` lines (the last may hold
/// fewer): `(from, to, lines)` with `to` exclusive.
pub fn plan(
    weeks: &[(DateTime<Utc>, i64)],
    per_step: i64,
) -> Vec<(DateTime<Utc>, DateTime<Utc>, i64)> {
    let week = chrono::Duration::days(7);
    let mut steps: Vec<(DateTime<Utc>, DateTime<Utc>, i64)> = Vec::new();
    for &(start, lines) in weeks {
        match steps.last_mut() {
            Some(last) if last.2 < per_step => {
                last.1 = start + week;
                last.2 += lines;
            }
            _ => steps.push((start, start + week, lines)),
        }
    }
    steps
}

pub struct VirtualTagRecomputeJob;

#[async_trait]
impl JobHandler for VirtualTagRecomputeJob {
    fn kind(&self) -> &'static str {
        JOB_KIND
    }

    fn requested_by(&self) -> (&'static str, &'static str) {
        (VirtualTag::STREAM_TYPE, "VirtualTagSaved")
    }

    /// A virtual tag is saved many times in one stream: one job per save.
    fn job_id(&self, e: &RecordedEvent) -> Uuid {
        Uuid::new_v5(&e.stream_id, &e.stream_version.to_be_bytes())
    }

    async fn run(&self, job: &Job, env: &JobEnv) -> anyhow::Result<Value> {
        // Every line from before the save is in `cost_lines` (and in the rollup).
        env.wait_for(COST_LINES, job.position, CATCH_UP).await?;
        let name = job.params["name"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("VirtualTagSaved without a name"))?
            .to_owned();
        let id = super::stream_id(&job.tenant_id, "virtual_tag", &name);
        let revision = env
            .store
            .load_stream(VirtualTag::STREAM_TYPE, id)
            .await?
            .iter()
            .find(|e| e.position == job.position)
            .map(|e| e.stream_version)
            .ok_or_else(|| anyhow::anyhow!("the save of {name} is not in its stream"))?;
        let weeks: Vec<(DateTime<Utc>, i64)> = env
            .reads
            .get()
            .await?
            .query(WEEKS_SQL, &[&job.tenant_id])
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        let steps = plan(&weeks, env.settings.recompute_step_lines);
        let total: i64 = steps.iter().map(|s| s.2).sum();
        let mut ctx = CommandContext::new(job.tenant_id.clone());
        ctx.actor = "cloudlens:virtual-tag-recompute".into();
        ctx.correlation_id = job.id;
        let superseded = json!({"name": name, "revision": revision, "superseded": true});
        let mut done = 0;
        job.progress
            .set(json!({"name": name, "lines_total": total, "steps_total": steps.len()}));
        for (i, &(from, to, lines)) in steps.iter().enumerate() {
            job.check_stop()?;
            let tag = pipeline::load::<VirtualTag>(&env.store, &job.tenant_id, id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if tag.aggregate.revision != revision {
                return Ok(superseded);
            }
            if tag.aggregate.recomputed_until.is_none_or(|u| u < to) {
                let step = RecomputeStep {
                    name: name.clone(),
                    revision,
                    from,
                    to,
                    lines,
                    total,
                };
                let (r, _) = pipeline::execute::<VirtualTag>(
                    &env.store,
                    &ctx,
                    "RecordRecompute",
                    id,
                    Expect::Any,
                    VirtualTagCommand::RecordRecompute(step),
                    &(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("recording a recompute step of {name}: {e}"))?;
                // Progress counts what queries see: wait for the projector.
                env.wait_for(COST_LINES, r.position, CATCH_UP).await?;
                super::metrics::COSTS
                    .vtag_lines_recomputed
                    .inc_by(lines.max(0) as u64);
            }
            done += lines;
            job.progress
                .set(json!({"lines_done": done, "steps_done": i + 1}));
        }
        let tag = pipeline::load::<VirtualTag>(&env.store, &job.tenant_id, id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if tag.aggregate.revision != revision {
            return Ok(superseded);
        }
        let command = VirtualTagCommand::CompleteRecompute {
            name: name.clone(),
            revision,
            lines: total,
        };
        pipeline::execute::<VirtualTag>(
            &env.store,
            &ctx,
            "CompleteRecompute",
            id,
            Expect::Any,
            command,
            &(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("completing the recompute of {name}: {e}"))?;
        Ok(json!({"name": name, "revision": revision, "lines": total, "steps": steps.len()}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2024-01-{d:02}T00:00:00Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn weeks_are_grouped_into_steps_of_at_least_the_step_size() {
        let weeks = [(day(1), 150), (day(8), 100), (day(22), 300), (day(29), 10)];
        let steps = plan(&weeks, 200);
        assert_eq!(
            steps,
            vec![
                (day(1), day(15), 250),
                (day(22), day(29), 300),
                (day(29), day(1) + chrono::Duration::days(35), 10)
            ]
        );
        assert!(plan(&[], 200).is_empty());
        // Every week's lines are in exactly one step.
        assert_eq!(steps.iter().map(|s| s.2).sum::<i64>(), 560);
    }
}
