"""Service requests and work orders on the real database: lifecycle, audit, invalid moves, overdue flags."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support import add_resident
from tests.welfare.welfare_helpers import at, provider, staff
from welfare import intake, lifecycle, service

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def setup(db: Conn, uid: str) -> dict[str, Any]:
    return {
        "rid": add_resident(db, f"Li Hua {uid}", district=f"D-{uid}"),
        "op": staff(db, f"op-{uid}"),
        "org": provider(db, f"Meals {uid}"),
        "org2": provider(db, f"Cleaners {uid}"),
    }


def test_full_lifecycle_is_time_stamped_and_audited(db: Conn, setup: dict[str, Any]) -> None:
    op = setup["op"]
    req = service.create_request(
        db, op, at(0), resident_id=setup["rid"], category="meal_delivery", wanted_at=at(3600), notes="no pork"
    )
    assert (req["status"], req["source"], req["overdue"]) == ("open", "phone", None)
    req = service.assign(db, req["id"], setup["org"], op, at(60))
    order_id = req["order_id"]
    assert (req["status"], req["order_status"]) == ("assigned", "assigned")
    steps = [
        ("accept", None, 120),
        ("assign_worker", "Wang Fang", 180),
        ("check_in", None, 3000),
        ("check_out", None, 5400),
    ]
    for action, worker, t in steps:
        req = service.order_action(db, order_id, action, op, at(t), worker_name=worker)
    order = req["orders"][-1]
    assert req["status"] == "done" and order["status"] == "completed"
    assert (order["accepted_at"], order["checked_in_at"], order["checked_out_at"]) == (
        at(120),
        at(3000),
        at(5400),
    )
    assert order["worker_name"] == "Wang Fang" and order["closed_at"] == at(5400)
    rated = service.rate(db, order_id, op, at(6000), rating=4, comment="warm food")
    assert rated["rating"] == 4
    with pytest.raises(lifecycle.InvalidTransition, match="already"):
        service.rate(db, order_id, op, at(6001), rating=5, comment=None)
    log = service.get_request(db, req["id"], at(7000))["log"]
    assert [(r["action"], r["to_status"]) for r in log] == [
        ("created", "open"),
        ("assigned", "assigned"),
        ("accept", "accepted"),
        ("assign_worker", "worker_assigned"),
        ("check_in", "checked_in"),
        ("check_out", "completed"),
        ("rated", None),
    ]
    assert [r["at"] for r in log] == [at(0), at(60), at(120), at(180), at(3000), at(5400), at(6000)]
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        db.execute("UPDATE work_order_log SET note = 'x' WHERE request_id = %s", (req["id"],))
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        db.execute("DELETE FROM work_order_log WHERE request_id = %s", (req["id"],))


def test_invalid_transitions_change_nothing(db: Conn, setup: dict[str, Any]) -> None:
    op = setup["op"]
    req = service.create_request(
        db, op, at(0), resident_id=setup["rid"], category="cleaning", wanted_at=at(3600)
    )
    req = service.assign(db, req["id"], setup["org"], op, at(10))
    with pytest.raises(lifecycle.InvalidTransition, match="cannot check in a assigned order"):
        service.order_action(db, req["order_id"], "check_in", op, at(20))
    with pytest.raises(lifecycle.InvalidTransition, match="must be open"):
        service.assign(db, req["id"], setup["org2"], op, at(20))
    with pytest.raises(lifecycle.InvalidTransition, match="completed"):
        service.rate(db, req["order_id"], op, at(20), rating=5, comment=None)
    with pytest.raises(lifecycle.Forbidden):
        service.order_action(db, req["order_id"], "accept", staff(db, f"fam-{req['id']}", "family"), at(20))
    after = service.get_request(db, req["id"], at(30))
    assert after["order_status"] == "assigned" and len(after["log"]) == 2


def test_decline_reopens_and_a_second_provider_takes_it(db: Conn, setup: dict[str, Any]) -> None:
    op = setup["op"]
    req = service.create_request(
        db, op, at(0), resident_id=setup["rid"], category="repairs", wanted_at=at(7200)
    )
    req = service.assign(db, req["id"], setup["org"], op, at(10))
    first = req["order_id"]
    req = service.order_action(db, first, "decline", op, at(20), note="no plumber today")
    assert (req["status"], req["order_status"]) == ("open", "declined")
    req = service.assign(db, req["id"], setup["org2"], op, at(30))
    assert req["order_id"] != first and req["org_id"] == setup["org2"]
    # The database keeps one live order per request, whatever the code does.
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(
            "INSERT INTO work_orders (request_id, org_id, assigned_at) VALUES (%s, %s, %s)",
            (req["id"], setup["org"], at(40)),
        )
    req = service.cancel_request(db, req["id"], op, at(50), note="family will do it")
    assert req["status"] == "cancelled" and [o["status"] for o in req["orders"]] == ["declined", "cancelled"]


def test_overdue_flags_with_a_fixed_clock(db: Conn, setup: dict[str, Any]) -> None:
    op, rules = setup["op"], lifecycle.OverdueRules(accept_within_s=1800)
    unassigned = service.create_request(
        db, op, at(0), resident_id=setup["rid"], category="chat", wanted_at=at(600)
    )
    slow = service.create_request(
        db, op, at(0), resident_id=setup["rid"], category="shopping", wanted_at=at(7200)
    )
    late = service.create_request(
        db, op, at(0), resident_id=setup["rid"], category="bathing", wanted_at=at(3600)
    )
    service.assign(db, slow["id"], setup["org"], op, at(0))
    late = service.assign(db, late["id"], setup["org"], op, at(0))
    service.order_action(db, late["order_id"], "accept", op, at(60))

    def flags(now_s: int) -> dict[int, str | None]:
        rows = service.list_requests(db, at(now_s), rules=rules, resident_ids=frozenset({setup["rid"]}))
        return {r["id"]: r["overdue"] for r in rows}

    assert flags(600) == {unassigned["id"]: None, slow["id"]: None, late["id"]: None}
    assert flags(601) == {unassigned["id"]: "not_assigned", slow["id"]: None, late["id"]: None}
    assert flags(1800) == {unassigned["id"]: "not_assigned", slow["id"]: "not_accepted", late["id"]: None}
    assert flags(3601)[late["id"]] == "not_started"
    service.order_action(db, late["order_id"], "assign_worker", op, at(3700), worker_name="Zhao")
    service.order_action(db, late["order_id"], "check_in", op, at(3800))
    assert flags(3900)[late["id"]] is None  # started late, but started: no longer flagged
    overdue = service.overdue(db, at(3900), rules)
    assert {r["id"] for r in overdue["requests"]} >= {unassigned["id"], slow["id"]}


def test_device_event_opens_one_request(db: Conn, setup: dict[str, Any], uid: str) -> None:
    ev = {"resident_id": setup["rid"], "device_id": f"wb-{uid}", "event_ts": at(-5), "seq": 7, "now": at(0)}
    with db.transaction():
        first = intake.open_from_event(db, category="meal_delivery", **ev)  # type: ignore[arg-type]
    with db.transaction():
        again = intake.open_from_event(db, category="meal_delivery", **ev)  # type: ignore[arg-type]
    assert first is not None and again is None
    req = service.get_request(db, first, at(1))
    assert (req["source"], req["category"], req["wanted_at"], req["status"]) == (
        "device",
        "meal_delivery",
        at(-5),
        "open",
    )
    assert [(r["actor"], r["action"]) for r in req["log"]] == [("system:device", "created")]
    other = intake.open_from_event(db, category=None, **{**ev, "seq": 8})  # type: ignore[arg-type]
    assert other is not None and service.get_request(db, other, at(1))["category"] == "other"
