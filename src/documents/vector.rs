//! Vector search over documents' embeddings where pgvector is installed (ADR 0024).
//!
//! Embeddings are kept in `documents.embedding` (`real[]`) whatever the database has.
//! At start, a background task creates the extension and an HNSW index (cosine) on
//! `embedding::vector(N)`; until it is ready, or where it cannot be, vector and hybrid
//! searches answer 503 `vector_search_unavailable`: never a silent fallback to text.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use crate::db;

const PREPARING: u8 = 0;
const READY: u8 = 1;
const UNAVAILABLE: u8 = 2;

/// Whether this process can serve vector searches, and why not.
#[derive(Debug, Default)]
pub struct VectorIndex {
    state: AtomicU8,
    reason: Mutex<String>,
}

impl VectorIndex {
    /// Ok when vector searches can run; else why they cannot.
    pub fn check(&self) -> Result<(), String> {
        match self.state.load(Ordering::Acquire) {
            READY => Ok(()),
            PREPARING => Err("its index is being built; try again shortly".into()),
            _ => Err(self
                .reason
                .lock()
                .map(|r| r.clone())
                .unwrap_or_else(|_| "unknown".into())),
        }
    }

    fn set(&self, state: u8, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.to_owned();
        }
        self.state.store(state, Ordering::Release);
    }
}

/// The index expression: the query's `ORDER BY` must repeat it to use the index.
pub fn expression(dimensions: usize) -> String {
    format!("d.embedding::vector({dimensions})")
}

/// The index's predicate (on columns of `alias`): embeddings of this size only. A query
/// repeats it, so that the index serves it and no other size reaches the cast.
pub fn predicate(dimensions: usize, alias: &str) -> String {
    format!("{alias}embedding IS NOT NULL AND cardinality({alias}embedding) = {dimensions}")
}

/// Builds the extension and the index (once per database: under an advisory lock, so
/// servers starting together build it once), then marks `index` ready or unavailable.
pub async fn prepare(conn: &str, dimensions: usize, enabled: bool, index: &VectorIndex) {
    if !enabled {
        index.set(
            UNAVAILABLE,
            "it is off on this server (CLOUDLENS_VECTOR_SEARCH=off)",
        );
        return;
    }
    let outcome = async {
        let client = db::connect(conn).await?;
        let available: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')",
                &[],
            )
            .await?
            .get(0);
        if !available {
            return Ok(false);
        }
        // Built CONCURRENTLY, so the projector keeps writing `documents` while a large
        // table is indexed; that cannot run in a transaction, hence a session lock held
        // until the index is committed (a server starting at the same time then finds it
        // built). An index left invalid by an interrupted build is dropped first, and so
        // are indexes for another size. The predicate keeps embeddings of any other size
        // out of the index and its cast. `dimensions` is a checked integer from the
        // configuration, not user input.
        let name = format!("documents_embedding_{dimensions}");
        client
            .execute(
                "SELECT pg_advisory_lock(1668048004, hashtext('documents_embedding'))",
                &[],
            )
            .await?;
        let built = async {
            client
                .batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
                .await?;
            client
                .batch_execute(&format!(
                    "DO $$ DECLARE i text; BEGIN
                         FOR i IN SELECT c.relname FROM pg_index x
                                    JOIN pg_class c ON c.oid = x.indexrelid
                                   WHERE x.indrelid = 'public.documents'::regclass
                                     AND c.relname ~ '^documents_embedding_[0-9]+$'
                                     AND (c.relname <> '{name}' OR NOT x.indisvalid) LOOP
                             EXECUTE format('DROP INDEX %I', i);
                         END LOOP;
                     END $$"
                ))
                .await?;
            client
                .batch_execute(&format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON documents
                         USING hnsw ((embedding::vector({dimensions})) vector_cosine_ops)
                         WHERE {}",
                    predicate(dimensions, "")
                ))
                .await?;
            anyhow::Ok(())
        }
        .await;
        client
            .execute(
                "SELECT pg_advisory_unlock(1668048004, hashtext('documents_embedding'))",
                &[],
            )
            .await?;
        built?;
        let version: String = client
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
                &[],
            )
            .await?
            .get(0);
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        if (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (0, 8) {
            anyhow::bail!("pgvector {version} is older than 0.8 (iterative index scans)");
        }
        anyhow::Ok(true)
    }
    .await;
    match outcome {
        Ok(true) => {
            tracing::info!(dimensions, "vector search ready");
            index.set(READY, "");
        }
        Ok(false) => index.set(
            UNAVAILABLE,
            "the database has no pgvector extension (scripts/setup.sh installs it)",
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot prepare vector search");
            index.set(UNAVAILABLE, &format!("its index could not be built: {e}"));
        }
    }
}

/// A query vector as pgvector's text form, checked: `dimensions` finite numbers, not all
/// zero (cosine distance needs a direction).
pub fn parse(raw: &str, dimensions: usize) -> Result<String, String> {
    let v: Vec<f32> = serde_json::from_str(raw)
        .map_err(|_| "must be a JSON array of numbers, e.g. [0.1,0.2]".to_owned())?;
    super::aggregate::check_embedding(&v, dimensions)?;
    let parts: Vec<String> = v.iter().map(f32::to_string).collect();
    Ok(format!("[{}]", parts.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_vectors_are_checked() {
        assert_eq!(parse("[0.5, 1, -2e-3]", 3).unwrap(), "[0.5,1,-0.002]");
        assert!(parse("[1,2]", 3).is_err());
        assert!(parse("[0,0,0]", 3).is_err());
        assert!(parse("[1e39,0,0]", 3).is_err());
        assert!(parse("1,2,3", 3).is_err());
    }

    #[test]
    fn an_index_is_unavailable_until_prepared() {
        let i = VectorIndex::default();
        assert!(i.check().unwrap_err().contains("being built"));
        i.set(READY, "");
        assert!(i.check().is_ok());
        i.set(UNAVAILABLE, "no pgvector");
        assert_eq!(i.check().unwrap_err(), "no pgvector");
    }
}
