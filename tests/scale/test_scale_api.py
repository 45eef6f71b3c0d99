"""API scale-out: two `carewatch api` processes on one database act as one service behind a balancer.

Tokens are signed with the shared CAREWATCH_SECRET_KEY and checked against the users row, so a token from
instance A works on B; each instance LISTENs on PostgreSQL and fans live_events out to its own SSE
clients, so a client on A sees a call opened by the alert engine and the claim made through B.
"""

from __future__ import annotations

import json
import queue
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from api.auth import hash_password
from carewatch.broker import free_port
from tests.support import (
    Publisher,
    add_device,
    add_resident,
    service_env,
    start_service,
    stop_process,
    wait_for,
)

LOGS = Path(__file__).resolve().parents[2] / "var" / "test" / "logs"
SECRET = "scale-test-key-" + "k" * 32


class Feed:
    """An SSE client in a thread: (event, data) pairs land in a queue; ends when the server goes away."""

    def __init__(self, url: str, token: str) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.status: queue.Queue[int] = queue.Queue()
        self.client = httpx.Client(timeout=httpx.Timeout(10, read=None))
        self._thread = threading.Thread(target=self._run, args=(url, token), daemon=True)
        self._thread.start()

    def _run(self, url: str, token: str) -> None:
        kind = ""
        try:
            with self.client.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as resp:
                self.status.put(resp.status_code)
                for line in resp.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        self.events.put((kind, json.loads(line[6:])))
        except (httpx.HTTPError, RuntimeError):
            pass

    def wait(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                kind, data = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if pred(kind, data):
                return data
        raise AssertionError(f"no live event: {what}")

    def close(self) -> None:
        self.client.close()


@contextmanager
def api_instance(url: str, mqtt_url: str, name: str) -> Iterator[str]:
    port = free_port()
    env = service_env(
        url,
        mqtt_url,
        CAREWATCH_API_PORT=str(port),
        CAREWATCH_SECRET_KEY=SECRET,
        CAREWATCH_LOG_LEVEL="WARNING",
    )
    proc = start_service("api", env, LOGS / f"scale-api-{name}.log")
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"api {name} exited"
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, interval=0.2, what=f"api {name} ready")
        yield base
    finally:
        stop_process(proc)


def test_two_api_instances_share_tokens_and_live_events(
    fresh_database_url: str, mqtt_url: str, uid: str
) -> None:
    url = fresh_database_url
    password = secrets.token_urlsafe(12)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'operator')",
            (f"op-{uid}", hash_password(password)),
        )
        rid = add_resident(conn, f"Li {uid}", timezone="UTC")
        add_device(conn, f"wb-{uid}", rid, report_interval_s=3600)
    engine: subprocess.Popen[bytes] = start_service(
        "alerts",
        service_env(
            url, mqtt_url, CAREWATCH_ALERTS_GROUP=f"api-{uid}", CAREWATCH_ALERTS_WORKER_ID=f"api{uid}"
        ),
        LOGS / f"scale-api-alerts-{uid}.log",
    )
    feed: Feed | None = None
    try:
        with api_instance(url, mqtt_url, f"a-{uid}") as a, api_instance(url, mqtt_url, f"b-{uid}") as b:
            got = httpx.post(
                f"{a}/api/v1/auth/token", data={"username": f"op-{uid}", "password": password}, timeout=10
            )
            assert got.status_code == 200, got.text
            token = got.json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            # A token issued by A is accepted by B (shared key, no server-side session) ...
            me = httpx.get(f"{b}/api/v1/auth/me", headers=auth, timeout=10)
            assert me.status_code == 200 and me.json()["role"] == "operator", me.text
            # ... and one signed with another key is not: B really checks the signature.
            forged = token[: token.rindex(".") + 1] + "A" * 43
            assert (
                httpx.get(f"{b}/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"}).status_code
                == 401
            )

            feed = Feed(f"{a}/api/v1/live", token)
            assert feed.status.get(timeout=10) == 200
            # A's LISTEN connection may still be starting: probe until the feed carries an event.
            with psycopg.connect(url, autocommit=True) as conn:
                deadline = time.monotonic() + 20
                while True:
                    probe = conn.execute(
                        "INSERT INTO live_events (kind, payload) VALUES ('probe', '{}') RETURNING id"
                    ).fetchone()
                    try:
                        feed.wait(lambda k, d, p=probe: d["id"] == p[0], 1, "probe")  # type: ignore[index]
                        break
                    except AssertionError:
                        assert time.monotonic() < deadline, "live feed on A never delivered"

            # The alert engine (a third process) opens a call: A's client sees it.
            pub = Publisher(mqtt_url, f"api-pub-{uid}")
            try:
                fall = {"ts": datetime.now(UTC).isoformat(), "seq": 1, "type": "fall"}
                deadline = time.monotonic() + 30
                created: dict[str, Any] | None = None
                while created is None:  # the engine's session may not exist yet: republish (same identity)
                    pub.publish_all([(f"care/v1/wb-{uid}/event", json.dumps(fall))])
                    try:
                        created = feed.wait(
                            lambda k, d: k == "call.created" and d["resident_id"] == rid, 2, "call.created"
                        )
                    except AssertionError:
                        assert time.monotonic() < deadline, "no call.created from the alert engine on A"
            finally:
                pub.close()
            call_id = created["call_id"]
            assert created["payload"]["priority"] == 1

            # The operator claims it through B: A's client sees the claim.
            claimed = httpx.post(f"{b}/api/v1/calls/{call_id}/claim", headers=auth, timeout=10)
            assert claimed.status_code == 200, claimed.text
            update = feed.wait(
                lambda k, d: (
                    k == "call.updated" and d["call_id"] == call_id and d["payload"]["status"] == "claimed"
                ),
                10,
                "claim made on B, seen on A",
            )
            assert update["payload"]["status"] == "claimed"
            # Both instances read the same queue.
            for base in (a, b):
                calls = httpx.get(f"{base}/api/v1/calls", headers=auth, timeout=10).json()
                items = calls["items"] if isinstance(calls, dict) else calls
                assert [c["status"] for c in items if c["id"] == call_id] == ["claimed"]
    finally:
        if feed is not None:
            feed.close()
        stop_process(engine)
