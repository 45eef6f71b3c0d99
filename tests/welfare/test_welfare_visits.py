"""Visit tiers, scheduling and overdue detection with fixed clocks: pure rules, then the database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support import add_resident
from tests.welfare.welfare_helpers import T0, at, staff
from welfare import lifecycle, service, visits
from welfare.visits import MONTHLY, WEEKLY, Covered, RiskFacts

Conn = psycopg.Connection[dict[str, Any]]


def facts(**kw: Any) -> RiskFacts:
    base: dict[str, Any] = {
        "lives_alone": False,
        "dementia": False,
        "care_notes": {},
        "p1_calls_30d": 0,
        "inactivity_alerts_30d": 0,
    }
    return RiskFacts(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, None),
        ({"lives_alone": True}, MONTHLY),
        ({"care_notes": {"disability": "wheelchair user"}}, MONTHLY),
        ({"care_notes": {"hardship": "yes"}}, MONTHLY),
        ({"care_notes": {"hardship": "no"}}, None),
        ({"dementia": True}, WEEKLY),
        ({"lives_alone": True, "p1_calls_30d": 1}, WEEKLY),
        ({"inactivity_alerts_30d": 1}, None),
        ({"lives_alone": True, "inactivity_alerts_30d": 2}, WEEKLY),
    ],
)
def test_tier(kw: dict[str, Any], expected: str | None) -> None:
    assert visits.tier(facts(**kw)) == expected


def test_due_and_overdue_with_a_fixed_clock() -> None:
    assert visits.next_due(WEEKLY, None, T0) == T0
    assert visits.next_due(MONTHLY, T0, at(days=1)) == at(days=30)
    assert visits.should_schedule(WEEKLY, None, False, T0)
    assert not visits.should_schedule(WEEKLY, None, True, T0)  # one pending is enough
    assert not visits.should_schedule(None, None, False, T0)
    assert not visits.should_schedule(WEEKLY, T0, False, at(days=5, seconds=-1))
    assert visits.should_schedule(WEEKLY, T0, False, at(days=6))
    assert not visits.is_overdue(WEEKLY, T0, "due", at(days=1))
    assert visits.is_overdue(WEEKLY, T0, "due", at(days=1, seconds=1))
    assert not visits.is_overdue(MONTHLY, T0, "due", at(days=3))
    assert visits.is_overdue(MONTHLY, T0, "due", at(days=3, seconds=1))
    assert not visits.is_overdue(WEEKLY, T0, "done", at(days=9))


def test_visit_rates_hand_computed() -> None:
    rows = [
        Covered("Xuhui", MONTHLY, True),
        Covered("Xuhui", MONTHLY, False),
        Covered("Xuhui", MONTHLY, True),
        Covered("Jingan", MONTHLY, True),
        Covered("Jingan", WEEKLY, False),
        Covered("Xuhui", WEEKLY, True),
    ]
    assert visits.visit_rates(rows) == [
        {"tier": "weekly", "district": "*", "residents": 2, "visited": 1, "rate": 0.5},
        {"tier": "weekly", "district": "Jingan", "residents": 1, "visited": 0, "rate": 0.0},
        {"tier": "weekly", "district": "Xuhui", "residents": 1, "visited": 1, "rate": 1.0},
        {"tier": "monthly", "district": "*", "residents": 4, "visited": 3, "rate": 0.75},
        {"tier": "monthly", "district": "Jingan", "residents": 1, "visited": 1, "rate": 1.0},
        {"tier": "monthly", "district": "Xuhui", "residents": 3, "visited": 2, "rate": 0.6667},
    ]


@pytest.fixture
def fdb(fresh_database_url: str) -> Iterator[Conn]:
    """A database of this test's own: scheduling scans every resident."""
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def _alert(db: Conn, rid: int, rule: str, opened: Any) -> int:
    row = db.execute(
        """INSERT INTO alerts (resident_id, rule, priority, status, opened_at, last_seen_at, title)
           VALUES (%s, %s, 2, 'closed', %s, %s, %s) RETURNING id""",
        (rid, rule, opened, opened, rule),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def test_scheduling_overdue_recording_and_rates(fdb: Conn) -> None:
    op = staff(fdb, "worker-op")
    dementia = add_resident(fdb, "Dementia", dementia=True, district="Xuhui")
    alone = add_resident(fdb, "Alone", lives_alone=True, district="Xuhui")
    alone2 = add_resident(fdb, "Alone 2", lives_alone=True, district="Jingan")
    family = add_resident(fdb, "With family", district="Xuhui")
    low = add_resident(fdb, "Low activity", district="Jingan")
    for days in (3, 10):
        _alert(fdb, low, "inactivity", T0 - timedelta(days=days))
    _alert(fdb, family, "inactivity", T0 - timedelta(days=40))  # too old to count
    # Alone 2 was visited 10 days ago: not due for another 20 days.
    fdb.execute(
        """INSERT INTO welfare_visits (resident_id, kind, tier, status, due_at, visited_at, worker,
                                       findings, created_at)
           VALUES (%s, 'scheduled', 'monthly', 'done', %s, %s, 'W', 'ok', %s)""",
        (alone2, T0 - timedelta(days=11), T0 - timedelta(days=10), T0 - timedelta(days=11)),
    )

    assert service.schedule_due(fdb, T0) == 3
    assert service.schedule_due(fdb, T0) == 0  # idempotent
    due = {v["resident_id"]: v for v in service.list_visits(fdb, T0)}
    assert set(due) == {dementia, alone, low}
    assert (due[dementia]["tier"], due[alone]["tier"], due[low]["tier"]) == (WEEKLY, MONTHLY, WEEKLY)
    assert not any(v["overdue"] for v in due.values())

    # A day and a second later the weekly ones are overdue; the monthly one has three days of grace.
    later = at(days=1, seconds=1)
    assert {v["resident_id"] for v in service.list_visits(fdb, later, status="overdue")} == {dementia, low}

    visit = service.record_visit(
        fdb,
        due[dementia]["id"],
        op,
        at(days=2),
        visited_at=at(days=2),
        worker="Wang Fang",
        findings="well, fridge stocked",
        follow_ups="check medication box",
    )
    assert (visit["status"], visit["visited_at"], visit["worker"], visit["overdue"]) == (
        "done",
        at(days=2),
        "Wang Fang",
        False,
    )
    with pytest.raises(lifecycle.InvalidTransition):
        service.record_visit(
            fdb, visit["id"], op, at(days=2), visited_at=at(days=2), worker="x", findings="x", follow_ups=""
        )
    with pytest.raises(lifecycle.InvalidTransition, match="future"):
        service.record_visit(
            fdb, due[low]["id"], op, at(0), visited_at=at(days=1), worker="x", findings="x", follow_ups=""
        )

    # The next weekly visit is scheduled a week after the last one.
    assert service.schedule_due(fdb, at(days=5)) == 0
    assert service.schedule_due(fdb, at(days=8)) == 1
    nxt = [v for v in service.list_visits(fdb, at(days=8)) if v["resident_id"] == dementia]
    assert [v["due_at"] for v in nxt] == [at(days=9)]

    rates = service.visit_rates(fdb, T0, at(days=10))
    assert {(r["tier"], r["district"]): (r["residents"], r["visited"]) for r in rates} == {
        (WEEKLY, "*"): (2, 1),
        (WEEKLY, "Xuhui"): (1, 1),
        (WEEKLY, "Jingan"): (1, 0),
        (MONTHLY, "*"): (2, 0),  # Alone 2's visit was before the period
        (MONTHLY, "Xuhui"): (1, 0),
        (MONTHLY, "Jingan"): (1, 0),
    }


def test_welfare_alert_becomes_one_unscheduled_visit(fdb: Conn) -> None:
    op = staff(fdb, "op-alert")
    rid = add_resident(fdb, "Quiet", district="Xuhui")
    inactivity = _alert(fdb, rid, "inactivity", T0)
    fall = _alert(fdb, rid, "fall", T0)
    visit = service.visit_from_alert(fdb, inactivity, op, at(60))
    again = service.visit_from_alert(fdb, inactivity, op, at(120))
    assert visit["id"] == again["id"]
    assert (visit["kind"], visit["alert_id"], visit["due_at"], visit["resident_id"]) == (
        "unscheduled",
        inactivity,
        at(60),
        rid,
    )
    with pytest.raises(lifecycle.InvalidTransition, match="inactivity"):
        service.visit_from_alert(fdb, fall, op, at(60))
    with pytest.raises(service.NotFound):
        service.visit_from_alert(fdb, 2**40, op, at(60))
