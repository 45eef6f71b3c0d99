"""A raise, as the engine writes it (the database function raise_alert): which alert, which call, which
audit and live rows, on a real database. The engine tests cover the same path end to end over MQTT."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from alerts import store
from alerts.models import Raise
from carewatch.settings import Settings

Conn = psycopg.Connection[dict[str, Any]]
T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
SETTINGS = Settings(database_url="postgresql://unused", mqtt_url="mqtt://unused")


def resident(db: Conn, *, contact: bool = False) -> int:
    rid = int(db.execute("INSERT INTO residents (name) VALUES ('Store Test') RETURNING id").fetchone()["id"])  # type: ignore[index]
    if contact:
        db.execute("INSERT INTO contacts (resident_id, name, notify) VALUES (%s, 'Daughter', true)", (rid,))
    return rid


def raise_(
    db: Conn, rid: int, rule: str = "fall", priority: int = 1, at: datetime = T0, late: bool = False
) -> None:
    action = Raise(rule, priority, f"{rule} title", at, late=late, device_id="wb-store", details={"v": 1})
    with db.transaction():
        store.apply_actions(db, rid, [action], at + timedelta(seconds=1), SETTINGS)


def alerts(db: Conn, rid: int) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT rule, priority, count, call_id, late, details FROM alerts WHERE resident_id = %s ORDER BY id",
        (rid,),
    ).fetchall()


def calls(db: Conn, rid: int) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT id, priority, status FROM calls WHERE resident_id = %s ORDER BY id", (rid,)
    ).fetchall()


def log_actions(db: Conn, call_id: int) -> list[str]:
    rows = db.execute("SELECT action FROM call_log WHERE call_id = %s ORDER BY id", (call_id,)).fetchall()
    return [r["action"] for r in rows]


def live_kinds(db: Conn, rid: int) -> list[str]:
    rows = db.execute("SELECT kind FROM live_events WHERE resident_id = %s ORDER BY id", (rid,)).fetchall()
    return [r["kind"] for r in rows]


def test_new_emergency_opens_alert_and_call_with_audit_live_event_and_family_notice(db: Conn) -> None:
    rid = resident(db, contact=True)
    raise_(db, rid, late=True)
    [alert] = alerts(db, rid)
    [call] = calls(db, rid)
    assert (alert["rule"], alert["count"], alert["call_id"], alert["late"]) == ("fall", 1, call["id"], True)
    assert alert["details"] == {"v": 1, "late": True}
    assert (call["priority"], call["status"]) == (1, "queued")
    assert log_actions(db, call["id"]) == ["created"]
    assert live_kinds(db, rid) == ["call.created"]
    payload = db.execute("SELECT payload FROM live_events WHERE call_id = %s", (call["id"],)).fetchone()
    assert payload is not None and payload["payload"]["resident_name"] == "Store Test"
    assert db.execute(
        "SELECT count(*) AS n FROM notifications WHERE call_id = %s", (call["id"],)
    ).fetchone() == {"n": 1}


def test_repeat_while_the_call_is_open_only_counts(db: Conn) -> None:
    rid = resident(db)
    raise_(db, rid)
    raise_(db, rid, at=T0 + timedelta(seconds=30))
    [alert] = alerts(db, rid)
    [call] = calls(db, rid)
    assert alert["count"] == 2 and alert["details"]["last_device"] == "wb-store"
    assert log_actions(db, call["id"]) == ["created"] and live_kinds(db, rid) == ["call.created"]


def test_repeat_after_the_call_was_resolved_opens_a_new_call(db: Conn) -> None:
    rid = resident(db)
    raise_(db, rid)
    [first] = calls(db, rid)
    db.execute("UPDATE calls SET status = 'resolved', resolved_at = now() WHERE id = %s", (first["id"],))
    raise_(db, rid, at=T0 + timedelta(minutes=5))
    [alert] = alerts(db, rid)
    second = calls(db, rid)[1]
    assert alert["count"] == 2 and alert["call_id"] == second["id"] != first["id"]
    assert live_kinds(db, rid) == ["call.created", "call.created"]


def test_lower_priority_attaches_and_higher_priority_raises_the_call(db: Conn) -> None:
    rid = resident(db)
    raise_(db, rid, rule="removed", priority=3)
    [call] = calls(db, rid)
    raise_(db, rid, rule="battery", priority=4)  # attaches, the call stays P3
    raise_(db, rid, rule="fall", priority=1)  # attaches, and the call becomes P1
    assert {a["rule"]: a["call_id"] for a in alerts(db, rid)} == {
        "removed": call["id"],
        "battery": call["id"],
        "fall": call["id"],
    }
    assert calls(db, rid)[0]["priority"] == 1
    assert log_actions(db, call["id"]) == ["created", "attached", "attached", "priority_changed"]
    assert live_kinds(db, rid) == ["call.created", "call.updated", "call.updated"]
