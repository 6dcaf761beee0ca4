#!/usr/bin/env bash
# Costs benchmark (issue "Costs"): bill imports (lines/s until visible to queries, server
# memory), then breakdowns over all imported lines, each answered from the daily rollup and,
# in the same run, the same query over the raw lines (`source=lines`: no rollup).
#
#   loadtest/costs.sh [ACCOUNTS [LINES [REPS [RAW_REPS]]]]    defaults 10 1000000 50 10
#
# 1. Generates ACCOUNTS bill files of LINES lines each (cloudlens format, seeded:
#    `loadtest bills`, var/costs-data/…), spread evenly over 90 days from 2024-01-01, with
#    their exact sums per (account, day, service) computed by the generator.
# 2. Starts the release server on its own local cluster (var/costs, wiped first), opens
#    the accounts and imports the files one after another. Each import is timed from the
#    request until GET /api/v1/costs/imports/{id} says `complete` (every line visible).
# 3. Checks every (account, day, service) sum of the server against the generator's, and
#    the grand total to the last digit.
# 4. Times each breakdown REPS times (sequential, curl's total time) from the rollup, and
#    RAW_REPS times over the raw lines; prints p50/p95/max.
# 5. Budget status p95 for four budgets (an account and a service; every account over a
#    quarter; an account and a one-tag filter, from the tag rollup; an account and a
#    two-tag filter, which reads the lines).
# 6. A virtual tag saved over every line: time until its recompute job reports
#    `complete`, and a breakdown by it.
# 7. Memory high-water marks (VmHWM) of the server and PostgreSQL's largest process;
#    table sizes.
#
# Environment: LOADTEST_PORT (8091).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
ACCOUNTS=${1:-10}
LINES=${2:-1000000}
REPS=${3:-50}
RAW_REPS=${4:-10}
PORT=${LOADTEST_PORT:-8091}
URL="http://127.0.0.1:$PORT"
FROM=2024-01-01
TO=2024-03-31 # 90 days, `to` exclusive
scripts/setup.sh >/dev/null
cargo build --release --bin cloudlens -p cloudlens -p loadtest 2>&1 | tail -1
DATA=var/costs-data/${ACCOUNTS}x${LINES}
[ -f "$DATA/sums.csv" ] || target/release/loadtest bills --lines "$LINES" --accounts "$ACCOUNTS" \
  --days 90 --start "$FROM" --out "$DATA"

echo "== machine"; nproc; grep MemTotal /proc/meminfo
echo "== commit"; git log -1 --format='%h %s' | cut -c1-120

stop_stale_cluster var/costs
rm -rf var/costs
CLOUDLENS_DATA_DIR=var/costs CLOUDLENS_LISTEN=127.0.0.1:$PORT RUST_LOG=warn \
  target/release/cloudlens serve > var/costs-server.log 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.5; done
curl -sf "$URL/readyz" >/dev/null || { echo "server not ready; see var/costs-server.log" >&2; exit 1; }

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "== imports ($ACCOUNTS files × $LINES lines)"
printf '%-8s %10s %12s %14s %12s\n' account lines request_s until_visible_s lines_per_s
for ((a = 0; a < ACCOUNTS; a++)); do
  acct=$(printf 'acct-%02d' "$a")
  curl -sf -H 'Content-Type: application/json' "$URL/api/v1/accounts" \
    -d "{\"provider\": \"aliyun\", \"name\": \"$acct\", \"currency\": \"CNY\"}" >/dev/null
  t0=$(now)
  answer=$(curl -sf -H 'Content-Type: text/csv' --data-binary "@$DATA/$acct.csv" \
    "$URL/api/v1/costs/imports?account=$acct&format=cloudlens")
  t1=$(now)
  id=$(field "['import_id']" <<<"$answer")
  lines=$(field "['lines']" <<<"$answer")
  while [ "$(curl -sf "$URL/api/v1/costs/imports/$id" | field "['state']" 2>/dev/null)" != complete ]; do
    sleep 0.05
  done
  t2=$(now)
  printf '%-8s %10s %12s %14s %12.0f\n' "$acct" "$lines" "$(secs "$t0" "$t1")" "$(secs "$t0" "$t2")" \
    "$(awk -v n="$lines" -v a="$t0" -v b="$t2" 'BEGIN { print n / (b - a) }')"
done
echo "server VmHWM: $(grep VmHWM /proc/$SERVER/status | awk '{ printf "%.0f MiB", $2 / 1024 }')"

echo "== exact sums: every (account, day, service) against the generator's"
curl -sf "$URL/api/v1/costs?from=$FROM&to=$TO&bucket=day&group_by=account,service" > /tmp/costs-check.json
python3 - "$DATA/sums.csv" /tmp/costs-check.json <<'PY'
import csv, json, sys
from decimal import Decimal
expected, total = {}, None
for r in csv.DictReader(open(sys.argv[1])):
    if r["account"] == "total":
        total = Decimal(r["cost"])
    else:
        expected[(r["account"], r["day"], r["service"])] = Decimal(r["cost"])
got = {}
v = json.load(open(sys.argv[2]))
for b in v["buckets"]:
    for g in b["groups"]:
        got[(g["key"]["account"], b["start"][:10], g["key"]["service"])] = Decimal(g["cost"])
differ = sum(1 for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
print(f"{differ} of {len(expected)} sums differ; total {v['total']} vs generator {total}:",
      "equal" if Decimal(v["total"]) == total else "DIFFERENT")
PY

# p50/p95/max (ms) of REPS sequential requests.
timed() { # REPS PATH
  local n=$1 path=$2
  curl -sf -o /dev/null "$URL$path" # warm-up
  for ((i = 0; i < n; i++)); do
    curl -sf -o /dev/null -w '%{time_total}\n' "$URL$path"
  done | sort -g | awk '{ v[NR] = $1 * 1000 } END {
    p50 = v[int(NR * 0.50 + 0.999)]; p95 = v[int(NR * 0.95 + 0.999)]
    printf "n=%d p50 %.1f ms  p95 %.1f ms  max %.1f ms\n", NR, p50, p95, v[NR] }'
}

echo "== breakdowns over $((ACCOUNTS * LINES)) lines, $FROM to $TO"
for q in "bucket=day&group_by=service" "bucket=month&group_by=service" \
         "bucket=day&group_by=account,service,region"; do
  echo "day/month query: $q"
  echo "  rollup: $(timed "$REPS" "/api/v1/costs?from=$FROM&to=$TO&$q")"
  echo "  lines:  $(timed "$RAW_REPS" "/api/v1/costs?from=$FROM&to=$TO&$q&source=lines")"
done
for q in "bucket=month&group_by=tag:team" "bucket=day&group_by=service,tag:team"; do
  echo "tag query: $q"
  echo "  tag rollup: $(timed "$REPS" "/api/v1/costs?from=$FROM&to=$TO&$q")"
  echo "  lines:      $(timed "$RAW_REPS" "/api/v1/costs?from=$FROM&to=$TO&$q&source=lines")"
done
echo "top resources (raw lines): $(timed "$RAW_REPS" "/api/v1/costs/top?by=resource&from=$FROM&to=$TO&limit=10")"
echo "drill-down page (100 lines of one service and day): $(timed "$REPS" "/api/v1/costs/lines?from=2024-02-01&to=2024-02-02&service=ecs&limit=100")"

echo "== budget status (as_of 2024-02-15)"
budget() { curl -sf -H 'Content-Type: application/json' "$URL/api/v1/budgets" -d "$1" | field "['id']"; }
b1=$(budget '{"name": "ecs", "amount": "5000000", "currency": "CNY", "period": "monthly", "type": "cost",
  "start_date": "2024-01-01", "account": "acct-00", "service_filter": ["ecs"], "alert_thresholds": ["80", "100"]}')
b2=$(budget '{"name": "all", "amount": "900000000", "currency": "CNY", "period": "quarterly", "type": "cost",
  "start_date": "2024-01-01", "alert_thresholds": ["50"]}')
b3=$(budget '{"name": "web", "amount": "5000000", "currency": "CNY", "period": "monthly", "type": "cost",
  "start_date": "2024-01-01", "account": "acct-00", "tag_filter": {"team": "web"}}')
b4=$(budget '{"name": "web-prod", "amount": "5000000", "currency": "CNY", "period": "monthly", "type": "cost",
  "start_date": "2024-01-01", "account": "acct-00", "tag_filter": {"team": "web", "env": "prod"}}')
sleep 2
echo "one account, one service, month (rollup):      $(timed "$REPS" "/api/v1/budgets/$b1/status?as_of=2024-02-15")"
echo "all accounts, quarter (rollup):                $(timed "$REPS" "/api/v1/budgets/$b2/status?as_of=2024-02-15")"
echo "one account, one-tag filter, month (tag rollup): $(timed "$REPS" "/api/v1/budgets/$b3/status?as_of=2024-02-15")"
echo "one account, two-tag filter, month (lines):    $(timed "$RAW_REPS" "/api/v1/budgets/$b4/status?as_of=2024-02-15")"
echo "== virtual tag recompute over $((ACCOUNTS * LINES)) lines"
t0=$(now)
saved=$(curl -sf -H 'Content-Type: application/json' "$URL/api/v1/costs/virtual-tags" -d '{"name": "owner",
  "default": "shared", "values": [
    {"value": "web", "rule": {"logic": "AND", "conditions": [{"field": "tags.team", "operator": "=", "value": "web"}]}},
    {"value": "big", "rule": {"logic": "OR", "conditions": [{"field": "service", "operator": "in", "value": ["ecs", "rds"]},
                                                             {"field": "cost", "operator": ">", "value": 150}]}}]}' | field "['position']")
last=""
while :; do
  r=$(curl -sf "$URL/api/v1/costs/virtual-tags?min_position=$saved" | field "['items'][0]['recompute']")
  state=$(python3 -c "import ast,sys; print(ast.literal_eval(sys.argv[1])['state'])" "$r")
  [ "$state" = complete ] && break
  [ "$r" != "$last" ] && { echo "  $(secs "$t0" "$(now)") s: $r"; last=$r; }
  sleep 1
done
t1=$(now)
echo "recomputed: $r in $(secs "$t0" "$t1") s"
echo "vtag query (lines): bucket=month&group_by=vtag:owner: $(timed "$RAW_REPS" "/api/v1/costs?from=$FROM&to=$TO&bucket=month&group_by=vtag:owner")"

echo "== memory and sizes"
echo "server VmHWM: $(grep VmHWM /proc/$SERVER/status | awk '{ printf "%.0f MiB", $2 / 1024 }')"
pg_max=0
for p in $(pgrep -f "postgres.*var/costs" || true); do
  kb=$(awk '/VmHWM/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
  [ "${kb:-0}" -gt "$pg_max" ] && pg_max=$kb
done
echo "PostgreSQL largest process VmHWM: $((pg_max / 1024)) MiB"
psql -X -q -At -h "$PWD/var/costs/run" -p 54329 -U cloudlens cloudlens -c "
  SELECT 'cost_lines ' || pg_size_pretty(hypertable_size('cost_lines'))
      || ', cost_daily ' || pg_size_pretty(hypertable_size('cost_daily'))
      || ' (' || (SELECT count(*) FROM cost_daily) || ' rows)'
      || ', cost_daily_tags ' || pg_size_pretty(hypertable_size('cost_daily_tags'))
      || ' (' || (SELECT count(*) FROM cost_daily_tags) || ' rows), events '
      || pg_size_pretty(pg_total_relation_size('events'))" 2>/dev/null || true
