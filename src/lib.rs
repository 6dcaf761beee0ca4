//! cloudlens: an event-sourced data server on PostgreSQL + TimescaleDB.
//!
//! Layout (see ARCHITECTURE.md for the full code map and invariants):
//! - `config`       settings read from the environment;
//! - `telemetry`    tracing set-up and the Prometheus registry;
//! - `db`           connection pool, migrations, and the self-managed local cluster;
//! - `eventstore`   the append-only log: appends, stream loads, the gap-free global read;
//! - `pipeline`     command handling around cqrs-es aggregates (idempotency, concurrency);
//! - `projections`  the projection runtime: checkpoints, leader election, rebuilds;
//! - `http`         actix-web app, error mapping, admin and operations endpoints;
//! - `budgets`      the first bounded context, end to end.
//!
//! The binary (`main.rs`) only parses the command line and calls [`app`].

pub mod app;
pub mod budgets;
pub mod config;
pub mod db;
pub mod eventstore;
pub mod http;
pub mod pipeline;
pub mod projections;
pub mod telemetry;
