#!/bin/sh
# One command for the benchmark: ./bench/run.sh [--storage timescaledb|postgresql|both] [--quick]
# Uses $PYTHON, else the repo's .venv, else /work/venv. Needs mosquitto + mosquitto_sub and the two servers
# named in bench/README.md (override with CAREWATCH_BENCH_TIMESCALEDB_URL / CAREWATCH_BENCH_POSTGRESQL_URL).
set -eu
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python
    elif [ -x /work/venv/bin/python ]; then PYTHON=/work/venv/bin/python
    else PYTHON=python3; fi
fi
exec "$PYTHON" -m bench "$@"
