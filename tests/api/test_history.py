"""History against raw data, on whichever storage path the session database uses (run on both).

Readings are written through ingest's own store (raw rows and the vitals_1m / vitals_1h rollups in one
transaction), so the API's rollup reads are checked against what ingest really maintains.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest.batch import Rows
from ingest.store import store_rows

from .conftest import User, new_resident, new_user

HOURS = 3
NOW = datetime.now(UTC)
BASE = (NOW - timedelta(hours=HOURS + 1)).replace(minute=0, second=0, microsecond=0)


def _tel(did: str, ts: datetime, seq: int, rid: int, **v: Any) -> tuple[object, ...]:
    return (
        did,
        ts,
        seq,
        rid,
        ts,
        v.get("hr"),
        v.get("spo2"),
        v.get("battery"),
        v.get("worn"),
        v.get("steps"),
        v.get("lat"),
        v.get("lon"),
        v.get("acc_m"),
        v.get("room"),
        v.get("motion"),
        v.get("presence"),
    )


@pytest.fixture(scope="module")
def seeded(conn: psycopg.Connection[dict[str, Any]], uid_module: str) -> dict[str, Any]:
    rid = new_resident(conn, home_lat=22.28, home_lon=114.17, geofence_m=200, timezone="Asia/Shanghai")
    wb, ir = f"wb-h-{uid_module}", f"ir-h-{uid_module}"
    conn.execute("INSERT INTO devices (id, kind, resident_id) VALUES (%s, 'wristband', %s)", (wb, rid))
    conn.execute(
        "INSERT INTO devices (id, kind, resident_id, room) VALUES (%s, 'ir_sensor', %s, 'bathroom')",
        (ir, rid),
    )
    raw: list[dict[str, Any]] = []
    rows = []
    for i in range(HOURS * 120):  # every 30 s
        ts = BASE + timedelta(seconds=30 * i)
        hr = 60 + (i * 7) % 50
        spo2 = None if i % 5 == 0 else 90 + i % 9
        rows.append(
            _tel(
                wb,
                ts,
                i,
                rid,
                hr=hr,
                spo2=spo2,
                battery=80,
                worn=True,
                steps=i * 3,
                lat=22.28 + (0.01 if i % 60 == 0 else 0),
                lon=114.17,
            )
        )
        raw.append({"ts": ts, "hr": hr, "spo2": spo2})
        if i % 4 == 0:
            rows.append(_tel(ir, ts, i, rid, room="bathroom", motion=i % 8 == 0, presence=True))
    store_rows(conn, Rows(telemetry=rows))
    store_rows(conn, Rows(telemetry=rows))  # redelivery changes nothing
    for i in range(25):
        conn.execute(
            "INSERT INTO events (device_id, ts, seq, resident_id, type) VALUES (%s, %s, %s, %s, 'test')",
            (wb, BASE + timedelta(minutes=i), 10_000 + i, rid),
        )
    return {"rid": rid, "raw": raw, "wb": wb}


@pytest.fixture(scope="module")
def uid_module() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def reader(conn: psycopg.Connection[dict[str, Any]], seeded: dict[str, Any]) -> User:
    return new_user(conn, "family", (seeded["rid"],))


def _expected(raw: list[dict[str, Any]], unit: str) -> dict[datetime, dict[str, Any]]:
    groups: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for r in raw:
        key = r["ts"].replace(second=0, microsecond=0)
        if unit == "hour":
            key = key.replace(minute=0)
        groups[key].append(r)
    out = {}
    for key, rs in groups.items():
        hrs = [r["hr"] for r in rs]
        sps = [r["spo2"] for r in rs if r["spo2"] is not None]
        out[key] = {
            "hr_min": min(hrs),
            "hr_max": max(hrs),
            "hr_mean": statistics.fmean(hrs),
            "hr_n": len(hrs),
            "spo2_min": min(sps) if sps else None,
            "spo2_max": max(sps) if sps else None,
            "spo2_mean": statistics.fmean(sps) if sps else None,
            "spo2_n": len(sps),
        }
    return out


def _check(points: list[dict[str, Any]], expected: dict[datetime, dict[str, Any]]) -> None:
    got = {datetime.fromisoformat(p["t"]): p for p in points}
    assert set(got) == set(expected)
    for key, exp in expected.items():
        p = got[key]
        for field in ("hr_min", "hr_max", "hr_n", "spo2_min", "spo2_max", "spo2_n"):
            assert p[field] == exp[field], (key, field)
        assert p["hr_mean"] == pytest.approx(exp["hr_mean"])
        assert (p["spo2_mean"] is None) == (exp["spo2_mean"] is None)
        if exp["spo2_mean"] is not None:
            assert p["spo2_mean"] == pytest.approx(exp["spo2_mean"])


def _q(start: datetime, end: datetime, **extra: str) -> dict[str, str]:
    return {"from": start.isoformat(), "to": end.isoformat(), **extra}


def test_vitals_match_raw_at_every_resolution(
    client: TestClient, seeded: dict[str, Any], reader: User, storage: str
) -> None:
    rid, raw = seeded["rid"], seeded["raw"]
    end = BASE + timedelta(hours=HOURS)
    url = f"/api/v1/residents/{rid}/vitals"
    minute = client.get(url, params=_q(BASE, end), headers=reader.headers).json()
    assert (minute["bucket"], minute["source"]) == ("1m", "vitals_1m")  # 3 h: per-minute, from the rollup
    _check(minute["points"], _expected(raw, "minute"))
    hourly = client.get(url, params=_q(BASE - timedelta(days=20), end), headers=reader.headers).json()
    assert (hourly["bucket"], hourly["source"]) == ("1h", "vitals_1h")
    _check(hourly["points"], _expected(raw, "hour"))
    window = [r for r in raw if BASE <= r["ts"] < BASE + timedelta(hours=1)]
    rawr = client.get(url, params=_q(BASE, BASE + timedelta(hours=1)), headers=reader.headers).json()
    assert (rawr["bucket"], rawr["source"]) == ("raw", "telemetry")
    assert [(p["hr_min"], p["spo2_max"]) for p in rawr["points"]] == [(r["hr"], r["spo2"]) for r in window]
    forced = client.get(url, params=_q(BASE, end, bucket="1h"), headers=reader.headers).json()
    _check(forced["points"], _expected(raw, "hour"))
    too_long = client.get(url, params=_q(BASE - timedelta(days=30), end, bucket="1m"), headers=reader.headers)
    assert too_long.status_code == 422 and "bucket" in too_long.json()["detail"]
    backwards = client.get(url, params=_q(end, BASE), headers=reader.headers)
    assert backwards.status_code == 422


def test_paginated_lists_with_cursors(client: TestClient, seeded: dict[str, Any], reader: User) -> None:
    rid = seeded["rid"]
    params = _q(BASE - timedelta(hours=1), NOW, limit="10")
    seen: list[tuple[str, int]] = []
    cursor = None
    for _ in range(5):
        page = client.get(
            f"/api/v1/residents/{rid}/events",
            params={**params, **({"cursor": cursor} if cursor else {})},
            headers=reader.headers,
        ).json()
        seen += [(e["ts"], e["seq"]) for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 25 and len(set(seen)) == 25 and seen == sorted(seen, reverse=True)
    first = client.get(f"/api/v1/residents/{rid}/events", params=params, headers=reader.headers).json()
    item = first["items"][0]
    local = datetime.fromisoformat(item["local_time"])
    assert local.utcoffset() == timedelta(hours=8) and local == datetime.fromisoformat(item["ts"])
    bad = client.get(
        f"/api/v1/residents/{rid}/events", params={"cursor": "not-a-cursor"}, headers=reader.headers
    )
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "cursor"

    pres = client.get(
        f"/api/v1/residents/{rid}/presence", params=_q(BASE, NOW, limit="1000"), headers=reader.headers
    ).json()
    assert len(pres["items"]) == HOURS * 30 and {p["room"] for p in pres["items"]} == {"bathroom"}
    loc = client.get(
        f"/api/v1/residents/{rid}/location", params=_q(BASE, NOW, limit="1000"), headers=reader.headers
    ).json()
    assert len(loc["items"]) == HOURS * 120
    assert {round(p["lat"], 2) for p in loc["items"]} == {22.28, 22.29}


def test_status_and_activity(
    client: TestClient, seeded: dict[str, Any], reader: User, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    rid, raw = seeded["rid"], seeded["raw"]
    status = client.get(f"/api/v1/residents/{rid}/status", headers=reader.headers).json()
    last = raw[-1]
    assert datetime.fromisoformat(status["heart_rate"]["at"]) == last["ts"]
    assert status["heart_rate"]["value"] == last["hr"] and status["battery"]["value"] == 80
    assert status["worn"]["value"] is True
    assert datetime.fromisoformat(status["last_seen"]) == last["ts"]
    # the newest reading is over an hour old: not fresh enough to place the resident, and stale
    assert status["place"] == "unknown" and status["state"] == "attention"
    assert "no recent readings" in status["reasons"]
    conn.execute(
        "INSERT INTO telemetry (device_id, ts, seq, resident_id, lat, lon) VALUES (%s, %s, 1, %s, %s, %s)",
        (seeded["wb"], NOW, rid, 22.30, 114.17),
    )
    status = client.get(f"/api/v1/residents/{rid}/status", headers=reader.headers).json()
    assert status["place"] == "away" and status["distance_from_home_m"] > 2000
    activity = client.get(
        f"/api/v1/residents/{rid}/activity", params={"days": 7}, headers=reader.headers
    ).json()
    assert len(activity["days"]) == 7
    tz = ZoneInfo("Asia/Shanghai")
    motion: dict[str, int] = defaultdict(int)
    for i in range(0, HOURS * 120, 4):
        if i % 8 == 0:
            motion[(BASE + timedelta(seconds=30 * i)).astimezone(tz).date().isoformat()] += 1
    got = {d["day"]: d["motion"] for d in activity["days"] if d["motion"]}
    assert got == dict(motion)


def test_reads_are_in_the_access_log(
    client: TestClient, seeded: dict[str, Any], reader: User, users: dict[str, User]
) -> None:
    rid = seeded["rid"]
    client.get(f"/api/v1/residents/{rid}/vitals", headers=reader.headers)
    log = client.get(
        "/api/v1/access-log",
        params={"resident_id": rid, "user_id": reader.id},
        headers=users["admin"].headers,
    ).json()
    actions = {e["action"] for e in log["items"]}
    assert {
        "read:vitals",
        "read:events",
        "read:status",
        "read:presence",
        "read:location",
        "read:activity",
    } <= actions
    assert all(e["username"] == reader.username and e["resident_id"] == rid for e in log["items"])
    page = client.get("/api/v1/access-log", params={"limit": 2}, headers=users["admin"].headers).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    older = client.get(
        "/api/v1/access-log",
        params={"limit": 2, "cursor": page["next_cursor"]},
        headers=users["admin"].headers,
    ).json()
    assert older["items"][0]["id"] < page["items"][-1]["id"]


def test_access_codes_revealed_only_to_the_claiming_operator(
    client: TestClient,
    conn: psycopg.Connection[dict[str, Any]],
    users: dict[str, User],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rid = new_resident(conn)
    code = "KEYSAFE-4711"
    assert (
        client.put(
            f"/api/v1/residents/{rid}/access", json={"access_notes": code}, headers=users["admin"].headers
        ).status_code
        == 204
    )
    holder, other = new_user(conn, "operator"), new_user(conn, "operator")
    resident = client.get(f"/api/v1/residents/{rid}", headers=holder.headers)
    assert code not in resident.text
    url = f"/api/v1/residents/{rid}/access-reveal"
    assert client.post(url, headers=holder.headers).status_code == 403  # no call yet
    call = conn.execute(
        "INSERT INTO calls (resident_id, priority, status, title, reason, event_at, target_at, claimed_by) "
        "VALUES (%s, 1, 'claimed', 'Fall', 'fall', now(), now(), %s) RETURNING id",
        (rid, holder.id),
    ).fetchone()
    assert call is not None
    assert client.post(url, headers=other.headers).status_code == 403
    revealed = client.post(url, headers=holder.headers)
    assert revealed.status_code == 200 and revealed.json()["access_notes"] == code
    audit = conn.execute(
        "SELECT user_id, detail FROM access_log WHERE resident_id = %s AND action = 'reveal:access'", (rid,)
    ).fetchall()
    assert audit == [{"user_id": holder.id, "detail": {"call_id": call["id"]}}]
    assert code not in caplog.text
    conn.execute("UPDATE calls SET status = 'resolved', resolved_at = now() WHERE id = %s", (call["id"],))
    assert client.post(url, headers=holder.headers).status_code == 403
