//! Commands of the dashboards context and the draft they carry (unvalidated input).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A widget as a client sends it. `type` and `data_source` are checked by the aggregate,
/// so a bad value is answered with the exact field (`/widgets/2/data_source/group_by/0`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WidgetDraft {
    /// 1–64 characters, unique in the dashboard.
    #[schema(min_length = 1, max_length = 64)]
    pub id: String,
    /// `metric`, `chart` or `table`.
    #[serde(rename = "type")]
    #[schema(pattern = "^(metric|chart|table)$")]
    pub widget_type: String,
    /// 0–200 characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub title: String,
    pub position: PositionDraft,
    /// `{"kind": "cost_breakdown" | "metric_series" | "budget_status" | "tag_stats" |
    /// "alert_list", …parameters of that kind}` (README, "Dashboards").
    #[schema(value_type = Object)]
    pub data_source: serde_json::Value,
}

/// Where a widget sits on the 12-column grid.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PositionDraft {
    /// Column, 0..=11.
    pub x: i64,
    /// Row, 0 or more.
    pub y: i64,
    /// Width in columns, 1..=12, with x + w ≤ 12.
    pub w: i64,
    /// Height in rows, 1..=48.
    pub h: i64,
}

/// What a client sends to create or replace a dashboard. Validated by the aggregate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DashboardDraft {
    /// 1–200 characters, not only blanks.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// At most 2,000 characters.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// `grid` (the only layout; the default).
    #[serde(default)]
    #[schema(pattern = "^grid$")]
    pub layout: Option<String>,
    /// At most 100.
    #[serde(default)]
    pub widgets: Vec<WidgetDraft>,
    /// Whether everyone of the tenant sees it (only its owner changes it). Default false.
    #[serde(default)]
    pub is_shared: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DashboardCommand {
    /// `owner` is the command's actor (the API key, or `X-Actor`).
    CreateDashboard {
        owner: String,
        draft: DashboardDraft,
    },
    UpdateDashboard {
        actor: String,
        draft: DashboardDraft,
    },
    DeleteDashboard {
        actor: String,
    },
}
