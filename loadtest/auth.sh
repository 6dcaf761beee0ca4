#!/usr/bin/env bash
# Cost of API keys (issue "Security and operations"): two servers of the same build on two
# databases of one local cluster, one open (no key exists) and one closed (requests carry
# a writer key), under the same load in alternating rounds, so both databases grow alike.
#
#   loadtest/auth.sh [ROUNDS [SECONDS [BUDGETS]]]      defaults: 5 rounds, 10 s, 20000
#
# 1. Starts server "open" on its own local cluster (var/auth, wiped first), creates a
#    second database in that cluster and starts server "key" on it (`DATABASE_URL`).
# 2. Seeds BUDGETS budgets into each (lib.sh `seed_budgets`); issues an admin and a writer
#    key on "key" and waits until it refuses a request without one (401).
# 3. Per round, wrk -t2 -c32 for SECONDS: GET /api/v1/budgets/{id} (random seeded id) on
#    "open" and on "key" (with `Authorization: Bearer <writer key>`), then POST
#    /api/v1/budgets on both the same way; odd rounds start with "open", even ones with
#    "key". The idle server waits meanwhile. The two POST runs of a round go at once
#    (-t1 -c16 each; AUTH_POST_PAIRED=0: one after the other like the GETs).
# 4. Prints every run, the medians [min–max], and the share of the open throughput that
#    the keyed server reaches (medians of the per-round ratios).
#
# Environment: AUTH_PORT (8094; "key" listens on AUTH_PORT + 1), LOADTEST_NO_BUILD=1,
# AUTH_BASELINE_BIN: the binary of server "open" (default: the same build). Row-level
# security has no switch, so its cost is measured against a build from before it, e.g.
#   git worktree add /tmp/before-rls 579663a && (cd /tmp/before-rls &&
#     CARGO_TARGET_DIR=/tmp/before-rls/target cargo build --release --bin cloudlens)
#   AUTH_BASELINE_BIN=/tmp/before-rls/target/release/cloudlens loadtest/auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
ROUNDS=${1:-5}
SECS=${2:-10}
BUDGETS=${3:-20000}
PORT=${AUTH_PORT:-8094}
DATA=var/auth
ABS_DATA=$PWD/$DATA
HERE=$PWD/loadtest/reads
OPEN=http://127.0.0.1:$PORT
KEYED=http://127.0.0.1:$((PORT + 1))
PSQL_OPEN=(psql -X -q -v ON_ERROR_STOP=1 -h "$ABS_DATA/run" -p 54329 -U cloudlens cloudlens)
PSQL_KEY=(psql -X -q -v ON_ERROR_STOP=1 -h "$ABS_DATA/run" -p 54329 -U cloudlens cloudlens_key)
command -v wrk >/dev/null || { echo "wrk is missing: run scripts/setup.sh" >&2; exit 1; }
[ "${LOADTEST_NO_BUILD:-}" = 1 ] || cargo build --release --bin cloudlens 2>&1 | tail -1
echo "== commit"; git log -1 --format='%h %s' | cut -c1-120
OPEN_BIN=${AUTH_BASELINE_BIN:-target/release/cloudlens}
echo "== server open: $OPEN_BIN; server key: target/release/cloudlens"
stop_stale_cluster "$DATA"
rm -rf "$DATA"
mkdir -p var
OUT=$(mktemp -d /tmp/cloudlens-auth.XXXXXX)
ready() { # URL
  for _ in $(seq 1 120); do curl -sf "$1/readyz" >/dev/null && return 0; sleep 0.5; done
  echo "server $1 did not become ready; see var/auth-*.log" >&2
  return 1
}
CLOUDLENS_DATA_DIR=$DATA CLOUDLENS_LISTEN=127.0.0.1:$PORT RUST_LOG=warn \
  "$OPEN_BIN" serve > var/auth-open.log 2>&1 &
SERVER_OPEN=$!
SERVER_KEY=
cleanup() {
  kill -TERM $SERVER_KEY 2>/dev/null || true
  wait $SERVER_KEY 2>/dev/null || true
  kill -TERM "$SERVER_OPEN" 2>/dev/null || true
  wait "$SERVER_OPEN" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT
ready "$OPEN"
"${PSQL_OPEN[@]}" -c "CREATE DATABASE cloudlens_key"
# The per-key rate limit stays on (its cost is part of the check) but far above the load.
DATABASE_URL="postgresql://cloudlens@/cloudlens_key?host=$ABS_DATA/run&port=54329" \
  CLOUDLENS_RATE_LIMIT_PER_SECOND=10000000 \
  CLOUDLENS_LISTEN=127.0.0.1:$((PORT + 1)) RUST_LOG=warn \
  target/release/cloudlens serve > var/auth-key.log 2>&1 &
SERVER_KEY=$!
ready "$KEYED"
echo "== seeding $BUDGETS budgets into each database"
seed_budgets "$BUDGETS" 16 "$OPEN" "${PSQL_OPEN[@]}"
seed_budgets "$BUDGETS" 16 "$KEYED" "${PSQL_KEY[@]}"

echo "== issuing keys on the keyed server"
key() { # role
  curl -sf -H 'Content-Type: application/json' ${ADMIN:+-H "Authorization: Bearer $ADMIN"} \
    "$KEYED/api/v1/admin/api-keys" -d "{\"name\": \"load-$1\", \"role\": \"$1\", \"tenant\": \"default\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])'
}
ADMIN=$(key admin)
WRITER=$(key writer)
closed() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$KEYED/api/v1/budgets")" = 401 ]; }
for _ in $(seq 1 100); do closed && break; sleep 0.1; done
closed || { echo "the keyed server did not close" >&2; exit 1; }
# The first request with the key verifies it (argon2id), outside the measurement.
curl -sf -o /dev/null -H "Authorization: Bearer $WRITER" "$KEYED/api/v1/budgets"

run() { # round label url mode [wrk args…]
  local round=$1 label=$2 url=$3 mode=$4
  shift 4
  # shellcheck disable=SC2086 # WRK_TC holds two options
  wrk ${WRK_TC:--t2 -c32} -d"${SECS}s" --latency -s "$HERE/budgets.lua" "$@" "$url" -- "$mode" "$BUDGETS" |
    grep '^RESULT ' | awk -v r="$round" -v l="$label" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "%s %s %.0f %.2f %.2f %d\n", r, l, v["requests"] / (v["duration_us"] / 1e6),
             v["p99_us"] / 1000, v["max_us"] / 1000, v["non2xx_or_3xx"] + v["timeout"] }' |
    tee -a "$OUT/results"
}
echo "== rounds: round label req/s p99_ms max_ms errors"
for ((r = 1; r <= ROUNDS; r++)); do
  # Odd rounds start with the open server, even ones with the keyed one: whatever the
  # run before leaves behind (checkpoints, autovacuum) falls on both alike.
  if ((r % 2)); then order="open key"; else order="key open"; fi
  for side in $order; do
    if [ "$side" = open ]; then
      run "$r" get-open "$OPEN" get
    else
      run "$r" get-key "$KEYED" get -H "Authorization: Bearer $WRITER"
    fi
  done
  # POSTs grow the databases, and whichever server ran second in a round was slower
  # (run 1–3 in RESULTS.md): both POST runs go at once, half the connections each, so
  # they share every condition; AUTH_POST_PAIRED=0 runs them one after the other.
  if [ "${AUTH_POST_PAIRED:-1}" = 1 ]; then
    WRK_TC="-t1 -c16" run "$r" post-open "$OPEN" post &
    local_open=$!
    WRK_TC="-t1 -c16" run "$r" post-key "$KEYED" post -H "Authorization: Bearer $WRITER" &
    wait "$local_open" $!  # not a bare `wait`: the servers are children too
  else
    for side in $order; do
      if [ "$side" = open ]; then
        run "$r" post-open "$OPEN" post
      else
        run "$r" post-key "$KEYED" post -H "Authorization: Bearer $WRITER"
      fi
    done
  fi
done

echo "== medians [min–max] over $ROUNDS rounds"
for l in get-open get-key post-open post-key; do
  printf '%-10s req/s %s  p99 ms %s\n' "$l" \
    "$(awk -v l="$l" '$2 == l { print $3 }' "$OUT/results" | median_spread %.0f)" \
    "$(awk -v l="$l" '$2 == l { print $4 }' "$OUT/results" | median_spread %.2f)"
done
for op in get post; do
  printf '%s with a key / open: %s %%\n' "$op" "$(awk -v op="$op" '
      $2 == op "-open" { o[$1] = $3 } $2 == op "-key" { k[$1] = $3 }
      END { for (r in o) if (r in k) print 100 * k[r] / o[r] }' "$OUT/results" | median_spread %.1f)"
done
echo "errors (non-2xx) over all runs: $(awk '{ s += $6 } END { print s + 0 }' "$OUT/results")"
echo "server VmHWM: open $(grep VmHWM /proc/$SERVER_OPEN/status | awk '{ printf "%.0f MiB", $2 / 1024 }'), keyed $(grep VmHWM /proc/$SERVER_KEY/status | awk '{ printf "%.0f MiB", $2 / 1024 }')"
