//! cloudlens load generator and benchmarks.
//!
//! - `http` drives a running server over HTTP (named scenarios) and prints throughput
//!   and p50/p95/p99 per operation, errors by status;
//! - `store` appends events through the event store and, in the same run, raw INSERTs
//!   of identical rows into an identically shaped table (1 and 100 per txn);
//! - `catchup` replays N budget events into a fresh read model (a rebuild) and, in the
//!   same run, COPYs N identical rows into an identically shaped table.
//!
//! Numbers are printed, never asserted: see loadtest/RESULTS.md and loadtest/run.sh.

mod db_bench;
mod http_load;
mod stats;

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
    /// Projection catch-up (rebuild) vs raw COPY benchmark.
    Catchup(db_bench::CatchupArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Http(args) => http_load::run(args),
        Command::Store(args) => db_bench::store(args),
        Command::Catchup(args) => db_bench::catchup(args),
    }
}
