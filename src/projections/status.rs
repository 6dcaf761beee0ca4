//! Where each projector stands: position, lag, state (CLI, admin API, metrics, readiness).

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::GenericClient;
use utoipa::ToSchema;

use super::Projection;
use crate::eventstore::global;
use crate::eventstore::StoreError;
use crate::telemetry::METRICS;

/// A runner that has not written its heartbeat for this long is not running.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectorStatus {
    pub name: String,
    /// Global position of the last event applied, or the last one handed out once every
    /// event up to it was read (events of other types included); for a projector with
    /// lanes, that of its least advanced lane.
    pub position: i64,
    /// Events not yet applied, counted up to 100,000.
    pub lag_events: i64,
    pub lag_seconds: f64,
    /// `running`, `stopped` (no runner heartbeat for 10 s) or `failing` (last batch failed).
    pub state: String,
    pub owner: Option<String>,
    pub last_error: Option<String>,
    /// Events read by the batches that applied them, summed over the lanes (each lane
    /// reads every event).
    pub events_applied: i64,
    /// Each lane's checkpoint (one for most projectors; ADR 0031): which lane lags.
    pub lanes: Vec<LaneStatus>,
    pub rebuild: Option<RebuildStatus>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LaneStatus {
    /// The lane's checkpoint row: the projector's name for lane 0, `name#i` for lane i.
    pub checkpoint: String,
    /// As `position` above, for this lane.
    pub position: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RebuildStatus {
    /// `running`, `done`, `failed` or `interrupted` (the server stopped during it).
    pub state: String,
    pub position: Option<i64>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Lane 0's row: the runner's heartbeat, its last error and the rebuild.
const STATUS_SQL: &str = "\
SELECT owner, last_error, coalesce(heartbeat_at > now() - make_interval(secs => $2), false),
       rebuild_state, rebuild_position, rebuild_started_at, rebuild_finished_at
  FROM projection_checkpoints WHERE name = $1";
/// Every lane (ADR 0031), in the order of their checkpoint names.
const LANES_SQL: &str = "\
SELECT last_epoch, last_xid, last_position, position_seen, events_applied, name
  FROM projection_checkpoints WHERE projector = $1 ORDER BY name";

/// Pending events are counted up to this many: the lag gauge stays cheap to compute
/// however far behind a projector is (it then reads "at least this many").
pub const LAG_CAP: i64 = 100_000;

pub async fn of<C: GenericClient>(
    client: &C,
    p: &dyn Projection,
) -> Result<ProjectorStatus, StoreError> {
    let stale = HEARTBEAT_STALE.as_secs_f64();
    let row = client.query_opt(STATUS_SQL, &[&p.name(), &stale]).await?;
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
            lanes: Vec::new(),
            rebuild: None,
        });
    };
    // Where the projector stands is its least advanced lane (lane 0's row is one).
    let rows = client.query(LANES_SQL, &[&p.name()]).await?;
    let mut at: Option<global::Cursor> = None;
    let mut lanes = Vec::with_capacity(rows.len());
    let mut events_applied = 0;
    for r in &rows {
        let cursor = super::cursor(r)?;
        at = Some(at.map_or(cursor, |a| a.min(cursor)));
        events_applied += r.try_get::<_, i64>(4)?;
        lanes.push(LaneStatus {
            checkpoint: r.try_get(5)?,
            position: r.try_get(3)?,
        });
    }
    let at = at.unwrap_or_default();
    let position = lanes.iter().map(|l| l.position).min().unwrap_or(0);
    let (lag_events, oldest) = global::pending(client, at, p.stream_types(), LAG_CAP).await?;
    let lag_seconds = oldest.map_or(0.0, |t| {
        (chrono::Utc::now() - t)
            .num_microseconds()
            .unwrap_or(0)
            .max(0) as f64
            / 1e6
    });
    let alive: bool = row.try_get(2)?;
    let last_error: Option<String> = row.try_get(1)?;
    let state = match (alive, &last_error) {
        (true, None) => "running",
        (true, Some(_)) => "failing",
        (false, _) => "stopped",
    };
    let rebuild_state: Option<String> = row.try_get(3)?;
    let status = ProjectorStatus {
        name: p.name().to_owned(),
        position,
        events_applied,
        lanes,
        owner: row.try_get(0)?,
        last_error,
        state: state.into(),
        lag_events,
        lag_seconds,
        rebuild: match rebuild_state {
            Some(state) => Some(RebuildStatus {
                state,
                position: row.try_get(4)?,
                started_at: row.try_get(5)?,
                finished_at: row.try_get(6)?,
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
