#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: a virtual environment with the pinned dependencies, and the system
# programs CareWatch runs (mosquitto; chromium for the browser tests), installed when missing.
set -euo pipefail
VENV=${CAREWATCH_VENV:-.venv}
PY=${PYTHON:-python3}
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing mosquitto (apt)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  else
    echo "bootstrap: please install mosquitto (apt-get install mosquitto / brew install mosquitto)" >&2
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.carewatch-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "bootstrap: installing CareWatch and its pinned dependencies" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test]"
  touch "$stamp"
fi
