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

/// Same lock keys as `eventstore::APPEND_SQL` / `eventstore::global::HORIZON_SQL`.
const OLDEST_WRITER_SQL: &str = "\
SELECT coalesce(extract(epoch FROM max(now() - a.xact_start)), 0)::float8
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.classid = 1668048001::oid AND l.objid BETWEEN 1 AND 16 AND l.objsubid = 2
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";

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
    let oldest: f64 = client.query_one(OLDEST_WRITER_SQL, &[]).await?.try_get(0)?;
    METRICS.oldest_writer_transaction_seconds.set(oldest);
    Ok(())
}
