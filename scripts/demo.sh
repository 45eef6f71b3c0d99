#!/usr/bin/env bash
# The demo command: install everything, then run the whole system with a simulated fleet.
# Arguments go to `carewatch demo` (see `carewatch demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec "$VENV/bin/carewatch" demo "$@"
