//! The Dashboard aggregate: checks a dashboard's layout, widgets and data sources, and
//! who may change it. Knows nothing of HTTP or the database.
//!
//! Fields are named by JSON pointers into the request body (`/widgets/2/position/w`).
//! The names a data source accepts (dimensions, aggregations, steps) are the ones the
//! endpoints it borrows take; `dashboards::data`'s tests hold both lists together.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::commands::{DashboardCommand, DashboardDraft, WidgetDraft};
use super::events::{
    CostFilters, DashboardDetails, DashboardEvent, DataSource, Position, Widget, WidgetType,
};
use crate::eventstore::codec::Upcaster;
use crate::pipeline::EventSourced;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dashboard {
    pub details: Option<DashboardDetails>,
    pub created_by: Option<String>,
    pub deleted: bool,
}

/// Why a dashboard command was refused. HTTP: `Invalid` → 422 `validation_failed` (with
/// the field as a JSON pointer), `NotFound` → 404 (also a private dashboard of someone
/// else: its existence is not revealed), `AlreadyExists` → 409, `NotOwner` → 403
/// `not_owner` (a shared dashboard changed or deleted by someone other than its owner).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DashboardError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("dashboard not found")]
    NotFound,
    #[error("dashboard already exists")]
    AlreadyExists,
    #[error("only the dashboard's owner may change or delete it")]
    NotOwner,
}

impl crate::pipeline::DomainError for DashboardError {
    fn rejection(&self) -> crate::pipeline::Rejection {
        use crate::pipeline::Rejection;
        match self {
            DashboardError::Invalid { field, message } => Rejection::Invalid {
                field: field.clone(),
                message: message.clone(),
            },
            DashboardError::NotFound => Rejection::NotFound {
                what: "dashboard".into(),
            },
            DashboardError::AlreadyExists => Rejection::AlreadyExists {
                what: "dashboard".into(),
            },
            DashboardError::NotOwner => Rejection::NotOwner {
                message: self.to_string(),
            },
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> DashboardError {
    DashboardError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

pub const MAX_WIDGETS: usize = 100;
pub const GRID_COLUMNS: i64 = 12;
pub const MAX_HEIGHT: i64 = 48;
/// The lowest row a widget may start on (keeps `y + h` far from overflowing).
pub const MAX_ROW: i64 = 10_000;
const MAX_NAME: usize = 200;
const MAX_DESCRIPTION: usize = 2000;
const MAX_WIDGET_ID: usize = 64;
const MAX_TEXT: usize = 200;

/// `GET /api/v1/costs`'s `group_by` items a dashboard may use (not `resource`).
pub fn is_cost_dimension(s: &str) -> bool {
    match s {
        "account" | "service" | "region" => true,
        _ => {
            if let Some(name) = s.strip_prefix("vtag:") {
                let mut chars = name.chars();
                return chars.next().is_some_and(|c| c.is_ascii_lowercase())
                    && name.len() <= 63
                    && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            }
            s.strip_prefix("tag:")
                // No comma: the endpoint's `group_by` is a comma-separated list.
                .is_some_and(|k| {
                    !k.is_empty() && k.chars().count() <= 200 && !k.contains(['\0', ','])
                })
        }
    }
}

pub const GRANULARITIES: [&str; 3] = ["day", "week", "month"];
pub const AGGREGATIONS: [&str; 8] = ["avg", "min", "max", "sum", "count", "first", "last", "p95"];
pub const STEPS: [&str; 4] = ["1m", "5m", "1h", "1d"];
pub const FILLS: [&str; 4] = ["none", "null", "previous", "linear"];
pub const ALERT_STATES: [&str; 2] = ["firing", "resolved"];
pub const MAX_ALERTS: i64 = 500;

/// The parameters of one data source, read field by field so each problem names its
/// pointer.
struct Params<'a> {
    at: String,
    map: &'a Map<String, Value>,
}

impl Params<'_> {
    fn ptr(&self, key: &str) -> String {
        format!("{}/{key}", self.at)
    }

    /// Refuses any key not in `allowed` (besides `kind`).
    fn only(&self, allowed: &[&str]) -> Result<(), DashboardError> {
        for k in self.map.keys() {
            if k != "kind" && !allowed.contains(&k.as_str()) {
                return Err(invalid(
                    self.ptr(k),
                    format!(
                        "is not a parameter of this data source (allowed: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str, required: bool) -> Result<Option<String>, DashboardError> {
        match self.get(key) {
            None if required => Err(invalid(self.ptr(key), "is required")),
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() || s.chars().count() > MAX_TEXT => {
                Err(invalid(self.ptr(key), "must be 1 to 200 characters"))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(self.ptr(key), "must be a string")),
        }
    }

    /// A string from `names`, or `default`.
    fn one_of(&self, key: &str, names: &[&str], default: &str) -> Result<String, DashboardError> {
        let v = self
            .string(key, false)?
            .unwrap_or_else(|| default.to_owned());
        if !names.contains(&v.as_str()) {
            return Err(invalid(
                self.ptr(key),
                format!("{v:?} is not one of {}", names.join(", ")),
            ));
        }
        Ok(v)
    }

    fn int(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, DashboardError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .filter(|n| (min..=max).contains(n))
                .map(Some)
                .ok_or_else(|| {
                    invalid(
                        self.ptr(key),
                        format!("must be an integer from {min} to {max}"),
                    )
                }),
        }
    }
}

fn data_source(at: String, raw: &Value) -> Result<DataSource, DashboardError> {
    let Value::Object(map) = raw else {
        return Err(invalid(at, "must be an object with a kind"));
    };
    let p = Params { at, map };
    let kind = match map.get("kind") {
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err(invalid(p.ptr("kind"), "must be a string")),
        None => return Err(invalid(p.ptr("kind"), "is required")),
    };
    match kind {
        "cost_breakdown" => {
            p.only(&["group_by", "filters", "granularity"])?;
            let mut group_by = Vec::new();
            match p.get("group_by") {
                None => {}
                Some(Value::Array(items)) => {
                    if items.len() > 4 {
                        return Err(invalid(p.ptr("group_by"), "at most 4 items"));
                    }
                    for (i, item) in items.iter().enumerate() {
                        let at = format!("{}/{i}", p.ptr("group_by"));
                        let Some(d) = item.as_str() else {
                            return Err(invalid(at, "must be a string"));
                        };
                        if !is_cost_dimension(d) {
                            return Err(invalid(
                                at,
                                format!(
                                    "{d:?} is not account, service, region, tag:KEY or vtag:NAME"
                                ),
                            ));
                        }
                        if group_by.iter().any(|g| g == d) {
                            return Err(invalid(at, format!("{d:?} appears twice")));
                        }
                        group_by.push(d.to_owned());
                    }
                }
                Some(_) => {
                    return Err(invalid(p.ptr("group_by"), "must be an array of dimensions"))
                }
            }
            let granularity = p.one_of("granularity", &GRANULARITIES, "day")?;
            let filters = match p.get("filters") {
                None => CostFilters::default(),
                Some(Value::Object(f)) => {
                    let f = Params {
                        at: p.ptr("filters"),
                        map: f,
                    };
                    f.only(&["account", "service", "region", "tag", "currency"])?;
                    let tag = f.string("tag", false)?;
                    if tag
                        .as_deref()
                        .is_some_and(|t| t.split_once(':').is_none_or(|(k, _)| k.is_empty()))
                    {
                        return Err(invalid(f.ptr("tag"), "must be KEY:VALUE"));
                    }
                    let currency = f.string("currency", false)?;
                    if currency
                        .as_deref()
                        .is_some_and(|c| c.len() != 3 || !c.chars().all(|c| c.is_ascii_uppercase()))
                    {
                        return Err(invalid(
                            f.ptr("currency"),
                            "must be a three-letter ISO 4217 code",
                        ));
                    }
                    CostFilters {
                        account: f.string("account", false)?,
                        service: f.string("service", false)?,
                        region: f.string("region", false)?,
                        tag,
                        currency,
                    }
                }
                Some(_) => return Err(invalid(p.ptr("filters"), "must be an object")),
            };
            Ok(DataSource::CostBreakdown {
                group_by,
                granularity,
                filters,
            })
        }
        "metric_series" => {
            p.only(&["series", "metric", "aggregation", "step", "fill"])?;
            let series = p.string("series", true)?.unwrap_or_default();
            let metric = p.string("metric", true)?.unwrap_or_default();
            Ok(DataSource::MetricSeries {
                series,
                metric,
                aggregation: p.one_of("aggregation", &AGGREGATIONS, "avg")?,
                step: p.one_of("step", &STEPS, "1h")?,
                fill: p.one_of("fill", &FILLS, "none")?,
            })
        }
        "budget_status" => {
            p.only(&["budget_id"])?;
            let raw = p.string("budget_id", true)?.unwrap_or_default();
            let budget_id =
                Uuid::parse_str(&raw).map_err(|_| invalid(p.ptr("budget_id"), "must be a UUID"))?;
            Ok(DataSource::BudgetStatus { budget_id })
        }
        "tag_stats" => {
            p.only(&["tag_id"])?;
            let tag_id = p
                .int("tag_id", 1, i64::from(i32::MAX))?
                .ok_or_else(|| invalid(p.ptr("tag_id"), "is required"))?;
            Ok(DataSource::TagStats {
                tag_id: i32::try_from(tag_id).unwrap_or(i32::MAX),
            })
        }
        "alert_list" => {
            p.only(&["state", "limit"])?;
            let state = match p.get("state") {
                None => None,
                Some(_) => Some(p.one_of("state", &ALERT_STATES, "firing")?),
            };
            Ok(DataSource::AlertList {
                state,
                limit: p.int("limit", 1, MAX_ALERTS)?.unwrap_or(50),
            })
        }
        other => Err(invalid(
            p.ptr("kind"),
            format!("{other:?} is not one of {}", DataSource::KINDS.join(", ")),
        )),
    }
}

fn widget(i: usize, w: WidgetDraft) -> Result<Widget, DashboardError> {
    let at = |field: &str| format!("/widgets/{i}/{field}");
    if w.id.is_empty() || w.id.chars().count() > MAX_WIDGET_ID || w.id.trim() != w.id {
        return Err(invalid(
            at("id"),
            "must be 1 to 64 characters without surrounding blanks",
        ));
    }
    let widget_type = WidgetType::ALL
        .into_iter()
        .find(|t| t.as_str() == w.widget_type)
        .ok_or_else(|| {
            invalid(
                at("type"),
                format!("{:?} is not one of metric, chart, table", w.widget_type),
            )
        })?;
    if w.title.chars().count() > MAX_TEXT {
        return Err(invalid(at("title"), "must be at most 200 characters"));
    }
    let p = w.position;
    let pos = |f: &str| format!("/widgets/{i}/position/{f}");
    if !(0..GRID_COLUMNS).contains(&p.x) {
        return Err(invalid(pos("x"), "must be from 0 to 11"));
    }
    if !(0..=MAX_ROW).contains(&p.y) {
        return Err(invalid(pos("y"), format!("must be from 0 to {MAX_ROW}")));
    }
    if p.w < 1 || p.x + p.w > GRID_COLUMNS {
        return Err(invalid(
            pos("w"),
            format!("must be at least 1, with x + w at most {GRID_COLUMNS}"),
        ));
    }
    if !(1..=MAX_HEIGHT).contains(&p.h) {
        return Err(invalid(pos("h"), format!("must be from 1 to {MAX_HEIGHT}")));
    }
    Ok(Widget {
        id: w.id,
        widget_type,
        title: w.title,
        position: Position {
            x: p.x,
            y: p.y,
            w: p.w,
            h: p.h,
        },
        data_source: data_source(at("data_source"), &w.data_source)?,
    })
}

impl DashboardDetails {
    /// Checks a draft and fills defaults. The first problem found is reported.
    pub fn validate(draft: DashboardDraft) -> Result<Self, DashboardError> {
        let name = draft.name.trim().to_owned();
        if name.is_empty() {
            return Err(invalid("/name", "must not be empty"));
        }
        if name.chars().count() > MAX_NAME {
            return Err(invalid(
                "/name",
                format!("must be at most {MAX_NAME} characters"),
            ));
        }
        let description = draft.description.unwrap_or_default();
        if description.chars().count() > MAX_DESCRIPTION {
            return Err(invalid(
                "/description",
                format!("must be at most {MAX_DESCRIPTION} characters"),
            ));
        }
        let layout = draft.layout.unwrap_or_else(|| "grid".to_owned());
        if layout != "grid" {
            return Err(invalid("/layout", "must be grid"));
        }
        if draft.widgets.len() > MAX_WIDGETS {
            return Err(invalid(
                "/widgets",
                format!("at most {MAX_WIDGETS} widgets"),
            ));
        }
        let mut widgets: Vec<Widget> = Vec::with_capacity(draft.widgets.len());
        for (i, w) in draft.widgets.into_iter().enumerate() {
            let w = widget(i, w)?;
            for (j, earlier) in widgets.iter().enumerate() {
                if earlier.id == w.id {
                    return Err(invalid(
                        format!("/widgets/{i}/id"),
                        format!("{:?} is the id of /widgets/{j} too", w.id),
                    ));
                }
                if earlier.position.overlaps(&w.position) {
                    return Err(invalid(
                        format!("/widgets/{i}/position"),
                        format!(
                            "widget {:?} overlaps widget {:?} (/widgets/{j})",
                            w.id, earlier.id
                        ),
                    ));
                }
            }
            widgets.push(w);
        }
        Ok(DashboardDetails {
            name,
            description,
            layout,
            widgets,
            is_shared: draft.is_shared,
        })
    }
}

impl Dashboard {
    /// Whether `actor` may change the dashboard: its owner only. Someone else gets 403 on
    /// a shared dashboard (they see it) and 404 on a private one (they do not).
    fn check_owner(&self, actor: &str) -> Result<(), DashboardError> {
        let Some(details) = self.details.as_ref().filter(|_| !self.deleted) else {
            return Err(DashboardError::NotFound);
        };
        if self.created_by.as_deref() == Some(actor) {
            Ok(())
        } else if details.is_shared {
            Err(DashboardError::NotOwner)
        } else {
            Err(DashboardError::NotFound)
        }
    }
}

#[async_trait]
impl Aggregate for Dashboard {
    type Command = DashboardCommand;
    type Event = DashboardEvent;
    type Error = DashboardError;
    type Services = ();

    fn aggregate_type() -> String {
        Self::STREAM_TYPE.to_owned()
    }

    async fn handle(
        &self,
        command: DashboardCommand,
        _: &(),
    ) -> Result<Vec<DashboardEvent>, DashboardError> {
        match command {
            DashboardCommand::CreateDashboard { owner, draft } => {
                if self.details.is_some() {
                    return Err(DashboardError::AlreadyExists);
                }
                Ok(vec![DashboardEvent::DashboardCreated {
                    created_by: owner,
                    details: DashboardDetails::validate(draft)?,
                }])
            }
            DashboardCommand::UpdateDashboard { actor, draft } => {
                self.check_owner(&actor)?;
                let details = DashboardDetails::validate(draft)?;
                if self.details.as_ref() == Some(&details) {
                    return Ok(vec![]); // nothing changes: no event
                }
                Ok(vec![DashboardEvent::DashboardUpdated(details)])
            }
            DashboardCommand::DeleteDashboard { actor } => {
                self.check_owner(&actor)?;
                Ok(vec![DashboardEvent::DashboardDeleted {}])
            }
        }
    }

    fn apply(&mut self, event: DashboardEvent) {
        match event {
            DashboardEvent::DashboardCreated {
                created_by,
                details,
            } => {
                self.created_by = Some(created_by);
                self.details = Some(details);
            }
            DashboardEvent::DashboardUpdated(d) => self.details = Some(d),
            DashboardEvent::DashboardDeleted {} => self.deleted = true,
        }
    }
}

impl EventSourced for Dashboard {
    const STREAM_TYPE: &'static str = "dashboard";

    fn upcasters() -> &'static [Upcaster] {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstore::codec;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    type DashboardTest = TestFramework<Dashboard>;

    fn body() -> Value {
        json!({
            "name": "Team costs", "description": "what we spend", "layout": "grid",
            "is_shared": true,
            "widgets": [
                {"id": "costs", "type": "chart", "title": "By service",
                 "position": {"x": 0, "y": 0, "w": 8, "h": 4},
                 "data_source": {"kind": "cost_breakdown", "group_by": ["service", "tag:team"],
                                 "granularity": "month", "filters": {"currency": "USD"}}},
                {"id": "cpu", "type": "metric", "title": "CPU",
                 "position": {"x": 8, "y": 0, "w": 4, "h": 4},
                 "data_source": {"kind": "metric_series", "series": "web-1", "metric": "cpu",
                                 "aggregation": "max", "step": "5m"}},
                {"id": "budget", "type": "table", "title": "Budget",
                 "position": {"x": 0, "y": 4, "w": 12, "h": 2},
                 "data_source": {"kind": "budget_status",
                                 "budget_id": "0190a4f2-0000-7000-8000-000000000001"}},
                {"id": "tag", "type": "table", "title": "Tag",
                 "position": {"x": 0, "y": 6, "w": 6, "h": 2},
                 "data_source": {"kind": "tag_stats", "tag_id": 3}},
                {"id": "alerts", "type": "table", "title": "Alerts",
                 "position": {"x": 6, "y": 6, "w": 6, "h": 2},
                 "data_source": {"kind": "alert_list", "state": "firing", "limit": 10}}
            ]
        })
    }

    fn draft_of(v: Value) -> DashboardDraft {
        serde_json::from_value(v).unwrap()
    }

    fn details() -> DashboardDetails {
        DashboardDetails::validate(draft_of(body())).unwrap()
    }

    fn create(owner: &str) -> DashboardCommand {
        DashboardCommand::CreateDashboard {
            owner: owner.into(),
            draft: draft_of(body()),
        }
    }

    #[test]
    fn create_emits_created_with_the_owner_and_defaults() {
        let d = details();
        assert_eq!(d.widgets.len(), 5);
        assert_eq!(
            d.widgets[1].data_source,
            DataSource::MetricSeries {
                series: "web-1".into(),
                metric: "cpu".into(),
                aggregation: "max".into(),
                step: "5m".into(),
                fill: "none".into()
            }
        );
        DashboardTest::with(())
            .given_no_previous_events()
            .when(create("key:ann"))
            .then_expect_events(vec![DashboardEvent::DashboardCreated {
                created_by: "key:ann".into(),
                details: d,
            }]);
    }

    #[test]
    fn invalid_fields_are_named_by_pointer() {
        let cases: Vec<(&str, &str, Value)> = vec![
            ("/name", "/name", json!(" ")),
            ("/layout", "/layout", json!("free")),
            ("/widgets/1/position/w", "/widgets/1/position/w", json!(5)),
            ("/widgets/0/position/x", "/widgets/0/position/x", json!(12)),
            ("/widgets/0/position/x", "/widgets/0/position/x", json!(-1)),
            ("/widgets/0/position/h", "/widgets/0/position/h", json!(49)),
            ("/widgets/0/position/h", "/widgets/0/position/h", json!(0)),
            ("/widgets/0/position/y", "/widgets/0/position/y", json!(-3)),
            ("/widgets/2/type", "/widgets/2/type", json!("pie")),
            ("/widgets/1/id", "/widgets/1/id", json!("costs")),
            (
                "/widgets/0/data_source/kind",
                "/widgets/0/data_source/kind",
                json!("sql"),
            ),
            (
                "/widgets/0/data_source/group_by/1",
                "/widgets/0/data_source/group_by/1",
                json!("colour"),
            ),
            (
                "/widgets/0/data_source/group_by/1",
                "/widgets/0/data_source/group_by/1",
                json!("resource"),
            ),
            (
                "/widgets/0/data_source/granularity",
                "/widgets/0/data_source/granularity",
                json!("hour"),
            ),
            (
                "/widgets/0/data_source/filters/tag",
                "/widgets/0/data_source/filters/tag",
                json!("team"),
            ),
            (
                "/widgets/0/data_source/filters/currency",
                "/widgets/0/data_source/filters/currency",
                json!("usd"),
            ),
            (
                "/widgets/0/data_source/filters/colour",
                "/widgets/0/data_source/filters/colour",
                json!("x"),
            ),
            (
                "/widgets/1/data_source/aggregation",
                "/widgets/1/data_source/aggregation",
                json!("median"),
            ),
            (
                "/widgets/1/data_source/step",
                "/widgets/1/data_source/step",
                json!("15m"),
            ),
            (
                "/widgets/1/data_source/series",
                "/widgets/1/data_source/series",
                json!(null),
            ),
            (
                "/widgets/2/data_source/budget_id",
                "/widgets/2/data_source/budget_id",
                json!("nope"),
            ),
            (
                "/widgets/3/data_source/tag_id",
                "/widgets/3/data_source/tag_id",
                json!(0),
            ),
            (
                "/widgets/4/data_source/state",
                "/widgets/4/data_source/state",
                json!("open"),
            ),
            (
                "/widgets/4/data_source/limit",
                "/widgets/4/data_source/limit",
                json!(501),
            ),
        ];
        for (path, field, value) in cases {
            let mut v = body();
            let (parent, key) = path.rsplit_once('/').unwrap();
            match v.pointer_mut(parent).unwrap() {
                Value::Object(m) => {
                    m.insert(key.to_owned(), value.clone());
                }
                other => other[key.parse::<usize>().unwrap()] = value.clone(),
            }
            let err = DashboardDetails::validate(draft_of(v)).unwrap_err();
            match err {
                DashboardError::Invalid { field: f, .. } => {
                    assert_eq!(f, field, "{path} = {value}")
                }
                other => panic!("expected Invalid for {path}, got {other:?}"),
            }
        }
    }

    #[test]
    fn overlapping_widgets_are_refused_naming_both() {
        let mut v = body();
        v["widgets"][3]["position"] = json!({"x": 7, "y": 3, "w": 2, "h": 2});
        let err = DashboardDetails::validate(draft_of(v)).unwrap_err();
        let DashboardError::Invalid { field, message } = err else {
            panic!("expected Invalid")
        };
        assert_eq!(field, "/widgets/3/position");
        assert!(
            message.contains("\"tag\"") && message.contains("\"costs\""),
            "{message}"
        );
        // Touching edges do not overlap.
        let a = Position {
            x: 0,
            y: 0,
            w: 6,
            h: 2,
        };
        assert!(!a.overlaps(&Position {
            x: 6,
            y: 0,
            w: 6,
            h: 2
        }));
        assert!(!a.overlaps(&Position {
            x: 0,
            y: 2,
            w: 6,
            h: 2
        }));
        assert!(a.overlaps(&Position {
            x: 5,
            y: 1,
            w: 6,
            h: 2
        }));
    }

    #[test]
    fn at_most_100_widgets() {
        let mut v = body();
        let widgets: Vec<Value> = (0..101)
            .map(|i| {
                json!({"id": format!("w{i}"), "type": "metric",
                       "position": {"x": 0, "y": i, "w": 1, "h": 1},
                       "data_source": {"kind": "tag_stats", "tag_id": 1}})
            })
            .collect();
        v["widgets"] = Value::from(widgets[..100].to_vec());
        assert!(DashboardDetails::validate(draft_of(v.clone())).is_ok());
        v["widgets"] = Value::from(widgets);
        assert!(matches!(
            DashboardDetails::validate(draft_of(v)),
            Err(DashboardError::Invalid { field, .. }) if field == "/widgets"
        ));
    }

    #[test]
    fn only_the_owner_changes_a_dashboard() {
        let created = DashboardEvent::DashboardCreated {
            created_by: "ann".into(),
            details: details(),
        };
        let update = |actor: &str| DashboardCommand::UpdateDashboard {
            actor: actor.into(),
            draft: draft_of(json!({"name": "Renamed", "is_shared": true})),
        };
        DashboardTest::with(())
            .given(vec![created.clone()])
            .when(update("bob"))
            .then_expect_error(DashboardError::NotOwner);
        DashboardTest::with(())
            .given(vec![created.clone()])
            .when(DashboardCommand::DeleteDashboard {
                actor: "bob".into(),
            })
            .then_expect_error(DashboardError::NotOwner);
        let mut private = details();
        private.is_shared = false;
        DashboardTest::with(())
            .given(vec![DashboardEvent::DashboardCreated {
                created_by: "ann".into(),
                details: private,
            }])
            .when(update("bob"))
            .then_expect_error(DashboardError::NotFound);
        let renamed =
            DashboardDetails::validate(draft_of(json!({"name": "Renamed", "is_shared": true})))
                .unwrap();
        DashboardTest::with(())
            .given(vec![created.clone()])
            .when(update("ann"))
            .then_expect_events(vec![DashboardEvent::DashboardUpdated(renamed)]);
        DashboardTest::with(())
            .given(vec![created, DashboardEvent::DashboardDeleted {}])
            .when(DashboardCommand::DeleteDashboard {
                actor: "ann".into(),
            })
            .then_expect_error(DashboardError::NotFound);
    }

    #[test]
    fn same_content_emits_nothing_and_create_twice_is_refused() {
        let created = DashboardEvent::DashboardCreated {
            created_by: "ann".into(),
            details: details(),
        };
        DashboardTest::with(())
            .given(vec![created.clone()])
            .when(DashboardCommand::UpdateDashboard {
                actor: "ann".into(),
                draft: draft_of(body()),
            })
            .then_expect_events(vec![]);
        DashboardTest::with(())
            .given(vec![created])
            .when(create("ann"))
            .then_expect_error(DashboardError::AlreadyExists);
    }

    #[test]
    fn events_round_trip_through_the_codec() {
        for e in [
            DashboardEvent::DashboardCreated {
                created_by: "ann".into(),
                details: details(),
            },
            DashboardEvent::DashboardUpdated(details()),
            DashboardEvent::DashboardDeleted {},
        ] {
            let row = codec::encode(&e).unwrap();
            let back: DashboardEvent = codec::decode(
                &row.event_type,
                row.schema_version,
                &row.payload,
                Dashboard::upcasters(),
            )
            .unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn a_stored_widget_list_is_a_valid_draft_again() {
        // GET answers the widgets as stored; PUT of that answer must be accepted as is.
        let d = details();
        let mut v = body();
        v["widgets"] = serde_json::to_value(&d.widgets).unwrap();
        assert_eq!(DashboardDetails::validate(draft_of(v)).unwrap(), d);
    }
}
