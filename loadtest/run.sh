#!/usr/bin/env bash
# Runs every benchmark of loadtest/ on this machine and prints the figures that go into
# loadtest/RESULTS.md. Starts its own server (release build, own local cluster under
# var/loadtest, wiped first) and uses a second local cluster (var/bench) for the
# database-side benchmarks. Usage: loadtest/run.sh [SECONDS_PER_HTTP_SCENARIO]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
PORT=${LOADTEST_PORT:-8088}
scripts/setup.sh
cargo build --release --bin cloudlens
cargo build --release -p loadtest
LT=target/release/loadtest

echo "== machine"; nproc; grep MemTotal /proc/meminfo; uname -r

rm -rf var/loadtest
CLOUDLENS_DATA_DIR=var/loadtest CLOUDLENS_LISTEN=127.0.0.1:$PORT RUST_LOG=warn \
  target/release/cloudlens serve > var/loadtest-server.log 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.5; done

for scenario in write-heavy read-heavy mixed; do
  echo "== http $scenario (32 connections, ${SECS}s)"
  $LT http --url "http://127.0.0.1:$PORT" --scenario $scenario --connections 32 --seconds "$SECS"
done
echo "== http lag (light load: 1 connection, 50 commands/s, ${SECS}s)"
$LT http --url "http://127.0.0.1:$PORT" --scenario lag --rate 50 --seconds "$SECS"
echo "== server memory high-water mark"
grep VmHWM "/proc/$SERVER/status"
kill -TERM $SERVER; wait $SERVER || true
trap - EXIT

echo "== store (16 connections, 10 s per phase)"
$LT store --connections 16 --seconds 10
echo "== catch-up (1,000,000 events)"
$LT catchup --events 1000000
