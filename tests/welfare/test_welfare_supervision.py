"""Supervision figures against hand-computed fixtures: pure first, then from the database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from hotline import service as hotline
from hotline.intake import open_or_attach
from tests.support import add_resident
from tests.welfare.welfare_helpers import T0, at, provider, staff
from welfare import service, supervision
from welfare.supervision import CallRow, OrderRow, VisitRow

TARGETS = {1: 60, 2: 180, 3: 900, 4: 3600}
H = timedelta(hours=1)


def test_figures_hand_computed() -> None:
    # T0 is 08:00 UTC on 2 March; 20:00 UTC is already 3 March in Shanghai (UTC+8).
    calls = [
        CallRow(T0, "Xuhui", 1, T0 + timedelta(seconds=30)),  # in target
        CallRow(T0 + H, "Xuhui", 1, T0 + H + timedelta(seconds=90)),  # late
        CallRow(T0 + 2 * H, "Jingan", 2, None),  # never answered
        CallRow(T0 + 12 * H, "Xuhui", 3, T0 + 12 * H + timedelta(seconds=600)),  # next day in Shanghai
    ]
    orders = [
        OrderRow(T0, "Xuhui", "Meals", "completed", T0 + 2 * H, T0 + H, 5),  # on time
        OrderRow(T0, "Xuhui", "Meals", "completed", T0 + H, T0 + 2 * H, 3),  # late
        OrderRow(T0, "Jingan", "Meals", "declined", T0 + H, None, None),
        OrderRow(T0 + H, "Jingan", "Clean", "assigned", T0 + 3 * H, None, None),
    ]
    visits = [VisitRow(T0 + H, "Xuhui"), VisitRow(T0 + 13 * H, "Jingan")]
    out = supervision.figures(calls, orders, visits, targets=TARGETS, tz="Asia/Shanghai")
    d2, day3 = T0.date(), T0.date() + timedelta(days=1)
    assert out["daily"] == [
        {"day": d2, "district": "Jingan", "calls": 1, "calls_in_target": 0, "service_orders": 2, "visits": 0},
        {"day": d2, "district": "Xuhui", "calls": 2, "calls_in_target": 1, "service_orders": 2, "visits": 1},
        {
            "day": day3,
            "district": "Jingan",
            "calls": 0,
            "calls_in_target": 0,
            "service_orders": 0,
            "visits": 1,
        },
        {
            "day": day3,
            "district": "Xuhui",
            "calls": 1,
            "calls_in_target": 1,
            "service_orders": 0,
            "visits": 0,
        },
    ]
    assert out["answer_times"] == [
        {
            "priority": 1,
            "target_s": 60,
            "calls": 2,
            "answered": 2,
            "in_target": 1,
            "in_target_rate": 0.5,
            "median_answer_s": 60.0,
        },
        {
            "priority": 2,
            "target_s": 180,
            "calls": 1,
            "answered": 0,
            "in_target": 0,
            "in_target_rate": 0.0,
            "median_answer_s": None,
        },
        {
            "priority": 3,
            "target_s": 900,
            "calls": 1,
            "answered": 1,
            "in_target": 1,
            "in_target_rate": 1.0,
            "median_answer_s": 600.0,
        },
    ]
    assert out["providers"] == [
        {
            "org": "Clean",
            "orders": 1,
            "completed": 0,
            "declined": 0,
            "cancelled": 0,
            "on_time": 0,
            "on_time_rate": None,
            "avg_rating": None,
        },
        {
            "org": "Meals",
            "orders": 3,
            "completed": 2,
            "declined": 1,
            "cancelled": 0,
            "on_time": 1,
            "on_time_rate": 0.5,
            "avg_rating": 4.0,
        },
    ]
    csv_text = supervision.to_csv(out["providers"], supervision.PROVIDER_FIELDS)
    assert csv_text.splitlines() == [
        "org,orders,completed,declined,cancelled,on_time,on_time_rate,avg_rating",
        "Clean,1,0,0,0,0,,",
        "Meals,3,2,1,0,1,0.5,4.0",
    ]


@pytest.fixture
def fdb(fresh_database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def test_figures_from_the_database(fdb: psycopg.Connection[dict[str, Any]]) -> None:
    op = staff(fdb, "sup-op")
    xu = add_resident(fdb, "Xu", district="Xuhui", lives_alone=True)
    ji = add_resident(fdb, "Ji", district="Jingan")
    # Two calls: Xuhui P1 answered in 45 s (in target), Jingan P2 answered in 200 s (late).
    for rid, prio, wait in ((xu, 1, 45), (ji, 2, 200)):
        alert = fdb.execute(
            "INSERT INTO alerts (resident_id, rule, priority, opened_at, last_seen_at) "
            "VALUES (%s, 'sos', %s, %s, %s) RETURNING id",
            (rid, prio, T0, T0),
        ).fetchone()
        assert alert is not None
        with fdb.transaction():
            ref = open_or_attach(
                fdb,
                resident_id=rid,
                alert_id=alert["id"],
                priority=prio,
                rule="sos",
                title="SOS",
                event_at=T0,
                late=False,
                now=T0,
                answer_target_s=TARGETS[prio],
            )
        hotline.claim(fdb, ref.call_id, op, at(wait))
    org = provider(fdb, "Meals")
    req = service.create_request(fdb, op, T0, resident_id=xu, category="meal_delivery", wanted_at=at(3600))
    req = service.assign(fdb, req["id"], org, op, at(60))
    for action, t, worker in (
        ("accept", 120, None),
        ("assign_worker", 130, "Li"),
        ("check_in", 3000, None),
        ("check_out", 4000, None),
    ):
        service.order_action(fdb, req["order_id"], action, op, at(t), worker_name=worker)
    service.rate(fdb, req["order_id"], op, at(5000), rating=5, comment=None)
    late = service.create_request(fdb, op, T0, resident_id=ji, category="chat", wanted_at=at(600))
    assert service.schedule_due(fdb, T0) == 1  # Xu lives alone and had a P1 call: weekly
    visit = service.list_visits(fdb, T0)[0]
    service.record_visit(
        fdb, visit["id"], op, at(7200), visited_at=at(7200), worker="Li", findings="fine", follow_ups=""
    )

    out = service.supervision_figures(fdb, start=T0, end=at(86400), now=at(9000), targets=TARGETS, tz="UTC")
    assert out["daily"] == [
        {
            "day": T0.date(),
            "district": "Jingan",
            "calls": 1,
            "calls_in_target": 0,
            "service_orders": 0,
            "visits": 0,
        },
        {
            "day": T0.date(),
            "district": "Xuhui",
            "calls": 1,
            "calls_in_target": 1,
            "service_orders": 1,
            "visits": 1,
        },
    ]
    assert [(a["priority"], a["in_target"], a["median_answer_s"]) for a in out["answer_times"]] == [
        (1, 1, 45.0),
        (2, 0, 200.0),
    ]
    assert out["providers"] == [
        {
            "org": "Meals",
            "orders": 1,
            "completed": 1,
            "declined": 0,
            "cancelled": 0,
            "on_time": 1,
            "on_time_rate": 1.0,
            "avg_rating": 5.0,
        }
    ]
    assert out["visit_rates"] == [
        {"tier": "weekly", "district": "*", "residents": 1, "visited": 1, "rate": 1.0},
        {"tier": "weekly", "district": "Xuhui", "residents": 1, "visited": 1, "rate": 1.0},
    ]
    assert [(r["id"], r["overdue"]) for r in out["overdue"]["requests"]] == [(late["id"], "not_assigned")]
