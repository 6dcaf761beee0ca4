#!/usr/bin/env bash
# TTL collections benchmark (issue 11, the MongoDB/Redis replacement).
#
#   loadtest/collections.sh [ITEMS [REPS [CONCURRENCY]]]    defaults 1000000 200 4
#
# Starts the release server on its own local cluster (var/collections, wiped first) and
# runs `loadtest collections`: ITEMS generated log lines written to the seed collection
# `system_logs` as NDJSON batches of 10,000, CONCURRENCY requests at a time (items/s until
# the last answer: committed and readable); then REPS reads each over HTTP, filtered by
# level and service newest first (limit 100), by level only, unfiltered, and one item by
# key (p50/p95); the table's size per million items. Last: the memory high-water marks.
#
# Environment: LOADTEST_PORT (8095), LOADTEST_NO_BUILD=1 (skip cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
ITEMS=${1:-1000000}
REPS=${2:-200}
CONCURRENCY=${3:-4}
PORT=${LOADTEST_PORT:-8095}
URL="http://127.0.0.1:$PORT"
DATA=var/collections
scripts/setup.sh >/dev/null
if [ "${LOADTEST_NO_BUILD:-}" != 1 ]; then
  cargo build --release --bin cloudlens 2>&1 | tail -1
  cargo build --release -p loadtest 2>&1 | tail -1
fi

echo "== machine"; nproc; grep MemTotal /proc/meminfo
echo "== commit"; git log -1 --format='%h %s' | cut -c1-120

start_own_server collections "$DATA" "$PORT"

target/release/loadtest collections --url "$URL" --items "$ITEMS" --reps "$REPS" \
  --concurrency "$CONCURRENCY" --conn "host=$PWD/$DATA/run port=54329 user=cloudlens dbname=cloudlens"

report_memory "$DATA"
