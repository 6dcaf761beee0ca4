//! Database figures exported as gauges at scrape time: sizes, read-model rows, and the
//! age of the oldest open event-writer transaction (which holds projectors back).

use tokio_postgres::GenericClient;

use crate::telemetry::METRICS;

const SIZES_SQL: &str = "\
SELECT c.relname, pg_total_relation_size(c.oid), coalesce(s.n_live_tup, 0)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')";

const DATABASE_SIZE_SQL: &str = "SELECT pg_database_size(current_database())";

/// `event_writers` (sql/V4) holds back every projector while one is open.
const OLDEST_WRITER_SQL: &str = "\
SELECT coalesce(extract(epoch FROM max(now() - xact_start)), 0)::float8 FROM event_writers";

/// An event-writer transaction open this long holds back every projector: a stall.
pub const WRITER_STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// The oldest open event-writer transaction.
#[derive(Debug, Clone, Copy)]
pub struct OldestWriter {
    /// Zero when there is none.
    pub age: std::time::Duration,
    /// Open at least `WRITER_STALL`.
    pub stalled: bool,
}

/// The oldest open event-writer transaction; also refreshes its gauges.
pub async fn oldest_writer<C: GenericClient>(
    client: &C,
) -> Result<OldestWriter, tokio_postgres::Error> {
    let oldest: f64 = client.query_one(OLDEST_WRITER_SQL, &[]).await?.try_get(0)?;
    let age = std::time::Duration::from_secs_f64(oldest.max(0.0));
    let stalled = age >= WRITER_STALL;
    METRICS.oldest_writer_transaction_seconds.set(oldest);
    METRICS.writer_stalled.set(i64::from(stalled));
    Ok(OldestWriter { age, stalled })
}

/// Refreshes the database gauges; `read_models` are the tables whose rows are exported.
pub async fn refresh<C: GenericClient>(
    client: &C,
    read_models: &[&str],
) -> Result<(), tokio_postgres::Error> {
    let size: i64 = client.query_one(DATABASE_SIZE_SQL, &[]).await?.try_get(0)?;
    METRICS.db_size_bytes.set(size);
    for row in client.query(SIZES_SQL, &[]).await? {
        let table: String = row.try_get(0)?;
        METRICS
            .db_table_size_bytes
            .with_label_values(&[&table])
            .set(row.try_get(1)?);
        if read_models.contains(&table.as_str()) {
            METRICS
                .read_model_rows
                .with_label_values(&[&table])
                .set(row.try_get(2)?);
        }
    }
    Ok(())
}
