//! The read side's handle: a few connections that every query shares, with each
//! connection's prepared statements cached by their SQL constant.
//!
//! tokio-postgres pipelines the requests of concurrent callers on one connection: their
//! messages go out in one write and PostgreSQL answers them in one wake-up. On a small box
//! that beats one pooled connection (one backend process) per request, where every query
//! costs a context switch into its own backend: measured in `loadtest/RESULTS.md`. A slow
//! query holds up the ones pipelined behind it on the same connection, so queries that
//! scan much should not share this handle with point reads: the operations endpoints
//! (status, metrics, readiness) read through the write store's pool instead.
//!
//! A connection that breaks answers `Unavailable` to the queries on it and is replaced on
//! the next use.
//!
//! A tenant's queries run on connections bound to it (ADR 0015): pipelining leaves no
//! room for a per-query `SET LOCAL`, so the binding is per connection.
//!
//! Pages of lists (a query that reads tens of rows or more, ~0.2 ms of PostgreSQL each)
//! take a group of their own, with more connections (`tenant_pages`): behind a point read
//! on a shared connection they would hold it up, and with only one backend per core
//! PostgreSQL gets too small a share of the cores to keep up (ADR 0032).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::RwLock;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::QueryError;

/// One shared connection and its statement cache.
pub struct ReadConnection {
    client: Client,
    statements: Mutex<HashMap<&'static str, Statement>>,
}

impl ReadConnection {
    /// The underlying client, for code that needs `tokio_postgres::GenericClient`.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn statement(&self, sql: &'static str) -> Result<Statement, QueryError> {
        let cached = self
            .statements
            .lock()
            .ok()
            .and_then(|s| s.get(sql).cloned());
        if let Some(s) = cached {
            return Ok(s);
        }
        let s = self.client.prepare(sql).await?;
        if let Ok(mut cache) = self.statements.lock() {
            cache.insert(sql, s.clone());
        }
        Ok(s)
    }

    /// Runs a named SQL constant, prepared once per connection.
    pub async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, QueryError> {
        let stmt = self.statement(sql).await?;
        Ok(self.client.query(&stmt, params).await?)
    }

    pub async fn query_opt(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, QueryError> {
        let stmt = self.statement(sql).await?;
        Ok(self.client.query_opt(&stmt, params).await?)
    }
}

/// Binds a connection to `tenant` as the query role `cloudlens_query` (`sql/V9`), which
/// owns no table: row-level security then shows it only that tenant's rows (ADR 0015).
pub const BIND_TENANT_SQL: &str =
    "SELECT set_config('role', 'cloudlens_query', false), set_config('app.tenant', $1, false)";

/// Back to the owner, bound to no tenant (a pooled connection for the admin API).
pub const UNBIND_SQL: &str =
    "SELECT set_config('role', 'none', false), set_config('app.tenant', '', false)";

/// The shared connections, handed out in turn: one group as the owner (`get`, for the
/// key check, read-your-writes and admin reads) and, per tenant, a group bound to it as
/// the query role (`tenant`). A tenant's group is opened on its first query; past
/// `max_tenants` groups the least recently used one is dropped (its connections close
/// when their last query ends). Clones share them.
#[derive(Clone)]
pub struct Reader {
    conn: String,
    size: usize,
    /// Connections of each group for pages (`tenant_pages`).
    page_size: usize,
    max_tenants: usize,
    system: Arc<Group>,
    tenants: Arc<Mutex<Tenants>>,
}

#[derive(Default)]
struct Tenants {
    /// Per tenant: the group for point reads, the group for pages, when last used.
    groups: HashMap<String, (Arc<Group>, Arc<Group>, u64)>,
    clock: u64,
}

/// `size` connection slots, filled on first use (so a group exists while the database is
/// down) and refilled when a connection broke.
struct Group {
    tenant: Option<String>,
    slots: Vec<RwLock<Option<Arc<ReadConnection>>>>,
    next: AtomicUsize,
}

impl Group {
    fn new(tenant: Option<String>, size: usize) -> Self {
        Self {
            tenant,
            slots: (0..size.max(1)).map(|_| RwLock::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    async fn get(&self, conn: &str) -> Result<Arc<ReadConnection>, QueryError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(c) = slot.read().await.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        let mut slot = slot.write().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        let client = super::connect(conn).await?;
        if let Some(tenant) = &self.tenant {
            client.execute(BIND_TENANT_SQL, &[tenant]).await?;
        }
        let c = Arc::new(ReadConnection {
            client,
            statements: Mutex::default(),
        });
        *slot = Some(c.clone());
        Ok(c)
    }
}

impl Reader {
    /// `size` connections to `conn` per group, and at most `max_tenants` tenant groups.
    pub fn new(conn: &str, size: usize, max_tenants: usize) -> Self {
        Self {
            conn: conn.to_owned(),
            size,
            page_size: size,
            max_tenants: max_tenants.max(1),
            system: Arc::new(Group::new(None, size)),
            tenants: Arc::default(),
        }
    }

    /// A live connection as the owner, not bound to a tenant (shared with other callers).
    /// Not for the queries of a tenant's request: those take `tenant`.
    pub async fn get(&self) -> Result<Arc<ReadConnection>, QueryError> {
        self.system.get(&self.conn).await
    }

    /// `size` connections per tenant for pages of lists (`tenant_pages`); by default as
    /// many as for point reads.
    pub fn with_page_connections(mut self, size: usize) -> Self {
        self.page_size = size.max(1);
        self
    }

    /// A live connection bound to `tenant` (a checked tenant name) as the query role, for
    /// point reads.
    pub async fn tenant(&self, tenant: &str) -> Result<Arc<ReadConnection>, QueryError> {
        self.group(tenant, false).get(&self.conn).await
    }

    /// As `tenant`, from the tenant's group for pages of lists.
    pub async fn tenant_pages(&self, tenant: &str) -> Result<Arc<ReadConnection>, QueryError> {
        self.group(tenant, true).get(&self.conn).await
    }

    /// The tenant's group for pages or for point reads; both are opened on its first
    /// query.
    fn group(&self, tenant: &str, pages: bool) -> Arc<Group> {
        let mut t = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        t.clock += 1;
        let now = t.clock;
        let pick = |(point, paged): (&Arc<Group>, &Arc<Group>)| {
            if pages {
                paged.clone()
            } else {
                point.clone()
            }
        };
        if let Some((point, paged, used)) = t.groups.get_mut(tenant) {
            *used = now;
            return pick((point, paged));
        }
        if t.groups.len() >= self.max_tenants {
            let oldest = t
                .groups
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                t.groups.remove(&k);
            }
        }
        let point = Arc::new(Group::new(Some(tenant.to_owned()), self.size));
        let paged = Arc::new(Group::new(Some(tenant.to_owned()), self.page_size));
        let chosen = pick((&point, &paged));
        t.groups.insert(tenant.to_owned(), (point, paged, now));
        chosen
    }
}
