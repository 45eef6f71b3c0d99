"""The welfare HTTP API end to end on the real database: roles, family scoping, errors, CSV export."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from api.app import create_app
from tests.api.conftest import User, make_settings, new_resident, new_user

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as c:
        yield c


@pytest.fixture(scope="module")
def client(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(database_url, Path(tmp_path_factory.mktemp("welfare"))))) as c:
        yield c


@pytest.fixture(scope="module")
def world(conn: Conn) -> dict[str, Any]:
    mine, other = new_resident(conn, district="Xuhui"), new_resident(conn, district="Jingan")
    return {
        "mine": mine,
        "other": other,
        "op": new_user(conn, "operator"),
        "sup": new_user(conn, "supervisor"),
        "fam": new_user(conn, "family", (mine,)),
    }


def _wanted(minutes: int = 60) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


def _completed_order(client: TestClient, w: dict[str, Any], resident: int, org: int) -> dict[str, Any]:
    op: User = w["op"]
    req = client.post(
        "/api/v1/welfare/requests",
        json={"resident_id": resident, "category": "cleaning", "wanted_at": _wanted()},
        headers=op.headers,
    )
    assert req.status_code == 201, req.text
    req = client.post(
        f"/api/v1/welfare/requests/{req.json()['id']}/assign", json={"org_id": org}, headers=op.headers
    )
    assert req.status_code == 200, req.text
    order = req.json()["order_id"]
    for body in (
        {"action": "accept"},
        {"action": "assign_worker", "worker_name": "Zhang"},
        {"action": "check_in"},
        {"action": "check_out"},
    ):
        resp = client.post(f"/api/v1/welfare/orders/{order}/actions", json=body, headers=op.headers)
        assert resp.status_code == 200, resp.text
    return resp.json()


def test_lifecycle_over_http_with_family_rating(client: TestClient, world: dict[str, Any]) -> None:
    sup, op, fam = world["sup"], world["op"], world["fam"]
    org = client.post(
        "/api/v1/welfare/providers", json={"name": f"Clean {sup.username}"}, headers=sup.headers
    )
    assert org.status_code == 201, org.text
    dup = client.post(
        "/api/v1/welfare/providers", json={"name": f"Clean {sup.username}"}, headers=sup.headers
    )
    assert dup.status_code == 409
    assert client.post("/api/v1/welfare/providers", json={"name": "x"}, headers=op.headers).status_code == 403
    org_id = org.json()["id"]

    done = _completed_order(client, world, world["mine"], org_id)
    assert done["status"] == "done" and done["order_status"] == "completed"
    again = client.post(
        f"/api/v1/welfare/orders/{done['order_id']}/actions", json={"action": "check_out"}, headers=op.headers
    )
    assert again.status_code == 422 and "cannot check out a completed order" in again.json()["detail"]

    # Family: may see and rate their own relative's order, and nobody else's (404, not 403).
    listed = client.get("/api/v1/welfare/requests?status=done", headers=fam.headers).json()
    assert {r["resident_id"] for r in listed} == {world["mine"]} and "notes" not in listed[0]
    rated = client.post(
        f"/api/v1/welfare/orders/{done['order_id']}/rating", json={"rating": 5}, headers=fam.headers
    )
    assert rated.status_code == 200 and rated.json()["rating"] == 5
    theirs = _completed_order(client, world, world["other"], org_id)
    hidden = client.post(
        f"/api/v1/welfare/orders/{theirs['order_id']}/rating", json={"rating": 1}, headers=fam.headers
    )
    assert hidden.status_code == 404
    assert client.post("/api/v1/welfare/requests", json={}, headers=fam.headers).status_code == 403
    bad = client.post(
        "/api/v1/welfare/requests",
        json={"resident_id": 2**40, "category": "chat", "wanted_at": _wanted()},
        headers=op.headers,
    )
    assert bad.status_code == 404
    nul = client.post(
        "/api/v1/welfare/requests",
        json={"resident_id": world["mine"], "category": "chat", "wanted_at": _wanted(), "notes": "a\x00b"},
        headers=op.headers,
    )
    assert nul.status_code == 422  # PostgreSQL text cannot hold NUL: invalid input, not a 500


def test_supervision_json_csv_and_roles(client: TestClient, world: dict[str, Any]) -> None:
    sup, op = world["sup"], world["op"]
    assert client.get("/api/v1/welfare/supervision", headers=op.headers).status_code == 403
    body = client.get("/api/v1/welfare/supervision", headers=sup.headers)
    assert body.status_code == 200
    assert set(body.json()) >= {"daily", "answer_times", "providers", "visit_rates", "overdue"}
    csv = client.get("/api/v1/welfare/supervision?format=csv&table=providers", headers=sup.headers)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert (
        csv.text.splitlines()[0] == "org,orders,completed,declined,cancelled,on_time,on_time_rate,avg_rating"
    )
    assert client.get("/api/v1/welfare/supervision?tz=Mars/Base", headers=sup.headers).status_code == 422
    now = datetime.now(UTC).isoformat()
    inverted = client.get("/api/v1/welfare/supervision", params={"from": now, "to": now}, headers=sup.headers)
    assert inverted.status_code == 422


def test_timeline_family_scope(client: TestClient, world: dict[str, Any], conn: Conn) -> None:
    from hotline.intake import open_or_attach

    now = datetime.now(UTC)
    ids = []
    for rid in (world["mine"], world["other"]):
        alert = conn.execute(
            "INSERT INTO alerts (resident_id, rule, priority, opened_at, last_seen_at) "
            "VALUES (%s, 'sos', 1, %s, %s) RETURNING id",
            (rid, now, now),
        ).fetchone()
        assert alert is not None
        ref = open_or_attach(
            conn,
            resident_id=rid,
            alert_id=alert["id"],
            priority=1,
            rule="sos",
            title="SOS",
            event_at=now,
            late=False,
            now=now,
            answer_target_s=60,
        )
        ids.append(ref.call_id)
    fam = world["fam"]
    own = client.get(f"/api/v1/welfare/calls/{ids[0]}/timeline", headers=fam.headers)
    assert own.status_code == 200 and [s["kind"] for s in own.json()["steps"]] == ["alarm", "opened"]
    assert client.get(f"/api/v1/welfare/calls/{ids[1]}/timeline", headers=fam.headers).status_code == 404
    assert client.get("/api/v1/welfare/calls/999999999/timeline", headers=fam.headers).status_code == 404
    staff_view = client.get(f"/api/v1/welfare/calls/{ids[1]}/timeline", headers=world["op"].headers)
    assert staff_view.status_code == 200
