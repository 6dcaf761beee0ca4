# shellcheck shell=bash
# Shared Python venv for the script-driven checks (tests/ops, API contract).
# Source it from a script whose working directory is the repository root, then call
#   pyenv_ensure PREFIX
# It creates (or reuses) the venv and installs tests/ops/requirements.txt into it, and sets
# PYENV_PY to the venv's interpreter. PREFIX only labels messages.
#
# CLOUDLENS_PYENV  venv to create/reuse (default: target/ops-venv)
# PYTHON           interpreter to create it with (default: python3)

pyenv_ensure() {
  local who="${1:-pyenv}"
  local venv="${CLOUDLENS_PYENV:-target/ops-venv}"
  local python="${PYTHON:-python3}"
  local req="tests/ops/requirements.txt"

  if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -m venv "$venv" 2>/dev/null; then
      # Debian's python3 ships without ensurepip unless python3-venv is installed.
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "$who: installing python3-venv" >&2
        rm -rf "$venv"
        apt-get install -y -qq python3-venv >/dev/null \
          || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
        "$python" -m venv "$venv"
      else
        echo "$who: cannot create a venv with $python (install python3-venv)" >&2
        return 1
      fi
    fi
  fi

  # Reinstall only when the requirements (or the interpreter) changed.
  local stamp="$venv/.ops-requirements.sha256"
  local want
  want="$( { sha256sum "$req" | cut -d' ' -f1; "$venv/bin/python" -VV; } | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
  fi
  # shellcheck disable=SC2034 # read by the sourcing script
  PYENV_PY="$venv/bin/python"
}
