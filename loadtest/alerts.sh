#!/usr/bin/env bash
# Alerts benchmark (issue 12): evaluation cost of RULES metric rules over SERIES series,
# against the seed's one-query-per-rule evaluation, and notification throughput to a
# local receiver.
#
#   loadtest/alerts.sh [RULES [SERIES [ROUNDS]]]    defaults 1000 10000 5
#
# Starts the release server on its own local cluster (var/alerts, wiped first) with the
# scheduled evaluation off (one round a day: the benchmark runs the rounds itself, with
# the evaluator's own code) and runs `loadtest alerts` (see loadtest/src/alerts.rs).
#
# Environment: LOADTEST_PORT (8096), LOADTEST_NO_BUILD=1 (skip cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
RULES=${1:-1000}
SERIES=${2:-10000}
ROUNDS=${3:-5}
PORT=${LOADTEST_PORT:-8096}
URL="http://127.0.0.1:$PORT"
DATA=var/alerts
scripts/setup.sh >/dev/null
if [ "${LOADTEST_NO_BUILD:-}" != 1 ]; then
  cargo build --release --bin cloudlens 2>&1 | tail -1
  cargo build --release -p loadtest 2>&1 | tail -1
fi

echo "== machine"; nproc; grep MemTotal /proc/meminfo
echo "== commit"; git log -1 --format='%h %s' | cut -c1-120

start_own_server alerts "$DATA" "$PORT" CLOUDLENS_ALERT_EVALUATION_INTERVAL_MS=86400000 \
  CLOUDLENS_NOTIFY_ALLOW_PRIVATE=true

target/release/loadtest alerts --url "$URL" --rules "$RULES" --series "$SERIES" --rounds "$ROUNDS" \
  --conn "host=$PWD/$DATA/run port=54329 user=cloudlens dbname=cloudlens"

report_memory "$DATA"
