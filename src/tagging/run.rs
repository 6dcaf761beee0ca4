//! ApplyTagRules: the `tagging.run` job. Every rule of the run is compiled into one
//! set-based statement that evaluates all tags for all subjects in scope inside
//! PostgreSQL and compares the result with each subject's current tags (ADR 0008).
//!
//! The run is all-or-nothing: its changes are staged in batches of ~1,000 subjects while
//! the statement streams, then appended with its `TagRunCompleted` in one move
//! (`EventStore::commit_staged`). A run restarted after a crash finds either nothing of
//! itself in the log (and runs again) or its completion (and reports it).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use futures::{pin_mut, TryStreamExt};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::aggregate::TagRun;
use super::events::{
    AppliedTag, KindSchema, RunOutcome, RunRequest, SubjectChange, TagRunEvent, TagRunStats,
};
use super::metrics::TAGGING;
use super::projection::{SUBJECT_ATTRIBUTES, SUBJECT_KINDS, SUBJECT_TAGS, TAGS};
use super::queries::TagView;
use super::rules::{self, AttrType, SqlParam};
use crate::eventstore::codec;
use crate::imports::Staging;
use crate::jobs::{Job, JobEnv, JobHandler};
use crate::pipeline::{self, EventSourced};

pub const JOB_KIND: &str = "tagging.run";
/// Subjects per `TagsChanged` event.
const CHANGES_PER_EVENT: usize = 1_000;
/// How long a run waits for the read models it reads to reach its request.
const CATCH_UP: Duration = Duration::from_secs(600);

/// Which subjects a run evaluates.
enum Scope {
    All,
    /// The given ids (distinct).
    Ids(Vec<String>),
    /// Subjects with a source row updated in `[from, to]`.
    Changed {
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    },
}

pub struct TagRunJob;

#[async_trait]
impl JobHandler for TagRunJob {
    fn kind(&self) -> &'static str {
        JOB_KIND
    }

    fn requested_by(&self) -> (&'static str, &'static str) {
        (TagRun::STREAM_TYPE, "TagRunRequested")
    }

    async fn run(&self, job: &Job, env: &JobEnv) -> anyhow::Result<Value> {
        let loaded = pipeline::load::<TagRun>(&env.store, &job.tenant_id, job.id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(outcome) = &loaded.aggregate.outcome {
            // Completed before the runner stopped: report it, do nothing twice.
            return Ok(result(outcome, loaded.position));
        }
        let request: RunRequest =
            serde_json::from_value(job.params.clone()).context("run request")?;
        let batch_id = Uuid::now_v7();
        let started = Instant::now();
        match execute(job, env, &request, batch_id, loaded.version).await {
            Ok((v, outcome)) => {
                let m = &TAGGING;
                m.runs.with_label_values(&["succeeded"]).inc();
                let scope = match (&request.subject_ids, request.changed_within_days) {
                    (Some(_), _) => "ids",
                    (None, Some(_)) => "changed",
                    (None, None) => "all",
                };
                m.run_duration
                    .with_label_values(&[scope])
                    .observe(started.elapsed().as_secs_f64());
                m.subjects_evaluated
                    .with_label_values(&[&request.subject_kind])
                    .inc_by(outcome.subjects_evaluated as u64);
                m.tags_changed
                    .with_label_values(&["added"])
                    .inc_by(outcome.tags_added as u64);
                m.tags_changed
                    .with_label_values(&["removed"])
                    .inc_by(outcome.tags_removed as u64);
                Ok(v)
            }
            Err(e) if e.is::<crate::jobs::Interrupted>() => {
                let _ = env.store.discard_staged(batch_id).await;
                Err(e)
            }
            Err(e) => {
                TAGGING.runs.with_label_values(&["failed"]).inc();
                let _ = env.store.discard_staged(batch_id).await;
                let failed = codec::encode(&TagRunEvent::TagRunFailed {
                    error: format!("{e:#}"),
                })?;
                // The job row says `failed` anyway; the event is for the run's history.
                if let Err(a) = env
                    .store
                    .append_streams(
                        &job.tenant_id,
                        &json!({"job_id": job.id}),
                        &[crate::eventstore::StreamEvents {
                            stream_type: TagRun::STREAM_TYPE,
                            stream_id: job.id,
                            expected_version: loaded.version,
                            events: vec![failed],
                        }],
                        None,
                    )
                    .await
                {
                    tracing::warn!(run = %job.id, error = %a, "cannot record TagRunFailed");
                }
                Err(e)
            }
        }
    }
}

fn result(outcome: &RunOutcome, position: i64) -> Value {
    json!({
        "subjects_in_scope": outcome.subjects_in_scope,
        "subjects_evaluated": outcome.subjects_evaluated,
        "unknown_subject_ids": outcome.unknown_subject_ids,
        "tags_added": outcome.tags_added,
        "tags_removed": outcome.tags_removed,
        "duration_ms": outcome.duration_ms,
        "per_tag": outcome.per_tag,
        "completed_position": position,
    })
}

/// The SQL type of a field of type `ty`, read from the merged attributes.
pub fn field_sql(name: &str, ty: AttrType) -> String {
    // `name` comes from the declared schema and is an identifier ([a-z][a-z0-9_]*).
    match ty {
        AttrType::Number => format!("(sc.attrs -> '{name}')::numeric"),
        AttrType::String => format!("(sc.attrs ->> '{name}')"),
        AttrType::Date => format!("(sc.attrs ->> '{name}')::timestamptz"),
        AttrType::Boolean => format!("(sc.attrs -> '{name}')::boolean"),
    }
}

/// A parameter for the driver.
pub fn to_sql(p: &SqlParam) -> Box<dyn ToSql + Sync + Send> {
    match p {
        SqlParam::Number(d) => Box::new(*d),
        SqlParam::Text(s) => Box::new(s.clone()),
        SqlParam::Date(t) => Box::new(*t),
        SqlParam::Bool(b) => Box::new(*b),
        SqlParam::Numbers(v) => Box::new(v.clone()),
        SqlParam::Texts(v) => Box::new(v.clone()),
        SqlParam::Dates(v) => Box::new(v.clone()),
    }
}

/// The statement that evaluates every recomputed tag for every subject in scope and
/// returns, per subject, the tags it matched, those to add and those to remove.
struct Plan {
    sql: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

fn plan(
    tenant: &str,
    request: &RunRequest,
    schema: &KindSchema,
    scope: &Scope,
    recomputed: &[(i32, rules::Rule)],
) -> Plan {
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(tenant.to_owned()),
        Box::new(request.subject_kind.clone()),
    ];
    // A scope of ids drives the statement from them (an index lookup each): an
    // incremental run touches what changed, and no estimate can turn that into a scan
    // per subject (the change window lies beyond the statistics of fresh imports).
    let (from, window) = match scope {
        Scope::Ids(ids) => {
            params.push(Box::new(ids.to_vec()));
            (
                format!(
                    "unnest(${}::text[]) AS s(id)
                     JOIN subject_attributes sc
                       ON sc.tenant_id = $1 AND sc.kind = $2 AND sc.subject_id = s.id",
                    params.len()
                ),
                String::new(),
            )
        }
        // Candidates by the index on the latest update ever seen, then the exact check
        // per source.
        Scope::Changed { from, to } => {
            params.push(Box::new(*from));
            params.push(Box::new(*to));
            let (lo, hi) = (params.len() - 1, params.len());
            (
                "subject_attributes sc".to_owned(),
                format!(
                    " AND sc.max_updated >= ${lo}
                      AND EXISTS (SELECT 1 FROM jsonb_each_text(sc.source_times) u
                                   WHERE u.value::timestamptz BETWEEN ${lo} AND ${hi})"
                ),
            )
        }
        Scope::All => ("subject_attributes sc".to_owned(), String::new()),
    };
    // Each field a rule reads is extracted once per subject (the `OFFSET 0` keeps the
    // planner from folding the subquery back and extracting per condition).
    let mut fields: Vec<(&str, AttrType)> = Vec::new();
    for (_, rule) in recomputed {
        for f in rule.fields() {
            if let Some(ty) = schema.type_of(f) {
                if !fields.iter().any(|(n, _)| *n == f) {
                    fields.push((f, ty));
                }
            }
        }
    }
    let extract = if fields.is_empty() {
        "SELECT 1 AS none".to_owned()
    } else {
        let list: Vec<String> = fields
            .iter()
            .map(|(name, ty)| format!("{} AS \"{name}\"", field_sql(name, *ty)))
            .collect();
        format!("SELECT {}", list.join(", "))
    };
    let field_ref = |name: &str, _: AttrType| format!("f.\"{name}\"");
    let mut cases = Vec::new();
    for (id, rule) in recomputed {
        let compiled = rules::compile(rule, &field_ref, request.as_of, params.len() + 1);
        params.extend(compiled.params.iter().map(to_sql));
        cases.push(format!("CASE WHEN {} THEN {id} END", compiled.sql));
    }
    let matched = if cases.is_empty() {
        "'{}'::int[]".to_owned()
    } else {
        format!("array_remove(ARRAY[{}]::int[], NULL)", cases.join(", "))
    };
    // The difference with the current tags is computed by the caller, per row in memory.
    // Current tags: for a scope of ids, by primary key each; for all subjects, one join
    // (the caller runs it with nested loops off, so it is a hash or merge join).
    let (current, join) = if !matches!(scope, Scope::All) {
        (
            "(SELECT t.tag_ids::text FROM subject_tags t
               WHERE t.tenant_id = $1 AND t.kind = $2 AND t.subject_id = sc.subject_id)",
            "",
        )
    } else {
        (
            "t.tag_ids::text",
            "LEFT JOIN subject_tags t
               ON t.tenant_id = sc.tenant_id AND t.kind = sc.kind AND t.subject_id = sc.subject_id",
        )
    };
    let sql = format!(
        "SELECT sc.subject_id, {matched} AS matched, {current}
           FROM {from}
          CROSS JOIN LATERAL ({extract} OFFSET 0) f
          {join}
          WHERE sc.tenant_id = $1 AND sc.kind = $2 AND sc.is_subject{window}"
    );
    Plan { sql, params }
}

async fn execute(
    job: &Job,
    env: &JobEnv,
    request: &RunRequest,
    batch_id: Uuid,
    run_version: i64,
) -> anyhow::Result<(Value, RunOutcome)> {
    let started = Instant::now();
    job.progress
        .set(json!({"phase": "waiting for read models"}));
    for name in [SUBJECT_KINDS, TAGS, SUBJECT_ATTRIBUTES, SUBJECT_TAGS] {
        env.wait_for(name, job.position, CATCH_UP).await?;
        job.check_stop()?;
    }
    let mut client = crate::db::connect(&env.conn).await?;
    let tenant = job.tenant_id.as_str();
    let kind = request.subject_kind.as_str();
    // The read models reflect the request (waited for above).
    let reads = env.reads.get().await?;
    let schema = super::queries::kind(&reads, tenant, kind)
        .await?
        .with_context(|| format!("subject kind {kind:?} does not exist"))?
        .schema();
    let filter = super::queries::TagFilter {
        subject_kind: Some(kind.to_owned()),
        include_retired: true,
        ..Default::default()
    };
    let tags = super::queries::tags(&reads, tenant, &filter).await?.items;
    let by_id: HashMap<i32, &TagView> = tags.iter().map(|t| (t.id, t)).collect();
    // Which tags this run decides: recomputed (live AUTO) and revoked (retired).
    let chosen: Vec<&TagView> = match &request.tag_ids {
        None => tags
            .iter()
            .filter(|t| t.kind == "AUTO" || t.retired)
            .collect(),
        Some(ids) => {
            let mut chosen = Vec::new();
            for id in ids {
                let t = by_id
                    .get(id)
                    .with_context(|| format!("tag {id} is not a tag of subject kind {kind:?}"))?;
                anyhow::ensure!(
                    t.kind == "AUTO" || t.retired,
                    "tag {id} is a MANUAL tag: runs only compute AUTO tags"
                );
                chosen.push(*t);
            }
            chosen
        }
    };
    let mut recomputed = Vec::new();
    for t in chosen.iter().filter(|t| !t.retired) {
        let rule: Value = t
            .rule
            .as_ref()
            .map(|r| serde_json::from_str(r.get()))
            .transpose()?
            .with_context(|| format!("AUTO tag {} has no rule", t.id))?;
        let rule = rules::parse(&rule, &|f| schema.type_of(f)).map_err(|e| {
            anyhow::anyhow!(
                "the rule of tag {} no longer fits the schema of {kind:?}: {e}",
                t.id
            )
        })?;
        recomputed.push((t.id, rule));
    }
    let mut covered: Vec<i32> = chosen.iter().map(|t| t.id).collect();
    covered.sort_unstable();
    covered.dedup();
    let applied: BTreeMap<i32, AppliedTag> = chosen
        .iter()
        .map(|t| {
            (
                t.id,
                AppliedTag {
                    code: t.code.clone(),
                    name: t.name.clone(),
                    category: t.category.clone(),
                    rule_version: t.rule_version,
                },
            )
        })
        .collect();

    let scope = match (&request.subject_ids, request.changed_within_days) {
        (Some(ids), _) => {
            let mut ids = ids.clone();
            ids.sort_unstable();
            ids.dedup();
            Scope::Ids(ids)
        }
        (None, Some(days)) => Scope::Changed {
            from: request.as_of - chrono::Duration::days(i64::from(days)),
            to: request.as_of,
        },
        (None, None) => Scope::All,
    };
    let plan = plan(tenant, request, &schema, &scope, &recomputed);
    job.progress.set(json!({"phase": "evaluating"}));
    let params: Vec<&(dyn ToSql + Sync)> = plan
        .params
        .iter()
        .map(|p| &**p as &(dyn ToSql + Sync))
        .collect();
    // A read-only transaction (no transaction id: the writer protocol is not involved)
    // so the planner setting stays local to this statement.
    let tx = client.transaction().await?;
    if matches!(scope, Scope::All) {
        tx.batch_execute("SET LOCAL enable_nestloop = off").await?;
    }
    let rows = tx.query_raw(&plan.sql, params).await?;
    pin_mut!(rows);
    let mut outcome = RunOutcome::default();
    for id in &covered {
        outcome.per_tag.insert(*id, TagRunStats::default());
    }
    let mut stager = Stager {
        staging: Staging::new(&env.store, batch_id),
        subject_kind: &request.subject_kind,
        run_id: job.id,
        applied: &applied,
        pending: Vec::with_capacity(CHANGES_PER_EVENT),
    };
    while let Some(row) = rows.try_next().await? {
        outcome.subjects_evaluated += 1;
        let mut matched: Vec<i32> = row.try_get(1)?;
        matched.sort_unstable();
        let current: Vec<i32> = match row.try_get::<_, Option<&str>>(2)? {
            Some(text) => serde_json::from_str(text)?,
            None => Vec::new(),
        };
        // Both sorted: matched tags not held are added; held tags this run decides and
        // did not match are removed.
        let added: Vec<i32> = matched
            .iter()
            .filter(|t| current.binary_search(t).is_err())
            .copied()
            .collect();
        let removed: Vec<i32> = current
            .iter()
            .filter(|t| covered.binary_search(t).is_ok() && matched.binary_search(t).is_err())
            .copied()
            .collect();
        let mut count = |tags: &[i32], field: fn(&mut TagRunStats) -> &mut i64| {
            for t in tags {
                if let Some(s) = outcome.per_tag.get_mut(t) {
                    *field(s) += 1;
                }
            }
        };
        count(&matched, |s| &mut s.matched);
        count(&added, |s| &mut s.added);
        count(&removed, |s| &mut s.removed);
        outcome.tags_added += added.len() as i64;
        outcome.tags_removed += removed.len() as i64;
        if !added.is_empty() || !removed.is_empty() {
            let change = SubjectChange {
                subject_id: row.try_get(0)?,
                added,
                removed,
            };
            if stager.push(change).await? {
                job.progress
                    .set(json!({"subjects_evaluated": outcome.subjects_evaluated}));
                job.check_stop()?;
            }
        }
    }
    stager.flush().await?;
    outcome.subjects_in_scope = outcome.subjects_evaluated;
    if let Scope::Ids(ids) = &scope {
        outcome.unknown_subject_ids = ids.len() as i64 - outcome.subjects_evaluated;
    }
    job.progress.set(json!({
        "phase": "appending",
        "subjects_in_scope": outcome.subjects_in_scope,
        "subjects_evaluated": outcome.subjects_evaluated,
    }));
    job.check_stop()?;
    let evaluated = started.elapsed();
    outcome.duration_ms = evaluated.as_millis() as i64;
    let completed = codec::encode(&TagRunEvent::TagRunCompleted(outcome.clone()))?;
    let appended = stager
        .staging
        .commit(
            tenant,
            (TagRun::STREAM_TYPE, job.id, run_version),
            &[completed],
            &json!({"job_id": job.id}),
            None,
        )
        .await?;
    let committed = started.elapsed();
    job.progress.set(json!({"phase": "updating read model"}));
    // `succeeded` means the tags are readable.
    env.wait_for(SUBJECT_TAGS, appended.position, CATCH_UP)
        .await?;
    let done = started.elapsed();
    outcome.duration_ms = done.as_millis() as i64;
    let mut answer = result(&outcome, appended.position);
    // Where the time went: waiting and evaluating (changes staged meanwhile), the append,
    // the read model catching up.
    answer["phases_ms"] = json!({
        "evaluate_and_stage": evaluated.as_millis() as i64,
        "append": (committed - evaluated).as_millis() as i64,
        "read_model": (done - committed).as_millis() as i64,
    });
    Ok((answer, outcome))
}

/// Stages a run's changes as `TagsChanged` events of up to `CHANGES_PER_EVENT` subjects.
struct Stager<'a> {
    staging: Staging<'a>,
    subject_kind: &'a str,
    run_id: Uuid,
    /// The tags the run decides, as the events describe them.
    applied: &'a BTreeMap<i32, AppliedTag>,
    pending: Vec<SubjectChange>,
}

impl Stager<'_> {
    /// Adds a subject's changes; stages an event once `CHANGES_PER_EVENT` are pending.
    /// True when it staged one.
    async fn push(&mut self, change: SubjectChange) -> anyhow::Result<bool> {
        self.pending.push(change);
        if self.pending.len() < CHANGES_PER_EVENT {
            return Ok(false);
        }
        self.flush().await?;
        Ok(true)
    }

    /// Stages what is pending as one event.
    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.pending);
        let mut used: Vec<i32> = changes
            .iter()
            .flat_map(|c| c.added.iter().chain(&c.removed).copied())
            .collect();
        used.sort_unstable();
        used.dedup();
        let tags = used
            .iter()
            .filter_map(|id| self.applied.get(id).map(|t| (*id, t.clone())))
            .collect();
        self.staging
            .push(&TagRunEvent::TagsChanged {
                subject_kind: self.subject_kind.to_owned(),
                run_id: self.run_id,
                tags,
                changes,
            })
            .await?;
        Ok(())
    }
}
