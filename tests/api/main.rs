//! Integration tests: one binary, real PostgreSQL + TimescaleDB. A shared throw-away
//! cluster serves most tests (a fresh database each); tests that stop or kill a cluster
//! start their own. Clusters live under CLOUDLENS_TEST_DIR (scripts/test.sh cleans up).

mod helpers;

mod access;
mod alerts;
mod anomalies;
mod archive;
mod assessment;
mod backup;
mod cluster;
mod collections;
mod costs;
mod dashboards;
mod documents;
mod erasure;
mod feed;
mod http_api;
mod jobs;
mod lanes;
mod projections;
mod prometheus;
mod protocol;
mod replica;
mod store;
mod tagging;
mod tenancy;
mod timeseries;
mod tls;
mod traces;
