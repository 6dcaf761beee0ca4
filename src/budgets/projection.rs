//! The `budgets` projector: keeps `budgets_view` (one JSONB-filterable row per live
//! budget). A batch is folded in memory to the last state per budget and written with two
//! set-based statements (upsert via `unnest`, delete by id), not row by row.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::aggregate::Budget;
use super::events::{BudgetDetails, BudgetEvent};
use crate::eventstore::{codec, RecordedEvent};
use crate::pipeline::EventSourced;
use crate::projections::Projection;

pub const NAME: &str = "budgets";

/// `version < EXCLUDED.version` keeps a replayed older event from undoing a newer one.
const UPSERT_SQL: &str = "\
INSERT INTO budgets_view (id, tenant_id, version, name, amount, currency, period, budget_type,
                          start_date, end_date, tag_filter, service_filter, alert_thresholds,
                          account, created_at, updated_at, last_position)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::numeric[], $6::text[],
                     $7::text[], $8::text[], $9::date[], $10::date[], $11::jsonb[], $12::jsonb[],
                     $13::jsonb[], $14::text[], $15::timestamptz[], $16::timestamptz[], $17::bigint[])
ON CONFLICT (id) DO UPDATE SET
    version = EXCLUDED.version, name = EXCLUDED.name, amount = EXCLUDED.amount,
    currency = EXCLUDED.currency, period = EXCLUDED.period, budget_type = EXCLUDED.budget_type,
    start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date,
    tag_filter = EXCLUDED.tag_filter, service_filter = EXCLUDED.service_filter,
    alert_thresholds = EXCLUDED.alert_thresholds, account = EXCLUDED.account,
    updated_at = EXCLUDED.updated_at, last_position = EXCLUDED.last_position
WHERE budgets_view.version < EXCLUDED.version";

const DELETE_SQL: &str = "DELETE FROM budgets_view WHERE id = ANY($1)";
const COPY_SQL: &str = "COPY budgets_view (id, tenant_id, version, name, amount, currency, period, budget_type, \
     start_date, end_date, tag_filter, service_filter, alert_thresholds, account, created_at, updated_at, \
     last_position) FROM STDIN BINARY";
const COPY_TYPES: [Type; 17] = [
    Type::UUID,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::NUMERIC,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::DATE,
    Type::DATE,
    Type::JSONB,
    Type::JSONB,
    Type::JSONB,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::INT8,
];

async fn copy_new(tx: &Transaction<'_>, rows: Vec<(Uuid, Upsert<'_>)>) -> anyhow::Result<()> {
    let sink = tx.copy_in(COPY_SQL).await?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    futures::pin_mut!(writer);
    for (id, u) in rows {
        let d = u.details;
        let created_at = u.created_at.unwrap_or(u.updated_at);
        writer
            .as_mut()
            .write(&[
                &id,
                &u.tenant,
                &u.version,
                &d.name,
                &d.amount,
                &d.currency,
                &d.period.as_str(),
                &d.budget_type.as_str(),
                &d.start_date,
                &d.end_date,
                &Value::Object(d.tag_filter),
                &Value::from(d.service_filter),
                &thresholds_json(&d.alert_thresholds),
                &d.account,
                &created_at,
                &u.updated_at,
                &u.position,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

fn thresholds_json(t: &[Decimal]) -> Value {
    Value::from(t.iter().map(|t| t.to_string()).collect::<Vec<_>>())
}

pub struct BudgetsProjection;

struct Upsert<'a> {
    tenant: &'a str,
    version: i64,
    details: BudgetDetails,
    /// Only known when the batch saw the `BudgetCreated`; the upsert never overwrites it.
    created_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    position: i64,
}

enum Change<'a> {
    Upsert(Box<Upsert<'a>>),
    Delete,
}

#[async_trait]
impl Projection for BudgetsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &[Budget::STREAM_TYPE]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["budgets_view"]
    }

    async fn apply(&self, tx: &Transaction<'_>, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let mut last: HashMap<Uuid, Change<'_>> = HashMap::with_capacity(events.len());
        for e in events {
            let event: BudgetEvent = codec::decode(
                &e.event_type,
                e.schema_version,
                &e.payload,
                Budget::upcasters(),
            )?;
            let created_at = match (&event, last.get(&e.stream_id)) {
                (BudgetEvent::BudgetCreated(_), _) => Some(e.recorded_at),
                (_, Some(Change::Upsert(earlier))) => earlier.created_at,
                _ => None,
            };
            let change = match event {
                BudgetEvent::BudgetCreated(details) | BudgetEvent::BudgetUpdated(details) => {
                    Change::Upsert(Box::new(Upsert {
                        tenant: &e.tenant_id,
                        version: e.stream_version,
                        details,
                        created_at,
                        updated_at: e.recorded_at,
                        position: e.position,
                    }))
                }
                BudgetEvent::BudgetDeleted {} => Change::Delete,
            };
            last.insert(e.stream_id, change);
        }
        let mut deletes = Vec::new();
        let mut upserts = Vec::new();
        for (id, change) in last {
            match change {
                Change::Upsert(u) => upserts.push((id, *u)),
                Change::Delete => deletes.push(id),
            }
        }
        // A budget whose `BudgetCreated` is in this batch cannot be in the view yet (that
        // is its stream's first event, and batches are applied exactly once): those rows —
        // nearly all rows of a rebuild — are written with binary COPY, the rest upserted.
        let (insert, update): (Vec<_>, Vec<_>) = upserts
            .into_iter()
            .partition(|(_, u)| u.created_at.is_some());
        if !insert.is_empty() {
            copy_new(tx, insert).await?;
        }
        let mut cols = Columns::default();
        for (id, u) in update {
            cols.push(id, u);
        }
        if !cols.id.is_empty() {
            tx.execute(
                UPSERT_SQL,
                &[
                    &cols.id,
                    &cols.tenant,
                    &cols.version,
                    &cols.name,
                    &cols.amount,
                    &cols.currency,
                    &cols.period,
                    &cols.budget_type,
                    &cols.start_date,
                    &cols.end_date,
                    &cols.tag_filter,
                    &cols.service_filter,
                    &cols.alert_thresholds,
                    &cols.account,
                    &cols.created_at,
                    &cols.updated_at,
                    &cols.position,
                ],
            )
            .await?;
        }
        if !deletes.is_empty() {
            tx.execute(DELETE_SQL, &[&deletes]).await?;
        }
        Ok(())
    }
}

/// Column arrays for the `unnest` upsert.
#[derive(Default)]
struct Columns<'a> {
    id: Vec<Uuid>,
    tenant: Vec<&'a str>,
    version: Vec<i64>,
    name: Vec<String>,
    amount: Vec<Decimal>,
    currency: Vec<String>,
    period: Vec<&'static str>,
    budget_type: Vec<&'static str>,
    start_date: Vec<NaiveDate>,
    end_date: Vec<Option<NaiveDate>>,
    tag_filter: Vec<Value>,
    service_filter: Vec<Value>,
    alert_thresholds: Vec<Value>,
    account: Vec<Option<String>>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    position: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, id: Uuid, u: Upsert<'a>) {
        let d = u.details;
        self.id.push(id);
        self.tenant.push(u.tenant);
        self.version.push(u.version);
        self.name.push(d.name);
        self.amount.push(d.amount);
        self.currency.push(d.currency);
        self.period.push(d.period.as_str());
        self.budget_type.push(d.budget_type.as_str());
        self.start_date.push(d.start_date);
        self.end_date.push(d.end_date);
        self.tag_filter.push(Value::Object(d.tag_filter));
        self.service_filter.push(Value::from(d.service_filter));
        self.alert_thresholds.push(Value::from(
            d.alert_thresholds
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>(),
        ));
        self.account.push(d.account);
        self.created_at.push(u.created_at.unwrap_or(u.updated_at));
        self.updated_at.push(u.updated_at);
        self.position.push(u.position);
    }
}
