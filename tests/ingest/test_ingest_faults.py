"""Ingest under faults, with ingest in its own process: SIGKILL mid-burst, and the database stopped."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from carewatch.migrate import migrate
from tests.support import (
    Publisher,
    add_device,
    add_resident,
    now_ms,
    scalar,
    service_env,
    start_service,
    stop_process,
    wait_for,
)


@pytest.fixture
def mqtt_url(tuned_mqtt_url: str) -> str:
    """Backlogs here outgrow a stock broker's 1,000-message session queue: use CareWatch's tuned one."""
    return tuned_mqtt_url


LOGS = Path(__file__).resolve().parents[2] / "var" / "test" / "logs"


def _burst(uid: str, n: int, devices: int = 50) -> list[tuple[str, bytes]]:
    base = now_ms() - 3_600_000
    return [
        (
            f"care/v1/wb{d}-{uid}/telemetry",
            json.dumps({"ts": base + i * 1000, "seq": i, "hr": 60 + (i % 40), "spo2": 95 + i % 5}).encode(),
        )
        for i in range(n // devices)
        for d in range(devices)
    ]


def _registry(url: str, uid: str, devices: int = 50) -> None:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        rid = add_resident(conn, f"Burst {uid}")
        for d in range(devices):
            add_device(conn, f"wb{d}-{uid}", rid)


def _probe(url: str, mqtt_url: str, uid: str, conn: psycopg.Connection[Any]) -> None:
    """Wait until ingest's session exists and consumes: a probe reading must be stored. Messages published
    before the first subscription have no session to wait in, so the probe is repeated (same identity)."""
    pub = Publisher(mqtt_url, f"probe-{uid}")
    probe = (f"care/v1/wb0-{uid}/telemetry", json.dumps({"ts": now_ms(), "seq": 10**9}))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pub.publish_all([probe])
            if scalar(conn, "SELECT count(*) FROM telemetry WHERE seq = %s", (10**9,)) == 1:
                return
            time.sleep(0.5)
        raise AssertionError("ingest did not come up and store the probe within 60 s")
    finally:
        pub.close()


def test_sigkill_mid_burst_loses_and_duplicates_nothing(
    fresh_database_url: str, mqtt_url: str, uid: str
) -> None:
    n = 50_000
    _registry(fresh_database_url, uid)
    env = service_env(
        fresh_database_url,
        mqtt_url,
        CAREWATCH_INGEST_GROUP=f"k-{uid}",
        CAREWATCH_INGEST_WORKER_ID=f"k{uid}",
        CAREWATCH_INGEST_BATCH_MAX="500",
    )
    log_path = LOGS / f"ingest-kill-{uid}.log"
    proc = start_service("ingest", env, log_path)
    kills = 0
    try:
        with psycopg.connect(fresh_database_url, autocommit=True) as conn:
            _probe(fresh_database_url, mqtt_url, uid, conn)
            pub = Publisher(mqtt_url, f"burst-{uid}")
            try:
                messages = _burst(uid, n)
                for chunk in range(0, n, 10_000):
                    pub.publish_all(messages[chunk : chunk + 10_000])
                    stored = scalar(conn, "SELECT count(*) FROM telemetry")
                    if kills < 2 and stored > 1:
                        stop_process(proc, kill=True)  # SIGKILL: no goodbye, acks in flight are lost
                        kills += 1
                        proc = start_service("ingest", env, log_path)
            finally:
                pub.close()
            counts: list[int] = []
            wait_for(
                lambda: counts.append(scalar(conn, "SELECT count(*) FROM telemetry")) or counts[-1] == n + 1,
                180,
                interval=0.5,
                what=f"all {n} readings stored (kills {kills}, counts {counts[-5:]})",
            )
            time.sleep(1.0)  # anything redelivered late must still not duplicate
            assert scalar(conn, "SELECT count(*) FROM telemetry") == n + 1
            assert scalar(conn, "SELECT sum(hr_n) FROM vitals_1m") == n + 0  # probe has no hr
            assert scalar(conn, "SELECT count(*) FROM dead_letters") == 0
    finally:
        stop_process(proc)
    assert kills >= 1


def test_database_stopped_mid_burst_loses_nothing(private_postgres: Any, mqtt_url: str, uid: str) -> None:
    url = private_postgres.url
    migrate(url)
    _registry(url, uid)
    env = service_env(url, mqtt_url, CAREWATCH_INGEST_GROUP=f"o-{uid}", CAREWATCH_INGEST_WORKER_ID=f"o{uid}")
    proc = start_service("ingest", env, LOGS / f"ingest-outage-{uid}.log")
    n = 20_000
    messages = _burst(uid, n)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            _probe(url, mqtt_url, uid, conn)
        pub = Publisher(mqtt_url, f"o-burst-{uid}")
        try:
            pub.publish_all(messages[: n // 2])
            private_postgres.stop()
            outage_start = time.monotonic()
            pub.publish_all(messages[n // 2 :])  # the broker keeps accepting while the database is down
            time.sleep(max(0.0, 30 - (time.monotonic() - outage_start)))
            assert proc.poll() is None, "ingest must survive a database outage"
            private_postgres.start()
        finally:
            pub.close()
        with psycopg.connect(url, autocommit=True) as conn:
            wait_for(
                lambda: scalar(conn, "SELECT count(*) FROM telemetry") == n + 1,
                120,
                interval=0.5,
                what="catch-up after the outage",
            )
            assert scalar(conn, "SELECT sum(hr_n) FROM vitals_1m") == n
    finally:
        stop_process(proc)
    log_text = (LOGS / f"ingest-outage-{uid}.log").read_text()
    assert "database unavailable" in log_text


@pytest.mark.parametrize("shared", [True])
def test_redelivery_after_restart_is_not_stored_twice(
    fresh_database_url: str, mqtt_url: str, uid: str, shared: bool
) -> None:
    """Messages published while ingest is down wait in its persistent session and arrive on restart."""
    _registry(fresh_database_url, uid, devices=1)
    env = service_env(
        fresh_database_url, mqtt_url, CAREWATCH_INGEST_GROUP=f"r-{uid}", CAREWATCH_INGEST_WORKER_ID=f"r{uid}"
    )
    log_path = LOGS / f"ingest-restart-{uid}.log"
    proc = start_service("ingest", env, log_path)
    try:
        with psycopg.connect(fresh_database_url, autocommit=True) as conn:
            _probe(fresh_database_url, mqtt_url, uid, conn)
            stop_process(proc)  # graceful stop: the session stays on the broker
            pub = Publisher(mqtt_url, f"r-pub-{uid}")
            pub.publish_all(_burst(uid, 500, devices=1))
            pub.close()
            time.sleep(0.5)
            assert scalar(conn, "SELECT count(*) FROM telemetry") == 1
            proc = start_service("ingest", env, log_path)
            wait_for(lambda: scalar(conn, "SELECT count(*) FROM telemetry") == 501, 60, what="backlog")
    finally:
        stop_process(proc)
