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
venv="${CLOUDLENS_PYENV:-target/ops-venv}"
python="${PYTHON:-python3}"
req="tests/ops/requirements.txt"

if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    # Debian's python3 ships without ensurepip unless python3-venv is installed.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "ops-tests: installing python3-venv" >&2
      rm -rf "$venv"
      apt-get install -y -qq python3-venv >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
      "$python" -m venv "$venv"
    else
      echo "ops-tests: cannot create a venv with $python (install python3-venv)" >&2
      exit 1
    fi
  fi
fi

# Reinstall only when the requirements (or the interpreter) changed.
stamp="$venv/.ops-requirements.sha256"
want="$( { sha256sum "$req" | cut -d' ' -f1; "$venv/bin/python" -VV; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/ops "$@"
