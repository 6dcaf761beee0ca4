#!/usr/bin/env bash
# Tagging benchmark (issue "Tagging"): the seed's three user tables imported as CSV, 20
# rules covering every operator, a full run and a 7-day incremental run, each timed from
# the command to `succeeded` (which the server reports only once the tags are readable),
# side by side with the seed's approach (PySpark local[2] over the same data as Parquet)
# measured in the same run.
#
#   loadtest/tagging.sh [USERS]          default 1000000
#
# 1. Generates the data once (loadtest/tagging/gen.py, seeded; var/tagging-data/USERS).
# 2. Starts the release server on its own local cluster (var/tagging, wiped first).
# 3. Declares the `user` kind, imports the three CSVs one after another (each timed from
#    the request until its rows are readable: a `min_position` read of the subjects).
# 4. Creates a category and the 20 tags of loadtest/tagging/rules.json.
# 5. Full run (all users × all tags) twice: the first assigns everything, the second finds
#    nothing to change. Then imports changes.csv (~7 % of users, updated in the last 7
#    days before as_of) and runs `changed_within_days: 7`. All runs use as_of
#    2026-11-20T00:00:00Z, the generator's.
# 6. Memory high-water marks (VmHWM): the server; PostgreSQL's largest process and the sum
#    over its processes (shared buffers count once per process in the sum).
# 7. Checks every user's tags against the PySpark result (same rules, independent code),
#    then runs the PySpark baseline's timings (loadtest/tagging/spark_baseline.py).
#
# Environment: LOADTEST_PORT (8090), LOADTEST_NO_SPARK=1 (skip the baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
USERS=${1:-1000000}
PORT=${LOADTEST_PORT:-8090}
URL="http://127.0.0.1:$PORT"
AS_OF="2026-11-20T00:00:00Z"
scripts/setup.sh >/dev/null
cargo build --release --bin cloudlens 2>&1 | tail -1
DATA=var/tagging-data/$USERS
[ -f "$DATA/changes.csv" ] || python3 loadtest/tagging/gen.py --users "$USERS" --out "$DATA"

echo "== machine"; nproc; grep MemTotal /proc/meminfo
echo "== commit"; git log -1 --format='%h %s' | cut -c1-120

stop_stale_cluster var/tagging
rm -rf var/tagging
CLOUDLENS_DATA_DIR=var/tagging CLOUDLENS_LISTEN=127.0.0.1:$PORT RUST_LOG=warn \
  target/release/cloudlens serve > var/tagging-server.log 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.5; done

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
json() { curl -sf -H 'Content-Type: application/json' "$@"; }

json -X PUT "$URL/api/v1/subject-kinds/user" -d '{
  "id_field": "user_id", "primary_source": "user_basic_info", "attributes": [
  {"name": "register_time", "type": "date", "source": "user_basic_info"},
  {"name": "register_country", "type": "string", "source": "user_basic_info"},
  {"name": "kyc_status", "type": "boolean", "source": "user_basic_info"},
  {"name": "user_level", "type": "number", "source": "user_basic_info"},
  {"name": "total_asset_value", "type": "number", "source": "user_asset_summary"},
  {"name": "total_deposit_amount", "type": "number", "source": "user_asset_summary"},
  {"name": "total_withdraw_amount", "type": "number", "source": "user_asset_summary"},
  {"name": "last_login_time", "type": "date", "source": "user_activity_summary"},
  {"name": "login_count_7d", "type": "number", "source": "user_activity_summary"},
  {"name": "trading_count_30d", "type": "number", "source": "user_activity_summary"},
  {"name": "last_trading_time", "type": "date", "source": "user_activity_summary"}]}' >/dev/null

# Imports a CSV and waits until its rows are readable; prints rows, seconds, rows/s.
import_csv() { # SOURCE FILE
  local t0 res pos rows t1
  t0=$(now)
  res=$(curl -sf -H 'Content-Type: text/csv' --data-binary "@$2" "$URL/api/v1/subjects/user/import?source=$1")
  ack=$(now)
  pos=$(jq -r .position <<<"$res"); rows=$(jq -r .rows <<<"$res")
  until curl -sf -o /dev/null "$URL/api/v1/subjects/user?limit=1&min_position=$pos"; do :; done
  t1=$(now)
  echo "import $1 ($(basename "$2")): $rows rows in $(secs "$t0" "$t1") s = $(awk -v r="$rows" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", r / (b - a) }') rows/s until visible to rules (request answered after $(secs "$t0" "$ack") s)"
}

echo "== imports ($USERS users)"
T0=$(now)
import_csv user_basic_info "$DATA/user_basic_info.csv"
import_csv user_asset_summary "$DATA/user_asset_summary.csv"
import_csv user_activity_summary "$DATA/user_activity_summary.csv"
T1=$(now)
TOTAL=$((USERS * 3))
echo "all three: $TOTAL rows in $(secs "$T0" "$T1") s = $(awk -v r="$TOTAL" -v a="$T0" -v b="$T1" 'BEGIN { printf "%.0f", r / (b - a) }') rows/s"

json -X POST "$URL/api/v1/tag-categories" -d '{"code": "bench", "name": "Benchmark"}' >/dev/null
POS=0
while read -r r; do
  POS=$(jq -c '{code: .code, name: .code, category: "bench", kind: "AUTO", subject_kind: "user", rule: .rule}' <<<"$r" |
    json -X POST "$URL/api/v1/tags" -d @- | jq .position)
done < <(jq -c '.[]' loadtest/tagging/rules.json)
echo "tags: $(json "$URL/api/v1/tags?subject_kind=user&min_position=$POS" | jq '.items | length')"

# Starts a run and polls it every 20 ms until it ends; prints the wall time and the run's
# figures. One Python process with one kept-alive connection: a curl and a jq per poll
# took a sixth of the two cores away from the server and PostgreSQL.
run() { # LABEL BODY
  python3 - "$URL" "$1" "$2" <<'PY'
import http.client, json, sys, time, urllib.parse
url, label, body = sys.argv[1:4]
u = urllib.parse.urlparse(url)
c = http.client.HTTPConnection(u.hostname, u.port)
t0 = time.monotonic()
c.request("POST", "/api/v1/tagging/runs", body, {"Content-Type": "application/json"})
r = json.loads(c.getresponse().read())
path = f"/api/v1/tagging/runs/{r['run_id']}?min_position={r['position']}"
while True:
    c.request("GET", path)
    res = c.getresponse()
    v = json.loads(res.read()) if res.status == 200 else {}
    if v.get("state") in ("succeeded", "failed"):
        break
    time.sleep(0.02)
t1 = time.monotonic()
keys = ["state", "subjects_in_scope", "tags_added", "tags_removed", "duration_ms", "phases_ms", "error"]
print(f"{label}: {t1 - t0:.2f} s command→succeeded; {json.dumps({k: v.get(k) for k in keys}, separators=(',', ':'))}")
PY
}

echo "== runs (as_of $AS_OF)"
run "full run 1 (assigns everything)" "{\"subject_kind\": \"user\", \"as_of\": \"$AS_OF\"}"
run "full run 2 (nothing changes)" "{\"subject_kind\": \"user\", \"as_of\": \"$AS_OF\"}"
CHANGED=$(($(wc -l < "$DATA/changes.csv") - 1))
import_csv user_activity_summary "$DATA/changes.csv"
run "incremental run, 7 days ($CHANGED users changed)" "{\"subject_kind\": \"user\", \"as_of\": \"$AS_OF\", \"changed_within_days\": 7}"

echo "== memory high-water marks"
hwm() { awk '/VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
echo "server: $(( $(hwm $SERVER) / 1024 )) MiB"
PM=$(head -1 var/tagging/pgdata/postmaster.pid)
PIDS="$PM $(ps --ppid "$PM" -o pid= | tr '\n' ' ')"
MAX=0; SUM=0
for p in $PIDS; do h=$(hwm "$p"); SUM=$((SUM + h)); [ "$h" -gt "$MAX" ] && MAX=$h; done
echo "postgresql: largest process $((MAX / 1024)) MiB, sum over $(wc -w <<<"$PIDS") processes $((SUM / 1024)) MiB"

if [ "${LOADTEST_NO_SPARK:-}" != 1 ]; then
  echo "== baseline: the seed's approach, PySpark local[2] over the same data as Parquet"
  loadtest/tagging/spark_setup.sh >/dev/null
  target/spark-venv/bin/python loadtest/tagging/spark_baseline.py "$DATA" 2>/dev/null | grep -v '^$'
  echo "== every user's tags against the PySpark result (full run with these data, after the changes)"
  # The server's tags now reflect the changed data; compare against a PySpark full run
  # over the merged tables (spark_baseline.py writes spark_tags.csv for that data).
  python3 - "$DATA/spark_tags.csv" "$URL" "$USERS" <<'PY'
import json, sys, urllib.request
spark = {}
with open(sys.argv[1]) as f:
    next(f)
    for line in f:
        uid, tags = line.rstrip("\n").split(",", 1)
        spark[uid] = sorted(int(t) for t in tags.split()) if tags else []
# The server's tag ids are 1..20 in rules.json order (the first tags of a fresh database),
# as are the baseline's.
url, cursor, seen, diff = sys.argv[2], None, 0, 0
while True:
    q = f"{url}/api/v1/subjects/user?limit=1000" + (f"&cursor={cursor}" if cursor else "")
    page = json.load(urllib.request.urlopen(q))
    for it in page["items"]:
        seen += 1
        if spark.get(it["subject_id"], []) != it["tag_ids"]:
            diff += 1
            if diff <= 5:
                print("differs:", it["subject_id"], it["tag_ids"], spark.get(it["subject_id"]))
    cursor = page.get("next_cursor")
    if not cursor:
        break
print(f"compared {seen} users with PySpark: {diff} differ")
PY
fi
