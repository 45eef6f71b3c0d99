"""A full flow with known secrets (user passwords, a device secret, a broker password in the services'
URL, tokens, an access code) through ingest, alerts and api as processes: no log line contains any."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from api.auth import hash_password as hash_user_password
from carewatch.broker import ManagedBroker, hash_password, write_atomic
from carewatch.mqtt import make_client
from tests.support import add_resident, scalar, wait_for

from .conftest import SECRET_KEY, System, connect, iso


def test_no_secret_in_any_log_line_of_a_full_run(
    database_url: str,
    broker_factory: Callable[..., ManagedBroker],
    uid: str,
    tmp_path: Path,
    system_factory: Callable[..., System],
) -> None:
    broker = broker_factory(auth=True)
    svc_password = "svc-" + secrets.token_urlsafe(18)
    admin_password, operator_password = "adm-" + secrets.token_urlsafe(12), "opr-" + secrets.token_urlsafe(12)
    wrong_password = "wrong-" + secrets.token_urlsafe(12)
    access_code = "KEYSAFE-" + secrets.token_hex(6)
    service_passwd = tmp_path / "mqtt-service-passwd"
    service_passwd.write_text(f"carewatch-svc:{hash_password(svc_password)}\n")
    write_atomic(broker.passwd_file, service_passwd.read_text())
    broker.reload()
    mqtt_url = broker.url("carewatch-svc", svc_password)

    with connect(database_url) as conn:
        rid = add_resident(conn, f"Secrets {uid}")
        conn.execute(
            "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'admin')",
            (f"admin-{uid}", hash_user_password(admin_password)),
        )
        system = system_factory(
            database_url,
            mqtt_url,
            uid,
            CAREWATCH_BROKER_PASSWD_FILE=str(broker.passwd_file),
            CAREWATCH_BROKER_ACL_FILE=str(broker.acl_file),
            CAREWATCH_BROKER_PID_FILE=str(broker.pid_file),
            CAREWATCH_BROKER_SERVICE_PASSWD_FILE=str(service_passwd),
            CAREWATCH_LOG_LEVEL="DEBUG",
        )
        system.start("api")
        base = system.base
        tokens: list[str] = []

        def login(user: str, password: str) -> httpx.Response:
            r = httpx.post(
                f"{base}/api/v1/auth/token", data={"username": user, "password": password}, timeout=10
            )
            if r.status_code == 200:
                tokens.extend([r.json()["access_token"], r.json().get("refresh_token", "")])
            return r

        assert login(f"admin-{uid}", wrong_password).status_code == 401
        admin = {"Authorization": f"Bearer {login(f'admin-{uid}', admin_password).json()['access_token']}"}
        r = httpx.post(
            f"{base}/api/v1/users",
            headers=admin,
            json={"username": f"op-{uid}", "password": operator_password, "role": "operator"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        r = httpx.put(
            f"{base}/api/v1/residents/{rid}/access", headers=admin, json={"access_notes": access_code}
        )
        assert r.status_code == 204, r.text
        device = f"sec-{uid}"
        r = httpx.post(
            f"{base}/api/v1/devices",
            headers=admin,
            json={"id": device, "kind": "wristband", "resident_id": rid, "report_interval_s": 3600},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        device_secret = r.json()["mqtt_password"]
        operator = {"Authorization": f"Bearer {login(f'op-{uid}', operator_password).json()['access_token']}"}

        system.start("ingest", "alerts")
        client, props, target = make_client(broker.url(device, device_secret), f"{device}-c")
        client.connect(target.host, target.port, properties=props)
        client.loop_start()
        try:

            def called() -> bool:
                fall = {"ts": iso(datetime.now(UTC)), "seq": int(time.time()), "type": "fall"}
                client.publish(f"care/v1/{device}/event", json.dumps(fall), qos=1)
                return bool(scalar(conn, "SELECT count(*) FROM calls WHERE resident_id = %s", (rid,)) >= 1)

            wait_for(called, 60, interval=1.0, what="the device's fall to become a call")
        finally:
            client.disconnect()
            client.loop_stop()
        call_id = scalar(conn, "SELECT id FROM calls WHERE resident_id = %s", (rid,))
        assert (
            httpx.post(f"{base}/api/v1/calls/{call_id}/claim", headers=operator, timeout=10).status_code
            == 200
        )
        r = httpx.post(f"{base}/api/v1/residents/{rid}/access-reveal", headers=operator, timeout=10)
        assert r.status_code == 200 and r.json()["access_notes"] == access_code
        system.stop_all()

    logs = system.logs() + (broker.data_dir / "mosquitto.log").read_text(errors="replace")
    assert len(tokens) >= 4 and "connected (session present" in logs  # the flow ran and was logged
    needles = {
        "service broker password": svc_password,
        "admin password": admin_password,
        "operator password": operator_password,
        "mistyped password": wrong_password,
        "device secret": device_secret,
        "access code": access_code,
        "signing key": SECRET_KEY,
        **{f"token {i}": t for i, t in enumerate(tokens) if t},
    }
    leaked = [name for name, value in needles.items() if value in logs]
    assert not leaked, f"secrets in logs: {leaked}"
    assert len(logs) > 500  # the scan read real, non-trivial logs
