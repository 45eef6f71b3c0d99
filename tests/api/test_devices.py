"""Device enrolment against a REAL mosquitto with auth and ACL: own topics only, revoke and re-key."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from api.app import create_app
from carewatch.broker import ManagedBroker, hash_password, render_acl, render_passwd, write_atomic

from .conftest import User, make_settings, new_user

SERVICE_PASSWORD = "service-secret-for-tests"


class Client:
    """A small synchronous MQTT 5 client for assertions (connect result, SUBACK codes, messages)."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        if username:
            self.c.username_pw_set(username, password)
        self.connected = threading.Event()
        self.rc: Any = None
        self.suback: list[Any] = []
        self.subscribed = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.port = port

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.rc = rc
        self.connected.set()

    def _on_subscribe(self, c: Any, u: Any, mid: Any, codes: Any, props: Any = None) -> None:
        self.suback = list(codes)
        self.subscribed.set()

    def connect(self) -> bool:
        self.c.connect("127.0.0.1", self.port, keepalive=10)
        self.c.loop_start()
        assert self.connected.wait(5), "no CONNACK"
        return not self.rc.is_failure

    def subscribe(self, topic: str) -> bool:
        self.subscribed.clear()
        self.c.subscribe(topic, qos=1)
        assert self.subscribed.wait(5), "no SUBACK"
        return not self.suback[0].is_failure

    def publish(self, topic: str, payload: bytes, *, strict: bool = True) -> None:
        info = self.c.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(5)
        except RuntimeError:  # the broker may drop a client that publishes where it may not
            if strict:
                raise

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def can_connect(port: int, user: str | None, password: str | None, want: bool, timeout: float = 5) -> bool:
    """Poll until the broker's answer equals `want` (SIGHUP reload is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        client = Client(port, user, password)
        ok = client.connect()
        client.close()
        if ok == want or time.monotonic() > deadline:
            return ok
        time.sleep(0.1)


@pytest.fixture
def broker(broker_factory: Callable[..., ManagedBroker]) -> ManagedBroker:
    b = broker_factory(auth=True)
    write_atomic(b.passwd_file, render_passwd([("carewatch-ingest", hash_password(SERVICE_PASSWORD))]))
    write_atomic(b.acl_file, render_acl([]))
    b.reload()
    return b


@pytest.fixture
def enrol_client(database_url: str, tmp_path: Path, broker: ManagedBroker) -> Iterator[TestClient]:
    settings = make_settings(
        database_url, tmp_path, broker_passwd_file=broker.passwd_file, broker_acl_file=broker.acl_file
    )
    app = create_app(settings)
    app.state.broker_reload = broker.reload
    with TestClient(app) as c:
        yield c


def test_enrolled_device_publishes_only_its_own_topics(
    enrol_client: TestClient,
    broker: ManagedBroker,
    users: dict[str, User],
    resident: int,
    uid: str,
    conn: psycopg.Connection[dict[str, Any]],
) -> None:
    admin = users["admin"].headers
    creds = {}
    for name in ("a", "b"):
        resp = enrol_client.post(
            "/api/v1/devices",
            headers=admin,
            json={"id": f"wb-{name}-{uid}", "kind": "wristband", "resident_id": resident},
        )
        assert resp.status_code == 201, resp.text
        creds[name] = resp.json()
    a, b = creds["a"], creds["b"]
    assert a["mqtt_username"] == a["id"] and len(a["mqtt_password"]) >= 40
    stored = conn.execute("SELECT secret_hash FROM devices WHERE id = %s", (a["id"],)).fetchone()
    assert (
        stored and stored["secret_hash"].startswith("$7$") and a["mqtt_password"] not in stored["secret_hash"]
    )
    assert a["mqtt_password"] not in enrol_client.get(f"/api/v1/devices/{a['id']}", headers=admin).text
    assert "carewatch-ingest:" in broker.passwd_file.read_text()  # service accounts survive the re-render

    assert can_connect(broker.port, a["id"], a["mqtt_password"], True)
    monitor = Client(broker.port, "carewatch-ingest", SERVICE_PASSWORD)
    assert monitor.connect() and monitor.subscribe("care/#")
    forger = Client(broker.port, a["id"], a["mqtt_password"])
    assert forger.connect()
    forger.publish(f"care/v1/{b['id']}/telemetry", b"forged", strict=False)
    forger.close()
    dev = Client(broker.port, a["id"], a["mqtt_password"])
    assert dev.connect()
    dev.publish(f"care/v1/{a['id']}/telemetry", b"mine")
    deadline = time.monotonic() + 5
    while not monitor.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert monitor.messages == [(f"care/v1/{a['id']}/telemetry", b"mine")]  # the forged one never arrived
    # Reading another device's commands: mosquitto's acl_file refuses at delivery, not in the SUBACK.
    dev.subscribe(f"care/v1/{b['id']}/cmd")
    assert dev.subscribe(f"care/v1/{a['id']}/cmd")
    monitor.publish(f"care/v1/{b['id']}/cmd", b"for b")
    monitor.publish(f"care/v1/{a['id']}/cmd", b"for a")
    deadline = time.monotonic() + 5
    while not dev.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert dev.messages == [(f"care/v1/{a['id']}/cmd", b"for a")]
    dev.close()
    monitor.close()

    assert not can_connect(broker.port, None, None, False)  # anonymous refused
    assert not can_connect(broker.port, a["id"], b["mqtt_password"], False)  # another device's secret

    # revoke: removed from the broker; re-key: old secret dead, new one works
    assert enrol_client.post(f"/api/v1/devices/{a['id']}/revoke", headers=admin).json()["enabled"] is False
    assert not can_connect(broker.port, a["id"], a["mqtt_password"], False)
    rotated = enrol_client.post(f"/api/v1/devices/{b['id']}/rotate-secret", headers=admin).json()
    assert rotated["mqtt_password"] != b["mqtt_password"]
    assert not can_connect(broker.port, b["id"], b["mqtt_password"], False)
    assert can_connect(broker.port, b["id"], rotated["mqtt_password"], True)


def test_device_validation(client: TestClient, users: dict[str, User], resident: int, uid: str) -> None:
    admin = users["admin"].headers
    sensor = {"id": f"ir-{uid}", "kind": "ir_sensor", "resident_id": resident}
    resp = client.post("/api/v1/devices", headers=admin, json=sensor)
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "room"
    assert (
        client.post("/api/v1/devices", headers=admin, json={**sensor, "room": "bathroom"}).status_code == 201
    )
    assert client.post("/api/v1/devices", headers=admin, json={**sensor, "room": "hall"}).status_code == 409
    resp = client.post("/api/v1/devices", headers=admin, json={"id": "carewatch-ingest", "kind": "wristband"})
    assert resp.status_code == 422  # a device may never take a service account's name
    resp = client.post("/api/v1/devices", headers=admin, json={"id": "bad/id", "kind": "wristband"})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "id"
    resp = client.patch(f"/api/v1/devices/ir-{uid}", headers=admin, json={"report_interval_s": 30})
    assert resp.status_code == 200 and resp.json()["report_interval_s"] == 30


def test_supervisor_reads_devices_not_secrets(
    client: TestClient, users: dict[str, User], conn: psycopg.Connection[dict[str, Any]]
) -> None:
    sup: User = users["supervisor"]
    listed = client.get("/api/v1/devices", headers=sup.headers)
    assert listed.status_code == 200
    assert all("secret" not in k and "password" not in k for d in listed.json() for k in d)
    assert new_user(conn, "admin").role == "admin"
