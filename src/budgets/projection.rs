//! The `budgets` projector: keeps `budgets_view` (one JSONB-filterable row per live
//! budget). A batch is folded in memory to the last state per budget and written set-wise
//! (`projections::readmodel`): COPY for budgets created in the batch, one staged upsert
//! for the others, one delete.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::aggregate::Budget;
use super::events::{BudgetDetails, BudgetEvent, ThresholdCrossing};
use super::queries::BudgetDoc;
use crate::projections::readmodel::{col, ReadModel, Row};
use crate::projections::{Envelope, Projector};

pub const NAME: &str = "budgets";

/// `budgets_view` (sql/V3), as this projector writes it.
pub static BUDGETS_VIEW: ReadModel = ReadModel {
    table: "budgets_view",
    key: &["id"],
    columns: &[
        col("id", Type::UUID),
        col("tenant_id", Type::TEXT),
        col("version", Type::INT8),
        col("name", Type::TEXT),
        col("amount", Type::NUMERIC),
        col("currency", Type::TEXT),
        col("period", Type::TEXT),
        col("budget_type", Type::TEXT),
        col("start_date", Type::DATE),
        col("end_date", Type::DATE),
        col("tag_filter", Type::JSONB),
        col("service_filter", Type::JSONB),
        col("alert_thresholds", Type::JSONB),
        col("account", Type::TEXT),
        col("created_at", Type::TIMESTAMPTZ),
        col("updated_at", Type::TIMESTAMPTZ),
        col("last_position", Type::INT8),
        col("doc", Type::TEXT),
    ],
    keep_on_update: &["created_at"],
    newer: Some("version"),
};

/// Every threshold crossing of a budget (sql/V6), one row per event.
pub static BUDGET_ALERTS: ReadModel = ReadModel {
    table: "budget_alerts",
    key: &["budget_id", "period_start", "percent", "basis"],
    columns: &[
        col("tenant_id", Type::TEXT),
        col("budget_id", Type::UUID),
        col("period_start", Type::DATE),
        col("period_end", Type::DATE),
        col("percent", Type::NUMERIC),
        col("basis", Type::TEXT),
        col("observed_percent", Type::NUMERIC),
        col("spent", Type::NUMERIC),
        col("forecast", Type::NUMERIC),
        col("as_of", Type::DATE),
        col("import_id", Type::UUID),
        col("crossed_at", Type::TIMESTAMPTZ),
        col("position", Type::INT8),
    ],
    keep_on_update: &[],
    newer: None,
};

/// A crossing moves the stream's version: the view follows (ETag / If-Match).
const BUMP_SQL: &str = "\
UPDATE budgets_view v SET version = u.version, last_position = u.position
  FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS u(id, version, position)
 WHERE v.id = u.id AND v.version < u.version";

struct AlertRow {
    tenant: String,
    budget_id: Uuid,
    crossing: ThresholdCrossing,
    at: DateTime<Utc>,
    position: i64,
}

impl Row for AlertRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        let c = &self.crossing;
        vec![
            &self.tenant,
            &self.budget_id,
            &c.period_start,
            &c.period_end,
            &c.percent,
            &c.basis,
            &c.observed_percent,
            &c.spent,
            &c.forecast,
            &c.as_of,
            &c.import_id,
            &self.at,
            &self.position,
        ]
    }
}

/// One row of `budgets_view`.
struct BudgetRow {
    id: Uuid,
    tenant: String,
    version: i64,
    details: BudgetDetails,
    period: &'static str,
    budget_type: &'static str,
    tag_filter: Value,
    service_filter: Value,
    alert_thresholds: Value,
    /// Only known when the batch saw the `BudgetCreated`; an upsert never overwrites it.
    created_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    position: i64,
    /// The budget's JSON as reads serve it (`queries::BudgetDoc`).
    doc: String,
}

impl Row for BudgetRow {
    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        let d = &self.details;
        vec![
            &self.id,
            &self.tenant,
            &self.version,
            &d.name,
            &d.amount,
            &d.currency,
            &self.period,
            &self.budget_type,
            &d.start_date,
            &d.end_date,
            &self.tag_filter,
            &self.service_filter,
            &self.alert_thresholds,
            &d.account,
            self.created_at.as_ref().unwrap_or(&self.updated_at),
            &self.updated_at,
            &self.position,
            &self.doc,
        ]
    }
}

impl BudgetRow {
    /// The row after a `BudgetCreated` or `BudgetUpdated` with these details.
    fn new(
        e: Envelope<BudgetDetails>,
        created_at: Option<DateTime<Utc>>,
    ) -> serde_json::Result<Self> {
        let details = e.event;
        let tag_filter = Value::Object(details.tag_filter.clone());
        let service_filter = Value::from(details.service_filter.clone());
        let alert_thresholds = Value::from(
            details
                .alert_thresholds
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>(),
        );
        let doc = BudgetDoc {
            id: e.stream_id,
            name: &details.name,
            amount: details.amount,
            currency: &details.currency,
            period: details.period.as_str(),
            budget_type: details.budget_type.as_str(),
            start_date: details.start_date,
            end_date: details.end_date,
            tag_filter: &tag_filter,
            service_filter: &service_filter,
            alert_thresholds: &alert_thresholds,
            account: details.account.as_deref(),
            updated_at: e.recorded_at,
        }
        .render()?;
        Ok(BudgetRow {
            id: e.stream_id,
            tenant: e.tenant_id,
            version: e.version,
            period: details.period.as_str(),
            budget_type: details.budget_type.as_str(),
            tag_filter,
            service_filter,
            alert_thresholds,
            details,
            created_at,
            updated_at: e.recorded_at,
            position: e.position,
            doc,
        })
    }
}

pub struct BudgetsProjector;

const DELETE_ALERTS_SQL: &str = "DELETE FROM budget_alerts WHERE budget_id = ANY($1)";

#[async_trait]
impl Projector for BudgetsProjector {
    type Aggregate = Budget;
    const NAME: &'static str = NAME;
    const READ_MODELS: &'static [&'static ReadModel] = &[&BUDGETS_VIEW, &BUDGET_ALERTS];

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        events: Vec<Envelope<BudgetEvent>>,
    ) -> anyhow::Result<()> {
        // The last change per budget: `Some(row)` to write, `None` to delete.
        let mut last: HashMap<Uuid, Option<BudgetRow>> = HashMap::with_capacity(events.len());
        // Threshold crossings: an alert row each, and the view's version moves on.
        let mut alerts = Vec::new();
        let mut bumps: HashMap<Uuid, (i64, i64)> = HashMap::new();
        for e in events {
            if let BudgetEvent::BudgetThresholdCrossed(c) = e.event {
                bumps.insert(e.stream_id, (e.version, e.position));
                alerts.push(AlertRow {
                    tenant: e.tenant_id,
                    budget_id: e.stream_id,
                    crossing: c,
                    at: e.recorded_at,
                    position: e.position,
                });
                continue;
            }
            let created_at = match (&e.event, last.get(&e.stream_id)) {
                (BudgetEvent::BudgetCreated(_), _) => Some(e.recorded_at),
                (_, Some(Some(earlier))) => earlier.created_at,
                _ => None,
            };
            let id = e.stream_id;
            let change = match e.event {
                BudgetEvent::BudgetCreated(details) | BudgetEvent::BudgetUpdated(details) => {
                    let e = Envelope {
                        event: details,
                        tenant_id: e.tenant_id,
                        stream_id: e.stream_id,
                        version: e.version,
                        position: e.position,
                        recorded_at: e.recorded_at,
                    };
                    Some(BudgetRow::new(e, created_at)?)
                }
                BudgetEvent::BudgetDeleted {} => None,
                BudgetEvent::BudgetThresholdCrossed(_) => continue,
            };
            last.insert(id, change);
        }
        let mut deletes = Vec::new();
        let (mut insert, mut update) = (Vec::new(), Vec::new());
        for (id, change) in last {
            match change {
                // A budget whose `BudgetCreated` is in this batch cannot be in the view
                // yet (it is its stream's first event, and batches are applied exactly
                // once): those rows — nearly all rows of a rebuild — are copied in.
                Some(row) if row.created_at.is_some() => insert.push(row),
                Some(row) => update.push(row),
                None => deletes.push(id),
            }
        }
        BUDGETS_VIEW.insert(tx, &insert).await?;
        BUDGETS_VIEW.upsert(tx, &update).await?;
        if !bumps.is_empty() {
            let (ids, vp): (Vec<Uuid>, Vec<(i64, i64)>) = bumps.into_iter().unzip();
            let (versions, positions): (Vec<i64>, Vec<i64>) = vp.into_iter().unzip();
            tx.execute(BUMP_SQL, &[&ids, &versions, &positions]).await?;
        }
        BUDGET_ALERTS.insert(tx, &alerts).await?;
        BUDGETS_VIEW.delete(tx, &deletes).await?;
        // A deleted budget leaves nothing behind (its stream may then be archived).
        if !deletes.is_empty() {
            tx.execute(DELETE_ALERTS_SQL, &[&deletes]).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_read_model_declaration_is_valid() {
        super::BUDGETS_VIEW.check().unwrap();
        super::BUDGET_ALERTS.check().unwrap();
    }
}
