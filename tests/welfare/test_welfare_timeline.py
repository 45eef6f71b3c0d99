"""The rescue timeline of a full P1 call, built by the real hotline actions with a fixed clock."""

from __future__ import annotations

from typing import Any

import psycopg

from hotline import service as hotline
from hotline.intake import open_or_attach
from tests.support import add_resident
from tests.welfare.welfare_helpers import at, staff
from welfare import service, timeline

Conn = psycopg.Connection[dict[str, Any]]


def full_call(db: Conn, uid: str) -> tuple[int, int]:
    """Fall at t=-5 s, call at 0, claimed +20, ambulance +60, arrived +600 (hospital), resolved +700."""
    rid = add_resident(db, f"Rescued {uid}", district="Xuhui")
    op = staff(db, f"op-tl-{uid}")
    row = db.execute(
        """INSERT INTO alerts (resident_id, rule, priority, opened_at, last_seen_at, title)
           VALUES (%s, 'fall', 1, %s, %s, 'Fall') RETURNING id""",
        (rid, at(-5), at(-5)),
    ).fetchone()
    assert row is not None
    with db.transaction():
        ref = open_or_attach(
            db,
            resident_id=rid,
            alert_id=int(row["id"]),
            priority=1,
            rule="fall",
            title="Fall detected",
            event_at=at(-5),
            late=False,
            now=at(0),
            answer_target_s=60,
        )
    cid = ref.call_id
    hotline.claim(db, cid, op, at(20))
    hotline.start(db, cid, op, at(25))
    hotline.add_note(db, cid, op, at(30), "key safe code given to crew", internal=True)
    sent = hotline.dispatch(db, cid, op, at(60), responder_kind="ambulance", responder_name="Unit 12")
    hotline.arrived(db, cid, sent, op, at(600), handover="hospital")
    hotline.resolve(db, cid, op, at(700), outcome="genuine_emergency", note="taken to Ruijin hospital")
    return cid, rid


def test_staff_timeline_of_a_full_call(db: Conn, uid: str) -> None:
    cid, rid = full_call(db, uid)
    tl = service.rescue_timeline(db, cid, family=False)
    assert (tl["call_id"], tl["resident_id"], tl["priority"], tl["status"]) == (cid, rid, 1, "resolved")
    assert [(s["kind"], s["at"]) for s in tl["steps"]] == [
        ("alarm", at(-5)),
        ("opened", at(0)),
        ("claimed", at(20)),
        ("note", at(30)),
        ("dispatched", at(60)),
        ("arrived", at(600)),
        ("handover", at(600)),
        ("resolved", at(700)),
    ]
    assert tl["durations_s"] == {
        "to_claim": 25.0,
        "to_dispatch": 65.0,
        "to_arrival": 605.0,
        "to_handover": 605.0,
        "to_resolved": 705.0,
    }
    steps = {s["kind"]: s for s in tl["steps"]}
    assert steps["dispatched"]["responder_name"] == "Unit 12" and steps["claimed"]["by"] == f"op-tl-{uid}"
    assert steps["note"]["note"] == "key safe code given to crew"
    assert tl["handover"] == "hospital" and steps["resolved"]["outcome"] == "genuine_emergency"


def test_family_summary_has_no_notes_names_or_operators(db: Conn, uid: str) -> None:
    cid, _ = full_call(db, uid)
    tl = service.rescue_timeline(db, cid, family=True)
    assert [s["kind"] for s in tl["steps"]] == [
        "alarm",
        "opened",
        "claimed",
        "dispatched",
        "arrived",
        "handover",
        "resolved",
    ]
    flat = repr(tl)
    for secret in ("key safe", "Unit 12", f"op-tl-{uid}", "Ruijin"):
        assert secret not in flat
    assert tl["durations_s"]["to_arrival"] == 605.0


def test_open_call_timeline_stops_where_the_call_is() -> None:
    call = {
        "id": 1,
        "resident_id": 2,
        "priority": 2,
        "status": "queued",
        "reason": "sos",
        "event_at": at(0),
        "created_at": at(1),
        "first_claimed_at": None,
        "resolved_at": None,
        "outcome": None,
    }
    tl = timeline.build(call, [], family=True)
    assert [s["kind"] for s in tl["steps"]] == ["alarm", "opened"]
    assert tl["durations_s"]["to_claim"] is None and tl["handover"] is None
