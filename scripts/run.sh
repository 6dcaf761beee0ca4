#!/usr/bin/env bash
# Start cloudlens: install what is missing, build, serve. Without DATABASE_URL the server
# runs its own PostgreSQL + TimescaleDB cluster under CLOUDLENS_DATA_DIR (default ./var).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin cloudlens
exec target/release/cloudlens serve "$@"
