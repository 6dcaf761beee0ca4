//! The assessment (seed 001: "assess every database"): what is stored, how big it is, how
//! it grows and what the database spends its time on. `cloudlens assess` prints it as
//! tables; `GET /api/v1/admin/assessment` answers it as JSON.
//!
//! It reads PostgreSQL's statistics views, TimescaleDB's information views and the event
//! log (two scans of `events`: per type, and per day for the last 30 days), so it costs
//! about a second per few million events. Row counts of plain tables are the statistics'
//! live tuples, of hypertables TimescaleDB's `approximate_row_count`.

use chrono::NaiveDate;
use serde::Serialize;
use tokio_postgres::Client;
use utoipa::ToSchema;

use crate::db::QueryError;

const TABLES_SQL: &str = "\
SELECT c.relname, coalesce(s.n_live_tup, 0), pg_total_relation_size(c.oid),
       pg_indexes_size(c.oid),
       coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),
       coalesce(s.n_dead_tup, 0), coalesce(s.seq_scan, 0), coalesce(s.idx_scan, 0)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
   AND NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables h
                    WHERE h.hypertable_schema = 'public' AND h.hypertable_name = c.relname)
 ORDER BY pg_total_relation_size(c.oid) DESC, c.relname";
const HYPERTABLES_SQL: &str = "\
SELECT h.hypertable_name, h.num_chunks::bigint,
       approximate_row_count(format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass),
       hypertable_size(format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass),
       coalesce(hypertable_index_size(format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass), 0)
  FROM timescaledb_information.hypertables h
 WHERE h.hypertable_schema = 'public'
 ORDER BY 4 DESC, 1";
const INDEXES_SQL: &str = "\
SELECT s.relname, s.indexrelname, s.idx_scan, pg_relation_size(s.indexrelid)
  FROM pg_stat_user_indexes s
 WHERE s.schemaname = 'public'
 ORDER BY s.idx_scan, pg_relation_size(s.indexrelid) DESC, s.indexrelname";
const EVENT_TYPES_SQL: &str = "\
SELECT stream_type, event_type, count(*), max(recorded_at) FROM events
 GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2";
const EVENT_DAYS_SQL: &str = "\
SELECT (recorded_at AT TIME ZONE 'UTC')::date, count(*) FROM events
 WHERE recorded_at >= now() - interval '30 days' GROUP BY 1 ORDER BY 1";
const HAS_STATEMENTS_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')";
const TOP_STATEMENTS_SQL: &str = "\
SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 300), calls, total_exec_time,
       mean_exec_time, rows
  FROM pg_stat_statements
 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
 ORDER BY total_exec_time DESC LIMIT 10";

/// A plain table.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TableReport {
    pub name: String,
    pub rows: i64,
    pub total_bytes: i64,
    pub index_bytes: i64,
    pub toast_bytes: i64,
    pub dead_rows: i64,
    pub seq_scans: i64,
    pub index_scans: i64,
}

/// A TimescaleDB hypertable.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HypertableReport {
    pub name: String,
    pub chunks: i64,
    pub approximate_rows: i64,
    pub total_bytes: i64,
    pub index_bytes: i64,
}

/// An index and how often it was used since the statistics were reset.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IndexReport {
    pub table: String,
    pub name: String,
    pub scans: i64,
    pub bytes: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventTypeCount {
    pub stream_type: String,
    pub event_type: String,
    pub events: i64,
    pub last_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DayCount {
    #[schema(value_type = String, format = Date)]
    pub day: NaiveDate,
    pub events: i64,
}

/// How the log grew: events appended in the last 7 and 30 days, and their share.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Growth {
    pub events_total: i64,
    pub events_last_7_days: i64,
    pub events_last_30_days: i64,
    /// Per UTC day, the last 30 days (days without events left out).
    pub per_day: Vec<DayCount>,
}

/// A statement of `pg_stat_statements` (the top 10 by total time).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatementReport {
    pub query: String,
    pub calls: i64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub rows: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Assessment {
    pub database_bytes: i64,
    pub tables: Vec<TableReport>,
    pub hypertables: Vec<HypertableReport>,
    /// Every index, least used first.
    pub indexes: Vec<IndexReport>,
    pub events_by_type: Vec<EventTypeCount>,
    pub growth: Growth,
    /// `null` when pg_stat_statements is not installed in the database.
    pub top_statements: Option<Vec<StatementReport>>,
}

/// Reads the whole assessment.
pub async fn assess(conn: &Client) -> Result<Assessment, QueryError> {
    let database_bytes: i64 = conn
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .try_get(0)?;
    let tables = conn
        .query(TABLES_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            Ok(TableReport {
                name: r.try_get(0)?,
                rows: r.try_get(1)?,
                total_bytes: r.try_get(2)?,
                index_bytes: r.try_get(3)?,
                toast_bytes: r.try_get(4)?,
                dead_rows: r.try_get(5)?,
                seq_scans: r.try_get(6)?,
                index_scans: r.try_get(7)?,
            })
        })
        .collect::<Result<_, QueryError>>()?;
    let hypertables = conn
        .query(HYPERTABLES_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            Ok(HypertableReport {
                name: r.try_get(0)?,
                chunks: r.try_get(1)?,
                approximate_rows: r.try_get(2)?,
                total_bytes: r.try_get(3)?,
                index_bytes: r.try_get(4)?,
            })
        })
        .collect::<Result<_, QueryError>>()?;
    let indexes = conn
        .query(INDEXES_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            Ok(IndexReport {
                table: r.try_get(0)?,
                name: r.try_get(1)?,
                scans: r.try_get(2)?,
                bytes: r.try_get(3)?,
            })
        })
        .collect::<Result<_, QueryError>>()?;
    let events_by_type: Vec<EventTypeCount> = conn
        .query(EVENT_TYPES_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            Ok(EventTypeCount {
                stream_type: r.try_get(0)?,
                event_type: r.try_get(1)?,
                events: r.try_get(2)?,
                last_at: r.try_get(3)?,
            })
        })
        .collect::<Result<_, QueryError>>()?;
    let per_day: Vec<DayCount> = conn
        .query(EVENT_DAYS_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            Ok(DayCount {
                day: r.try_get(0)?,
                events: r.try_get(1)?,
            })
        })
        .collect::<Result<_, QueryError>>()?;
    let today = chrono::Utc::now().date_naive();
    let since = |days: i64| -> i64 {
        per_day
            .iter()
            .filter(|d| (today - d.day).num_days() < days)
            .map(|d| d.events)
            .sum()
    };
    let growth = Growth {
        events_total: events_by_type.iter().map(|e| e.events).sum(),
        events_last_7_days: since(7),
        events_last_30_days: since(30),
        per_day,
    };
    let has_statements: bool = conn.query_one(HAS_STATEMENTS_SQL, &[]).await?.try_get(0)?;
    let top_statements = if has_statements {
        Some(
            conn.query(TOP_STATEMENTS_SQL, &[])
                .await?
                .iter()
                .map(|r| {
                    Ok(StatementReport {
                        query: r.try_get(0)?,
                        calls: r.try_get(1)?,
                        total_ms: r.try_get(2)?,
                        mean_ms: r.try_get(3)?,
                        rows: r.try_get(4)?,
                    })
                })
                .collect::<Result<_, QueryError>>()?,
        )
    } else {
        None
    };
    Ok(Assessment {
        database_bytes,
        tables,
        hypertables,
        indexes,
        events_by_type,
        growth,
        top_statements,
    })
}

/// Bytes for people: `1.5 GiB`.
fn bytes(n: i64) -> String {
    let mut v = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v.abs() < 1024.0 || unit == "TiB" {
            return if unit == "B" {
                format!("{n} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{n} B")
}

/// The assessment as tables for a terminal.
pub fn render(a: &Assessment) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "database: {}\n", bytes(a.database_bytes));
    let _ = writeln!(
        out,
        "{:<28} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "TABLE", "ROWS", "TOTAL", "INDEXES", "TOAST", "DEAD", "SEQ_SCANS", "IDX_SCANS"
    );
    for t in &a.tables {
        let _ = writeln!(
            out,
            "{:<28} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            t.name,
            t.rows,
            bytes(t.total_bytes),
            bytes(t.index_bytes),
            bytes(t.toast_bytes),
            t.dead_rows,
            t.seq_scans,
            t.index_scans
        );
    }
    let _ = writeln!(
        out,
        "\n{:<28} {:>8} {:>14} {:>10} {:>10}",
        "HYPERTABLE", "CHUNKS", "ROWS (APPROX)", "TOTAL", "INDEXES"
    );
    for h in &a.hypertables {
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>14} {:>10} {:>10}",
            h.name,
            h.chunks,
            h.approximate_rows,
            bytes(h.total_bytes),
            bytes(h.index_bytes)
        );
    }
    let unused: Vec<&IndexReport> = a.indexes.iter().filter(|i| i.scans == 0).collect();
    let _ = writeln!(
        out,
        "\nindexes never scanned: {} of {}",
        unused.len(),
        a.indexes.len()
    );
    for i in unused {
        let _ = writeln!(out, "  {}.{} ({})", i.table, i.name, bytes(i.bytes));
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<32} {:>12}  LAST",
        "STREAM TYPE", "EVENT TYPE", "EVENTS"
    );
    for e in &a.events_by_type {
        let _ = writeln!(
            out,
            "{:<20} {:<32} {:>12}  {}",
            e.stream_type,
            e.event_type,
            e.events,
            e.last_at.format("%Y-%m-%d %H:%M")
        );
    }
    let g = &a.growth;
    let _ = writeln!(
        out,
        "\nevents: {} in all, {} in the last 7 days, {} in the last 30",
        g.events_total, g.events_last_7_days, g.events_last_30_days
    );
    match &a.top_statements {
        None => {
            let _ = writeln!(out, "\ntop statements: pg_stat_statements is not installed");
        }
        Some(s) => {
            let _ = writeln!(
                out,
                "\n{:>10} {:>12} {:>10}  STATEMENT",
                "CALLS", "TOTAL_MS", "MEAN_MS"
            );
            for q in s {
                let _ = writeln!(
                    out,
                    "{:>10} {:>12.1} {:>10.3}  {}",
                    q.calls,
                    q.total_ms,
                    q.mean_ms,
                    q.query.chars().take(100).collect::<String>()
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
