"""Registry CRUD: residents (thresholds validated against the alert engine's model), contacts, users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from carewatch.broker import hash_password
from carewatch.registry_sync import read_passwd, service_accounts_from, sync_broker

from .conftest import User


def test_resident_lifecycle_and_thresholds(client: TestClient, users: dict[str, User]) -> None:
    admin = users["admin"].headers
    body = {
        "name": "Chen Mei",
        "date_of_birth": "1938-04-02",
        "district": "Wan Chai",
        "timezone": "Asia/Hong_Kong",
        "home_lat": 22.2783,
        "home_lon": 114.1747,
        "lives_alone": True,
        "care_notes": {"conditions": "diabetes", "language": "Cantonese"},
        "thresholds": {"hr_high": 125},
    }
    created = client.post("/api/v1/residents", json=body, headers=admin)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    assert created.json()["thresholds"] == {"hr_high": 125}
    bad = client.patch(f"/api/v1/residents/{rid}", json={"thresholds": {"hr_hihg": 120}}, headers=admin)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "thresholds.hr_hihg"
    assert "hr_high" in bad.json()["errors"][0]["message"]  # tells the valid names
    out_of_range = client.patch(
        f"/api/v1/residents/{rid}", json={"thresholds": {"hr_high": 5}}, headers=admin
    )
    assert out_of_range.status_code == 422
    ok = client.patch(
        f"/api/v1/residents/{rid}", json={"thresholds": {"spo2_low": 88}, "dementia": True}, headers=admin
    )
    assert ok.status_code == 200 and ok.json()["dementia"] is True and ok.json()["name"] == "Chen Mei"
    null_name = client.patch(f"/api/v1/residents/{rid}", json={"name": None}, headers=admin)
    assert null_name.status_code == 422

    contacts = [
        {"name": "Chen Jun", "relation": "son", "phone": "+852 5555 0101", "is_responder": True},
        {"name": "Mrs Lau", "kind": "neighbour", "phone": "5555 0202"},
    ]
    put = client.put(f"/api/v1/residents/{rid}/contacts", json=contacts, headers=admin)
    assert [c["name"] for c in put.json()] == ["Chen Jun", "Mrs Lau"]
    assert [c["position"] for c in put.json()] == [0, 1]
    again = client.put(f"/api/v1/residents/{rid}/contacts", json=contacts[::-1], headers=admin)
    listed = client.get(f"/api/v1/residents/{rid}/contacts", headers=users["operator"].headers).json()
    assert [c["name"] for c in listed] == [c["name"] for c in again.json()] == ["Mrs Lau", "Chen Jun"]


def test_users_and_family_links(
    client: TestClient, users: dict[str, User], resident: int, other_resident: int
) -> None:
    admin = users["admin"].headers
    name = f"fam-{resident}-{other_resident}"
    created = client.post(
        "/api/v1/users",
        headers=admin,
        json={"username": name, "password": "long enough pw", "role": "family", "resident_ids": [resident]},
    )
    assert created.status_code == 201, created.text
    assert created.json()["resident_ids"] == [resident] and "password" not in created.text
    dup = client.post(
        "/api/v1/users",
        headers=admin,
        json={"username": name, "password": "long enough pw", "role": "operator"},
    )
    assert dup.status_code == 409
    uid = created.json()["id"]
    linked = client.put(
        f"/api/v1/users/{uid}/residents", json={"resident_ids": [resident, other_resident]}, headers=admin
    )
    assert linked.json()["resident_ids"] == sorted([resident, other_resident])
    missing = client.put(f"/api/v1/users/{uid}/residents", json={"resident_ids": [2**40]}, headers=admin)
    assert missing.status_code == 422
    op = client.post(
        "/api/v1/users",
        headers=admin,
        json={
            "username": name + "-op",
            "password": "long enough pw",
            "role": "operator",
            "resident_ids": [resident],
        },
    )
    assert op.status_code == 422  # only family users are linked
    token = client.post("/api/v1/auth/token", data={"username": name, "password": "long enough pw"}).json()
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"}).json()
    assert me["resident_ids"] == sorted([resident, other_resident])


def test_sync_broker_renders_enabled_devices_and_keeps_services(
    tmp_path: Path, conn: psycopg.Connection[dict[str, Any]], uid: str
) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    passwd.write_text(f"carewatch-ingest:{hash_password('svc')}\nstale-device:$7$x\n")
    conn.execute(
        "INSERT INTO devices (id, kind, secret_hash) VALUES (%s, 'wristband', %s), "
        "(%s, 'wristband', %s), (%s, 'wristband', NULL)",
        (f"on-{uid}", hash_password("a"), f"off-{uid}", hash_password("b"), f"nokey-{uid}"),
    )
    conn.execute("UPDATE devices SET enabled = false WHERE id = %s", (f"off-{uid}",))
    reloads: list[int] = []
    n = sync_broker(
        conn, passwd, acl, service_accounts=service_accounts_from(passwd), reload=lambda: reloads.append(1)
    )
    entries = read_passwd(passwd)
    assert f"on-{uid}" in entries and "carewatch-ingest" in entries
    assert f"off-{uid}" not in entries and f"nokey-{uid}" not in entries and "stale-device" not in entries
    assert n == len(entries) - 1 and reloads == [1]
    text = acl.read_text()
    assert f"user on-{uid}\ntopic write care/v1/on-{uid}/telemetry" in text
    assert f"off-{uid}" not in text
