//! cloudlens load generator and benchmarks.
//!
//! - `http` drives a running server over HTTP (named scenarios) and prints throughput
//!   and p50/p95/p99 per operation, errors by status;
//! - `store` appends events through the event store and, interleaved in rounds in the
//!   same database, raw INSERTs of identical rows into an identically shaped table (1 row
//!   per txn, batched like the group commit, 100 per txn);
//! - `raw-insert` runs the raw 1-row INSERT baseline in a given database (a server's own,
//!   between its HTTP write runs);
//! - `catchup` replays a log of N budget events (creates, updates, deletes) into a fresh
//!   read model (a rebuild) and, in the same round, COPYs N rows into an identically
//!   shaped table, in rounds;
//! - `anomalies` evaluates the cost-anomaly methods (mean + 2σ, median/MAD, median/MAD
//!   by weekday) on seeded generated series with injected anomalies, no database
//!   (loadtest/anomalies.sh);
//! - `bills` writes seeded bill files (cloudlens format) and their exact sums;
//! - `timeseries` ingests points and bars into a running server and times queries
//!   against the hypertables, the rollups and a plain table (loadtest/timeseries.sh);
//! - `documents` bulk-loads generated documents and times searches, with a pg_trgm
//!   baseline for two-character Chinese queries (loadtest/documents.sh);
//! - `collections` writes log lines to a TTL collection as NDJSON batches and times
//!   filtered reads (loadtest/collections.sh).
//! - `alerts` times the evaluation of 1,000 metric rules over 10,000 series against the
//!   seed's one query per rule, and notification throughput (loadtest/alerts.sh).
//! - `feed` reads a million seeded events through the feed's NDJSON pages (events/s) and
//!   times delivery over SSE after a command's answer (loadtest/feed.sh).
//!
//! Numbers are printed, never asserted: see loadtest/RESULTS.md and loadtest/run.sh.

mod alerts;
mod anomalies;
mod bills;
mod collections;
mod db_bench;
mod documents;
mod feed;
mod http_load;
mod stats;
mod timeseries;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadtest")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a running server: scenarios write-heavy, read-heavy, mixed, lag.
    Http(http_load::Args),
    /// Event-store append vs raw INSERT benchmark.
    Store(db_bench::StoreArgs),
    /// Raw 1-row INSERT baseline into `raw_events` of a given database.
    RawInsert(db_bench::RawInsertArgs),
    /// Projection catch-up (rebuild) vs raw COPY benchmark.
    Catchup(db_bench::CatchupArgs),
    /// Cost-anomaly methods on generated series, no database (loadtest/anomalies.sh).
    Anomalies(anomalies::Args),
    /// Seeded bill files for the costs benchmark (loadtest/costs.sh).
    Bills(bills::BillArgs),
    /// The time-series benchmark against a running server (loadtest/timeseries.sh).
    Timeseries(timeseries::Args),
    /// The documents benchmark against a running server (loadtest/documents.sh).
    Documents(documents::Args),
    /// The TTL collections benchmark against a running server (loadtest/collections.sh).
    Collections(collections::Args),
    /// The alerts benchmark against a running server (loadtest/alerts.sh).
    Alerts(alerts::Args),
    /// The event feed benchmark against a running server (loadtest/feed.sh).
    Feed(feed::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Http(args) => http_load::run(args),
        Command::Store(args) => db_bench::store(args),
        Command::RawInsert(args) => db_bench::raw_insert(args),
        Command::Catchup(args) => db_bench::catchup(args),
        Command::Anomalies(args) => anomalies::run(args),
        Command::Bills(args) => bills::run(args),
        Command::Timeseries(args) => timeseries::run(args),
        Command::Documents(args) => documents::run(args),
        Command::Collections(args) => collections::run(args),
        Command::Alerts(args) => alerts::run(args),
        Command::Feed(args) => feed::run(args),
    }
}
