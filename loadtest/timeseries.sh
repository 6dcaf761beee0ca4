#!/usr/bin/env bash
# Time-series benchmark (issue "Metrics time series"): seed 001's POC done properly.
#
#   loadtest/timeseries.sh [POINTS [SERIES [REPS]]]    defaults 10000000 1000 50
#
# Starts the release server on its own local cluster (var/timeseries, wiped first; raw
# retention 120 days so the 90-day series stay whole) and runs `loadtest timeseries`:
# ingest of POINTS one-minute points over SERIES series (10 of them over 90 days, the
# rest over the most recent days) and about two years of 1-minute bars for 20 symbols,
# each timed until visible to queries; then the same points copied into a plain table
# (same unique index, no TimescaleDB) and the 1-day 1-minute, 90-day 1-hour and
# cross-series group-by queries timed over HTTP, as SQL on the hypertable / rollup, and
# as SQL on the plain table, interleaved. Last: disk per million points and the memory
# high-water marks.
#
# Environment: LOADTEST_PORT (8093), LOADTEST_NO_BUILD=1 (skip cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
POINTS=${1:-10000000}
SERIES=${2:-1000}
REPS=${3:-50}
PORT=${LOADTEST_PORT:-8093}
URL="http://127.0.0.1:$PORT"
DATA=var/timeseries
scripts/setup.sh >/dev/null
if [ "${LOADTEST_NO_BUILD:-}" != 1 ]; then
  cargo build --release --bin cloudlens 2>&1 | tail -1
  cargo build --release -p loadtest 2>&1 | tail -1
fi

echo "== machine"; nproc; grep MemTotal /proc/meminfo
echo "== commit"; git log -1 --format='%h %s' | cut -c1-120

start_own_server timeseries "$DATA" "$PORT" CLOUDLENS_METRICS_RETENTION_DAYS=120 CLOUDLENS_METRICS_MAX_POINTS=1000000

target/release/loadtest timeseries --url "$URL" --points "$POINTS" --series "$SERIES" --reps "$REPS" \
  --conn "host=$PWD/$DATA/run port=54329 user=cloudlens dbname=cloudlens"

report_memory "$DATA"
