# shellcheck shell=bash
# Shared helpers of the loadtest scripts (sourced, not run).

PG_BIN=/usr/lib/postgresql/15/bin

# Stops the local cluster of a cloudlens data directory if one is running: a cluster left
# by an earlier, killed run would survive `rm -rf` of its directory.
stop_stale_cluster() { # DATA_DIR
  local pgdata
  [ -f "$1/pgdata/postmaster.pid" ] || return 0
  pgdata=$(cd "$1/pgdata" && pwd)
  if [ "$(id -u)" = 0 ]; then
    runuser -u "${CLOUDLENS_PG_OS_USER:-postgres}" -- "$PG_BIN/pg_ctl" -D "$pgdata" stop -m fast >/dev/null || true
  else
    "$PG_BIN/pg_ctl" -D "$pgdata" stop -m fast >/dev/null || true
  fi
}

# Reads "value" lines on stdin, prints "median [min–max]" with the given printf format.
median_spread() { # FORMAT
  sort -g | awk -v f="$1" '{ v[NR] = $1 } END {
    if (NR == 0) { print "n/a"; exit }
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf f " [" f "–" f "]\n", m, v[1], v[NR] }'
}

# Seeds COUNT budgets as BudgetCreated events inserted straight into `events` (10,000 per
# statement; the statement trigger takes the writer lock), waits until the server at URL
# reports projector lag 0, then VACUUM ANALYZE. Budget n (1 ≤ n ≤ COUNT) has the id
# 0193c000-0000-7000-8000-<n as 12 hex digits> and the tags {"team": "team-<n % TEAMS>",
# "env": "prod"}.
seed_budgets() { # COUNT TEAMS URL PSQL…
  local count=$1 teams=$2 url=$3
  shift 3
  local psql=("$@") from to maxpos status pos lag
  {
    for ((from = 1; from <= count; from += 10000)); do
      to=$((from + 9999 > count ? count : from + 9999))
      cat <<SQL
INSERT INTO events (tenant_id, stream_type, stream_id, stream_version, event_type, schema_version, payload, metadata)
SELECT 'default', 'budget', ('0193c000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 1, 'BudgetCreated', 2,
       jsonb_build_object('name', 'budget ' || g, 'amount', '1200.50', 'currency', 'CNY', 'period', 'monthly',
           'budget_type', 'cost', 'start_date', '2026-01-01', 'end_date', '2026-12-31',
           'tag_filter', jsonb_build_object('team', 'team-' || (g % $teams), 'env', 'prod'),
           'service_filter', '["ecs", "oss"]'::jsonb, 'alert_thresholds', '["80", "100", "120"]'::jsonb,
           'account', 'account-' || (g % 8)),
       jsonb_build_object('command_id', gen_random_uuid(), 'actor', 'seed', 'tenant_id', 'default')
  FROM generate_series($from::bigint, $to::bigint) g;
SQL
    done
  } | "${psql[@]}"
  maxpos=$("${psql[@]}" -At -c "SELECT max(position) FROM events")
  for _ in $(seq 1 600); do
    status=$(curl -sf "$url/api/v1/admin/projections" || true)
    pos=$(grep -o '"position":[0-9]*' <<<"$status" | head -1 | cut -d: -f2)
    lag=$(grep -o '"lag_events":[0-9]*' <<<"$status" | head -1 | cut -d: -f2)
    [ "${lag:-1}" = 0 ] && [ "${pos:-0}" -ge "$maxpos" ] && break
    sleep 0.5
  done
  [ "${lag:-1}" = 0 ] || { echo "projector did not catch up: $status" >&2; return 1; }
  "${psql[@]}" -c "VACUUM ANALYZE events" -c "VACUUM ANALYZE budgets_view" -c "CHECKPOINT"
}

# Starts the release server on a fresh local cluster in DATA (wiped first), listening on
# 127.0.0.1:PORT, with any extra VAR=value settings; sets SERVER (its pid) and a trap that
# stops it on exit; waits until it is ready. Its log is var/NAME-server.log.
start_own_server() { # NAME DATA PORT [VAR=value…]
  local name=$1 data=$2 port=$3
  shift 3
  stop_stale_cluster "$data"
  rm -rf "$data"
  mkdir -p var
  env CLOUDLENS_DATA_DIR="$data" CLOUDLENS_LISTEN="127.0.0.1:$port" RUST_LOG=warn "$@" \
    target/release/cloudlens serve >"var/$name-server.log" 2>&1 &
  SERVER=$!
  trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.5; done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null ||
    { echo "server not ready; see var/$name-server.log" >&2; exit 1; }
}

# Prints the memory high-water marks of the server ($SERVER) and of the largest process
# of the cluster in DATA.
report_memory() { # DATA
  local p kb pg_max=0
  echo "== memory"
  echo "server VmHWM: $(grep VmHWM "/proc/$SERVER/status" | awk '{ printf "%.0f MiB", $2 / 1024 }')"
  for p in $(pgrep -f "postgres.*$1" || true); do
    kb=$(awk '/VmHWM/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
    [ "${kb:-0}" -gt "$pg_max" ] && pg_max=$kb
  done
  echo "PostgreSQL largest process VmHWM: $((pg_max / 1024)) MiB"
}
