"""Timed probe messages and the pollers that see their effect become visible in the database.

A row is visible to a poll whose snapshot is taken after the commit, so "seen at" is the wall time just
before the first query that returned it: an upper bound on the commit time, at most one poll interval
plus one query late. The payload's ts is epoch milliseconds; the exact publish wall time is kept here.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from bench.common import Env
from carewatch.mqtt import make_client

POLL_S = 0.005


class ProbeClient:
    """One QoS 1 publisher in the bench process; remembers when each probe was handed to the socket."""

    def __init__(self, url: str, client_id: str) -> None:
        self.client, props, target = make_client(url, client_id)
        self.client.connect(target.host, target.port, keepalive=60, clean_start=True, properties=props)
        self.client.loop_start()
        self.sent: dict[Any, float] = {}

    def publish(self, key: Any, topic: str, payload: bytes, qos: int = 1) -> None:
        self.sent[key] = time.time()
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"probe publish failed: {info.rc}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class TelemetryPoller(threading.Thread):
    """Polls one probe device's rows by primary key (cheap whatever the table size)."""

    def __init__(self, env: Env, device_id: str, since_ms: int) -> None:
        super().__init__(daemon=True)
        self.env, self.device_id, self.since_ms = env, device_id, since_ms
        self.seen: dict[int, tuple[float, float]] = {}  # seq -> (seen wall time, received_at)
        self.stop_flag = threading.Event()

    def run(self) -> None:
        from datetime import UTC, datetime

        since = datetime.fromtimestamp(self.since_ms / 1000, tz=UTC)
        with self.env.connect() as conn:
            while not self.stop_flag.is_set():
                began = time.time()
                rows = conn.execute(
                    "SELECT seq, received_at FROM telemetry WHERE device_id = %s AND ts >= %s",
                    (self.device_id, since),
                ).fetchall()
                for seq, received_at in rows:
                    if seq not in self.seen:
                        self.seen[int(seq)] = (began, received_at.timestamp())
                time.sleep(max(0.0, POLL_S - (time.time() - began)))


class CallPoller(threading.Thread):
    """Polls new calls by id; remembers for each resident when its call became visible and created_at."""

    def __init__(self, env: Env) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.seen: dict[int, tuple[float, float]] = {}  # resident_id -> (seen wall time, created_at)
        self.stop_flag = threading.Event()

    def run(self) -> None:
        last = 0
        with self.env.connect() as conn:
            while not self.stop_flag.is_set():
                began = time.time()
                for cid, rid, created in conn.execute(
                    "SELECT id, resident_id, created_at FROM calls WHERE id > %s ORDER BY id", (last,)
                ).fetchall():
                    last = max(last, int(cid))
                    self.seen.setdefault(int(rid), (began, created.timestamp()))
                time.sleep(max(0.0, POLL_S - (time.time() - began)))
