"""Timed probe messages and the pollers that see their effect become visible in the database.

A row is visible to a poll whose snapshot is taken after the commit, so "seen at" is the wall time just
before the first query that returned it: an upper bound on the commit time, at most one poll interval
plus one query late. The payload's ts is epoch milliseconds; the exact publish wall time is kept here.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
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


@dataclass
class ProberPlan:
    mqtt_url: str
    database_url: str
    falls: list[tuple[float, int, str]]  # (seconds after start, resident id, wristband id), sorted
    duration_s: float
    loop_every_s: float = 0.02


def _connected(url: str, client_id: str) -> mqtt.Client:
    client, props, target = make_client(url, client_id)
    client.connect(target.host, target.port, keepalive=120, clean_start=True, properties=props)
    deadline = time.monotonic() + 30
    while not client.is_connected():
        client.loop(0.05)
        if time.monotonic() > deadline:
            raise RuntimeError(f"prober {client_id}: no CONNACK")
    return client


def run_prober(plan: ProberPlan, out: Any) -> None:
    """A process of its own, one thread, nothing else to do: publish each fall at its time and wait for
    the NOTIFY that its call's live_events row sends on commit, so "committed" is observed, not inferred
    from a column. Between falls, loopback probes (publish -> receive through the same broker) measure
    the floor the same way. Returns {"falls": [(rid, sent wall time, s)], "floor": [s], "lost_floor": n}."""
    import psycopg

    pub = _connected(plan.mqtt_url, "bench-prober-pub")
    sub = _connected(plan.mqtt_url, "bench-prober-sub")
    got: list[float] = []
    sub.on_message = lambda _c, _u, _m: got.append(time.perf_counter())
    sub.subscribe("bench/loopback", qos=1)
    conn = psycopg.connect(plan.database_url, autocommit=True)
    conn.execute("LISTEN carewatch_live")
    for _ in range(20):  # let the SUBACK arrive
        sub.loop(0.01)
    falls: list[tuple[int, float, float]] = []
    floor: list[float] = []
    lost = 0
    began = time.monotonic()
    todo = list(plan.falls)
    while time.monotonic() - began < plan.duration_s and todo:
        if time.monotonic() - began >= todo[0][0]:
            _at, rid, device = todo.pop(0)
            body = {"ts": int(time.time() * 1000), "seq": 1, "type": "fall", "confidence": 0.95}
            wall, sent = time.time(), time.perf_counter()
            pub.publish(f"care/v1/{device}/event", json.dumps(body).encode(), qos=1)
            while time.perf_counter() - sent < 30:
                # queries can't run inside notifies() (it holds the connection): take one, then look
                payloads = [n.payload for n in conn.notifies(timeout=1.0, stop_after=1)]
                seen = time.perf_counter()
                row = (
                    conn.execute(
                        "SELECT resident_id, kind FROM live_events WHERE id = %s", (int(payloads[0]),)
                    ).fetchone()
                    if payloads
                    else None
                )
                if row is not None and int(row[0]) == rid and row[1] == "call.created":
                    falls.append((rid, wall, seen - sent))
                    break
            pub.loop(0)
            continue
        got.clear()
        sent = time.perf_counter()
        pub.publish("bench/loopback", b"1", qos=1)
        while not got and time.perf_counter() - sent < 2:
            sub.loop(0.002)
        if got:
            floor.append(got[0] - sent)
        else:
            lost += 1
        pub.loop(0)
        time.sleep(plan.loop_every_s)
    conn.close()
    pub.disconnect()
    sub.disconnect()
    out.put({"falls": falls, "floor": floor, "lost_floor": lost})
