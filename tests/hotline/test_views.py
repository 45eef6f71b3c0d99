"""The hotline router on the real app (api.app.create_app), real database, real tokens."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.tokens import issue
from carewatch.settings import Settings
from hotline import service
from hotline.service import Actor
from tests.hotline.conftest import add_user
from tests.support import add_resident, scalar

KEY = "hotline-test-signing-key-0123456789abcdef"


@pytest.fixture(scope="module")
def client(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data_dir: Path = tmp_path_factory.mktemp("api")
    settings = Settings(database_url=database_url, secret_key=KEY, data_dir=data_dir)
    with TestClient(create_app(settings)) as c:
        yield c


def auth(user_id: int) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue(KEY, user_id, 0, 'access', 900)}"}


def test_double_claim_is_409_and_invalid_transition_is_422(client, db, make_call, uid):
    a, b = add_user(db, f"a_{uid}", "operator"), add_user(db, f"b_{uid}", "operator")
    ref = make_call(add_resident(db, f"V1 {uid}"), priority=1)
    r = client.post(f"/api/v1/calls/{ref.call_id}/start", headers=auth(a))
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert client.post(f"/api/v1/calls/{ref.call_id}/claim", headers=auth(a)).status_code == 200
    r = client.post(f"/api/v1/calls/{ref.call_id}/claim", headers=auth(b))
    assert r.status_code == 409 and r.json()["status"] == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    r = client.post(
        f"/api/v1/calls/{ref.call_id}/resolve", headers=auth(a), json={"outcome": "dispatched", "note": "x"}
    )
    assert r.status_code == 422
    assert client.post(f"/api/v1/calls/{ref.call_id}/reopen", headers=auth(a)).status_code == 403
    assert client.post("/api/v1/calls/999999999/claim", headers=auth(a)).status_code == 404
    assert client.post(f"/api/v1/calls/{ref.call_id}/claim").status_code == 401


def test_full_call_through_the_api(client, db, make_call, uid):
    op, sup = add_user(db, f"op_{uid}", "operator"), add_user(db, f"sup_{uid}", "supervisor")
    rid = add_resident(db, f"V2 {uid}")
    contact = scalar(
        db, "INSERT INTO contacts (resident_id, position, name) VALUES (%s, 1, 'Son') RETURNING id", (rid,)
    )
    ref = make_call(rid, priority=1)
    base = f"/api/v1/calls/{ref.call_id}"
    h = auth(op)
    assert client.post(f"{base}/claim", headers=h).json()["status"] == "claimed"
    assert client.post(f"{base}/start", headers=h).json()["status"] == "in_progress"
    assert client.post(f"{base}/notes", headers=h, json={"note": "breathing ok"}).status_code == 200
    r = client.post(f"{base}/contact-attempts", headers=h, json={"contact_id": contact, "result": "busy"})
    assert r.status_code == 200
    r = client.post(
        f"{base}/dispatch", headers=h, json={"responder_kind": "care_worker", "responder_name": "Liu"}
    )
    assert r.status_code == 201
    dispatch_id = r.json()["dispatch_id"]
    r = client.post(
        f"{base}/dispatches/{dispatch_id}/arrived", headers=h, json={"handover": "resolved_at_home"}
    )
    assert r.status_code == 200
    assert client.post(f"{base}/dispatches/{dispatch_id}/arrived", headers=h).status_code == 422
    r = client.post(f"{base}/resolve", headers=h, json={"outcome": "resident_ok", "note": "fine"})
    assert r.json()["status"] == "resolved" and r.json()["outcome"] == "resident_ok"
    assert (
        client.post(f"{base}/reopen", headers=auth(sup), json={"note": "check"}).json()["status"] == "queued"
    )
    screen = client.get(base, headers=h).json()
    assert [e["action"] for e in screen["log"]] == [
        "created",
        "claimed",
        "started",
        "note",
        "contact_attempt",
        "dispatched",
        "arrived",
        "resolved",
        "reopened",
    ]
    assert screen["contacts"][0]["tried"] and screen["contacts"][0]["last_result"] == "busy"
    assert screen["dispatches"][0]["responder_name"] == "Liu"
    listed = client.get("/api/v1/calls", headers=h, params={"resident_id": rid}).json()
    assert [c["id"] for c in listed] == [ref.call_id]


def test_family_sees_only_linked_calls_without_notes(client, db, make_call, uid):
    fam, op = add_user(db, f"fam_{uid}", "family"), add_user(db, f"opf_{uid}", "operator")
    mine, other = add_resident(db, f"Mine {uid}"), add_resident(db, f"Other {uid}")
    db.execute("INSERT INTO family_links (user_id, resident_id) VALUES (%s, %s)", (fam, mine))
    my_call, other_call = make_call(mine, priority=2), make_call(other, priority=1)
    client.post(f"/api/v1/calls/{my_call.call_id}/claim", headers=auth(op))
    client.post(f"/api/v1/calls/{my_call.call_id}/notes", headers=auth(op), json={"note": "INTERNAL-XYZ"})
    r = client.get(f"/api/v1/calls/{my_call.call_id}", headers=auth(fam))
    assert r.status_code == 200 and r.json()["status"] == "claimed"
    assert "INTERNAL-XYZ" not in r.text and "log" not in r.json() and "dispatches" not in r.json()
    assert client.get(f"/api/v1/calls/{other_call.call_id}", headers=auth(fam)).status_code == 404
    listed = client.get("/api/v1/calls", headers=auth(fam)).json()
    assert [c["id"] for c in listed] == [my_call.call_id] and "claimed_by_name" not in listed[0]
    assert client.get("/api/v1/calls", headers=auth(fam), params={"resident_id": other}).status_code == 404
    assert (
        client.post(
            f"/api/v1/calls/{my_call.call_id}/notes", headers=auth(fam), json={"note": "hi"}
        ).status_code
        == 403
    )


def test_answer_time_report_json_and_csv(client, db, uid):
    from hotline.intake import open_or_attach
    from tests.hotline.conftest import add_alert

    base = datetime(2024, 6, 1, 9, 0, tzinfo=UTC)
    op = Actor(add_user(db, f"rep_{uid}", "operator"), f"rep_{uid}", "operator")
    for i, (priority, claim_after) in enumerate([(1, 30), (1, 90), (2, 100)]):
        rid = add_resident(db, f"Rep{i} {uid}")
        created = base + timedelta(minutes=i)
        ref = open_or_attach(
            db,
            resident_id=rid,
            alert_id=add_alert(db, rid, "fall", priority),
            priority=priority,
            rule="fall",
            title="Fall",
            event_at=created,
            late=False,
            now=created,
            answer_target_s=60 if priority == 1 else 180,
        )
        service.claim(db, ref.call_id, op, created + timedelta(seconds=claim_after))
    params = {"from": "2024-06-01T00:00:00Z", "to": "2024-06-02T00:00:00Z"}
    r = client.get("/api/v1/reports/answer-times", headers=auth(op.id), params=params)
    assert r.status_code == 200
    p1 = r.json()["by_priority"][0]
    assert p1["calls"] == 2 and p1["claim_p50_s"] == 60 and p1["within_target_share"] == 0.5
    assert r.json()["by_operator"][0]["operator"] == op.username
    r = client.get("/api/v1/reports/answer-times", headers=auth(op.id), params={**params, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[1][:3] == ["overall", "", "3"]
    bad = client.get(
        "/api/v1/reports/answer-times",
        headers=auth(op.id),
        params={"from": "2024-06-02T00:00:00Z", "to": "2024-06-01T00:00:00Z"},
    )
    assert bad.status_code == 422
