#!/usr/bin/env bash
# The test command: make the virtual environment if needed, then run pytest.
# Uses CAREWATCH_TEST_DATABASE_URL / CAREWATCH_TEST_MQTT_URL when set; otherwise the fixtures start an
# embedded PostgreSQL and a private mosquitto. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec "$VENV/bin/python" -m pytest "$@"
