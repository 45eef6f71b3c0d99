"""Fault-suite helpers: the three services as real processes around one database and broker, a probe
that proves they consume, and small readers for the invariants (stored once, one call per fall)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from api.auth import hash_password
from api.tokens import issue
from carewatch.broker import free_port
from tests.support import (
    Publisher,
    add_device,
    add_resident,
    scalar,
    service_env,
    start_service,
    stop_process,
)

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "var" / "test" / "logs" / "faults"
SECRET_KEY = "faults-signing-key-" + "k" * 32
Conn = psycopg.Connection[dict[str, Any]]


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def connect(url: str) -> Conn:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def residents_with_wristbands(conn: Conn, uid: str, n: int, prefix: str = "wb") -> dict[int, str]:
    """n residents, one wristband each: resident id -> device id."""
    out: dict[int, str] = {}
    for i in range(n):
        rid = add_resident(conn, f"Fault {prefix}{i} {uid}")
        add_device(conn, f"{prefix}{i}-{uid}", rid, report_interval_s=3600)
        out[rid] = f"{prefix}{i}-{uid}"
    return out


def operator_token(conn: Conn, uid: str, role: str = "operator", password: str = "op-pass-unused") -> str:
    row = conn.execute(
        "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s) RETURNING id",
        (f"{role}-{uid}", hash_password(password), role),
    ).fetchone()
    assert row is not None
    return issue(SECRET_KEY, int(row["id"]), 0, "access", 900)


@dataclass
class System:
    """ingest, alerts and api as `carewatch <command>` subprocesses, restartable and killable by name."""

    database_url: str
    mqtt_url: str
    uid: str
    extra: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_port: int = 0

    def env(self) -> dict[str, str]:
        return service_env(
            self.database_url,
            self.mqtt_url,
            CAREWATCH_INGEST_GROUP=f"fi-{self.uid}",
            CAREWATCH_INGEST_WORKER_ID=f"fi{self.uid}",
            CAREWATCH_ALERTS_GROUP=f"fa-{self.uid}",
            CAREWATCH_ALERTS_WORKER_ID=f"fa{self.uid}",
            CAREWATCH_ALERTS_TICK_S="0.2",
            CAREWATCH_SECRET_KEY=SECRET_KEY,
            CAREWATCH_API_PORT=str(self.api_port),
            CAREWATCH_LOGIN_ATTEMPTS_PER_MINUTE="1000",
            **self.extra,
        )

    def log(self, name: str) -> Path:
        return LOGS / f"{name}-{self.uid}.log"

    def start(self, *names: str) -> None:
        for name in names:
            if name == "api" and not self.api_port:
                self.api_port = free_port()
            self.procs[name] = start_service(name, self.env(), self.log(name))
        if "api" in names:
            self.wait_api()

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye, no flush, acks in flight are lost."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self, name: str, *, kill: bool = True) -> None:
        if kill:
            self.kill(name)
        else:
            stop_process(self.procs[name])
        self.start(name)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def wait_api(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.procs["api"].poll() is None, self.log("api").read_text()[-2000:]
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("api did not answer within the timeout")

    def logs(self) -> str:
        return "\n".join(self.log(n).read_text(errors="replace") for n in self.procs if self.log(n).exists())


@pytest.fixture
def system_factory() -> Iterator[Callable[..., System]]:
    made: list[System] = []

    def make(database_url: str, mqtt_url: str, uid: str, **extra: str) -> System:
        s = System(database_url, mqtt_url, uid, dict(extra))
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop_all()


def probe(
    conn: Conn, mqtt_url: str, uid: str, device: str, rid: int, *, fall: bool, timeout: float = 60
) -> None:
    """Prove the consumers are subscribed: a reading (and a fall, when the engine runs) published until
    stored (and its call opened). Messages sent before the first subscription have no session to wait in."""
    pub = Publisher(mqtt_url, f"probe-{uid}")
    at = datetime.now(UTC)
    msgs: list[tuple[str, bytes | str]] = [
        (f"care/v1/{device}/telemetry", json.dumps({"ts": iso(at), "seq": 10**9, "hr": 70}))
    ]
    if fall:
        msgs.append((f"care/v1/{device}/event", json.dumps({"ts": iso(at), "seq": 10**9, "type": "fall"})))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pub.publish_all(msgs)
            stored = scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = %s", (device,)) >= 1
            called = (
                not fall or scalar(conn, "SELECT count(*) FROM calls WHERE resident_id = %s", (rid,)) >= 1
            )
            if stored and called:
                return
            time.sleep(0.5)
        raise AssertionError("services did not consume the probe")
    finally:
        pub.close()


def fall_summary(conn: Conn, rids: list[int]) -> dict[int, tuple[int, int, int]]:
    """resident -> (fall alerts, their trigger count, calls)."""
    rows = conn.execute(
        """SELECT r.id,
                  (SELECT count(*) FROM alerts a WHERE a.resident_id = r.id AND a.rule = 'fall') AS alerts,
                  (SELECT coalesce(sum(a.count), 0) FROM alerts a
                    WHERE a.resident_id = r.id AND a.rule = 'fall') AS triggers,
                  (SELECT count(*) FROM calls c WHERE c.resident_id = r.id) AS calls
             FROM residents r WHERE r.id = ANY(%s)""",
        (rids,),
    ).fetchall()
    return {int(r["id"]): (int(r["alerts"]), int(r["triggers"]), int(r["calls"])) for r in rows}
