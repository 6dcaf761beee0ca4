//! Where each projector stands: position, lag, state (CLI, admin API, metrics, readiness).

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use super::Projection;
use crate::eventstore::StoreError;
use crate::telemetry::METRICS;

/// A runner that has not written its heartbeat for this long is not running.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectorStatus {
    pub name: String,
    /// Global position of the last event applied.
    pub position: i64,
    pub lag_events: i64,
    pub lag_seconds: f64,
    /// `running`, `stopped` (no runner heartbeat for 10 s) or `failing` (last batch failed).
    pub state: String,
    pub owner: Option<String>,
    pub last_error: Option<String>,
    pub events_applied: i64,
    pub rebuild: Option<RebuildStatus>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RebuildStatus {
    /// `running`, `done` or `failed`.
    pub state: String,
    pub position: Option<i64>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

const STATUS_SQL: &str = "\
WITH c AS (SELECT * FROM projection_checkpoints WHERE name = $1),
pending AS (
    SELECT e.recorded_at FROM events e, c
     WHERE (e.transaction_id, e.position) > (c.last_xid, c.last_position)
       AND e.transaction_id >= c.last_xid
       AND (e.stream_type = ANY($2)) IS TRUE) -- a filter, never an index scan (global.rs)
SELECT c.last_position, c.events_applied, c.owner, c.last_error,
       coalesce(c.heartbeat_at > now() - make_interval(secs => $3), false),
       (SELECT count(*) FROM pending),
       coalesce(extract(epoch FROM now() - (SELECT min(recorded_at) FROM pending))::float8, 0),
       c.rebuild_state, c.rebuild_position, c.rebuild_started_at, c.rebuild_finished_at
  FROM c";

pub async fn of<C: GenericClient>(
    client: &C,
    p: &dyn Projection,
) -> Result<ProjectorStatus, StoreError> {
    let stale = HEARTBEAT_STALE.as_secs_f64();
    let row = client
        .query_opt(STATUS_SQL, &[&p.name(), &p.stream_types(), &stale])
        .await?;
    let Some(row) = row else {
        return Ok(ProjectorStatus {
            name: p.name().to_owned(),
            position: 0,
            lag_events: 0,
            lag_seconds: 0.0,
            state: "stopped".into(),
            owner: None,
            last_error: None,
            events_applied: 0,
            rebuild: None,
        });
    };
    let alive: bool = row.try_get(4)?;
    let last_error: Option<String> = row.try_get(3)?;
    let state = match (alive, &last_error) {
        (true, None) => "running",
        (true, Some(_)) => "failing",
        (false, _) => "stopped",
    };
    let rebuild_state: Option<String> = row.try_get(7)?;
    let status = ProjectorStatus {
        name: p.name().to_owned(),
        position: row.try_get(0)?,
        events_applied: row.try_get(1)?,
        owner: row.try_get(2)?,
        last_error,
        state: state.into(),
        lag_events: row.try_get(5)?,
        lag_seconds: row.try_get(6)?,
        rebuild: match rebuild_state {
            Some(state) => Some(RebuildStatus {
                state,
                position: row.try_get(8)?,
                started_at: row.try_get(9)?,
                finished_at: row.try_get(10)?,
            }),
            None => None,
        },
    };
    METRICS
        .projector_lag_events
        .with_label_values(&[p.name()])
        .set(status.lag_events);
    METRICS
        .projector_lag_seconds
        .with_label_values(&[p.name()])
        .set(status.lag_seconds);
    METRICS
        .projector_position
        .with_label_values(&[p.name()])
        .set(status.position);
    Ok(status)
}
