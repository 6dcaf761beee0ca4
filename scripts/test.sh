#!/usr/bin/env bash
# Run every test against real PostgreSQL + TimescaleDB. The tests start throw-away
# clusters under CLOUDLENS_TEST_DIR; whatever is still running there is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
OWN_TEST_DIR=0
if [ -z "${CLOUDLENS_TEST_DIR:-}" ]; then
  export CLOUDLENS_TEST_DIR=/tmp/cloudlens-tests-$$
  OWN_TEST_DIR=1
fi
mkdir -p "$CLOUDLENS_TEST_DIR"
# Test clusters run several at once and hold little: a fixed, small shared_buffers
# instead of the local cluster's quarter of the machine's memory.
export CLOUDLENS_PG_SHARED_BUFFERS=${CLOUDLENS_PG_SHARED_BUFFERS:-512MB}
chmod 755 "$CLOUDLENS_TEST_DIR"
cleanup() {
  for pid_file in "$CLOUDLENS_TEST_DIR"/*/pgdata/postmaster.pid; do
    [ -f "$pid_file" ] || continue
    pid=$(head -n1 "$pid_file")
    kill -INT "$pid" 2>/dev/null || true
  done
  sleep 1
  # Only a directory this script made is removed; one given by the caller is left alone.
  if [ "$OWN_TEST_DIR" = 1 ]; then rm -rf "$CLOUDLENS_TEST_DIR"; fi
}
trap cleanup EXIT
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace -- --test-threads "${CLOUDLENS_TEST_THREADS:-4}"
# API contract: schemathesis against a throw-away server must find nothing the served
# OpenAPI document does not allow (5xx, undocumented status/content type, schema mismatch).
cargo build --bin cloudlens
CLOUDLENS_BIN=target/debug/cloudlens scripts/api-contract.sh
# Static checks of docker-compose, Dockerfile and the Kubernetes manifests (offline schemas).
scripts/ops-tests.sh
