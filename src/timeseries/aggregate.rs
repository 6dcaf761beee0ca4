//! The time-series aggregates. A batch stream (`metric_batch`, `bar_batch`) is written
//! whole by the ingest (`super::ingest`) and only folded; a metric's retention
//! (`metric_retention`) takes the one command `SetRetention`.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::events::{BarBatchEvent, MetricBatchEvent, RetentionEvent};
use crate::pipeline::{DomainError, EventSourced, Rejection};

/// The longest raw-point retention a metric may have, in days (about 100 years).
pub const MAX_RETENTION_DAYS: i32 = 36_500;

#[derive(Debug, thiserror::Error)]
pub enum TimeseriesError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl DomainError for TimeseriesError {
    fn rejection(&self) -> Rejection {
        match self {
            TimeseriesError::Invalid { field, message } => Rejection::Invalid {
                field: field.clone(),
                message: message.clone(),
            },
        }
    }
}

/// Batch streams take no commands: the ingest appends them whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NoCommand {}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct MetricBatch {
    pub points: i64,
    pub completed: bool,
}

impl EventSourced for MetricBatch {
    const STREAM_TYPE: &'static str = "metric_batch";
}

#[async_trait]
impl Aggregate for MetricBatch {
    type Command = NoCommand;
    type Event = MetricBatchEvent;
    type Error = TimeseriesError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: NoCommand,
        _: &(),
    ) -> Result<Vec<MetricBatchEvent>, TimeseriesError> {
        match command {}
    }

    fn apply(&mut self, event: MetricBatchEvent) {
        match event {
            MetricBatchEvent::PointsWritten(b) => self.points += i64::from(b.count),
            MetricBatchEvent::MetricBatchCompleted { .. }
            | MetricBatchEvent::RawPointsExpired { .. } => self.completed = true,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct BarBatch {
    pub bars: i64,
    pub completed: bool,
}

impl EventSourced for BarBatch {
    const STREAM_TYPE: &'static str = "bar_batch";
}

#[async_trait]
impl Aggregate for BarBatch {
    type Command = NoCommand;
    type Event = BarBatchEvent;
    type Error = TimeseriesError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: NoCommand,
        _: &(),
    ) -> Result<Vec<BarBatchEvent>, TimeseriesError> {
        match command {}
    }

    fn apply(&mut self, event: BarBatchEvent) {
        match event {
            BarBatchEvent::BarsWritten(b) => self.bars += i64::from(b.count),
            BarBatchEvent::BarBatchCompleted { .. } => self.completed = true,
        }
    }
}

/// The raw-point retention of one metric of a tenant.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct MetricRetention {
    pub raw_days: Option<i32>,
}

impl EventSourced for MetricRetention {
    const STREAM_TYPE: &'static str = "metric_retention";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetRetention {
    pub metric: String,
    /// `None` returns the metric to the server's default.
    pub raw_days: Option<i32>,
}

#[async_trait]
impl Aggregate for MetricRetention {
    type Command = SetRetention;
    type Event = RetentionEvent;
    type Error = TimeseriesError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        c: SetRetention,
        _: &(),
    ) -> Result<Vec<RetentionEvent>, TimeseriesError> {
        check_name("metric", &c.metric)?;
        if let Some(d) = c.raw_days {
            if !(1..=MAX_RETENTION_DAYS).contains(&d) {
                return Err(TimeseriesError::Invalid {
                    field: "raw_days".into(),
                    message: format!("must be between 1 and {MAX_RETENTION_DAYS} days"),
                });
            }
        }
        Ok(vec![RetentionEvent::RetentionSet {
            metric: c.metric,
            raw_days: c.raw_days,
        }])
    }

    fn apply(&mut self, event: RetentionEvent) {
        match event {
            RetentionEvent::RetentionSet { raw_days, .. } => self.raw_days = raw_days,
        }
    }
}

/// A series, metric or symbol name: 1 to 200 characters, no control characters.
pub fn check_name(field: &str, name: &str) -> Result<(), TimeseriesError> {
    let message = if name.is_empty() {
        "must not be empty"
    } else if name.chars().count() > 200 {
        "must be at most 200 characters"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(TimeseriesError::Invalid {
        field: field.into(),
        message: message.into(),
    })
}
