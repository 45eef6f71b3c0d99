"""Helpers shared by integration tests: registry rows, a QoS 1 publisher, service subprocesses, waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from carewatch.mqtt import make_client

ROOT = Path(__file__).resolve().parent.parent


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def add_resident(conn: psycopg.Connection[Any], name: str, **fields: Any) -> int:
    cols = ["name", *fields]
    placeholders = ", ".join(["%s"] * len(cols))
    values = [name, *(json.dumps(v) if isinstance(v, dict) else v for v in fields.values())]
    row = conn.execute(
        f"INSERT INTO residents ({', '.join(cols)}) VALUES ({placeholders}) RETURNING id", values
    ).fetchone()
    assert row is not None
    return int(row["id"] if isinstance(row, dict) else row[0])


def add_device(
    conn: psycopg.Connection[Any],
    device_id: str,
    resident_id: int | None,
    kind: str = "wristband",
    *,
    room: str | None = None,
    report_interval_s: int = 60,
) -> None:
    conn.execute(
        "INSERT INTO devices (id, kind, resident_id, room, report_interval_s) VALUES (%s, %s, %s, %s, %s)",
        (device_id, kind, resident_id, room, report_interval_s),
    )


class Publisher:
    """A QoS 1 publisher that waits for every PUBACK (messages are then in the broker's hands)."""

    def __init__(self, url: str, client_id: str) -> None:
        self.client, props, target = make_client(url, client_id)
        self.client.max_inflight_messages_set(1000)
        self.acked = 0
        self.sent = 0
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.connect(target.host, target.port, properties=props)
        self.client.loop_start()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        with self._lock:
            self.acked += 1

    def publish_all(
        self, messages: Iterable[tuple[str, bytes | str]], qos: int = 1, timeout: float = 120
    ) -> int:
        sent = 0
        for topic, payload in messages:
            # paho's packet ids wrap at 65,535: keep the unacknowledged window well below that
            while qos and self.sent - self.acked > 20_000:
                time.sleep(0.005)
            info = self.client.publish(topic, payload, qos=qos)
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed: {info.rc}"
            sent += 1
            self.sent += 1 if qos else 0
        deadline = time.monotonic() + timeout
        while self.acked < self.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.acked >= self.sent, f"broker acked {self.acked} of {self.sent}"
        return sent

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def service_env(database_url: str, mqtt_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREWATCH_")}
    env.update(
        {
            "CAREWATCH_DATABASE_URL": database_url,
            "CAREWATCH_MQTT_URL": mqtt_url,
            "CAREWATCH_DATA_DIR": str(ROOT / "var" / "test" / "data"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start_service(command: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `carewatch <command>` as its own process, as in production."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "carewatch.cli", command],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    out.close()
    return proc


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`carewatch <args>` to completion, as an operator runs it; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "carewatch.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def stop_process(proc: subprocess.Popen[bytes], *, kill: bool = False, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]
