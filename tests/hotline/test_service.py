"""Operator actions on the real database: audit trail, claims under contention, device command on claim."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from carewatch.mqtt import make_client
from hotline import lifecycle, service
from hotline.publish import CommandPublisher
from hotline.service import Actor
from tests.hotline.conftest import add_user, at
from tests.support import add_device, add_resident, scalar


@pytest.fixture
def operator(db, uid) -> Actor:
    return Actor(add_user(db, f"op_{uid}", "operator"), f"op_{uid}", "operator")


def test_full_call_has_a_complete_audit_trail(db, make_call, operator, uid):
    rid = add_resident(db, f"Chen {uid}")
    son = scalar(
        db, "INSERT INTO contacts (resident_id, position, name) VALUES (%s, 1, 'Son') RETURNING id", (rid,)
    )
    nb = scalar(
        db, "INSERT INTO contacts (resident_id, position, name) VALUES (%s, 2, 'Nb') RETURNING id", (rid,)
    )
    sup = Actor(add_user(db, f"sup_{uid}", "supervisor"), f"sup_{uid}", "supervisor")
    ref = make_call(rid, priority=1)
    make_call(rid, priority=1, rule="sos", now=at(5))
    service.claim(db, ref.call_id, operator, at(10))
    service.add_note(db, ref.call_id, operator, at(15), "resident on the floor, conscious")
    service.start(db, ref.call_id, operator, at(20))
    service.contact_attempt(db, ref.call_id, operator, at(25), contact_id=son, result="no_answer")
    service.contact_attempt(db, ref.call_id, operator, at(30), contact_id=nb, result="reached")
    d = service.dispatch(db, ref.call_id, operator, at(40), responder_kind="ambulance", responder_name="120")
    service.arrived(db, ref.call_id, d, operator, at(900), handover="hospital")
    service.resolve(
        db, ref.call_id, operator, at(1000), outcome="genuine_emergency", note="taken to hospital"
    )
    service.reopen(db, ref.call_id, sup, at(2000), answer_target_s=60, note="family asked for follow-up")
    service.claim(db, ref.call_id, operator, at(2010))
    service.release(db, ref.call_id, operator, at(2020))

    log = db.execute("SELECT * FROM call_log WHERE call_id = %s ORDER BY id", (ref.call_id,)).fetchall()
    assert [r["action"] for r in log] == [
        "created",
        "attached",
        "claimed",
        "note",
        "started",
        "contact_attempt",
        "contact_attempt",
        "dispatched",
        "arrived",
        "resolved",
        "reopened",
        "claimed",
        "released",
    ]
    assert [(r["from_status"], r["to_status"]) for r in log[2:]] == [
        ("queued", "claimed"),
        ("claimed", "claimed"),
        ("claimed", "in_progress"),
        ("in_progress", "in_progress"),
        ("in_progress", "in_progress"),
        ("in_progress", "in_progress"),
        ("in_progress", "in_progress"),
        ("in_progress", "resolved"),
        ("resolved", "queued"),
        ("queued", "claimed"),
        ("claimed", "queued"),
    ]
    assert {r["actor"] for r in log[2:]} == {operator.username, sup.username}
    assert log[9]["detail"]["outcome"] == "genuine_emergency" and log[9]["note"] == "taken to hospital"
    assert scalar(db, "SELECT count(*) FROM live_events WHERE call_id = %s", (ref.call_id,)) == len(log)
    with pytest.raises(psycopg.errors.RaiseException):
        db.execute("UPDATE call_log SET note = 'x' WHERE call_id = %s", (ref.call_id,))

    screen = service.get_call(db, ref.call_id, internal=True)
    assert [c["name"] for c in screen["contacts"]] == ["Son", "Nb"]
    assert [c["last_result"] for c in screen["contacts"]] == ["no_answer", "reached"]
    assert screen["dispatches"][0]["arrived_at"] == at(900) and len(screen["alerts"]) == 2
    call = db.execute("SELECT * FROM calls WHERE id = %s", (ref.call_id,)).fetchone()
    assert call["first_claimed_at"] == at(10) and call["first_claimed_by"] == operator.id
    assert call["status"] == "queued" and call["outcome"] is None


def test_invalid_transitions_and_foreign_holder(db, make_call, operator, uid):
    rid = add_resident(db, f"Yang {uid}")
    other = Actor(add_user(db, f"op2_{uid}", "operator"), f"op2_{uid}", "operator")
    ref = make_call(rid, priority=2)
    with pytest.raises(lifecycle.InvalidTransition):
        service.start(db, ref.call_id, operator, at(1))
    with pytest.raises(lifecycle.InvalidTransition):
        service.resolve(db, ref.call_id, operator, at(1), outcome="false_alarm", note="x")
    service.claim(db, ref.call_id, operator, at(2))
    service.claim(db, ref.call_id, operator, at(3))  # own claim again: no-op
    with pytest.raises(lifecycle.HeldByOther):
        service.claim(db, ref.call_id, other, at(4))
    with pytest.raises(lifecycle.HeldByOther):
        service.resolve(db, ref.call_id, other, at(4), outcome="false_alarm", note="x")
    with pytest.raises(lifecycle.InvalidTransition):
        service.resolve(db, ref.call_id, operator, at(5), outcome="dispatched", note="x")
    with pytest.raises(service.NotFound):
        service.claim(db, 10**12, operator, at(5))
    assert (
        scalar(db, "SELECT count(*) FROM call_log WHERE call_id = %s AND action = 'claimed'", (ref.call_id,))
        == 1
    )


def test_twenty_operators_claim_a_queue_without_collisions(fresh_database_url):
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as db:
        ops = [Actor(add_user(db, f"op{i}", "operator"), f"op{i}", "operator") for i in range(20)]
        from hotline.intake import open_or_attach
        from tests.hotline.conftest import add_alert

        for i in range(60):
            rid = add_resident(db, f"R{i}")
            open_or_attach(
                db,
                resident_id=rid,
                alert_id=add_alert(db, rid, "fall", 1 + i % 4),
                priority=1 + i % 4,
                rule="fall",
                title="Fall",
                event_at=at(i),
                late=False,
                now=at(i),
                answer_target_s=60,
            )
    claimed: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(20, timeout=20)

    def operator_seat(actor: Actor) -> None:
        try:
            with psycopg.connect(fresh_database_url, autocommit=True) as conn:
                barrier.wait()
                for _ in range(100):
                    call = service.claim_next(conn, actor, at(1000))
                    if call is None:
                        return
                    claimed.append((call["id"], actor.id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=operator_seat, args=(op,)) for op in ops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(claimed) == 60 and len({c for c, _ in claimed}) == 60
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as db:
        assert scalar(db, "SELECT count(*) FROM calls WHERE status = 'queued'") == 0
        holders = {r["id"]: r["claimed_by"] for r in db.execute("SELECT id, claimed_by FROM calls")}
        assert holders == dict(claimed)
        per_call = Counter(
            r["call_id"] for r in db.execute("SELECT call_id FROM call_log WHERE action = 'claimed'")
        )
        assert set(per_call.values()) == {1}


def test_twenty_operators_on_one_call_only_one_wins(database_url, db, make_call, uid):
    rid = add_resident(db, f"Hu {uid}")
    ref = make_call(rid, priority=1)
    ops = [Actor(add_user(db, f"race{i}_{uid}", "operator"), f"race{i}_{uid}", "operator") for i in range(20)]
    results: list[str] = []
    barrier = threading.Barrier(20, timeout=20)

    def seat(actor: Actor) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            barrier.wait()
            try:
                service.claim(conn, ref.call_id, actor, at(30))
                results.append("won")
            except lifecycle.HeldByOther:
                results.append("409")

    threads = [threading.Thread(target=seat, args=(op,)) for op in ops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["409"] * 19 + ["won"]


def test_claim_tells_the_wristband_help_is_coming(db, make_call, operator, mqtt_url, uid):
    rid = add_resident(db, f"Ma {uid}")
    add_device(db, f"wb-{uid}", rid, "wristband")
    add_device(db, f"ir-{uid}", rid, "ir_sensor")
    ref = make_call(rid, priority=1)
    got: list[tuple[str, dict[str, Any]]] = []
    sub, props, target = make_client(mqtt_url, f"sub-{uid}")
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
    sub.connect(target.host, target.port, properties=props)
    sub.loop_start()
    pub = CommandPublisher(mqtt_url, f"pub-{uid}").start()
    try:
        sub.subscribe("care/v1/+/cmd", qos=1)
        assert subscribed.wait(10)

        service.claim(db, ref.call_id, operator, at(10), pub)
        deadline = time.monotonic() + 10
        while not any(t == f"care/v1/wb-{uid}/cmd" for t, _ in got) and time.monotonic() < deadline:
            time.sleep(0.05)
        mine = [(t, p) for t, p in got if uid in t]
        assert mine == [
            (
                f"care/v1/wb-{uid}/cmd",
                {"type": "help_coming", "call_id": ref.call_id, "ts": "2026-03-01T08:00:10Z"},
            )
        ]
    finally:
        pub.close()
        sub.disconnect()
        sub.loop_stop()


def test_publish_failure_does_not_fail_the_claim(db, make_call, operator, uid):
    rid = add_resident(db, f"Lu {uid}")
    add_device(db, f"wb-{uid}", rid, "wristband")
    ref = make_call(rid, priority=1)

    def broken(topic: str, payload: bytes, qos: int) -> None:
        raise ConnectionError("broker down")

    summary = service.claim(db, ref.call_id, operator, at(10), broken)
    assert summary["status"] == "claimed"
    assert scalar(db, "SELECT status FROM calls WHERE id = %s", (ref.call_id,)) == "claimed"
