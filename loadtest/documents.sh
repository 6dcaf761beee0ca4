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

stop_stale_cluster "$DATA"
rm -rf "$DATA"
mkdir -p var
CLOUDLENS_DATA_DIR=$DATA CLOUDLENS_LISTEN=127.0.0.1:$PORT RUST_LOG=warn \
  target/release/cloudlens serve > var/documents-server.log 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.5; done
curl -sf "$URL/readyz" >/dev/null || { echo "server not ready; see var/documents-server.log" >&2; exit 1; }

target/release/loadtest documents --url "$URL" --docs "$DOCS" --reps "$REPS" \
  --conn "host=$PWD/$DATA/run port=54329 user=cloudlens dbname=cloudlens"

echo "== memory"
echo "server VmHWM: $(grep VmHWM /proc/$SERVER/status | awk '{ printf "%.0f MiB", $2 / 1024 }')"
pg_max=0
for p in $(pgrep -f "postgres.*var/documents" || true); do
  kb=$(awk '/VmHWM/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
  [ "${kb:-0}" -gt "$pg_max" ] && pg_max=$kb
done
echo "PostgreSQL largest process VmHWM: $((pg_max / 1024)) MiB"
