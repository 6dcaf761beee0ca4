#!/usr/bin/env bash
# Read replica benchmark (issue 13): GET /api/v1/budgets/{id} served by the primary and by
# a streaming replica, same data, same run.
#
#   loadtest/replica.sh [ROUNDS [SECONDS [BUDGETS]]]      defaults: 3 rounds, 10 s, 90000
#
# 1. Starts the release server A on its own local cluster (var/replica, wiped first) and
#    seeds BUDGETS budgets as loadtest/reads.sh does (lib.sh seed_budgets).
# 2. Makes a hot standby of that cluster with `pg_basebackup -R` (var/replica-standby,
#    streaming from the primary's socket) and starts it.
# 3. Starts server B against the same primary (DATABASE_URL) with CLOUDLENS_REPLICA_URL
#    pointing at the standby. A runs the projectors (elected first); B serves queries.
# 4. Per round, back to back, wrk -t2 -c32 for SECONDS each:
#      A GET /api/v1/budgets/{id}                 (primary)
#      B GET /api/v1/budgets/{id}                 (replica)
#      A GET /api/v1/budgets/{id}?min_position=P  (primary, P = highest seeded position)
#      B GET /api/v1/budgets/{id}?min_position=P  (replica: checks the primary's WAL position
#                                                  and the replica's replay first)
#    and B's served-by counters, to show where its queries went.
# Everything runs on this one machine: the replica adds a PostgreSQL cluster to the same
# cores, so this measures the cost of the path, not the capacity a second machine adds.
#
# Environment: LOADTEST_PORT (8099; B takes the next port), LOADTEST_NO_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
ROUNDS=${1:-3}
SECS=${2:-10}
BUDGETS=${3:-90000}
PORT=${LOADTEST_PORT:-8099}
PORT_B=$((PORT + 1))
DATA=var/replica
STANDBY=$PWD/var/replica-standby
PG_PORT=54329
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$PWD/$DATA/run" -p "$PG_PORT" -U cloudlens cloudlens)
command -v wrk >/dev/null || { echo "wrk is missing: run scripts/setup.sh" >&2; exit 1; }
if [ "${LOADTEST_NO_BUILD:-}" != 1 ]; then
  cargo build --release --bin cloudlens 2>&1 | tail -1
fi
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

echo "== machine"; nproc; grep MemTotal /proc/meminfo
echo "== commit"; git log -1 --format='%h %s' | cut -c1-120

stop_stale_cluster var/replica-standby
rm -rf "$STANDBY"
start_own_server replica "$DATA" "$PORT"
seed_budgets "$BUDGETS" 16 "http://127.0.0.1:$PORT" "${PSQL[@]}"
MAXPOS=$("${PSQL[@]}" -At -c "SELECT max(position) FROM events")

mkdir -p "$STANDBY/pgdata" "$STANDBY/run" "$STANDBY/log"
[ "$(id -u)" = 0 ] && chown -R postgres: "$STANDBY"
chmod 700 "$STANDBY/pgdata"
as_pg "$PG_BIN/pg_basebackup" -D "$STANDBY/pgdata" -R -X stream -c fast \
  -h "$PWD/$DATA/run" -p "$PG_PORT" -U cloudlens
as_pg "$PG_BIN/pg_ctl" -D "$STANDBY/pgdata" -l "$STANDBY/log/postgres.log" -w \
  -o "-k $STANDBY/run -p $PG_PORT" start >/dev/null
echo "standby: $(psql -X -At -h "$STANDBY/run" -p "$PG_PORT" -U cloudlens cloudlens -c "SELECT pg_is_in_recovery()") in recovery"

env DATABASE_URL="host=$PWD/$DATA/run port=$PG_PORT user=cloudlens dbname=cloudlens" \
  CLOUDLENS_REPLICA_URL="host=$STANDBY/run port=$PG_PORT user=cloudlens dbname=cloudlens" \
  CLOUDLENS_LISTEN="127.0.0.1:$PORT_B" RUST_LOG=warn \
  target/release/cloudlens serve >var/replica-b-server.log 2>&1 &
SERVER_B=$!
trap 'kill -TERM $SERVER $SERVER_B 2>/dev/null; wait $SERVER $SERVER_B 2>/dev/null || true;
      as_pg "$PG_BIN/pg_ctl" -D "$STANDBY/pgdata" -m fast -w stop >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT_B/readyz" >/dev/null && break; sleep 0.5; done

run() { # label port [query]
  local line
  line=$(wrk -t2 -c32 -d"${SECS}s" --latency -s loadtest/reads/budgets.lua "http://127.0.0.1:$2" -- get "$BUDGETS" "${3:-}" | grep '^RESULT ')
  awk -v l="$1" '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      err = v["non2xx_or_3xx"] + v["connect"] + v["read"] + v["write"] + v["timeout"]
      printf "   %-44s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  max %7.2f ms  errors %d\n", l,
             v["requests"] / (v["duration_us"] / 1e6), v["p50_us"] / 1000, v["p99_us"] / 1000, v["max_us"] / 1000, err }' <<<"$line"
}
echo "== warm-up"; SECS=2 run "A primary (warm-up)" "$PORT" >/dev/null; SECS=2 run "B replica (warm-up)" "$PORT_B" >/dev/null
echo "== $ROUNDS rounds × 4 runs of $SECS s, wrk -t2 -c32, $BUDGETS budgets, P = $MAXPOS"
for ((r = 1; r <= ROUNDS; r++)); do
  echo "-- round $r"
  run "GET /budgets/{id}, primary (A)" "$PORT"
  run "GET /budgets/{id}, replica (B)" "$PORT_B"
  run "GET …?min_position=P, primary (A)" "$PORT" "min_position=$MAXPOS"
  run "GET …?min_position=P, replica (B)" "$PORT_B" "min_position=$MAXPOS"
done
echo "== B's queries by where they were served"
curl -s "http://127.0.0.1:$PORT_B/metrics" | grep -E '^cloudlens_replica_(queries_total|up|lag)'
