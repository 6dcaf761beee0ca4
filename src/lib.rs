//! cloudlens: an event-sourced data server on PostgreSQL + TimescaleDB.
//!
//! Layout (see ARCHITECTURE.md for the full code map and invariants):
//! - `context`      a bounded context as a plug-in, and the list of them;
//! - `config`       settings read from the environment;
//! - `telemetry`    tracing set-up and the Prometheus registry;
//! - `db`           connection pool, migrations, and the self-managed local cluster;
//! - `eventstore`   the append-only log: appends, stream loads, the gap-free global read;
//! - `pipeline`     command handling around cqrs-es aggregates (idempotency, concurrency);
//! - `projections`  the projection runtime: typed projectors, checkpoints, election,
//!   rebuilds, read-your-writes;
//! - `jobs`         background jobs requested by events, run by one elected runner;
//! - `imports`      streamed bulk imports: CSV rows, row errors, staged appends;
//! - `scheduled`    periodic work done by one elected process (retention purges);
//! - `feed`         the event feed (pages, NDJSON, SSE) and consumer groups;
//! - `http`         actix-web app, error mapping, admin and operations endpoints;
//! - `budgets`, `tagging`, `costs`, `access`, `timeseries`, `documents`, `collections`,
//!   `alerts`, `dashboards`: the bounded contexts.
//!
//! The binary (`main.rs`) only parses the command line and calls [`app`].

pub mod access;
pub mod alerts;
pub mod app;
pub mod budgets;
pub mod collections;
pub mod config;
pub mod context;
pub mod costs;
pub mod crypto;
pub mod dashboards;
pub mod db;
pub mod documents;
pub mod eventstore;
pub mod feed;
pub mod http;
pub mod imports;
pub mod jobs;
pub mod ops;
pub mod pipeline;
pub mod projections;
pub mod scheduled;
pub mod tagging;
pub mod telemetry;
pub mod timeseries;
