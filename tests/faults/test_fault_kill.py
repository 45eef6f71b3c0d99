"""ingest and the alert engine, both real processes, SIGKILLed at random moments during a burst of
telemetry from several residents with falls mixed in: every accepted message stored once, every fall
exactly one call."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from tests.support import Publisher, add_device, add_resident, scalar, wait_for

from .conftest import System, connect, fall_summary, iso, probe, residents_with_wristbands


@pytest.fixture
def mqtt_url(tuned_mqtt_url: str) -> str:
    """Backlogs queued while a consumer is dead can exceed a stock broker's 1,000-message queue."""
    return tuned_mqtt_url


def _burst(devices: dict[int, str], rounds: int, fall_rounds: dict[str, int]) -> list[tuple[str, bytes]]:
    t0 = datetime.now(UTC) - timedelta(seconds=rounds)
    out: list[tuple[str, bytes]] = []
    for k in range(rounds):
        at = iso(t0 + timedelta(seconds=k))
        for device in devices.values():
            out.append(
                (f"care/v1/{device}/telemetry", json.dumps({"ts": at, "seq": k, "hr": 70 + k % 20}).encode())
            )
            if fall_rounds[device] == k:
                event = {"ts": at, "seq": 5000 + k, "type": "fall", "confidence": 0.95}
                out.append((f"care/v1/{device}/event", json.dumps(event).encode()))
    return out


def test_random_sigkills_of_ingest_and_alerts_lose_and_double_nothing(
    fresh_database_url: str, mqtt_url: str, uid: str, system_factory: Callable[..., System]
) -> None:
    seed = int(os.environ.get("CAREWATCH_FAULT_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    n_residents, rounds = 8, 300
    with connect(fresh_database_url) as conn:
        devices = residents_with_wristbands(conn, uid, n_residents)
        probe_rid = add_resident(conn, f"Probe {uid}")
        add_device(conn, f"probe-{uid}", probe_rid)
        system = system_factory(fresh_database_url, mqtt_url, uid)
        system.start("ingest", "alerts")
        probe(conn, mqtt_url, uid, f"probe-{uid}", probe_rid, fall=True)

        fall_rounds = {d: rng.randrange(rounds) for d in devices.values()}
        messages = _burst(devices, rounds, fall_rounds)
        chunks = [messages[i : i + 60] for i in range(0, len(messages), 60)]
        burst_s = len(chunks) * 0.05
        kills: list[tuple[float, str]] = sorted(
            (rng.uniform(0, burst_s), name) for name in ("ingest", "alerts", "ingest", "alerts")
        )
        done: list[str] = []

        def killer() -> None:
            start = time.monotonic()
            for at, name in kills:
                time.sleep(max(0.0, at - (time.monotonic() - start)))
                system.kill(name)
                time.sleep(rng.uniform(0, 0.5))  # dead for a while: the backlog queues in its session
                system.start(name)
                done.append(name)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        pub = Publisher(mqtt_url, f"burst-{uid}")
        try:
            for chunk in chunks:
                pub.publish_all(chunk)
                time.sleep(0.05)
        finally:
            pub.close()
        thread.join(60)
        assert len(done) == 4, f"seed {seed}: kills done {done}"

        ids = list(devices.values())
        expected = rounds * n_residents
        wait_for(
            lambda: (
                scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (ids,)) == expected
            ),
            120,
            interval=0.5,
            what=f"all {expected} readings stored (seed {seed})",
        )
        rids = list(devices)
        wait_for(
            lambda: all(v[2] >= 1 for v in fall_summary(conn, rids).values()),
            60,
            interval=0.5,
            what=f"a call for every fall (seed {seed})",
        )
        time.sleep(2.0)  # late redeliveries must still not duplicate anything
        assert scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (ids,)) == expected
        assert scalar(conn, "SELECT count(*) FROM events WHERE device_id = ANY(%s)", (ids,)) == n_residents
        assert (
            scalar(conn, "SELECT sum(hr_n) FROM vitals_1m WHERE resident_id = ANY(%s)", (list(devices),))
            == expected
        )
        assert scalar(conn, "SELECT count(*) FROM dead_letters") == 0
        summary = fall_summary(conn, rids)
        assert all(v == (1, 1, 1) for v in summary.values()), (seed, summary)
