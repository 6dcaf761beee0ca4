#!/usr/bin/env bash
# Event feed benchmark (issue 13).
#
#   loadtest/feed.sh [EVENTS [REPS]]    defaults 1000000 200
#
# Starts the release server on its own local cluster (var/feed, wiped first) and runs
# `loadtest feed`: EVENTS events seeded straight into the log, read from the start by one
# consumer through NDJSON pages of 10,000 (events/s); then REPS budgets created one at a
# time, each timed from the command's 201 to its event on an open SSE stream (p50/p99).
# Last: the memory high-water marks.
#
# Environment: LOADTEST_PORT (8096), LOADTEST_NO_BUILD=1 (skip cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
EVENTS=${1:-1000000}
REPS=${2:-200}
PORT=${LOADTEST_PORT:-8096}
URL="http://127.0.0.1:$PORT"
DATA=var/feed
scripts/setup.sh >/dev/null
if [ "${LOADTEST_NO_BUILD:-}" != 1 ]; then
  cargo build --release --bin cloudlens 2>&1 | tail -1
  cargo build --release -p loadtest 2>&1 | tail -1
fi

echo "== machine"; nproc; grep MemTotal /proc/meminfo
echo "== commit"; git log -1 --format='%h %s' | cut -c1-120

start_own_server feed "$DATA" "$PORT"

target/release/loadtest feed --url "$URL" --events "$EVENTS" --reps "$REPS" \
  --conn "host=$PWD/$DATA/run port=54329 user=cloudlens dbname=cloudlens"

report_memory "$DATA"
