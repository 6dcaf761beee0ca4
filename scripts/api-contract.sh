#!/usr/bin/env bash
# API contract test: the served OpenAPI document (GET /api/v1/openapi.json) is the contract.
# Starts a throw-away `cloudlens serve` (own local PostgreSQL cluster under /tmp), runs
# schemathesis against it and fails on any 5xx, any undocumented status code or content
# type, and any response body that does not match its schema. Builds nothing.
#
#   scripts/api-contract.sh [extra `schemathesis run` args, e.g. --include-path-regex budgets]
#
# CLOUDLENS_BIN                server binary (default: target/debug/cloudlens)
# CLOUDLENS_CONTRACT_EXAMPLES  max test cases per operation and phase (default: 50)
# CLOUDLENS_CONTRACT_SEED      hypothesis seed (default: 1)
# CLOUDLENS_CONTRACT_WORKERS   concurrent schemathesis workers (default: 1, deterministic order)
# CLOUDLENS_PYENV, PYTHON      venv and interpreter, see scripts/lib/pyenv.sh
# CLOUDLENS_CONTRACT_OUT       where the server log is kept after a failed run
#                              (default: target/api-contract)
# CLOUDLENS_PG_OS_USER         OS user of the local cluster when run as root (default: postgres)
set -euo pipefail

cd "$(dirname "$0")/.."
bin="${CLOUDLENS_BIN:-target/debug/cloudlens}"
examples="${CLOUDLENS_CONTRACT_EXAMPLES:-50}"
seed="${CLOUDLENS_CONTRACT_SEED:-1}"
workers="${CLOUDLENS_CONTRACT_WORKERS:-1}"
out_dir="${CLOUDLENS_CONTRACT_OUT:-target/api-contract}"
pg_user="${CLOUDLENS_PG_OS_USER:-postgres}"
pg_bin=/usr/lib/postgresql/15/bin

log() { printf 'api-contract: %s\n' "$*" >&2; }

if [ ! -x "$bin" ]; then
  log "no server binary at $bin (build it with 'cargo build --bin cloudlens' or set CLOUDLENS_BIN)"
  exit 1
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

# shellcheck source=scripts/lib/pyenv.sh
. scripts/lib/pyenv.sh
pyenv_ensure api-contract
st="$(dirname "$PYENV_PY")/schemathesis"

# --- throw-away server ----------------------------------------------------------------------
data_dir="$(mktemp -d /tmp/cloudlens-contract.XXXXXX)"
# When run as root the cluster runs as $pg_user, which must reach the data directory.
chmod 755 "$data_dir"
server_log="$data_dir/server.log"
server_pid=""
st_pid=""

# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$st_pid" ]; then
    kill -TERM "$st_pid" 2>/dev/null || true
    wait "$st_pid" 2>/dev/null || true
  fi
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    # The server drains requests (up to 30 s), stops its projectors, then its cluster.
    for _ in $(seq 1 90); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$server_pid" 2>/dev/null; then
      log "server did not stop after SIGTERM; killing it"
      kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
  fi
  # A server that died (or was killed) leaves its cluster running: stop it.
  if [ -f "$data_dir/pgdata/postmaster.pid" ]; then
    if [ "$(id -u)" = 0 ]; then
      runuser -u "$pg_user" -- "$pg_bin/pg_ctl" -D "$data_dir/pgdata" stop -m fast -w >/dev/null 2>&1 || true
    else
      "$pg_bin/pg_ctl" -D "$data_dir/pgdata" stop -m fast -w >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$data_dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port="$("$PYENV_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"

CLOUDLENS_DATA_DIR="$data_dir" \
CLOUDLENS_LISTEN="127.0.0.1:$port" \
CLOUDLENS_MIN_POSITION_TIMEOUT_MS=300 \
RUST_LOG=warn \
  "$bin" serve >"$server_log" 2>&1 &
server_pid=$!

log "waiting for $base/readyz (server log: $server_log)"
ready=0
for _ in $(seq 1 120); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    break
  fi
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/readyz" || true)" = 200 ]; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  log "server did not become ready within 60 s; its log:"
  cat "$server_log" >&2 || true
  exit 1
fi

# --- an admin key ---------------------------------------------------------------------------
# The run is authenticated as an admin: generated requests reach every route's own checks
# (a fuzzed POST /api/v1/admin/api-keys would otherwise close the server to the rest of the
# run). 401 and 403 themselves are tested in tests/api/access.rs.
key_answer="$(curl -s --max-time 10 -X POST "$base/api/v1/admin/api-keys" -H 'Content-Type: application/json' \
  -d '{"name": "contract", "role": "admin", "tenant": "default"}' || true)"
admin_key="$("$PYENV_PY" -c 'import json, sys; print(json.loads(sys.stdin.readline())["key"])' <<<"$key_answer" || true)"
if [ -z "$admin_key" ]; then
  log "could not issue the admin key: $key_answer"
  exit 1
fi
for _ in $(seq 1 50); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$base/api/v1/budgets" || true)" = 401 ] && break
  sleep 0.1
done
auth="Authorization: Bearer $admin_key"

# --- seed data -----------------------------------------------------------------------------
# One budget with every optional field set, so that list pages, GET by id and the stream's
# events answer 200 with real bodies, whose schemas are then checked too.
tenant=contract
seed_body='{"name":"Contract seed","amount":"1200.50","currency":"CNY","period":"custom",
  "type":"cost","start_date":"2026-01-01","end_date":"2026-12-31","tag_filter":{"team":"data"},
  "service_filter":["ecs","oss"],"alert_thresholds":[80,100,120],"account":"contract-main"}'
seed_answer="$(curl -s --max-time 10 -w '\n%{http_code}' -X POST "$base/api/v1/budgets" \
  -H "$auth" -H 'Content-Type: application/json' -H "X-Tenant-Id: $tenant" -d "$seed_body" || true)"
if [ "$(tail -n1 <<<"$seed_answer")" != 201 ]; then
  log "could not create the seed budget: $seed_answer"
  exit 1
fi
seed_id="$("$PYENV_PY" -c 'import json, sys; print(json.loads(sys.stdin.readline())["id"])' <<<"$seed_answer")"
seed_pos="$("$PYENV_PY" -c 'import json, sys; print(json.loads(sys.stdin.readline())["position"])' <<<"$seed_answer")"
# Wait until the read model has it (min_position answers 503 while it is behind).
for _ in $(seq 1 50); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "$auth" -H "X-Tenant-Id: $tenant" \
    "$base/api/v1/budgets/$seed_id?min_position=$seed_pos" || true)" = 200 ] && break
  sleep 0.2
done

# One collection item, so that item reads and pages answer 200 with real bodies too.
item_answer="$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -X PUT \
  "$base/api/v1/collections/system_logs/items/contract-key" \
  -H "$auth" -H 'Content-Type: application/json' -H "X-Tenant-Id: $tenant" \
  -d '{"data":{"level":"INFO","service":"api","message":"contract seed"}}' || true)"
if [ "$item_answer" != 201 ]; then
  log "could not write the seed collection item: $item_answer"
  exit 1
fi

# --- schemathesis ---------------------------------------------------------------------------
# An explicit config file, so that no schemathesis.toml lying around is picked up, and no crash
# cache (.schemathesis/ in the working directory) is written or replayed on the next run.
# Dictionaries feed known-good values into part of the generated inputs (the rest stays
# random): the seed budget's id, and valid body fields, so that creates and replaces get
# past validation (the schema cannot express every rule, e.g. decimal amounts).
st_config="$data_dir/schemathesis.toml"
cat >"$st_config" <<TOML
[cache]
enabled = false

[dictionaries.budget_ids]
values = ["$seed_id"]
[dictionaries.stream_types]
values = ["budget"]
[dictionaries.amounts]
values = ["1200.50", "1", "0.01", "999999999999.99"]
[dictionaries.names]
values = ["Data team", "ML team"]
[dictionaries.currencies]
values = ["CNY", "USD", "EUR"]
[dictionaries.dates]
values = ["2026-12-31", "2027-06-30"]
[dictionaries.thresholds]
values = [50, 80, 100, 120]
[dictionaries.words]
values = ["ecs", "oss", "aliyun-main"]

[dictionaries.collections]
values = ["system_logs", "configurations", "task_status_cache"]
[dictionaries.item_keys]
values = ["contract-key"]
[dictionaries.item_sorts]
values = ["-created_at", "key", "-updated_at", "level"]
[dictionaries.item_filters]
values = ['{"level":"INFO"}', '{"service":"api"}']

[parameters]
"path.id" = { dictionary = "budget_ids", probability = 0.5 }
"path.stream_type" = { dictionary = "stream_types", probability = 0.5 }
"body.amount" = { dictionary = "amounts", probability = 0.9 }
"body.name" = { dictionary = "names", probability = 0.9 }
"body.currency" = { dictionary = "currencies", probability = 0.9 }
"body.end_date" = { dictionary = "dates", probability = 0.9 }
"body.alert_thresholds[*]" = { dictionary = "thresholds", probability = 0.9 }
"body.service_filter[*]" = { dictionary = "words", probability = 0.9 }
"body.account" = { dictionary = "words", probability = 0.9 }
"path.name" = { dictionary = "collections", probability = 0.5 }
"path.key" = { dictionary = "item_keys", probability = 0.5 }
"query.sort" = { dictionary = "item_sorts", probability = 0.5 }
"query.filter" = { dictionary = "item_filters", probability = 0.5 }
TOML
cmd=(
  "$st" --config-file "$st_config" run "$base/api/v1/openapi.json"
  --checks "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
  --max-examples "$examples"
  --seed "$seed"
  --workers "$workers"
  --generation-database none
  --header "X-Tenant-Id: $tenant"
  --header "$auth"
  --request-timeout 10
  --continue-on-failure
  --output-sanitize false
  "$@"
)
log "running: ${cmd[*]}"
rc=0
# Hypothesis' caches (unicode tables) live with the venv instead of ./.hypothesis.
# In the background, so that SIGTERM/SIGINT reach the trap at once (not after the run).
SCHEMATHESIS_HOOKS="$PWD/scripts/lib/contract_hooks.py" HYPOTHESIS_STORAGE_DIRECTORY="$(dirname "$(dirname "$PYENV_PY")")/hypothesis" "${cmd[@]}" &
st_pid=$!
wait "$st_pid" || rc=$?
st_pid=""
if [ "$rc" != 0 ]; then
  mkdir -p "$out_dir"
  cp "$server_log" "$out_dir/server.log" 2>/dev/null || true
  log "schemathesis failed (exit $rc): contract violations above, or an error it reported"
  log "server errors (full log with backtraces: $out_dir/server.log):"
  grep -E 'ERROR|panicked' "$server_log" | head -n 40 >&2 || true
fi
exit "$rc"
