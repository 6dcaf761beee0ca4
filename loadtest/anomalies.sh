#!/usr/bin/env bash
# Cost-anomaly evaluation (issue 12, ADR 0026): seed 000's mean + 2σ against the median
# and MAD, plain and by weekday, on generated series. No database, no server.
#
#   loadtest/anomalies.sh [SERIES [DAYS [SEED]]]    defaults 2000 180 42
#
# SERIES account × service series of DAYS days with weekend dips, noise and injected
# spikes, drops and level shifts on known days; per method: injected anomalies found
# (recall per injected episode), false alarms (episodes where nothing was injected, and
# per 1,000 series-days) and the time taken.
#
# Environment: LOADTEST_NO_BUILD=1 (skip cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."
SERIES=${1:-2000}
DAYS=${2:-180}
SEED=${3:-42}
if [ "${LOADTEST_NO_BUILD:-}" != 1 ]; then
  cargo build --release -p loadtest 2>&1 | tail -1
fi
echo "== machine"; nproc; grep MemTotal /proc/meminfo
echo "== commit"; git log -1 --format='%h %s' | cut -c1-120
target/release/loadtest anomalies --series "$SERIES" --days "$DAYS" --seed "$SEED"
