#!/usr/bin/env bash
# Static checks of the deployment files (Dockerfile, docker-compose.yml, Prometheus config,
# .env.example, k8s/). Needs python3 (with venv) and PyPI; no Docker, no cluster.
#
#   scripts/ops-tests.sh [extra pytest args]
#
# CLOUDLENS_PYENV  venv to create/reuse (default: target/ops-venv)
# PYTHON           interpreter to create it with (default: python3)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/pyenv.sh
. scripts/lib/pyenv.sh
pyenv_ensure ops-tests

exec "$PYENV_PY" -m pytest -q -p no:cacheprovider tests/ops "$@"
