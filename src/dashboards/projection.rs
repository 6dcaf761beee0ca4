//! The `dashboards` projector: keeps the `dashboards` read model (sql/V19), one row per
//! live dashboard, widgets as JSONB in the form the API answers. A batch is folded in
//! memory to the last state per dashboard and written set-wise, as budgets are.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::aggregate::Dashboard;
use super::events::{DashboardDetails, DashboardEvent};
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Envelope, Projector};

pub const NAME: &str = "dashboards";

/// `dashboards` (sql/V19), as this projector writes it.
pub static DASHBOARDS: ReadModel = ReadModel {
    table: "dashboards",
    key: &["id"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("id", Type::UUID),
        col("name", Type::TEXT),
        col("description", Type::TEXT),
        col("layout", Type::TEXT),
        col("widgets", Type::JSONB),
        col("is_shared", Type::BOOL),
        col("created_by", Type::TEXT),
        col("version", Type::INT8),
        col("created_at", Type::TIMESTAMPTZ),
        col("updated_at", Type::TIMESTAMPTZ),
        col("last_position", Type::INT8),
    ],
    // An update's event names no owner and no creation time: the row keeps them.
    keep_on_update: &["created_at", "created_by"],
    newer: Some("version"),
};

struct DashboardRow {
    tenant: String,
    id: Uuid,
    details: DashboardDetails,
    widgets: Value,
    /// Known when the batch saw the `DashboardCreated`; an upsert never overwrites it.
    created_by: Option<String>,
    created_at: Option<DateTime<Utc>>,
    version: i64,
    updated_at: DateTime<Utc>,
    position: i64,
}

const UNKNOWN: &String = &String::new();

impl Row for DashboardRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        let d = &self.details;
        vec![
            &self.tenant,
            &self.id,
            &d.name,
            &d.description,
            &d.layout,
            &self.widgets,
            &d.is_shared,
            self.created_by.as_ref().unwrap_or(UNKNOWN),
            &self.version,
            self.created_at.as_ref().unwrap_or(&self.updated_at),
            &self.updated_at,
            &self.position,
        ]
    }
}

pub struct DashboardsProjector;

#[async_trait]
impl Projector for DashboardsProjector {
    type Aggregate = Dashboard;
    const NAME: &'static str = NAME;
    const READ_MODELS: &'static [&'static ReadModel] = &[&DASHBOARDS];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<DashboardEvent>>,
    ) -> anyhow::Result<()> {
        // The last change per dashboard: `Some(row)` to write, `None` to delete.
        let mut last: HashMap<Uuid, Option<DashboardRow>> = HashMap::with_capacity(events.len());
        for e in events {
            let earlier = match last.get(&e.stream_id) {
                Some(Some(row)) => (row.created_by.clone(), row.created_at),
                _ => (None, None),
            };
            let (created_by, created_at, details) = match e.event {
                DashboardEvent::DashboardCreated {
                    created_by,
                    details,
                } => (Some(created_by), Some(e.recorded_at), details),
                DashboardEvent::DashboardUpdated(details) => (earlier.0, earlier.1, details),
                DashboardEvent::DashboardDeleted {} => {
                    last.insert(e.stream_id, None);
                    continue;
                }
            };
            last.insert(
                e.stream_id,
                Some(DashboardRow {
                    tenant: e.tenant_id,
                    id: e.stream_id,
                    widgets: serde_json::to_value(&details.widgets)?,
                    details,
                    created_by,
                    created_at,
                    version: e.version,
                    updated_at: e.recorded_at,
                    position: e.position,
                }),
            );
        }
        let (mut insert, mut update, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for (id, change) in last {
            match change {
                // Created in this batch: not in the table yet (a stream's first event).
                Some(row) if row.created_by.is_some() => insert.push(row),
                Some(row) => update.push(row),
                None => deletes.push(id),
            }
        }
        DASHBOARDS.insert(tx, &insert).await?;
        DASHBOARDS.upsert(tx, &update).await?;
        DASHBOARDS.delete(tx, &deletes).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_read_model_declaration_is_valid() {
        super::DASHBOARDS.check().unwrap();
    }
}
