#!/usr/bin/env bash
# Runs every benchmark of loadtest/ on this machine and prints the figures that go into
# loadtest/RESULTS.md (about 13 minutes on 2 cores, plus the builds).
#
#   loadtest/run.sh [SECONDS_PER_HTTP_RUN]        default 10
#
# Environment (defaults are the full run): LOADTEST_ROUNDS (5), LOADTEST_PORT (8088),
# LOADTEST_READS_SECONDS (10), LOADTEST_BUDGETS (90000), LOADTEST_STORE_SECONDS (10),
# LOADTEST_CATCHUP_EVENTS (300000). A smoke run of everything in about 2 minutes:
#   LOADTEST_ROUNDS=2 LOADTEST_READS_SECONDS=2 LOADTEST_BUDGETS=10000 \
#   LOADTEST_STORE_SECONDS=2 LOADTEST_CATCHUP_EVENTS=20000 loadtest/run.sh 2
#
# Every figure with a raw baseline is measured in rounds: the measured run and its baseline
# back to back, in the same cluster, then the next round; printed per round and as the
# median and min–max over the rounds.
#
# 1. HTTP writes: its own server (release build, own local cluster under var/loadtest,
#    wiped first); per round `POST /api/v1/budgets` (write-heavy, 32 connections), then
#    the raw 1-row INSERT baseline with 32 connections in the server's own database
#    (`loadtest raw-insert`). Then read-heavy, mixed and the event-to-view lag, once each.
# 2. Reads: loadtest/reads.sh (own server and cluster under var/reads; wrk and pgbench).
# 3. Store and catch-up: `loadtest store` and `loadtest catchup` in a second local
#    cluster (var/bench), each in rounds with their raw baselines interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
SECS=${1:-10}
ROUNDS=${LOADTEST_ROUNDS:-5}
PORT=${LOADTEST_PORT:-8088}
READS_SECS=${LOADTEST_READS_SECONDS:-10}
BUDGETS=${LOADTEST_BUDGETS:-90000}
STORE_SECS=${LOADTEST_STORE_SECONDS:-10}
CATCHUP_EVENTS=${LOADTEST_CATCHUP_EVENTS:-300000}
scripts/setup.sh
cargo build --release --bin cloudlens
cargo build --release -p loadtest --bin loadtest
LT=target/release/loadtest
STARTED=$(date +%s)

echo "== machine"; nproc; grep MemTotal /proc/meminfo; uname -r
echo "== commit"; git log -1 --format='%h %s (%ci)' 2>/dev/null | cut -c1-160 || true
git status --short 2>/dev/null | head -20 || true

stop_stale_cluster var/loadtest
rm -rf var/loadtest
mkdir -p var
CLOUDLENS_DATA_DIR=var/loadtest CLOUDLENS_LISTEN=127.0.0.1:$PORT RUST_LOG=warn \
  target/release/cloudlens serve > var/loadtest-server.log 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.5; done
SERVER_DB="host=$PWD/var/loadtest/run port=54329 user=cloudlens dbname=cloudlens"

echo "== http write-heavy vs raw INSERT 1 row/txn in the server's own database: 32 connections, ${SECS}s each, $ROUNDS rounds"
WRITES=$(mktemp)
for ((r = 1; r <= ROUNDS; r++)); do
  echo "-- round $r/$ROUNDS"
  http=$($LT http --url "http://127.0.0.1:$PORT" --scenario write-heavy --connections 32 --seconds "$SECS")
  echo "$http"
  raw=$($LT raw-insert --conn "$SERVER_DB" --connections 32 --seconds "$SECS")
  echo "$raw"
  # http: "create  ok  req/s  p50  p95  p99"; raw: "raw INSERT, … s: <rate> rows/s"
  awk -v r="$r" '/^create / { rps = $3; p99 = $6 } /^errors: create/ { err = 1 }
      /^raw INSERT/ { raw = $(NF - 1) }
      END { printf "%s %s %s %s %s\n", r, rps, p99, raw, err + 0 }' <<<"$http
$raw" >>"$WRITES"
  awk -v r="$r" '$1 == r { printf "   POST /api/v1/budgets / raw INSERT 1 row/txn: %.0f %%\n", 100 * $2 / $4 }' "$WRITES"
done
echo "== http writes: median [min–max] over $ROUNDS rounds"
echo "   POST /api/v1/budgets req/s:        $(awk '{ print $2 }' "$WRITES" | median_spread %.0f)"
echo "   POST /api/v1/budgets p99 ms:       $(awk '{ print $3 }' "$WRITES" | median_spread %.2f)"
echo "   raw INSERT 1 row/txn rows/s:       $(awk '{ print $4 }' "$WRITES" | median_spread %.0f)"
echo "   POST / raw INSERT %:               $(awk '{ print 100 * $2 / $4 }' "$WRITES" | median_spread %.0f)"
echo "   rounds with failed creates:        $(awk '$5 > 0' "$WRITES" | wc -l)"
rm -f "$WRITES"

for scenario in read-heavy mixed; do
  echo "== http $scenario (32 connections, ${SECS}s, one run)"
  $LT http --url "http://127.0.0.1:$PORT" --scenario $scenario --connections 32 --seconds "$SECS"
done
echo "== http lag (light load: 1 connection, 50 commands/s, ${SECS}s)"
$LT http --url "http://127.0.0.1:$PORT" --scenario lag --rate 50 --seconds "$SECS"
echo "== server memory high-water mark"
grep VmHWM "/proc/$SERVER/status"
kill -TERM $SERVER; wait $SERVER || true
trap - EXIT

LOADTEST_NO_BUILD=1 loadtest/reads.sh "$ROUNDS" "$READS_SECS" "$BUDGETS"

echo "== store (16 connections, $STORE_SECS s per phase, $ROUNDS rounds)"
$LT store --connections 16 --seconds "$STORE_SECS" --rounds "$ROUNDS"
echo "== catch-up ($CATCHUP_EVENTS events: 60 % creates, 30 % updates, 10 % deletes; $ROUNDS rounds)"
$LT catchup --events "$CATCHUP_EVENTS" --rounds "$ROUNDS"
stop_stale_cluster var/bench
echo "== total $(($(date +%s) - STARTED)) s (without setup and builds)"
