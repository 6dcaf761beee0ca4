//! Alert evaluation, in the server, never only on request:
//!
//! - **Reacting to events** (jobs, ADR 0007): `BudgetThresholdCrossed` fires the matching
//!   `budget_threshold` rules; `CostAnomalyDetected` / `CostAnomalyEnded` fire and resolve
//!   the matching `cost_anomaly` rules. One job per event, run by the elected job runner,
//!   surviving restarts.
//! - **On a schedule** (`alerts.evaluate`, one elected process): `metric_threshold` and
//!   `cost_threshold` rules are measured over their windows, all rules of a type in one
//!   statement; `budget_threshold` episodes end when their budget period is over or the
//!   budget is gone.
//!
//! The measuring is here; whether an episode opens or closes is the aggregate's decision
//! (`AlertRule::observe`), so observing again is harmless: a job run twice, or two
//! rounds seeing the same breach, never notify twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::aggregate::AlertRule;
use super::commands::{AlertRuleCommand, Observation};
use super::condition::{anomaly_at_least, Aggregation, Condition};
use super::metrics::ALERTS;
use super::projection::RULES;
use crate::eventstore::{EventStore, RecordedEvent};
use crate::jobs::{Job, JobEnv, JobHandler};
use crate::pipeline::{self, CommandContext, Expect};

/// Namespace of the ids of the jobs that react to events (one per event).
const JOB_NS: Uuid = Uuid::from_u128(0x0194_e3c1_7b2a_7c55_a0d4_4c6f_0000_0018);
const CATCH_UP: Duration = Duration::from_secs(120);

/// How often an observation is tried again when the rule's stream moved meanwhile (a
/// client's change, another observation).
const OBSERVE_TRIES: usize = 5;

/// Records what was measured for one key of one rule: loads the rule, asks it, and
/// appends only when it fires or resolves an episode, at the version it loaded; when the
/// stream moved meanwhile it asks again. Answers the transition, if any.
pub async fn observe(
    store: &EventStore,
    tenant: &str,
    rule_id: Uuid,
    o: Observation,
) -> anyhow::Result<Option<&'static str>> {
    for _ in 0..OBSERVE_TRIES {
        let loaded = pipeline::load::<AlertRule>(store, tenant, rule_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some(event) = loaded.aggregate.observe(o.clone()) else {
            return Ok(None);
        };
        let transition = match &event {
            super::events::AlertRuleEvent::AlertFired(_) => "fired",
            _ => "resolved",
        };
        let rule_type = loaded
            .aggregate
            .details
            .as_ref()
            .map_or("", |d| d.condition.type_name());
        let mut ctx = CommandContext::new(tenant.to_owned());
        ctx.actor = "cloudlens:alert-evaluator".into();
        match pipeline::execute::<AlertRule>(
            store,
            &ctx,
            "ObserveAlertRule",
            rule_id,
            Expect::Version(loaded.version),
            AlertRuleCommand::Observe(o.clone()),
            &(),
        )
        .await
        {
            Ok(_) => {
                ALERTS
                    .transitions
                    .with_label_values(&[rule_type, transition])
                    .inc();
                return Ok(Some(transition));
            }
            Err(pipeline::CommandError::Conflict { .. }) => continue,
            Err(e) => anyhow::bail!("observing alert rule {rule_id}: {e}"),
        }
    }
    anyhow::bail!("observing alert rule {rule_id}: its stream kept moving")
}

/// The enabled rules of one type, as the evaluator reads them.
struct RuleRow {
    tenant: String,
    id: Uuid,
    condition: Condition,
    firing: BTreeSet<String>,
}

const RULES_OF_TYPE_SQL: &str = "\
SELECT tenant_id, id, condition, firing FROM alert_rules WHERE enabled AND type = $1";
const TENANT_RULES_OF_TYPE_SQL: &str = "\
SELECT tenant_id, id, condition, firing FROM alert_rules
 WHERE enabled AND type = $1 AND tenant_id = $2";

async fn rules_of_type<C: GenericClient>(
    client: &C,
    rule_type: &str,
    tenant: Option<&str>,
) -> anyhow::Result<Vec<RuleRow>> {
    let rows = match tenant {
        None => client.query(RULES_OF_TYPE_SQL, &[&rule_type]).await?,
        Some(t) => {
            client
                .query(TENANT_RULES_OF_TYPE_SQL, &[&rule_type, &t])
                .await?
        }
    };
    rows.iter()
        .map(|r| {
            let condition: Value = r.try_get(2)?;
            let firing: Value = r.try_get(3)?;
            Ok(RuleRow {
                tenant: r.try_get(0)?,
                id: r.try_get(1)?,
                condition: Condition::parse(rule_type, condition)
                    .map_err(|e| anyhow::anyhow!("stored condition: {e}"))?,
                firing: firing
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The series each metric rule watches (with data in its window), in one statement. Each
/// rule looks its series up through an index of its own kind: its series name, or its
/// tags (GIN). (`OFFSET 0` keeps each lookup a parameterised index scan per rule: joined
/// as a whole, the planner checked every rule against every series.)
const MATCH_SQL: &str = "\
WITH r AS (
    SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                         $6::float8[])
        AS r(idx, tenant_id, metric, series, tags, window_seconds))
SELECT r.idx, s.id, s.series
  FROM r CROSS JOIN LATERAL (
    SELECT s.id, s.series FROM metric_series s
     WHERE s.tenant_id = r.tenant_id AND s.metric = r.metric AND s.series = r.series
       AND s.tags @> r.tags AND s.last_time > now() - make_interval(secs => r.window_seconds)
    OFFSET 0) s
 WHERE r.series IS NOT NULL
UNION ALL
SELECT r.idx, s.id, s.series
  FROM r CROSS JOIN LATERAL (
    SELECT s.id, s.series FROM metric_series s
     WHERE s.tenant_id = r.tenant_id AND s.metric = r.metric AND s.tags @> r.tags
       AND s.last_time > now() - make_interval(secs => r.window_seconds)
    OFFSET 0) s
 WHERE r.series IS NULL";

/// The aggregates of each (series, window), once however many rules watch it.
const MEASURE_SQL: &str = "\
SELECT w.series_id, w.window_seconds, a.avg, a.min, a.max, a.sum, a.count, a.last
  FROM unnest($1::text[], $2::bigint[], $3::float8[]) AS w(tenant_id, series_id, window_seconds)
 CROSS JOIN LATERAL (
    SELECT avg(p.value) AS avg, min(p.value) AS min, max(p.value) AS max,
           sum(p.value) AS sum, count(*) AS count, last(p.value, p.time) AS last
      FROM metric_points p
     WHERE p.tenant_id = w.tenant_id AND p.series_id = w.series_id
       AND p.time > now() - make_interval(secs => w.window_seconds)) a
 WHERE a.count > 0";

/// The cost of every cost rule over its window (0 when there is none), in one statement.
const COST_SQL: &str = "\
WITH r AS (
    SELECT * FROM unnest($1::int[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                         $5::text[], $6::text[], $7::text[], $8::text[])
        AS r(idx, tenant_id, start, stop, account, service, region, currency))
SELECT r.idx, coalesce(sum(d.cost), 0)
  FROM r
  LEFT JOIN cost_daily d
    ON d.tenant_id = r.tenant_id AND d.day >= r.start AND d.day < r.stop
   AND d.currency = r.currency
   AND (r.account IS NULL OR d.account = r.account)
   AND (r.service IS NULL OR d.service = r.service)
   AND (r.region IS NULL OR d.region = r.region)
 GROUP BY r.idx";

const FIRING_GAUGE_SQL: &str = "\
SELECT type, coalesce(sum((SELECT count(*) FROM jsonb_object_keys(firing))), 0)::bigint
  FROM alert_rules GROUP BY type";

/// The scheduled evaluator's state: when each (rule, key) started to breach, for rules
/// with a `for_seconds`. Kept in memory by the elected process: a new leader starts the
/// wait again, which delays an episode, never duplicates one.
#[derive(Clone, Default)]
pub struct Evaluator {
    pending: Arc<Mutex<Pending>>,
}

/// When each (rule, key) started to breach.
type Pending = HashMap<(Uuid, String), DateTime<Utc>>;

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub rules: usize,
    /// (rule, key) pairs measured.
    pub measured: usize,
    pub fired: usize,
    pub resolved: usize,
    /// Observations that could not be recorded (logged; tried again next round).
    pub errors: usize,
}

impl Evaluator {
    /// Evaluates every scheduled rule type once.
    pub async fn round(&self, store: &EventStore) -> anyhow::Result<Round> {
        let client = store.pool().get().await?;
        let mut total = Round::default();
        let mut failed = None;
        for (rule_type, result) in [
            (
                "metric_threshold",
                self.metric_rules(&**client, store).await,
            ),
            ("cost_threshold", cost_rules(&**client, store).await),
            ("budget_threshold", budget_periods(&**client, store).await),
        ] {
            let round = match result {
                Ok(round) => round,
                Err(e) => {
                    // One type's failure does not hold up the others.
                    ALERTS
                        .evaluations
                        .with_label_values(&[rule_type, "error"])
                        .inc();
                    failed.get_or_insert(e.context(rule_type));
                    continue;
                }
            };
            ALERTS
                .evaluations
                .with_label_values(&[rule_type, "ok"])
                .inc_by((round.rules - round.errors) as u64);
            ALERTS
                .evaluations
                .with_label_values(&[rule_type, "error"])
                .inc_by(round.errors as u64);
            total.rules += round.rules;
            total.measured += round.measured;
            total.fired += round.fired;
            total.resolved += round.resolved;
        }
        let open: HashMap<String, i64> = client
            .query(FIRING_GAUGE_SQL, &[])
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        for t in super::condition::TYPES {
            ALERTS
                .firing
                .with_label_values(&[t])
                .set(open.get(t).copied().unwrap_or(0));
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    async fn metric_rules<C: GenericClient>(
        &self,
        client: &C,
        store: &EventStore,
    ) -> anyhow::Result<Round> {
        let started = Instant::now();
        let rules = rules_of_type(client, "metric_threshold", None).await?;
        let conds: Vec<&super::condition::MetricThreshold> = rules
            .iter()
            .filter_map(|r| match &r.condition {
                Condition::MetricThreshold(c) => Some(c),
                _ => None,
            })
            .collect();
        if conds.len() != rules.len() {
            anyhow::bail!("a metric_threshold rule has another condition");
        }
        let idx: Vec<i32> = (0..rules.len()).map(|i| i as i32).collect();
        let tenants: Vec<&str> = rules.iter().map(|r| r.tenant.as_str()).collect();
        let metrics: Vec<&str> = conds.iter().map(|c| c.metric.as_str()).collect();
        let series: Vec<Option<&str>> = conds.iter().map(|c| c.series.as_deref()).collect();
        let tags: Vec<Value> = conds
            .iter()
            .map(|c| Value::Object(c.tags.clone()))
            .collect();
        let windows: Vec<f64> = conds.iter().map(|c| f64::from(c.window_seconds)).collect();
        let now = Utc::now();
        let mut observations: Vec<(usize, Observation)> = Vec::new();
        let mut seen: BTreeSet<(usize, String)> = BTreeSet::new();
        let mut measured = 0;
        if !rules.is_empty() {
            let matched = client
                .query(
                    MATCH_SQL,
                    &[&idx, &tenants, &metrics, &series, &tags, &windows],
                )
                .await?;
            measured = matched.len();
            let mut pairs = Vec::with_capacity(matched.len());
            // Each (series, window) once.
            let mut wanted: BTreeSet<(&str, i64, u64)> = BTreeSet::new();
            for row in &matched {
                let i = usize::try_from(row.try_get::<_, i32>(0)?)?;
                let id: i64 = row.try_get(1)?;
                let name: String = row.try_get(2)?;
                wanted.insert((tenants[i], id, windows[i].to_bits()));
                pairs.push((i, id, name));
            }
            let w_tenants: Vec<&str> = wanted.iter().map(|w| w.0).collect();
            let w_ids: Vec<i64> = wanted.iter().map(|w| w.1).collect();
            let w_windows: Vec<f64> = wanted.iter().map(|w| f64::from_bits(w.2)).collect();
            let mut measured: HashMap<(i64, u64), tokio_postgres::Row> = HashMap::new();
            for row in client
                .query(MEASURE_SQL, &[&w_tenants, &w_ids, &w_windows])
                .await?
            {
                let key = (
                    row.try_get::<_, i64>(0)?,
                    row.try_get::<_, f64>(1)?.to_bits(),
                );
                measured.insert(key, row);
            }
            for (i, id, name) in pairs {
                let Some(row) = measured.get(&(id, windows[i].to_bits())) else {
                    continue;
                };
                let c = conds[i];
                let value: Option<f64> = match c.aggregation {
                    Aggregation::Avg => row.try_get(2)?,
                    Aggregation::Min => row.try_get(3)?,
                    Aggregation::Max => row.try_get(4)?,
                    Aggregation::Sum => row.try_get(5)?,
                    Aggregation::Count => row.try_get::<_, i64>(6).map(|n| Some(n as f64))?,
                    Aggregation::Last => row.try_get(7)?,
                };
                let Some(value) = value.and_then(Decimal::from_f64) else {
                    continue;
                };
                let key = format!("series:{name}");
                let firing = rules[i].firing.contains(&key);
                if firing || c.for_seconds > 0 {
                    seen.insert((i, key.clone()));
                }
                let breached = c.comparator.holds(value, c.threshold);
                // An open episode stays open while the breach lasts, whatever the wait.
                let held = self.held_long_enough(rules[i].id, &key, breached, c.for_seconds, now);
                let breached = breached && (held || firing);
                if breached == firing {
                    continue; // nothing would change: no observation to build
                }
                observations.push((
                    i,
                    Observation {
                        key,
                        breached,
                        value: Some(value.round_dp(6)),
                        threshold: Some(c.threshold),
                        window_start: Some(
                            now - chrono::Duration::seconds(i64::from(c.window_seconds)),
                        ),
                        window_end: Some(now),
                        at: now,
                        details: json!({"metric": c.metric, "series": name,
                                        "aggregation": c.aggregation.as_str(),
                                        "comparator": c.comparator}),
                        reason: "condition_cleared",
                    },
                ));
            }
        }
        // Waits of keys not seen this round are forgotten: a series that went silent
        // starts its wait again when it comes back.
        self.forget_unseen(&rules, &seen);
        // A firing series with no data left in its window: the condition no longer holds.
        for (i, r) in rules.iter().enumerate() {
            for key in &r.firing {
                if !seen.contains(&(i, key.clone())) {
                    observations.push((i, cleared(key, now, "no_data")));
                }
            }
        }
        let round = apply(store, &rules, measured, observations).await;
        ALERTS
            .evaluation_duration
            .with_label_values(&["metric_threshold"])
            .observe(started.elapsed().as_secs_f64());
        round
    }

    /// Whether a breach counts now: at once without `for_seconds`, else once it has
    /// lasted that long (a clear forgets it).
    fn held_long_enough(
        &self,
        rule: Uuid,
        key: &str,
        breached: bool,
        for_seconds: u32,
        now: DateTime<Utc>,
    ) -> bool {
        if for_seconds == 0 {
            return breached;
        }
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = (rule, key.to_owned());
        if !breached {
            pending.remove(&k);
            return false;
        }
        let since = *pending.entry(k).or_insert(now);
        (now - since).num_seconds() >= i64::from(for_seconds)
    }

    /// Forgets the waits of (rule, key)s not measured in this round (a silent series, a
    /// rule deleted or changed).
    fn forget_unseen(&self, rules: &[RuleRow], seen: &BTreeSet<(usize, String)>) {
        let live: std::collections::HashSet<(Uuid, &str)> = seen
            .iter()
            .map(|(i, key)| (rules[*i].id, key.as_str()))
            .collect();
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(rule, key), _| live.contains(&(*rule, key.as_str())));
    }
}

fn cleared(key: &str, now: DateTime<Utc>, reason: &'static str) -> Observation {
    Observation {
        key: key.to_owned(),
        breached: false,
        value: None,
        threshold: None,
        window_start: None,
        window_end: None,
        at: now,
        details: json!({}),
        reason,
    }
}

/// Sends the observations that may change something to their rules: a breach of a key
/// that is not firing, a clear of one that is. The rest would append nothing.
async fn apply(
    store: &EventStore,
    rules: &[RuleRow],
    measured: usize,
    observations: Vec<(usize, Observation)>,
) -> anyhow::Result<Round> {
    let mut round = Round {
        rules: rules.len(),
        measured,
        ..Round::default()
    };
    for (i, o) in observations {
        let rule = &rules[i];
        if o.breached == rule.firing.contains(&o.key) {
            continue;
        }
        match observe(store, &rule.tenant, rule.id, o).await {
            Ok(Some("fired")) => round.fired += 1,
            Ok(Some(_)) => round.resolved += 1,
            Ok(None) => {}
            // One rule's failure does not hold up the others; the next round tries again.
            Err(e) => {
                tracing::warn!(rule = %rule.id, error = %e, "alert observation not recorded");
                round.errors += 1;
            }
        }
    }
    Ok(round)
}

async fn cost_rules<C: GenericClient>(client: &C, store: &EventStore) -> anyhow::Result<Round> {
    let started = Instant::now();
    let rules = rules_of_type(client, "cost_threshold", None).await?;
    let conds: Vec<&super::condition::CostThreshold> = rules
        .iter()
        .filter_map(|r| match &r.condition {
            Condition::CostThreshold(c) => Some(c),
            _ => None,
        })
        .collect();
    if conds.len() != rules.len() {
        anyhow::bail!("a cost_threshold rule has another condition");
    }
    let now = Utc::now();
    let tomorrow = (now.date_naive() + chrono::Days::new(1))
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    let idx: Vec<i32> = (0..rules.len()).map(|i| i as i32).collect();
    let tenants: Vec<&str> = rules.iter().map(|r| r.tenant.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = conds
        .iter()
        .map(|c| tomorrow - chrono::Duration::days(i64::from(c.window_days)))
        .collect();
    let stops: Vec<DateTime<Utc>> = vec![tomorrow; rules.len()];
    let accounts: Vec<Option<&str>> = conds.iter().map(|c| c.account.as_deref()).collect();
    let services: Vec<Option<&str>> = conds.iter().map(|c| c.service.as_deref()).collect();
    let regions: Vec<Option<&str>> = conds.iter().map(|c| c.region.as_deref()).collect();
    let currencies: Vec<&str> = conds.iter().map(|c| c.currency.as_str()).collect();
    let rows = if rules.is_empty() {
        Vec::new()
    } else {
        client
            .query(
                COST_SQL,
                &[
                    &idx,
                    &tenants,
                    &starts,
                    &stops,
                    &accounts,
                    &services,
                    &regions,
                    &currencies,
                ],
            )
            .await?
    };
    let mut observations = Vec::new();
    for row in &rows {
        let i = usize::try_from(row.try_get::<_, i32>(0)?)?;
        let value: Decimal = row.try_get(1)?;
        let c = conds[i];
        observations.push((
            i,
            Observation {
                key: String::new(),
                breached: c.comparator.holds(value, c.threshold),
                value: Some(value),
                threshold: Some(c.threshold),
                window_start: Some(starts[i]),
                window_end: Some(tomorrow),
                at: now,
                details: json!({"comparator": c.comparator, "currency": c.currency,
                                "account": c.account, "service": c.service, "region": c.region}),
                reason: "condition_cleared",
            },
        ));
    }
    let round = apply(store, &rules, rows.len(), observations).await;
    ALERTS
        .evaluation_duration
        .with_label_values(&["cost_threshold"])
        .observe(started.elapsed().as_secs_f64());
    round
}

/// The key of a budget crossing's episode: one per budget, period, basis and percent.
fn budget_key(
    budget: Uuid,
    start: NaiveDate,
    end: NaiveDate,
    basis: &str,
    percent: Decimal,
) -> String {
    format!(
        "budget:{budget}:{start}:{end}:{basis}:{}",
        percent.normalize()
    )
}

/// (budget, period end) of a budget key.
fn parse_budget_key(key: &str) -> Option<(Uuid, NaiveDate)> {
    let mut parts = key.strip_prefix("budget:")?.split(':');
    let id = parts.next()?.parse().ok()?;
    let _start = parts.next()?;
    let end = parts.next()?.parse().ok()?;
    Some((id, end))
}

/// Budget episodes end when their period is over or their budget was deleted.
async fn budget_periods<C: GenericClient>(client: &C, store: &EventStore) -> anyhow::Result<Round> {
    let started = Instant::now();
    let rules: Vec<RuleRow> = rules_of_type(client, "budget_threshold", None)
        .await?
        .into_iter()
        .filter(|r| !r.firing.is_empty())
        .collect();
    // Deleted budgets, from their streams (the write side: a read model that lags must
    // not end an episode).
    let budgets: BTreeSet<(&str, Uuid)> = rules
        .iter()
        .flat_map(|r| {
            r.firing
                .iter()
                .filter_map(|k| parse_budget_key(k))
                .map(|(id, _)| (r.tenant.as_str(), id))
        })
        .collect();
    let mut deleted = BTreeSet::new();
    for (tenant, budget) in budgets {
        let loaded = pipeline::load::<crate::budgets::Budget>(store, tenant, budget)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if loaded.aggregate.details.is_none() || loaded.aggregate.deleted {
            deleted.insert(budget);
        }
    }
    let now = Utc::now();
    let today = now.date_naive();
    let measured = rules.iter().map(|r| r.firing.len()).sum();
    let mut observations = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        for key in &r.firing {
            if let Some((budget, end)) = parse_budget_key(key) {
                if deleted.contains(&budget) {
                    observations.push((i, cleared(key, now, "budget_deleted")));
                } else if end <= today {
                    observations.push((i, cleared(key, now, "period_ended")));
                }
            }
        }
    }
    let round = apply(store, &rules, measured, observations).await;
    ALERTS
        .evaluation_duration
        .with_label_values(&["budget_threshold"])
        .observe(started.elapsed().as_secs_f64());
    round
}

/// The job id of a reaction to one event.
fn reaction_id(kind: &str, e: &RecordedEvent) -> Uuid {
    Uuid::new_v5(&JOB_NS, format!("{kind}/{}", e.position).as_bytes())
}

/// The event's payload with its stream id (the budget, the anomaly stream).
fn params_with_stream(e: &RecordedEvent) -> anyhow::Result<Value> {
    let mut v: Value = serde_json::from_str(e.payload.get())?;
    if let Value::Object(m) = &mut v {
        m.insert("stream_id".into(), Value::from(e.stream_id.to_string()));
    }
    Ok(v)
}

fn day_start(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// `budget_threshold` rules react to `BudgetThresholdCrossed`.
pub struct BudgetCrossingAlerts;

pub const BUDGET_JOB: &str = "alerts.budget_crossing";

#[async_trait]
impl JobHandler for BudgetCrossingAlerts {
    fn kind(&self) -> &'static str {
        BUDGET_JOB
    }

    fn requested_by(&self) -> (&'static str, &'static str) {
        ("budget", "BudgetThresholdCrossed")
    }

    fn job_id(&self, e: &RecordedEvent) -> Uuid {
        reaction_id(BUDGET_JOB, e)
    }

    fn job_params(&self, e: &RecordedEvent) -> anyhow::Result<Value> {
        params_with_stream(e)
    }

    async fn run(&self, job: &Job, env: &JobEnv) -> anyhow::Result<Value> {
        let started = Instant::now();
        env.wait_for(RULES, job.position, CATCH_UP).await?;
        let c: crate::budgets::events::ThresholdCrossing =
            serde_json::from_value(job.params.clone())?;
        let budget: Uuid = job.params["stream_id"]
            .as_str()
            .unwrap_or_default()
            .parse()?;
        let client = env.store.pool().get().await?;
        let rules = rules_of_type(&**client, "budget_threshold", Some(&job.tenant_id)).await?;
        let now = Utc::now();
        let mut fired = 0;
        for r in &rules {
            let Condition::BudgetThreshold(cond) = &r.condition else {
                continue;
            };
            if cond.budget_id.is_some_and(|b| b != budget)
                || cond.min_percent.is_some_and(|m| c.percent < m)
            {
                continue;
            }
            let o = Observation {
                key: budget_key(budget, c.period_start, c.period_end, &c.basis, c.percent),
                breached: true,
                value: Some(c.observed_percent),
                threshold: Some(c.percent),
                window_start: Some(day_start(c.period_start)),
                window_end: Some(day_start(c.period_end)),
                at: now,
                reason: "condition_cleared",
                details: json!({"budget_id": budget, "basis": c.basis, "spent": c.spent.to_string(),
                                "forecast": c.forecast.map(|f| f.to_string()), "as_of": c.as_of}),
            };
            if observe(&env.store, &job.tenant_id, r.id, o)
                .await?
                .is_some()
            {
                fired += 1;
            }
        }
        ALERTS
            .evaluation_duration
            .with_label_values(&["budget_threshold"])
            .observe(started.elapsed().as_secs_f64());
        ALERTS
            .evaluations
            .with_label_values(&["budget_threshold", "ok"])
            .inc_by(rules.len() as u64);
        Ok(json!({"rules": rules.len(), "fired": fired}))
    }
}

/// `cost_anomaly` rules react to the costs context's anomaly episodes.
pub struct AnomalyAlerts {
    /// `CostAnomalyDetected` or `CostAnomalyUpdated` (fire: an anomaly that grew worse
    /// may reach a rule's `min_severity` only then), or `CostAnomalyEnded` (resolves).
    pub event_type: &'static str,
}

pub const ANOMALY_STREAM: &str = "cost_anomaly";

#[async_trait]
impl JobHandler for AnomalyAlerts {
    fn kind(&self) -> &'static str {
        match self.event_type {
            "CostAnomalyDetected" => "alerts.cost_anomaly_detected",
            "CostAnomalyUpdated" => "alerts.cost_anomaly_updated",
            _ => "alerts.cost_anomaly_ended",
        }
    }

    fn requested_by(&self) -> (&'static str, &'static str) {
        (ANOMALY_STREAM, self.event_type)
    }

    fn job_id(&self, e: &RecordedEvent) -> Uuid {
        reaction_id(self.kind(), e)
    }

    fn job_params(&self, e: &RecordedEvent) -> anyhow::Result<Value> {
        params_with_stream(e)
    }

    async fn run(&self, job: &Job, env: &JobEnv) -> anyhow::Result<Value> {
        let started = Instant::now();
        env.wait_for(RULES, job.position, CATCH_UP).await?;
        let p = &job.params;
        let text = |k: &str| {
            p.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let anomaly = text("anomaly_id");
        anyhow::ensure!(!anomaly.is_empty(), "the anomaly event has no anomaly_id");
        let key = format!("anomaly:{anomaly}");
        let detected = self.event_type != "CostAnomalyEnded";
        let client = env.store.pool().get().await?;
        let rules = rules_of_type(&**client, "cost_anomaly", Some(&job.tenant_id)).await?;
        let now = Utc::now();
        let day = p
            .get("day")
            .and_then(Value::as_str)
            .and_then(|d| d.parse::<NaiveDate>().ok());
        let decimal = |k: &str| -> Option<Decimal> {
            match p.get(k)? {
                Value::String(s) => s.parse().ok(),
                Value::Number(n) => n.to_string().parse().ok(),
                _ => None,
            }
        };
        let mut changed = 0;
        for r in &rules {
            let Condition::CostAnomaly(cond) = &r.condition else {
                continue;
            };
            let o = if detected {
                let matches = anomaly_at_least(&text("severity"), &cond.min_severity)
                    && cond
                        .account
                        .as_ref()
                        .is_none_or(|a| *a == text("account_id"))
                    && cond.service.as_ref().is_none_or(|s| *s == text("service"));
                if !matches {
                    continue;
                }
                Observation {
                    key: key.clone(),
                    breached: true,
                    value: decimal("actual"),
                    threshold: decimal("expected"),
                    window_start: day.map(day_start),
                    window_end: day.and_then(|d| d.succ_opt()).map(day_start),
                    at: now,
                    details: p.clone(),
                    reason: "condition_cleared",
                }
            } else {
                // Not filtered by the read model's open episodes: the episode may have
                // fired a moment ago (the same append can hold Detected and Ended); the
                // rule itself ignores a clear of a key that is not firing.
                cleared(&key, now, "anomaly_ended")
            };
            if observe(&env.store, &job.tenant_id, r.id, o)
                .await?
                .is_some()
            {
                changed += 1;
            }
        }
        ALERTS
            .evaluation_duration
            .with_label_values(&["cost_anomaly"])
            .observe(started.elapsed().as_secs_f64());
        ALERTS
            .evaluations
            .with_label_values(&["cost_anomaly", "ok"])
            .inc_by(rules.len() as u64);
        Ok(json!({"rules": rules.len(), "changed": changed}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_key_names_its_budget_and_period_end() {
        let id = Uuid::now_v7();
        let (s, e) = (
            NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
        );
        let key = budget_key(id, s, e, "actual", Decimal::new(800, 1));
        assert_eq!(key, format!("budget:{id}:2026-11-01:2026-12-01:actual:80"));
        assert_eq!(parse_budget_key(&key), Some((id, e)));
        assert_eq!(parse_budget_key("series:x"), None);
    }

    #[test]
    fn a_breach_counts_once_it_has_lasted_for_seconds() {
        let ev = Evaluator::default();
        let (rule, t0) = (Uuid::now_v7(), Utc::now());
        assert!(ev.held_long_enough(rule, "k", true, 0, t0));
        assert!(!ev.held_long_enough(rule, "k", true, 60, t0));
        assert!(!ev.held_long_enough(rule, "k", true, 60, t0 + chrono::Duration::seconds(30)));
        assert!(ev.held_long_enough(rule, "k", true, 60, t0 + chrono::Duration::seconds(61)));
        assert!(!ev.held_long_enough(rule, "k", false, 60, t0 + chrono::Duration::seconds(62)));
        assert!(!ev.held_long_enough(rule, "k", true, 60, t0 + chrono::Duration::seconds(63)));
    }
}
