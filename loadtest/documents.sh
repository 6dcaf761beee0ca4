#!/usr/bin/env bash
# Documents benchmark (issue "Documents, search and TTL collections").
#
#   loadtest/documents.sh [DOCS [REPS]]    defaults 1000000 200
#
# Starts the release server on its own local cluster (var/documents, wiped first) and
# runs `loadtest documents`: bulk load of DOCS generated English/Chinese/mixed documents
# as NDJSON batches, timed until searchable; search p50/p95 over HTTP for one-term, phrase
# and three-term queries, English and Chinese, with and without a metadata filter; then
# the pg_trgm baseline for two-character Chinese queries. Last: the memory high-water marks.
#
# Environment: LOADTEST_PORT (8094), LOADTEST_NO_BUILD=1 (skip cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
DOCS=${1:-1000000}
REPS=${2:-200}
PORT=${LOADTEST_PORT:-8094}
URL="http://127.0.0.1:$PORT"
DATA=var/documents
scripts/setup.sh >/dev/null
if [ "${LOADTEST_NO_BUILD:-}" != 1 ]; then
  cargo build --release --bin cloudlens 2>&1 | tail -1
  cargo build --release -p loadtest 2>&1 | tail -1
fi

echo "== machine"; nproc; grep MemTotal /proc/meminfo
echo "== commit"; git log -1 --format='%h %s' | cut -c1-120

start_own_server documents "$DATA" "$PORT"

target/release/loadtest documents --url "$URL" --docs "$DOCS" --reps "$REPS" \
  --conn "host=$PWD/$DATA/run port=54329 user=cloudlens dbname=cloudlens"

report_memory "$DATA"
