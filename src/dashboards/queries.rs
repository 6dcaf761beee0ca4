//! Reads of the dashboards context; they touch only `dashboards`. Named constants,
//! prepared once per read connection (ARCHITECTURE.md, "How a query stays fast").
//!
//! A caller sees its own dashboards and the shared ones of its tenant: every statement
//! takes the caller (`$3`/`$2`) and keeps `created_by = caller OR is_shared`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::types::Json;
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{QueryError, ReadConnection};

macro_rules! columns {
    () => {
        "id, version, name, description, layout, widgets, is_shared, created_by, created_at, \
         updated_at"
    };
}

const GET_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM dashboards WHERE tenant_id = $1 AND id = $2 AND (created_by = $3 OR is_shared)"
);

/// The typed widgets of one visible dashboard, for its data endpoint.
const WIDGETS_SQL: &str = "SELECT widgets FROM dashboards \
     WHERE tenant_id = $1 AND id = $2 AND (created_by = $3 OR is_shared)";

const LIST_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM dashboards WHERE tenant_id = $1 AND id > $2 AND (created_by = $3 OR is_shared)",
    " ORDER BY id LIMIT $4"
);

/// A dashboard as clients read it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardView {
    pub id: Uuid,
    pub version: i64,
    pub name: String,
    pub description: String,
    pub layout: String,
    /// As stored, every data source with its defaults filled in (a valid draft again).
    #[schema(value_type = Vec<crate::dashboards::commands::WidgetDraft>)]
    pub widgets: Box<RawValue>,
    pub is_shared: bool,
    /// The owner: the actor that created it (API key `key:NAME`, or `X-Actor`).
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardPage {
    pub items: Vec<DashboardView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn view(row: &Row) -> Result<DashboardView, tokio_postgres::Error> {
    Ok(DashboardView {
        id: row.try_get(0)?,
        version: row.try_get(1)?,
        name: row.try_get(2)?,
        description: row.try_get(3)?,
        layout: row.try_get(4)?,
        widgets: row.try_get::<_, Json<Box<RawValue>>>(5)?.0,
        is_shared: row.try_get(6)?,
        created_by: row.try_get(7)?,
        created_at: row.try_get(8)?,
        updated_at: row.try_get(9)?,
    })
}

/// The dashboard if `caller` may see it.
pub async fn get(
    conn: &ReadConnection,
    tenant: &str,
    caller: &str,
    id: Uuid,
) -> Result<Option<DashboardView>, QueryError> {
    Ok(conn
        .query_opt(GET_SQL, &[&tenant, &id, &caller])
        .await?
        .as_ref()
        .map(view)
        .transpose()?)
}

/// The widgets of the dashboard if `caller` may see it.
pub async fn widgets(
    conn: &ReadConnection,
    tenant: &str,
    caller: &str,
    id: Uuid,
) -> Result<Option<Vec<super::events::Widget>>, QueryError> {
    Ok(conn
        .query_opt(WIDGETS_SQL, &[&tenant, &id, &caller])
        .await?
        .map(|r| r.try_get::<_, Json<Vec<super::events::Widget>>>(0))
        .transpose()?
        .map(|w| w.0))
}

/// Keyset pagination by id (UUIDv7, so roughly creation order).
pub async fn list(
    conn: &ReadConnection,
    tenant: &str,
    caller: &str,
    after: Option<Uuid>,
    limit: i64,
) -> Result<DashboardPage, QueryError> {
    let after = after.unwrap_or(Uuid::nil());
    let rows = conn
        .query(LIST_SQL, &[&tenant, &after, &caller, &(limit + 1)])
        .await?;
    let mut items = rows.iter().map(view).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|d| crate::db::cursor::encode(&d.id))
    } else {
        None
    };
    Ok(DashboardPage { items, next_cursor })
}
