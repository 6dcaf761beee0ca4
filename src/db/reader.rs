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

/// The shared connections, handed out in turn. Clones share them.
#[derive(Clone)]
pub struct Reader {
    conn: String,
    slots: Arc<Vec<RwLock<Option<Arc<ReadConnection>>>>>,
    next: Arc<AtomicUsize>,
}

impl Reader {
    /// `size` connections to `conn`, opened on first use (so this succeeds while the
    /// database is down).
    pub fn new(conn: &str, size: usize) -> Self {
        Self {
            conn: conn.to_owned(),
            slots: Arc::new((0..size.max(1)).map(|_| RwLock::new(None)).collect()),
            next: Arc::default(),
        }
    }

    /// A live connection (shared with other callers).
    pub async fn get(&self) -> Result<Arc<ReadConnection>, QueryError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(c) = slot.read().await.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        let mut slot = slot.write().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        let client = super::connect(&self.conn).await?;
        let c = Arc::new(ReadConnection {
            client,
            statements: Mutex::default(),
        });
        *slot = Some(c.clone());
        Ok(c)
    }
}
