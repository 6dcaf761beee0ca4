//! Delivery of the notification outbox (sql/V18), by the one process elected for the
//! `alerts.deliver` job (`scheduled`).
//!
//! A round claims the rows due (a lease, so a sender that dies mid-send gives them back
//! after it expires), sends them concurrently and records each outcome: `delivered`,
//! or a retry after an exponential backoff with jitter, or `dead` after the last
//! attempt. A row is committed with the event that caused it and is only ever sent from
//! here, so a crash between the commit and the send delays it, never loses it; a crash
//! after the send but before its outcome is recorded sends it once more when the lease
//! ends (at least once; receivers can drop repeats by `X-Cloudlens-Delivery`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::Value;
use tokio_postgres::Client;
use uuid::Uuid;

use super::metrics::ALERTS;
use super::send::{self, Sender};

/// At most this many rows per claim, all sent at once: a claim is done within the
/// longest timeout (60 s), well inside its lease.
const CLAIM: i64 = 32;
/// How long a claimed row is held by its sender.
const LEASE_SECONDS: f64 = 300.0;
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The lease's end is the claim's token: a sender whose lease ran out (and whose rows
/// another sender claimed) cannot record over the new claim (`RECORD_SQL`).
const CLAIM_SQL: &str = "\
WITH due AS (
    SELECT id FROM notification_outbox
     WHERE state = 'pending' AND next_attempt_at <= now()
       AND (lease_until IS NULL OR lease_until < now())
     ORDER BY next_attempt_at LIMIT $1
       FOR UPDATE SKIP LOCKED)
UPDATE notification_outbox o
   SET attempts = o.attempts + 1,
       lease_until = clock_timestamp() + make_interval(secs => $2)
  FROM due WHERE o.id = due.id
RETURNING o.id, o.tenant_id, o.channel_id, o.kind, o.message, o.attempts, o.lease_until";

/// Rows whose senders died on every attempt (leases that ran out with no outcome):
/// dead once they used their attempts.
const ABANDONED_SQL: &str = "\
UPDATE notification_outbox
   SET state = 'dead', lease_until = NULL,
       last_error = coalesce(last_error, 'no outcome recorded after ' || attempts || ' attempts')
 WHERE state = 'pending' AND attempts >= $1 AND lease_until < now()";

const TARGETS_SQL: &str = "\
SELECT c.tenant_id, c.id, c.kind, c.config, s.secret
  FROM notification_channels c
  LEFT JOIN notification_channel_secrets s ON s.channel_id = c.id AND s.tenant_id = c.tenant_id
 WHERE c.id = ANY($1)";

/// Of channels the read model does not show, those whose stream says they were deleted
/// (the others are newer than the read model: their notifications wait).
const DELETED_SQL: &str = "\
SELECT stream_id FROM events
 WHERE stream_type = 'notification_channel' AND event_type = 'NotificationChannelDeleted'
   AND stream_id = ANY($1)
UNION
SELECT stream_id FROM events_archive
 WHERE stream_type = 'notification_channel' AND event_type = 'NotificationChannelDeleted'
   AND stream_id = ANY($1)";

const RECORD_SQL: &str = "\
UPDATE notification_outbox o
   SET state = u.state, last_status = u.status, last_error = u.error,
       next_attempt_at = coalesce(u.next, o.next_attempt_at), lease_until = NULL,
       delivered_at = CASE WHEN u.state = 'delivered' THEN now() END
  FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::timestamptz[],
              $6::timestamptz[])
       AS u(id, state, status, error, next, lease)
 WHERE o.id = u.id AND o.lease_until = u.lease";

const PENDING_SQL: &str = "SELECT count(*) FROM notification_outbox WHERE state = 'pending'";

/// Records a channel test's outcome in the delivery log.
pub const LOG_TEST_SQL: &str = "\
INSERT INTO notification_outbox (tenant_id, channel_id, kind, message, state, attempts,
                                 last_status, last_error, delivered_at)
VALUES ($1, $2, 'test', $3, $4, 1, $5, $6, CASE WHEN $4 = 'delivered' THEN now() END)
RETURNING id";

/// How deliveries are retried.
#[derive(Clone)]
pub struct Policy {
    pub max_attempts: i32,
    pub retry_base: Duration,
}

impl Policy {
    /// The delay before attempt `attempts + 1`: base × 2^(attempts − 1), at most an hour,
    /// half of it fixed and half random ("equal jitter": retries of many rows spread out,
    /// none comes sooner than half the backoff).
    pub fn backoff(&self, attempts: i32) -> Duration {
        let exp = u32::try_from(attempts.clamp(1, 30) - 1).unwrap_or(0);
        let full = self
            .retry_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(MAX_BACKOFF);
        let half = full / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

struct Claimed {
    id: i64,
    tenant: String,
    channel_id: Uuid,
    message: Value,
    attempts: i32,
    lease: DateTime<Utc>,
}

/// Where a claimed row goes.
enum Target<'a> {
    Channel(&'a send::Target),
    /// Not in the read model yet: wait.
    Unknown,
    Deleted,
}

/// One outcome to record.
struct Outcome {
    id: i64,
    state: &'static str,
    status: Option<i32>,
    error: Option<String>,
    next: Option<DateTime<Utc>>,
    lease: DateTime<Utc>,
}

/// Delivers everything due, claim after claim, until nothing is due.
pub async fn deliver_due(client: &Client, sender: &Sender, policy: &Policy) -> anyhow::Result<u64> {
    client
        .execute(ABANDONED_SQL, &[&policy.max_attempts])
        .await?;
    let mut sent = 0;
    loop {
        let rows = client.query(CLAIM_SQL, &[&CLAIM, &LEASE_SECONDS]).await?;
        if rows.is_empty() {
            break;
        }
        let claimed = rows
            .iter()
            .map(|r| {
                let mut message: Value = r.try_get(4)?;
                let kind: String = r.try_get(3)?;
                if let Value::Object(m) = &mut message {
                    m.entry("state").or_insert(Value::from(kind));
                }
                Ok(Claimed {
                    id: r.try_get(0)?,
                    tenant: r.try_get(1)?,
                    channel_id: r.try_get(2)?,
                    message,
                    attempts: r.try_get(5)?,
                    lease: r.try_get(6)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.channel_id).collect();
        let mut targets: HashMap<(String, Uuid), send::Target> = HashMap::new();
        for r in client.query(TARGETS_SQL, &[&ids]).await? {
            targets.insert(
                (r.try_get(0)?, r.try_get(1)?),
                send::Target {
                    kind: r.try_get(2)?,
                    config: r.try_get(3)?,
                    secret: r.try_get(4)?,
                },
            );
        }
        let missing: Vec<Uuid> = claimed
            .iter()
            .filter(|c| !targets.contains_key(&(c.tenant.clone(), c.channel_id)))
            .map(|c| c.channel_id)
            .collect();
        let deleted: HashSet<Uuid> = if missing.is_empty() {
            HashSet::new()
        } else {
            client
                .query(DELETED_SQL, &[&missing])
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?
        };
        let outcomes: Vec<Outcome> = futures::stream::iter(claimed)
            .map(|c| {
                let target = match targets.get(&(c.tenant.clone(), c.channel_id)) {
                    Some(t) => Target::Channel(t),
                    None if deleted.contains(&c.channel_id) => Target::Deleted,
                    None => Target::Unknown,
                };
                async move { attempt(sender, target, c, policy).await }
            })
            .buffer_unordered(CLAIM as usize)
            .collect()
            .await;
        sent += outcomes.iter().filter(|o| o.state == "delivered").count() as u64;
        record(client, &outcomes).await?;
    }
    let pending: i64 = client.query_one(PENDING_SQL, &[]).await?.try_get(0)?;
    ALERTS.outbox_pending.set(pending);
    Ok(sent)
}

/// A failed attempt: retried after the backoff, or dead after the last.
fn failed(c: &Claimed, policy: &Policy, status: Option<u16>, error: String) -> Outcome {
    let dead = c.attempts >= policy.max_attempts;
    let next = (!dead).then(|| {
        Utc::now() + chrono::Duration::from_std(policy.backoff(c.attempts)).unwrap_or_default()
    });
    Outcome {
        id: c.id,
        state: if dead { "dead" } else { "pending" },
        status: status.map(i32::from),
        error: Some(error),
        next,
        lease: c.lease,
    }
}

async fn attempt(sender: &Sender, target: Target<'_>, c: Claimed, policy: &Policy) -> Outcome {
    let target = match target {
        Target::Channel(t) => t,
        Target::Deleted => {
            return Outcome {
                id: c.id,
                state: "dead",
                status: None,
                error: Some("the channel was deleted".into()),
                next: None,
                lease: c.lease,
            }
        }
        Target::Unknown => {
            return failed(&c, policy, None, "the channel is not readable yet".into());
        }
    };
    let started = Instant::now();
    let result = sender.send(target, &c.message, &c.id.to_string()).await;
    let kind = target.kind.as_str();
    ALERTS
        .delivery_duration
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(status) => {
            ALERTS
                .notifications
                .with_label_values(&[kind, "delivered"])
                .inc();
            Outcome {
                id: c.id,
                state: "delivered",
                status: Some(i32::from(status)),
                error: None,
                next: None,
                lease: c.lease,
            }
        }
        Err(f) => {
            let outcome = failed(&c, policy, f.status, f.error);
            let dead = outcome.state == "dead";
            ALERTS
                .notifications
                .with_label_values(&[kind, if dead { "dead" } else { "failed" }])
                .inc();
            tracing::warn!(
                notification = c.id,
                attempts = c.attempts,
                dead,
                error = outcome.error.as_deref().unwrap_or_default(),
                "notification not delivered"
            );
            outcome
        }
    }
}

async fn record(client: &Client, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let ids: Vec<i64> = outcomes.iter().map(|o| o.id).collect();
    let states: Vec<&str> = outcomes.iter().map(|o| o.state).collect();
    let statuses: Vec<Option<i32>> = outcomes.iter().map(|o| o.status).collect();
    let errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.error.as_deref()).collect();
    let next: Vec<Option<DateTime<Utc>>> = outcomes.iter().map(|o| o.next).collect();
    let leases: Vec<DateTime<Utc>> = outcomes.iter().map(|o| o.lease).collect();
    client
        .execute(
            RECORD_SQL,
            &[&ids, &states, &statuses, &errors, &next, &leases],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_an_hour() {
        let p = Policy {
            max_attempts: 10,
            retry_base: Duration::from_secs(2),
        };
        for attempts in 1..=5 {
            let full = Duration::from_secs(2 << (attempts - 1));
            let d = p.backoff(attempts);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempts}: {d:?} of {full:?}"
            );
        }
        assert!(p.backoff(30) <= MAX_BACKOFF && p.backoff(30) >= MAX_BACKOFF / 2);
    }
}
