"""The database stopped for 60 s during a burst with ingest, alerts and api running as processes: the
consumers hold their acks, back off and catch up; the api answers 503 problems and recovers by itself."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from carewatch.migrate import migrate
from tests.support import Publisher, add_device, add_resident, scalar, wait_for

from .conftest import System, connect, fall_summary, iso, operator_token, probe, residents_with_wristbands

OUTAGE_S = 60  # the number


@pytest.fixture
def mqtt_url(tuned_mqtt_url: str) -> str:
    return tuned_mqtt_url


def _messages(devices: list[str], rounds: range, falls: set[str], t0: datetime) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for k in rounds:
        at = iso(t0 + timedelta(seconds=k))
        for device in devices:
            out.append((f"care/v1/{device}/telemetry", json.dumps({"ts": at, "seq": k, "hr": 72}).encode()))
            if device in falls and k == rounds.start:
                out.append(
                    (f"care/v1/{device}/event", json.dumps({"ts": at, "seq": k, "type": "fall"}).encode())
                )
    return out


def test_database_outage_of_60s_with_ingest_alerts_and_api(
    private_postgres: Any, mqtt_url: str, uid: str, system_factory: Callable[..., System]
) -> None:
    url = private_postgres.url
    migrate(url)
    with connect(url) as conn:
        devices = residents_with_wristbands(conn, uid, 8)
        probe_rid = add_resident(conn, f"Probe {uid}")
        add_device(conn, f"probe-{uid}", probe_rid)
        token = operator_token(conn, uid)
        system = system_factory(url, mqtt_url, uid)
        system.start("ingest", "alerts", "api")
        probe(conn, mqtt_url, uid, f"probe-{uid}", probe_rid, fall=True)
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{system.base}/api/v1/residents", headers=headers, timeout=5).status_code == 200
    pids = {name: proc.pid for name, proc in system.procs.items()}

    ids = list(devices.values())
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    before = _messages(ids, range(0, 150), set(ids[:4]), t0)
    during = _messages(ids, range(150, 300), set(ids[4:]), t0)
    pub = Publisher(mqtt_url, f"outage-{uid}")
    try:
        pub.publish_all(before)
        private_postgres.stop()
        down_at = time.monotonic()
        pub.publish_all(during)  # the broker keeps accepting: devices never notice the outage
        answers: list[int] = []
        while time.monotonic() - down_at < OUTAGE_S:
            r = httpx.get(f"{system.base}/api/v1/residents", headers=headers, timeout=15)
            answers.append(r.status_code)
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["title"] == "Service unavailable" and r.headers.get("retry-after")
            ready = httpx.get(f"{system.base}/readyz", timeout=15)
            assert ready.status_code == 503 and "database" in ready.json()["detail"]
            assert all(p.poll() is None for p in system.procs.values()), "a process died in the outage"
            time.sleep(5)
        private_postgres.start()
    finally:
        pub.close()
    assert len(answers) >= 5

    expected = 300 * len(ids)
    with connect(url) as conn:
        wait_for(
            lambda: (
                scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (ids,)) == expected
            ),
            90,
            interval=0.5,
            what="ingest catch-up after the outage",
        )
        rids = list(devices)
        wait_for(
            lambda: all(v[2] >= 1 for v in fall_summary(conn, rids).values()),
            60,
            interval=0.5,
            what="the engine's catch-up: a call per fall",
        )
        time.sleep(1.0)
        assert scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (ids,)) == expected
        assert all(v == (1, 1, 1) for v in fall_summary(conn, rids).values())
        assert scalar(conn, "SELECT count(*) FROM dead_letters") == 0
    wait_for(
        lambda: httpx.get(f"{system.base}/api/v1/residents", headers=headers, timeout=5).status_code == 200,
        30,
        interval=0.5,
        what="the api answering again without a restart",
    )
    assert {name: proc.pid for name, proc in system.procs.items()} == pids  # nobody was restarted
    logs = system.logs()
    assert "database unavailable" in logs
