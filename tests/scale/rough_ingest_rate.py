"""Rough single-worker ingest rate (not a test, not the benchmark: bench/ is the reference).

Queues N readings for a stopped `carewatch ingest` worker on a private tuned mosquitto, starts it, and times
the drain from the first stored row to the last: durable QoS 1 messages per second for one process, with
the broker, the database and the worker sharing this machine. Usage:

    CAREWATCH_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5433/postgres \\
        /work/venv/bin/python tests/scale/rough_ingest_rate.py [N]
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from carewatch.broker import ManagedBroker  # noqa: E402
from tests.conftest import create_database, drop_database  # noqa: E402
from tests.scale.test_scale_ingest import DEVICES, _messages  # noqa: E402
from tests.support import (  # noqa: E402
    Publisher,
    add_device,
    add_resident,
    scalar,
    service_env,
    start_service,
    stop_process,
    wait_for,
)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    server = os.environ.get("CAREWATCH_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5433/postgres")
    uid = uuid.uuid4().hex[:8]
    broker = ManagedBroker(ROOT / "var" / "test" / f"rough-{uid}", auth=False).start()
    url = create_database(server)
    log = ROOT / "var" / "test" / "logs" / f"rough-ingest-{uid}.log"
    env = service_env(url, broker.url(), CAREWATCH_INGEST_GROUP=f"r{uid}", CAREWATCH_INGEST_WORKER_ID=uid)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            rid = add_resident(conn, "Rough")
            for d in range(DEVICES):
                add_device(conn, f"wb{d}-{uid}", rid)
            proc = start_service("ingest", env, log)  # creates the persistent session
            wait_for(lambda: "consuming" in log.read_text(), 60, what="ingest up")
            time.sleep(1.0)
            stop_process(proc)
            pub = Publisher(broker.url(), f"rough-pub-{uid}")
            pub.publish_all(_messages(uid, n, 0), timeout=600)
            pub.close()
            proc = start_service("ingest", env, log)
            wait_for(lambda: scalar(conn, "SELECT count(*) FROM telemetry") > 0, 60, interval=0.01)
            t0 = time.monotonic()
            wait_for(lambda: scalar(conn, "SELECT count(*) FROM telemetry") >= n, 600, interval=0.05)
            elapsed = time.monotonic() - t0
            stop_process(proc)
            print(f"one ingest worker: {n} readings in {elapsed:.1f}s = {n / elapsed:,.0f} msg/s (rough)")
    finally:
        drop_database(server, url)
        broker.stop(kill=True)


if __name__ == "__main__":
    main()
