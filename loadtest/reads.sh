#!/usr/bin/env bash
# Read benchmark: HTTP reads of the server against the raw SQL they stand for, all in one
# cluster and one phase, repeated in rounds. Called by loadtest/run.sh.
#
#   loadtest/reads.sh [ROUNDS [SECONDS [BUDGETS]]]      defaults: 5 rounds, 10 s, 90000
#
# 1. Starts the release server on its own local cluster (var/reads, wiped first) on
#    127.0.0.1:$READS_PORT (8089).
# 2. Seeds BUDGETS budgets: BudgetCreated events inserted straight into `events` (one
#    INSERT … SELECT of 10,000 per transaction; the statement trigger takes the writer
#    lock), then waits until the `budgets` projector reports lag 0, then VACUUM ANALYZE.
#    Budget n (1 ≤ n ≤ BUDGETS) has the id 0193c000-0000-7000-8000-<n as 12 hex digits>
#    and the tags {"team": "team-<n % 16>", "env": "prod"}.
# 3. Warms up (2 s of each client), then per round, against the same server and cluster,
#    back to back, 32 connections each:
#      a. http  GET /api/v1/budgets/{id}                    wrk -t2 -c32, random seeded id
#      b. sql   SELECT * FROM budgets_view WHERE id = $1    pgbench -M prepared -c32 -j2
#      b2. sql  the server's GET_SQL (its stored JSON, version, created_at; ADR 0032), same
#      c. http  GET /api/v1/budgets/{id}?min_position=P     P = the highest seeded position
#      d. http  GET /api/v1/budgets?tag=team:team-<k>&limit=20      k random in 0..15
#      e. sql   the server's LIST_TAG_SQL, same values as plain parameters, pgbench -M
#               prepared (16 copies of reads/list.sql, one per tag, equal weights)
#    and prints req/s, p50/p99/max per line and the ratios a/b, a/b2, c/a, d/e; at the end the
#    median and min–max of every figure over the rounds, and the issue's targets.
#
# Ids: pgbench cannot pick from a list, so both sides compute the id from a random integer
# (wrk in Lua, pgbench in SQL with immutable functions on the bound integer: a few µs per
# query, nothing else). No lookup table, so neither side pays an extra query.
# Tag selectivity: 16 teams, so each tag matches 1/16 (6.25 %) of the budgets; the page
# is the first one (no cursor), 20 items (the server fetches 21 to know if more follow).
#
# Environment: READS_PORT (8089), LOADTEST_NO_BUILD=1 (skip cargo build; run.sh has built).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
ROUNDS=${1:-5}
SECS=${2:-10}
BUDGETS=${3:-90000}
PORT=${READS_PORT:-8089}
TEAMS=16
CONNS=32
DATA=var/reads
ABS_DATA=$PWD/$DATA
PG_PORT=54329
HERE=$PWD/loadtest/reads
PGBENCH=$PG_BIN/pgbench
[ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench)
command -v wrk >/dev/null || { echo "wrk is missing: run scripts/setup.sh" >&2; exit 1; }
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$ABS_DATA/run" -p "$PG_PORT" -U cloudlens cloudlens)
URL=http://127.0.0.1:$PORT

if [ "${LOADTEST_NO_BUILD:-}" != 1 ]; then
  cargo build --release --bin cloudlens
fi

stop_stale_cluster "$DATA"
rm -rf "$DATA"
mkdir -p var
OUT=$(mktemp -d /tmp/cloudlens-reads.XXXXXX)
CLOUDLENS_DATA_DIR=$DATA CLOUDLENS_LISTEN=127.0.0.1:$PORT RUST_LOG=warn \
  target/release/cloudlens serve > var/reads-server.log 2>&1 &
SERVER=$!
cleanup() {
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT
for _ in $(seq 1 120); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.5; done
curl -sf "$URL/readyz" >/dev/null || { echo "server did not become ready; see var/reads-server.log" >&2; exit 1; }

echo "== reads: seeding $BUDGETS budgets (BudgetCreated events inserted into events, 10,000 per transaction)"
started=$(date +%s.%N)
seed_budgets "$BUDGETS" "$TEAMS" "$URL" "${PSQL[@]}"
MAXPOS=$("${PSQL[@]}" -At -c "SELECT max(position) FROM events")
ROWS=$("${PSQL[@]}" -At -c "SELECT count(*) FROM budgets_view")
printf 'seeded %s rows in budgets_view (highest position %s) in %.1f s, projector lag 0\n' \
  "$ROWS" "$MAXPOS" "$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')"
[ "$ROWS" = "$BUDGETS" ] || { echo "expected $BUDGETS rows" >&2; exit 1; }

# One measurement = one line in $OUT/results: round name req/s p50 p99 max (ms) errors.
wrk_run() { # round name secs mode count [query]
  local round=$1 name=$2 secs=$3
  local line
  line=$(wrk -t2 -c$CONNS -d"${secs}s" --latency -s "$HERE/budgets.lua" "$URL" -- "${@:4}" | grep '^RESULT ')
  # RESULT requests=… duration_us=… p50_us=… p99_us=… max_us=… non2xx_or_3xx=… connect=… read=… write=… timeout=…
  awk -v r="$round" -v n="$name" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      err = v["non2xx_or_3xx"] + v["connect"] + v["read"] + v["write"] + v["timeout"]
      printf "%s %s %.0f %.2f %.2f %.2f %d\n", r, n, v["requests"] / (v["duration_us"] / 1e6),
             v["p50_us"] / 1000, v["p99_us"] / 1000, v["max_us"] / 1000, err }' <<<"$line" >>"$OUT/results"
}

pgbench_run() { # round name secs [-D var=value …] -f script[@weight] …
  local round=$1 name=$2 secs=$3
  local dir=$OUT/pgbench-$name-$round
  mkdir -p "$dir"
  local report
  report=$( (cd "$dir" && "$PGBENCH" -n -M prepared -c $CONNS -j 2 -T "$secs" -l --log-prefix="$dir/tx" \
    -h "$ABS_DATA/run" -p "$PG_PORT" -U cloudlens "${@:4}" cloudlens 2>&1))
  local tps failed
  tps=$(grep -o '^tps = [0-9.]*' <<<"$report" | head -1 | cut -d' ' -f3)
  failed=$(grep -o '^number of failed transactions: [0-9]*' <<<"$report" | awk '{print $NF}')
  [ -n "$tps" ] || { echo "pgbench failed:" >&2; echo "$report" >&2; exit 1; }
  # Per-transaction log: client tx_no latency_us script epoch_s epoch_us. Each client's
  # first transaction is left out of the latencies: it runs on a backend that has just
  # started and prepares the statement, 70–130 ms when 32 start at once (tps counts it).
  cat "$dir"/tx.* | awk '$2 > 1 { print $3 }' | sort -n | awk -v r="$round" -v n="$name" -v tps="$tps" -v f="${failed:-0}" '
      { l[NR] = $1 }
      END {
        p50 = l[int(0.50 * (NR - 1) + 0.5) + 1]; p99 = l[int(0.99 * (NR - 1) + 0.5) + 1]
        printf "%s %s %.0f %.2f %.2f %.2f %d\n", r, n, tps, p50 / 1000, p99 / 1000, l[NR] / 1000, f }' >>"$OUT/results"
  rm -rf "$dir"
}

# The list baseline: one copy of list.sql per team (pgbench picks a script at random per
# transaction, equal weights), each binding its own tag as a plain jsonb parameter.
LIST_ARGS=(-D tenant=default -D after=00000000-0000-0000-0000-000000000000)
for ((k = 0; k < TEAMS; k++)); do
  sed "s/:tag /:tag$k /" "$HERE/list.sql" >"$OUT/list-$k.sql"
  LIST_ARGS+=(-D "tag$k={\"team\": \"team-$k\"}" -f "$OUT/list-$k.sql@1")
done

WARM=$((SECS < 2 ? SECS : 2))
echo "== reads: warm-up (${WARM} s per client, not counted)"
wrk_run 0 warm "$WARM" get "$BUDGETS"
pgbench_run 0 warm "$WARM" -D budgets="$BUDGETS" -f "$HERE/get.sql"
pgbench_run 0 warm "$WARM" -D budgets="$BUDGETS" -D tenant=default -f "$HERE/get_own.sql"
wrk_run 0 warm "$WARM" list "$TEAMS"
pgbench_run 0 warm "$WARM" "${LIST_ARGS[@]}"
: >"$OUT/results"
# Statement statistics of the measured rounds only (pg_stat_statements is preloaded by the
# local cluster, so it costs the same with or without the extension's view).
"${PSQL[@]}" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null

label() {
  case $1 in
    get) echo "http GET /api/v1/budgets/{id}" ;;
    get_sql) echo "sql  SELECT * FROM budgets_view WHERE id = \$1" ;;
    get_min) echo "http GET /api/v1/budgets/{id}?min_position=P" ;;
    list) echo "http GET /api/v1/budgets?tag=team:team-K&limit=20" ;;
    list_sql) echo "sql  LIST_TAG_SQL (tag, limit 21)" ;;
    get_own) echo "sql  GET_SQL (the server's statement)" ;;
  esac
}
NAMES=(get get_sql get_own get_min list list_sql)

echo "== reads: $ROUNDS rounds × 6 runs of ${SECS} s, $CONNS connections, $BUDGETS budgets, min_position P = $MAXPOS"
echo "   (http: wrk -t2 -c$CONNS --latency; sql: pgbench -n -M prepared -c $CONNS -j 2, latencies from its"
echo "   per-transaction log without each client's first transaction: a fresh backend preparing the statement)"
for ((r = 1; r <= ROUNDS; r++)); do
  wrk_run "$r" get "$SECS" get "$BUDGETS"
  pgbench_run "$r" get_sql "$SECS" -D budgets="$BUDGETS" -f "$HERE/get.sql"
  pgbench_run "$r" get_own "$SECS" -D budgets="$BUDGETS" -D tenant=default -f "$HERE/get_own.sql"
  wrk_run "$r" get_min "$SECS" get "$BUDGETS" "min_position=$MAXPOS"
  wrk_run "$r" list "$SECS" list "$TEAMS"
  pgbench_run "$r" list_sql "$SECS" "${LIST_ARGS[@]}"
  echo "-- round $r/$ROUNDS"
  printf '   %-52s %9s %8s %8s %8s %7s\n' what req/s "p50 ms" "p99 ms" "max ms" errors
  for n in "${NAMES[@]}"; do
    awk -v r="$r" -v n="$n" -v l="$(label "$n")" '$1 == r && $2 == n {
        printf "   %-52s %9d %8.2f %8.2f %8.2f %7d\n", l, $3, $4, $5, $6, $7 }' "$OUT/results"
  done
  awk -v r="$r" '$1 == r { rps[$2] = $3 } END {
      printf "   ratios: GET / point SELECT %.0f %% (/ its own SQL %.0f %%), GET min_position / GET %.0f %%, list / its SQL %.0f %%\n",
             100 * rps["get"] / rps["get_sql"], 100 * rps["get"] / rps["get_own"], 100 * rps["get_min"] / rps["get"],
             100 * rps["list"] / rps["list_sql"] }' "$OUT/results"
done

# Median and min–max over the rounds, and the targets of the issue.
echo "== reads: median [min–max] over $ROUNDS rounds"
awk -v rounds="$ROUNDS" '
  function sortn(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
  function med(a, n) { sortn(a, n); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  function stat(key, fmt,   a, i, m) { for (i = 1; i <= rounds; i++) a[i] = v[key, i]; m = med(a, rounds); s_med[key] = m
      return sprintf(fmt " [" fmt "–" fmt "]", m, a[1], a[rounds]) }
  $1 > 0 { v[$2 "_rps", $1] = $3; v[$2 "_p50", $1] = $4; v[$2 "_p99", $1] = $5; v[$2 "_max", $1] = $6; err[$2] += $7 }
  END {
    for (i = 1; i <= rounds; i++) {
      v["r_get", i] = 100 * v["get_rps", i] / v["get_sql_rps", i]
      v["r_own", i] = 100 * v["get_rps", i] / v["get_own_rps", i]
      v["r_min", i] = 100 * v["get_min_rps", i] / v["get_rps", i]
      v["r_list", i] = 100 * v["list_rps", i] / v["list_sql_rps", i]
      ok_get += v["r_get", i] >= 60; ok_own += v["r_own", i] >= 60; ok_p99 += v["get_p99", i] <= 10; ok_max += v["get_max", i] <= 100
      ok_min += v["r_min", i] >= 80; ok_list += v["r_list", i] >= 80
      ok_minp99 += v["get_min_p99", i] <= 10; ok_minmax += v["get_min_max", i] <= 100
    }
    n = split("get get_sql get_own get_min list list_sql", names, " ")
    split("http GET /api/v1/budgets/{id}|sql  SELECT * FROM budgets_view WHERE id = $1|sql  GET_SQL (the server\x27s statement)|http GET /api/v1/budgets/{id}?min_position=P|http GET /api/v1/budgets?tag=team:team-K&limit=20|sql  LIST_TAG_SQL (tag, limit 21)", labels, "|")
    printf "   %-52s %-22s %-22s %-22s %-22s %s\n", "what", "req/s", "p50 ms", "p99 ms", "max ms", "errors"
    for (k = 1; k <= n; k++) {
      x = names[k]
      printf "   %-52s %-22s %-22s %-22s %-22s %d\n", labels[k], stat(x "_rps", "%.0f"), stat(x "_p50", "%.2f"),
             stat(x "_p99", "%.2f"), stat(x "_max", "%.1f"), err[x]
    }
    printf "   ratio GET / point SELECT:              %s %%\n", stat("r_get", "%.0f")
    printf "   ratio GET / the server\x27s GET_SQL:      %s %%\n", stat("r_own", "%.0f")
    printf "   ratio GET min_position / GET:          %s %%\n", stat("r_min", "%.0f")
    printf "   ratio list by tag / its SQL:           %s %%\n", stat("r_list", "%.0f")
    print "== reads: targets of the issue (median over the rounds; rounds meeting it)"
    t("GET >= 60 % of the point SELECT", s_med["r_get"] >= 60, ok_get)
    t("GET >= 60 % of its own statement", s_med["r_own"] >= 60, ok_own)
    t("GET p99 <= 10 ms", s_med["get_p99"] <= 10, ok_p99)
    t("GET max <= 100 ms (no stalls)", s_med["get_max"] <= 100, ok_max)
    t("GET min_position >= 80 % of GET", s_med["r_min"] >= 80, ok_min)
    t("GET min_position p99 <= 10 ms", s_med["get_min_p99"] <= 10, ok_minp99)
    t("GET min_position max <= 100 ms", s_med["get_min_max"] <= 100, ok_minmax)
    t("list by tag >= 80 % of its SQL", s_med["r_list"] >= 80, ok_list)
    e = 0; for (x in err) e += err[x]
    if (e > 0) print "   WARNING: some requests failed (errors column): their rates are not comparable"
  }
  function t(what, met, k) { printf "   %-36s %-8s %d/%d rounds\n", what, met ? "met" : "NOT met", k, rounds }
' "$OUT/results"
echo "== reads: the statements inside PostgreSQL over the rounds (pg_stat_statements; wall-clock"
echo "   execution time, so it grows when backends wait for a core: the server and wrk take more"
echo "   CPU than pgbench). The server's statements: id, version, created_at, doc and tenant_id = \$1 first."
"${PSQL[@]}" -c "
SELECT calls, round(mean_exec_time::numeric, 3) AS mean_exec_ms, round(rows::numeric / calls, 1) AS rows_per_call,
       left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS query
  FROM pg_stat_statements
 WHERE query LIKE '%FROM budgets_view WHERE%' AND calls >= 100
 ORDER BY query"
echo "== reads: server memory high-water mark"
grep VmHWM "/proc/$SERVER/status" || true
