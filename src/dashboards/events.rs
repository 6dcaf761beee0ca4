//! Events of the dashboards context. `event_type` and `event_version` are stable: they
//! are stored with every event forever.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WidgetType {
    Metric,
    Chart,
    Table,
}

impl WidgetType {
    pub const ALL: [WidgetType; 3] = [WidgetType::Metric, WidgetType::Chart, WidgetType::Table];

    pub fn as_str(self) -> &'static str {
        match self {
            WidgetType::Metric => "metric",
            WidgetType::Chart => "chart",
            WidgetType::Table => "table",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct Position {
    pub x: i64,
    pub y: i64,
    pub w: i64,
    pub h: i64,
}

impl Position {
    /// Whether two rectangles of the grid share a cell.
    pub fn overlaps(&self, o: &Position) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }
}

/// The filters of a cost breakdown (those of `GET /api/v1/costs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct CostFilters {
    pub account: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
    /// `KEY:VALUE`.
    pub tag: Option<String>,
    pub currency: Option<String>,
}

/// Where a widget's data comes from: the parameters of one existing endpoint, checked
/// and with their defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSource {
    /// `GET /api/v1/costs`.
    CostBreakdown {
        group_by: Vec<String>,
        /// `day`, `week` or `month` (the endpoint's `bucket`).
        granularity: String,
        filters: CostFilters,
    },
    /// `GET /api/v1/metrics/{series}/{metric}`.
    MetricSeries {
        series: String,
        metric: String,
        /// The endpoint's `agg`.
        aggregation: String,
        /// The endpoint's `bucket`.
        step: String,
        fill: String,
    },
    /// `GET /api/v1/budgets/{id}/status`.
    BudgetStatus { budget_id: Uuid },
    /// `GET /api/v1/tags/{id}/stats`.
    TagStats { tag_id: i32 },
    /// The alerts context's list of alerts (wired when that context is merged).
    AlertList { state: Option<String>, limit: i64 },
}

impl DataSource {
    pub const KINDS: [&'static str; 5] = [
        "cost_breakdown",
        "metric_series",
        "budget_status",
        "tag_stats",
        "alert_list",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            DataSource::CostBreakdown { .. } => "cost_breakdown",
            DataSource::MetricSeries { .. } => "metric_series",
            DataSource::BudgetStatus { .. } => "budget_status",
            DataSource::TagStats { .. } => "tag_stats",
            DataSource::AlertList { .. } => "alert_list",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Widget {
    pub id: String,
    #[serde(rename = "type")]
    pub widget_type: WidgetType,
    pub title: String,
    pub position: Position,
    pub data_source: DataSource,
}

/// A validated dashboard, as carried by `DashboardCreated` / `DashboardUpdated` (full
/// state, so the projection never reads before it writes).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct DashboardDetails {
    pub name: String,
    pub description: String,
    pub layout: String,
    pub widgets: Vec<Widget>,
    pub is_shared: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", content = "data")]
pub enum DashboardEvent {
    /// `created_by`: the actor of the command, the dashboard's owner for good.
    DashboardCreated {
        created_by: String,
        details: DashboardDetails,
    },
    DashboardUpdated(DashboardDetails),
    DashboardDeleted {},
}

impl DomainEvent for DashboardEvent {
    fn event_type(&self) -> String {
        match self {
            DashboardEvent::DashboardCreated { .. } => "DashboardCreated",
            DashboardEvent::DashboardUpdated(_) => "DashboardUpdated",
            DashboardEvent::DashboardDeleted {} => "DashboardDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
