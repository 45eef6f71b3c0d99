"""Broker access with the api as its own process: the password file and ACL are generated from the
registry and reloaded (SIGHUP to the broker's pid) on enrol and revoke; anonymous clients are refused; a
device's credentials read no other device's topics, whatever filter it subscribes to."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from api.auth import hash_password as hash_user_password
from carewatch.broker import ManagedBroker, hash_password, write_atomic
from carewatch.mqtt import make_client
from tests.support import add_resident, wait_for

from .conftest import System, connect, iso


class Device:
    """A device's MQTT connection recording what it receives; connected tells whether the broker let it in."""

    def __init__(self, url: str, client_id: str) -> None:
        self.client, props, target = make_client(url, client_id)
        self.received: list[str] = []
        self.result: list[Any] = []
        self.suback = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p=None: self.result.append(rc)
        self.client.on_message = lambda c, u, m: self.received.append(m.topic)
        self.client.on_subscribe = lambda *a: self.suback.set()
        self.client.connect(target.host, target.port, properties=props)
        self.client.loop_start()
        wait_for(lambda: self.result, 10, what="a CONNACK")

    @property
    def connected(self) -> bool:
        return not self.result[0].is_failure

    def subscribe(self, topic: str) -> None:
        self.suback.clear()
        self.client.subscribe(topic, qos=1)
        assert self.suback.wait(5), "no SUBACK"  # mosquitto grants it; the ACL applies at delivery

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_registry_drives_broker_access_and_devices_read_nothing_of_others(
    database_url: str,
    broker_factory: Callable[..., ManagedBroker],
    uid: str,
    tmp_path: Path,
    system_factory: Callable[..., System],
) -> None:
    broker = broker_factory(auth=True)
    svc_password = secrets.token_urlsafe(18)
    service_passwd = tmp_path / "svc-passwd"
    service_passwd.write_text(f"carewatch-svc:{hash_password(svc_password)}\n")
    write_atomic(broker.passwd_file, service_passwd.read_text())
    broker.reload()
    with connect(database_url) as conn:
        rid = add_resident(conn, f"ACL {uid}")
        conn.execute(
            "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'admin')",
            (f"acl-admin-{uid}", hash_user_password("acl-admin-password")),
        )
    system = system_factory(
        database_url,
        broker.url("carewatch-svc", svc_password),
        uid,
        CAREWATCH_BROKER_PASSWD_FILE=str(broker.passwd_file),
        CAREWATCH_BROKER_ACL_FILE=str(broker.acl_file),
        CAREWATCH_BROKER_PID_FILE=str(broker.pid_file),
        CAREWATCH_BROKER_SERVICE_PASSWD_FILE=str(service_passwd),
    )
    system.start("api")
    r = httpx.post(
        f"{system.base}/api/v1/auth/token",
        data={"username": f"acl-admin-{uid}", "password": "acl-admin-password"},
        timeout=10,
    )
    admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
    creds = {}
    for name in ("a", "b"):
        r = httpx.post(
            f"{system.base}/api/v1/devices",
            headers=admin,
            json={"id": f"acl-{name}-{uid}", "kind": "wristband", "resident_id": rid},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        creds[name] = r.json()
    a_id, b_id = creds["a"]["id"], creds["b"]["id"]
    assert a_id in broker.acl_file.read_text() and a_id in broker.passwd_file.read_text()

    anonymous = Device(broker.url(), f"anon-{uid}")
    assert not anonymous.connected
    anonymous.close()

    a = Device(broker.url(a_id, creds["a"]["mqtt_password"]), a_id)
    b = Device(broker.url(b_id, creds["b"]["mqtt_password"]), b_id)
    svc = Device(broker.url("carewatch-svc", svc_password), f"svc-{uid}")
    try:
        assert a.connected and b.connected and svc.connected
        for pattern in (
            "care/#",
            "#",
            f"care/v1/{b_id}/telemetry",
            "care/+/+/event",
            f"care/v1/{b_id}/cmd",
            "$SYS/#",
        ):
            a.subscribe(pattern)
        svc.subscribe("care/#")
        msg = json.dumps({"ts": iso(datetime.now(UTC)), "seq": 1, "hr": 70})
        for kind in ("telemetry", "event", "status"):
            b.client.publish(f"care/v1/{b_id}/{kind}", msg, qos=1)
        svc.client.publish(f"care/v1/{b_id}/cmd", b"{}", qos=1)
        wait_for(lambda: len(svc.received) >= 3, 10, what="the service seeing b's messages")
        time.sleep(0.5)
        assert a.received == [], f"device a read another device's topics: {a.received}"
    finally:
        for d in (a, b, svc):
            d.close()

    # Revoke through the api process: the broker reloads and the device's credentials stop working.
    r = httpx.post(f"{system.base}/api/v1/devices/{a_id}/revoke", headers=admin, timeout=10)
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert a_id not in broker.passwd_file.read_text()

    def refused() -> bool:
        d = Device(broker.url(a_id, creds["a"]["mqtt_password"]), f"{a_id}-again")
        d.close()
        return not d.connected

    wait_for(refused, 10, interval=0.5, what="the revoked device refused")
