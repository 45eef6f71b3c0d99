"""The walking skeleton, end to end, every component in its own process as in production:
a simulated wristband (its own MQTT credentials, on a broker with auth and ACL) publishes a fall; ingest
stores it; the alert engine opens a P1 call; GET /api/v1/calls, authenticated, returns it."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from api.auth import hash_password
from carewatch.broker import ManagedBroker
from carewatch.broker import hash_password as broker_hash
from carewatch.registry_sync import sync_broker
from device_sim.fleet import enrol_via_db, make_fleet
from device_sim.publisher import FleetPublisher
from device_sim.routine import Message
from tests.support import scalar, service_env, start_service, stop_process, wait_for

LOGS = Path(__file__).resolve().parents[2] / "var" / "test" / "logs"


@pytest.fixture
def stack(
    fresh_database_url: str, broker_factory: Callable[..., ManagedBroker], uid: str
) -> Iterator[dict[str, Any]]:
    broker = broker_factory(auth=True)
    fleet = make_fleet(2, seed=3, prefix=f"e2e{uid}")
    service_password = secrets.token_urlsafe(16)
    operator_password = secrets.token_urlsafe(12)
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as conn:
        enrol_via_db(conn, fleet)
        conn.execute(
            "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'operator')",
            (f"op{uid}", hash_password(operator_password)),
        )
        conn.commit()
        sync_broker(
            conn,
            broker.passwd_file,
            broker.acl_file,
            service_accounts={"carewatch-svc": broker_hash(service_password)},
            reload=broker.reload,
        )
    from carewatch.broker import free_port

    port = free_port()
    env = service_env(
        fresh_database_url,
        broker.url("carewatch-svc", service_password),
        CAREWATCH_INGEST_GROUP=f"e2e-i-{uid}",
        CAREWATCH_INGEST_WORKER_ID=f"e2e{uid}",
        CAREWATCH_ALERTS_GROUP=f"e2e-a-{uid}",
        CAREWATCH_ALERTS_WORKER_ID=f"e2e{uid}",
        CAREWATCH_API_PORT=str(port),
        CAREWATCH_SECRET_KEY=secrets.token_urlsafe(32),
    )
    procs: list[subprocess.Popen[bytes]] = [
        start_service(cmd, env, LOGS / f"e2e-{cmd}-{uid}.log") for cmd in ("ingest", "alerts", "api")
    ]
    try:
        yield {
            "broker": broker,
            "fleet": fleet,
            "api": f"http://127.0.0.1:{port}",
            "operator": (f"op{uid}", operator_password),
            "db": fresh_database_url,
            "procs": procs,
        }
    finally:
        for proc in procs:
            stop_process(proc)


def test_wristband_fall_becomes_a_p1_call_on_the_api(stack: dict[str, Any], uid: str) -> None:
    base = stack["api"]

    def api_up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(api_up, 60, interval=0.2, what="the API process")
    username, password = stack["operator"]
    token = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": username, "password": password}, timeout=5
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{base}/api/v1/calls", headers=headers, timeout=5).json() == []

    fleet = stack["fleet"]
    resident = fleet.residents[0]
    wristband = resident.wristband
    publisher = FleetPublisher(stack["broker"].url(), fleet, client_id_suffix=uid)
    publisher.connect()
    try:
        fall = Message(
            at=datetime.now(UTC),
            device_id=wristband.id,
            kind="event",
            payload={
                "ts": int(datetime.now(UTC).timestamp() * 1000),
                "seq": 1,
                "type": "fall",
                "confidence": 0.94,
            },
        )
        # the services subscribe in their own time: repeat the same fall (same identity) until it lands
        with psycopg.connect(stack["db"], autocommit=True) as conn:

            def stored() -> bool:
                assert publisher.publish(fall)
                return bool(scalar(conn, "SELECT count(*) FROM events WHERE type = 'fall'"))

            wait_for(stored, 60, interval=1.0, what="ingest to store the fall")
            assert scalar(conn, "SELECT count(*) FROM events") == 1  # resent copies stored once
    finally:
        publisher.close()

    def p1_call() -> list[dict[str, Any]]:
        calls = httpx.get(f"{base}/api/v1/calls", headers=headers, timeout=5).json()
        return [c for c in calls if c["priority"] == 1]

    calls = wait_for(p1_call, 60, interval=0.3, what="a P1 call on the API")
    assert len(calls) == 1
    call = calls[0]
    assert call["resident_id"] == resident.db_id
    assert call["status"] == "queued"
    assert call["reason"] == "fall"
    # unauthenticated callers get nothing
    assert httpx.get(f"{base}/api/v1/calls", timeout=5).status_code == 401
    for proc in stack["procs"]:
        assert proc.poll() is None, "every service still running"
