"""Intake: one call per resident under concurrency, attach/raise priority, family notified once."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg.rows import dict_row

from hotline.intake import CallRef, open_or_attach, wearer_cancel
from tests.hotline.conftest import T0, add_alert, add_user, at
from tests.support import add_resident, scalar


def test_first_alert_opens_a_queued_call_with_target(db, make_call, uid):
    rid = add_resident(db, f"Wang {uid}")
    ref = make_call(rid, priority=2, rule="sos", target_s=180)
    assert ref.created and ref.priority == 2
    call = db.execute("SELECT * FROM calls WHERE id = %s", (ref.call_id,)).fetchone()
    assert call["status"] == "queued" and call["reason"] == "sos"
    assert call["target_at"] == at(180) and call["next_escalation_at"] == at(180)
    assert scalar(db, "SELECT call_id FROM alerts WHERE resident_id = %s", (rid,)) == ref.call_id
    log = db.execute("SELECT action, actor FROM call_log WHERE call_id = %s", (ref.call_id,)).fetchall()
    assert log == [{"action": "created", "actor": "system:alerts"}]
    live = db.execute("SELECT kind, payload FROM live_events WHERE call_id = %s", (ref.call_id,)).fetchall()
    assert [e["kind"] for e in live] == ["call.created"]
    assert live[0]["payload"]["priority"] == 2 and live[0]["payload"]["status"] == "queued"


def test_more_alerts_attach_and_raise_priority(db, make_call, uid):
    rid = add_resident(db, f"Li {uid}")
    first = make_call(rid, priority=3, rule="inactivity", target_s=900)
    second = make_call(rid, priority=1, rule="fall", now=at(100), target_s=60)
    assert not second.created and second.call_id == first.call_id and second.priority == 1
    call = db.execute("SELECT * FROM calls WHERE id = %s", (first.call_id,)).fetchone()
    assert call["priority"] == 1 and call["target_at"] == at(160) and call["next_escalation_at"] == at(160)
    third = make_call(rid, priority=4, rule="battery", now=at(200), target_s=3600)
    assert third.priority == 1
    actions = [
        r["action"]
        for r in db.execute("SELECT action FROM call_log WHERE call_id = %s ORDER BY id", (first.call_id,))
    ]
    assert actions == ["created", "attached", "priority_changed", "attached"]
    assert scalar(db, "SELECT count(*) FROM alerts WHERE call_id = %s", (first.call_id,)) == 3
    assert scalar(db, "SELECT count(*) FROM live_events WHERE call_id = %s", (first.call_id,)) == 3


def test_redelivered_alert_changes_nothing(db, uid):
    rid = add_resident(db, f"Zhao {uid}")
    alert_id = add_alert(db, rid, "fall", 1)
    kwargs: dict[str, Any] = dict(
        resident_id=rid,
        alert_id=alert_id,
        priority=1,
        rule="fall",
        title="Fall",
        event_at=T0,
        late=False,
        now=T0,
        answer_target_s=60,
    )
    a = open_or_attach(db, **kwargs)
    b = open_or_attach(db, **kwargs)
    assert a.call_id == b.call_id and a.created and not b.created
    assert scalar(db, "SELECT count(*) FROM call_log WHERE call_id = %s", (a.call_id,)) == 1


def test_family_notified_once_per_call_despite_retriggers(db, make_call, uid):
    rid = add_resident(db, f"Sun {uid}")
    db.execute(
        "INSERT INTO contacts (resident_id, position, name, notify) VALUES (%s, 1, 'Son', true)", (rid,)
    )
    db.execute(
        "INSERT INTO contacts (resident_id, position, name, notify) VALUES (%s, 2, 'Nb', false)", (rid,)
    )
    fam = add_user(db, f"fam_{uid}", "family")
    db.execute("INSERT INTO family_links (user_id, resident_id) VALUES (%s, %s)", (fam, rid))
    ref = make_call(rid, priority=1)
    for i in range(5):
        make_call(rid, priority=1, rule=f"fall{i}", now=at(10 + i))
    rows = db.execute(
        "SELECT recipient, kind, state FROM notifications WHERE call_id = %s ORDER BY recipient",
        (ref.call_id,),
    ).fetchall()
    assert [r["recipient"] for r in rows] == sorted([f"contact:{_contact(db, rid, 'Son')}", f"user:{fam}"])
    assert all(r["kind"] == "family" and r["state"] == "pending" for r in rows)


def test_low_priority_call_notifies_no_family_until_raised(db, make_call, uid):
    rid = add_resident(db, f"Zhou {uid}")
    db.execute("INSERT INTO contacts (resident_id, name, notify) VALUES (%s, 'Daughter', true)", (rid,))
    ref = make_call(rid, priority=4, rule="battery", target_s=3600)
    assert scalar(db, "SELECT count(*) FROM notifications WHERE call_id = %s", (ref.call_id,)) == 0
    make_call(rid, priority=2, rule="sos", now=at(30), target_s=180)
    assert scalar(db, "SELECT count(*) FROM notifications WHERE call_id = %s", (ref.call_id,)) == 1


def _contact(db, rid: int, name: str) -> int:
    return int(scalar(db, "SELECT id FROM contacts WHERE resident_id = %s AND name = %s", (rid, name)))


def test_two_engine_workers_at_once_make_one_call(database_url, db, uid):
    rid = add_resident(db, f"Qian {uid}")
    alert_ids = [add_alert(db, rid, f"r{i}", 1) for i in range(8)]
    barrier = threading.Barrier(len(alert_ids), timeout=20)
    refs: list[CallRef] = []
    errors: list[BaseException] = []

    def worker(alert_id: int) -> None:
        try:
            conn = psycopg.connect(database_url, row_factory=dict_row)
            with conn, conn.transaction():  # the engine's own open transaction
                barrier.wait()
                refs.append(
                    open_or_attach(
                        conn,
                        resident_id=rid,
                        alert_id=alert_id,
                        priority=1,
                        rule="fall",
                        title="Fall",
                        event_at=T0,
                        late=False,
                        now=T0,
                        answer_target_s=60,
                    )
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(a,)) for a in alert_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len({r.call_id for r in refs}) == 1 and sum(r.created for r in refs) == 1
    assert scalar(db, "SELECT count(*) FROM calls WHERE resident_id = %s", (rid,)) == 1
    assert (
        scalar(db, "SELECT count(*) FROM alerts WHERE resident_id = %s AND call_id IS NOT NULL", (rid,)) == 8
    )


def test_intake_works_on_a_tuple_row_connection(database_url, db, uid):
    rid = add_resident(db, f"Feng {uid}")
    alert_id = add_alert(db, rid, "fall", 1)
    with psycopg.connect(database_url) as conn, conn.transaction():
        ref = open_or_attach(
            conn,
            resident_id=rid,
            alert_id=alert_id,
            priority=1,
            rule="fall",
            title="Fall",
            event_at=T0,
            late=True,
            now=T0,
            answer_target_s=60,
        )
    assert ref.created and scalar(db, "SELECT late FROM calls WHERE id = %s", (ref.call_id,)) is True


def test_wearer_cancel_keeps_call_as_p3_courtesy_callback(db, make_call, uid):
    rid = add_resident(db, f"Wu {uid}")
    ref = make_call(rid, priority=1)
    wearer_cancel(db, call_id=ref.call_id, now=at(20), note="pressed I'm OK", answer_target_s=900)
    wearer_cancel(db, call_id=ref.call_id, now=at(21), note="again", answer_target_s=900)
    call = db.execute("SELECT * FROM calls WHERE id = %s", (ref.call_id,)).fetchone()
    assert call["status"] == "queued" and call["priority"] == 3 and call["cancelled_by_wearer"]
    assert call["title"].startswith("Cancelled by wearer: courtesy call-back")
    assert call["title"].count("Cancelled by wearer") == 1
    assert call["next_escalation_at"] == at(900)
    log = db.execute(
        "SELECT action, note, detail FROM call_log WHERE call_id = %s ORDER BY id", (ref.call_id,)
    ).fetchall()
    assert [r["action"] for r in log] == ["created", "priority_changed"]
    assert log[1]["detail"]["reason"] == "cancelled_by_wearer"
