//! The global search's other entries (`search_entries`): budgets, tags, cost accounts and
//! shared dashboards by name and description, fed by their own events. Each entry is
//! keyed by its stream; a deleted budget or dashboard, a retired tag leaves the search.
//! A private dashboard is not an entry (the search shows a tenant's entries to all of it):
//! it enters when shared and leaves when no longer shared.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::budgets::aggregate::Budget;
use crate::budgets::events::{BudgetDetails, BudgetEvent};
use crate::costs::aggregate::Account;
use crate::costs::events::AccountEvent;
use crate::dashboards::aggregate::Dashboard;
use crate::dashboards::events::{DashboardDetails, DashboardEvent};
use crate::eventstore::RecordedEvent;
use crate::pipeline::EventSourced;
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Lane, Projection};
use crate::tagging::aggregate::Tag;
use crate::tagging::events::TagEvent;

pub const SEARCH_ENTRIES: &str = "search_entries";

/// The types of hit the global search knows, documents first.
pub const TYPES: &[&str] = &["document", "budget", "tag", "account", "dashboard"];

static TABLE: ReadModel = ReadModel {
    table: "search_entries",
    key: &["key"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("key", Type::UUID),
        col("type", Type::TEXT),
        col("ref_id", Type::TEXT),
        col("title", Type::TEXT),
        col("description", Type::TEXT),
        col("created_at", Type::TIMESTAMPTZ),
        col("version", Type::INT8),
    ],
    keep_on_update: &["created_at"],
    newer: Some("version"),
};

struct Entry {
    tenant: String,
    key: Uuid,
    kind: &'static str,
    ref_id: String,
    title: String,
    description: String,
    created_at: DateTime<Utc>,
    version: i64,
}

impl Row for Entry {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.tenant,
            &self.key,
            &self.kind,
            &self.ref_id,
            &self.title,
            &self.description,
            &self.created_at,
            &self.version,
        ]
    }
}

/// What a budget is found by besides its name: its account and services.
fn budget_description(d: &BudgetDetails) -> String {
    let mut words: Vec<&str> = d.account.iter().map(String::as_str).collect();
    words.extend(d.service_filter.iter().map(String::as_str));
    words.join(" ")
}

/// What a dashboard is found by besides its name: its description and widget titles.
fn dashboard_description(d: &DashboardDetails) -> String {
    let mut words: Vec<&str> = vec![d.description.as_str()];
    words.extend(d.widgets.iter().map(|w| w.title.as_str()));
    words.retain(|w| !w.is_empty());
    words.join(" ")
}

pub struct SearchEntriesProjector;

#[async_trait]
impl Projection for SearchEntriesProjector {
    fn name(&self) -> &'static str {
        SEARCH_ENTRIES
    }

    fn stream_types(&self) -> &[&'static str] {
        &[
            Budget::STREAM_TYPE,
            Tag::STREAM_TYPE,
            Account::STREAM_TYPE,
            Dashboard::STREAM_TYPE,
        ]
    }

    fn tables(&self) -> Vec<&'static str> {
        vec![TABLE.table]
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: &[RecordedEvent],
        _lane: Lane,
    ) -> anyhow::Result<()> {
        // The last state per stream: `Some(entry)` to write, `None` to delete.
        let mut last: HashMap<Uuid, Option<Entry>> = HashMap::new();
        for e in events {
            let entry =
                |kind: &'static str, ref_id: String, title: &str, description: String| Entry {
                    tenant: e.tenant_id.clone(),
                    key: e.stream_id,
                    kind,
                    ref_id,
                    title: title.to_owned(),
                    description,
                    created_at: e.recorded_at,
                    version: e.stream_version,
                };
            let change = if e.stream_type == Budget::STREAM_TYPE {
                match Budget::decode(e)? {
                    BudgetEvent::BudgetCreated(d) | BudgetEvent::BudgetUpdated(d) => {
                        Some(Some(entry(
                            "budget",
                            e.stream_id.to_string(),
                            &d.name,
                            budget_description(&d),
                        )))
                    }
                    BudgetEvent::BudgetDeleted {} => Some(None),
                    BudgetEvent::BudgetThresholdCrossed(_) => None,
                }
            } else if e.stream_type == Tag::STREAM_TYPE {
                match Tag::decode(e)? {
                    TagEvent::TagCreated(t) => Some(Some(entry(
                        "tag",
                        t.id.to_string(),
                        &t.name,
                        format!("{} {}", t.code, t.description.unwrap_or_default()),
                    ))),
                    TagEvent::TagRetired { .. } => Some(None),
                    TagEvent::TagRuleChanged { .. } | TagEvent::TagCodeClaimed { .. } => None,
                }
            } else if e.stream_type == Dashboard::STREAM_TYPE {
                match Dashboard::decode(e)? {
                    DashboardEvent::DashboardCreated { details: d, .. }
                    | DashboardEvent::DashboardUpdated(d) => Some(d.is_shared.then(|| {
                        entry(
                            "dashboard",
                            e.stream_id.to_string(),
                            &d.name,
                            dashboard_description(&d),
                        )
                    })),
                    DashboardEvent::DashboardDeleted {} => Some(None),
                }
            } else {
                match Account::decode(e)? {
                    AccountEvent::AccountOpened(a) => Some(Some(entry(
                        "account",
                        e.stream_id.to_string(),
                        &a.name,
                        a.external_id.unwrap_or_default(),
                    ))),
                }
            };
            if let Some(change) = change {
                // An update keeps the time the entry was first written.
                let change = change.map(|mut new| {
                    if let Some(Some(earlier)) = last.get(&e.stream_id) {
                        new.created_at = earlier.created_at;
                    }
                    new
                });
                last.insert(e.stream_id, change);
            }
        }
        let (mut rows, mut gone) = (Vec::new(), Vec::new());
        for (key, change) in last {
            match change {
                Some(row) => rows.push(row),
                None => gone.push(key),
            }
        }
        TABLE.upsert(tx, &rows).await?;
        TABLE.delete(tx, &gone).await
    }
}
