"""Operator actions on calls: each one locks the call row, checks the state machine, writes the change, its
audit row and its live event in one transaction.

Claims lock with ``FOR UPDATE`` (a specific call: the loser waits, then sees it claimed and gets
HeldByOther) or ``FOR UPDATE SKIP LOCKED`` (``claim_next``: operators never queue behind each other).
The "help is coming" device command is published only after the claim committed, through an injected
publisher, and a publish failure never undoes the claim.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from carewatch.contract import cmd_topic
from hotline import lifecycle, reports
from hotline.store import AnyConn, call_summary, emit_live, fetch_all, fetch_one, log_action

log = logging.getLogger(__name__)

# publisher(topic, payload, qos): e.g. a paho client's publish; raising is logged, never fatal.
Publisher = Callable[[str, bytes, int], Any]

QUEUE_ORDER = "priority, escalation_level DESC, created_at, id"


@dataclass(frozen=True)
class Actor:
    id: int
    username: str
    role: str


class NotFound(Exception):
    """No such call (or dispatch/contact of this call)."""


class Conflict(Exception):
    """The change collides with another open call of the same resident (HTTP 409)."""


def _lock(conn: AnyConn, call_id: int) -> dict[str, Any]:
    row = fetch_one(conn, "SELECT * FROM calls WHERE id = %s FOR UPDATE", (call_id,))
    if row is None:
        raise NotFound(f"call {call_id} does not exist")
    return row


def _begin(conn: AnyConn, call_id: int, actor: Actor, action: str) -> tuple[dict[str, Any], str]:
    call = _lock(conn, call_id)
    lifecycle.check_actor(
        action, role=actor.role, actor_id=actor.id, status=call["status"], holder_id=call["claimed_by"]
    )
    return call, lifecycle.next_status(call["status"], action)


def _touch(
    conn: AnyConn, call_id: int, now: datetime, sets: str = "", params: dict[str, Any] | None = None
) -> None:
    extra = f", {sets}" if sets else ""
    conn.execute(
        f"UPDATE calls SET last_action_at = %(now)s, version = version + 1{extra} WHERE id = %(id)s",
        {"now": now, "id": call_id, **(params or {})},
    )


def _log(
    conn: AnyConn,
    call: dict[str, Any],
    actor: Actor,
    action: str,
    now: datetime,
    to_status: str,
    note: str | None = None,
    internal: bool = False,
    detail: dict[str, Any] | None = None,
) -> None:
    log_action(
        conn,
        int(call["id"]),
        action=action,
        at=now,
        actor=actor.username,
        actor_id=actor.id,
        from_status=call["status"],
        to_status=to_status,
        note=note,
        internal=internal,
        detail=detail,
    )


def publish_help_coming(
    conn: AnyConn, call: dict[str, Any], now: datetime, publisher: Publisher | None
) -> int:
    """Tell the resident's wristbands that help is on the way; failures are logged, not raised."""
    if publisher is None:
        return 0
    devices = fetch_all(
        conn,
        "SELECT id FROM devices WHERE resident_id = %s AND kind = 'wristband' AND enabled ORDER BY id",
        (call["resident_id"],),
    )
    sent = 0
    body = json.dumps(
        {"type": "help_coming", "call_id": call["id"], "ts": now.isoformat().replace("+00:00", "Z")}
    ).encode()
    for device in devices:
        try:
            publisher(cmd_topic(device["id"]), body, 1)
            sent += 1
        except Exception as exc:  # the claim stands; the operator is already on the line
            log.warning(
                "help_coming to %s for call %s not published: %s",
                device["id"],
                call["id"],
                type(exc).__name__,
            )
    return sent


def claim(
    conn: AnyConn, call_id: int, actor: Actor, now: datetime, publisher: Publisher | None = None
) -> dict[str, Any]:
    """Take a queued call; HeldByOther when someone else holds it. Re-claiming your own call is a no-op."""
    with conn.transaction():
        call = _lock(conn, call_id)
        if call["status"] in lifecycle.HELD_STATUSES and call["claimed_by"] == actor.id:
            return call_summary(conn, call_id)
        _, new = _begin(conn, call_id, actor, "claim")
        summary = _claim_locked(conn, call, actor, now, new)
    publish_help_coming(conn, summary, now, publisher)
    return summary


def _claim_locked(
    conn: AnyConn, call: dict[str, Any], actor: Actor, now: datetime, new: str
) -> dict[str, Any]:
    _touch(
        conn,
        call["id"],
        now,
        "status = %(st)s, claimed_by = %(uid)s, claimed_at = %(now)s, "
        "first_claimed_at = COALESCE(first_claimed_at, %(now)s), "
        "first_claimed_by = COALESCE(first_claimed_by, %(uid)s), next_escalation_at = NULL",
        {"st": new, "uid": actor.id},
    )
    _log(
        conn,
        call,
        actor,
        "claimed",
        now,
        new,
        detail={"waited_s": (now - call["created_at"]).total_seconds(), "priority": call["priority"]},
    )
    return emit_live(conn, call["id"], "call.updated", now)


def claim_next(
    conn: AnyConn, actor: Actor, now: datetime, publisher: Publisher | None = None
) -> dict[str, Any] | None:
    """Take the top of the queue, skipping calls another operator is claiming this instant."""
    lifecycle.check_actor(
        "claim", role=actor.role, actor_id=actor.id, status=lifecycle.QUEUED, holder_id=None
    )
    with conn.transaction():
        call = fetch_one(
            conn,
            f"SELECT * FROM calls WHERE status = 'queued' ORDER BY {QUEUE_ORDER} "
            "LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        if call is None:
            return None
        summary = _claim_locked(conn, call, actor, now, lifecycle.next_status(call["status"], "claim"))
    publish_help_coming(conn, summary, now, publisher)
    return summary


def release(
    conn: AnyConn, call_id: int, actor: Actor, now: datetime, note: str | None = None
) -> dict[str, Any]:
    """Hand the call back to the queue; an overdue call resumes escalating at the next sweep."""
    with conn.transaction():
        call, new = _begin(conn, call_id, actor, "release")
        _touch(
            conn,
            call_id,
            now,
            "status = %(st)s, claimed_by = NULL, claimed_at = NULL, "
            "next_escalation_at = GREATEST(target_at, %(now)s)",
            {"st": new},
        )
        _log(
            conn,
            call,
            actor,
            "released",
            now,
            new,
            note=note,
            internal=True,
            detail={"held_by": call["claimed_by"]},
        )
        return emit_live(conn, call_id, "call.updated", now)


def start(
    conn: AnyConn, call_id: int, actor: Actor, now: datetime, note: str | None = None
) -> dict[str, Any]:
    """claimed → in_progress: the operator is speaking to the resident / handling the rescue."""
    with conn.transaction():
        call, new = _begin(conn, call_id, actor, "start")
        _touch(conn, call_id, now, "status = %(st)s", {"st": new})
        _log(conn, call, actor, "started", now, new, note=note, internal=True)
        return emit_live(conn, call_id, "call.updated", now)


def add_note(
    conn: AnyConn, call_id: int, actor: Actor, now: datetime, note: str, internal: bool = True
) -> dict[str, Any]:
    """Notes are allowed at every step; operators' notes are internal (never shown to family)."""
    with conn.transaction():
        call, new = _begin(conn, call_id, actor, "note")
        _touch(conn, call_id, now)
        _log(conn, call, actor, "note", now, new, note=note, internal=internal)
        return emit_live(conn, call_id, "call.updated", now)


def contact_attempt(
    conn: AnyConn,
    call_id: int,
    actor: Actor,
    now: datetime,
    *,
    contact_id: int,
    result: str,
    note: str | None = None,
) -> dict[str, Any]:
    """Record one try of one of the resident's contacts (reached, no_answer, declined, busy)."""
    if result not in lifecycle.CONTACT_RESULTS:
        raise lifecycle.InvalidTransition(f"result must be one of {', '.join(lifecycle.CONTACT_RESULTS)}")
    with conn.transaction():
        call, new = _begin(conn, call_id, actor, "contact_attempt")
        contact = fetch_one(
            conn,
            "SELECT id, name FROM contacts WHERE id = %s AND resident_id = %s",
            (contact_id, call["resident_id"]),
        )
        if contact is None:
            raise NotFound(f"contact {contact_id} is not a contact of this call's resident")
        row = fetch_one(
            conn,
            """INSERT INTO contact_attempts (call_id, contact_id, at, result, by_user, note)
                                 VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
            (call_id, contact_id, now, result, actor.id, note),
        )
        assert row is not None
        _touch(conn, call_id, now)
        _log(
            conn,
            call,
            actor,
            "contact_attempt",
            now,
            new,
            note=note,
            internal=True,
            detail={
                "attempt_id": row["id"],
                "contact_id": contact_id,
                "contact": contact["name"],
                "result": result,
            },
        )
        return emit_live(conn, call_id, "call.updated", now)


def dispatch(
    conn: AnyConn,
    call_id: int,
    actor: Actor,
    now: datetime,
    *,
    responder_kind: str,
    responder_name: str = "",
    note: str | None = None,
) -> int:
    """Record who was sent; the call stays open (dispatch is an action, not a final state)."""
    if responder_kind not in lifecycle.RESPONDER_KINDS:
        raise lifecycle.InvalidTransition(
            f"responder_kind must be one of {', '.join(lifecycle.RESPONDER_KINDS)}"
        )
    with conn.transaction():
        call, new = _begin(conn, call_id, actor, "dispatch")
        row = fetch_one(
            conn,
            """INSERT INTO dispatches (call_id, responder_kind, responder_name, sent_at,
                                                         sent_by, note)
                                 VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
            (call_id, responder_kind, responder_name, now, actor.id, note),
        )
        assert row is not None
        _touch(conn, call_id, now)
        _log(
            conn,
            call,
            actor,
            "dispatched",
            now,
            new,
            note=note,
            internal=True,
            detail={
                "dispatch_id": row["id"],
                "responder_kind": responder_kind,
                "responder_name": responder_name,
            },
        )
        emit_live(conn, call_id, "call.updated", now)
        return int(row["id"])


def arrived(
    conn: AnyConn,
    call_id: int,
    dispatch_id: int,
    actor: Actor,
    now: datetime,
    *,
    handover: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """The responder is on site (once per dispatch)."""
    with conn.transaction():
        call, new = _begin(conn, call_id, actor, "arrived")
        sent = fetch_one(
            conn, "SELECT * FROM dispatches WHERE id = %s AND call_id = %s FOR UPDATE", (dispatch_id, call_id)
        )
        if sent is None:
            raise NotFound(f"dispatch {dispatch_id} does not belong to call {call_id}")
        if sent["arrived_at"] is not None:
            raise lifecycle.InvalidTransition(f"dispatch {dispatch_id} already arrived")
        if handover is not None and handover not in ("hospital", "family", "resolved_at_home", "other"):
            raise lifecycle.InvalidTransition("handover must be hospital, family, resolved_at_home or other")
        conn.execute(
            """UPDATE dispatches SET arrived_at = %s, handover = %s,
                               handover_at = CASE WHEN %s::text IS NULL THEN NULL ELSE %s END
                         WHERE id = %s""",
            (now, handover, handover, now, dispatch_id),
        )
        _touch(conn, call_id, now)
        _log(
            conn,
            call,
            actor,
            "arrived",
            now,
            new,
            note=note,
            internal=True,
            detail={
                "dispatch_id": dispatch_id,
                "responder_kind": sent["responder_kind"],
                "after_s": (now - sent["sent_at"]).total_seconds(),
                "handover": handover,
            },
        )
        return emit_live(conn, call_id, "call.updated", now)


def resolve(
    conn: AnyConn, call_id: int, actor: Actor, now: datetime, *, outcome: str, note: str
) -> dict[str, Any]:
    """Close the call with an outcome; the note is part of the audit trail."""
    lifecycle.validate_outcome(outcome)
    with conn.transaction():
        call, new = _begin(conn, call_id, actor, "resolve")
        _touch(
            conn,
            call_id,
            now,
            "status = %(st)s, resolved_at = %(now)s, resolved_by = %(uid)s, "
            "outcome = %(outcome)s, next_escalation_at = NULL",
            {"st": new, "uid": actor.id, "outcome": outcome},
        )
        _log(conn, call, actor, "resolved", now, new, note=note, internal=True, detail={"outcome": outcome})
        return emit_live(conn, call_id, "call.updated", now)


def reopen(
    conn: AnyConn, call_id: int, actor: Actor, now: datetime, *, answer_target_s: int, note: str | None = None
) -> dict[str, Any]:
    """A supervisor puts a resolved call back in the queue with a fresh answer target."""
    try:
        with conn.transaction():
            call, new = _begin(conn, call_id, actor, "reopen")
            target = now + timedelta(seconds=answer_target_s)
            _touch(
                conn,
                call_id,
                now,
                "status = %(st)s, claimed_by = NULL, claimed_at = NULL, resolved_at = NULL, "
                "resolved_by = NULL, outcome = NULL, target_at = %(target)s, next_escalation_at = %(target)s",
                {"st": new, "target": target},
            )
            _log(
                conn,
                call,
                actor,
                "reopened",
                now,
                new,
                note=note,
                internal=True,
                detail={"previous_outcome": call["outcome"]},
            )
            return emit_live(conn, call_id, "call.updated", now)
    except psycopg.errors.UniqueViolation as exc:
        raise Conflict("the resident already has another open call; attach to that one instead") from exc


# --- reads ------------------------------------------------------------------------------------------

_LIST_SQL = """
SELECT c.* FROM call_summaries c
 WHERE (%(status)s::text IS NULL AND c.status <> 'resolved' OR c.status = %(status)s)
   AND (%(priority)s::int IS NULL OR c.priority = %(priority)s)
   AND (%(rid)s::bigint IS NULL OR c.resident_id = %(rid)s)
   AND (%(visible)s::bigint[] IS NULL OR c.resident_id = ANY(%(visible)s))
 ORDER BY (c.status = 'resolved'), c.priority, c.escalation_level DESC, c.created_at, c.id
 LIMIT %(limit)s
"""


def list_calls(
    conn: AnyConn,
    *,
    status: str | None = None,
    priority: int | None = None,
    resident_id: int | None = None,
    visible: frozenset[int] | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Open calls (or those of ``status``) in queue order: priority, escalation, then waiting time."""
    return fetch_all(
        conn,
        _LIST_SQL,
        {
            "status": status,
            "priority": priority,
            "rid": resident_id,
            "visible": None if visible is None else sorted(visible),
            "limit": limit,
        },
    )


def get_call(conn: AnyConn, call_id: int, *, internal: bool) -> dict[str, Any]:
    """The call screen. ``internal=False`` (family) gives the summary only: no notes, log or responders."""
    try:
        summary = call_summary(conn, call_id)
    except LookupError as exc:
        raise NotFound(str(exc)) from exc
    if not internal:
        public = {
            k: summary[k]
            for k in (
                "id",
                "resident_id",
                "resident_name",
                "priority",
                "status",
                "title",
                "created_at",
                "claimed_at",
                "resolved_at",
                "outcome",
                "cancelled_by_wearer",
            )
        }
        return public
    summary["alerts"] = fetch_all(
        conn,
        """SELECT id, rule, priority, status, opened_at, raised_at, title,
                                                  device_id, late, count
                                             FROM alerts WHERE call_id = %s ORDER BY id""",
        (call_id,),
    )
    summary["log"] = fetch_all(
        conn,
        """SELECT id, at, actor, action, from_status, to_status, note, internal,
                                               detail
                                          FROM call_log WHERE call_id = %s ORDER BY id""",
        (call_id,),
    )
    contacts = fetch_all(
        conn,
        """SELECT id, position, name, relation, phone, kind, is_responder, notify
                                    FROM contacts WHERE resident_id = %s ORDER BY position, id""",
        (summary["resident_id"],),
    )
    attempts = fetch_all(
        conn,
        """SELECT a.id, a.contact_id, a.at, a.result, a.note, u.username AS by
                                    FROM contact_attempts a LEFT JOIN users u ON u.id = a.by_user
                                   WHERE a.call_id = %s ORDER BY a.id""",
        (call_id,),
    )
    for contact in contacts:
        contact["attempts"] = [a for a in attempts if a["contact_id"] == contact["id"]]
        contact["tried"] = bool(contact["attempts"])
        contact["last_result"] = contact["attempts"][-1]["result"] if contact["attempts"] else None
    summary["contacts"] = contacts
    summary["dispatches"] = fetch_all(
        conn,
        """SELECT d.id, d.responder_kind, d.responder_name, d.sent_at, u.username AS sent_by,
                        d.arrived_at, d.handover, d.handover_at, d.note
                   FROM dispatches d LEFT JOIN users u ON u.id = d.sent_by
                  WHERE d.call_id = %s ORDER BY d.id""",
        (call_id,),
    )
    return summary


def answer_time_report(
    conn: AnyConn, *, start: datetime, end: datetime, now: datetime, targets: dict[int, int]
) -> dict[str, Any]:
    """Figures for calls created in [start, end) and dispatches sent in that window."""
    calls = fetch_all(
        conn,
        """SELECT c.id, c.priority, c.created_at, c.first_claimed_at, u.username,
                                      c.resolved_at
                                 FROM calls c LEFT JOIN users u ON u.id = c.first_claimed_by
                                WHERE c.created_at >= %s AND c.created_at < %s ORDER BY c.id""",
        (start, end),
    )
    sent = fetch_all(
        conn,
        """SELECT responder_kind, sent_at, arrived_at FROM dispatches
                               WHERE sent_at >= %s AND sent_at < %s ORDER BY id""",
        (start, end),
    )
    report = reports.answer_times(
        (
            reports.CallTimes(
                r["id"],
                r["priority"],
                r["created_at"],
                r["first_claimed_at"],
                r["username"],
                r["resolved_at"],
            )
            for r in calls
        ),
        (reports.DispatchTimes(r["responder_kind"], r["sent_at"], r["arrived_at"]) for r in sent),
        targets,
        now,
    )
    report["from"], report["to"] = start, end
    report["answer_target_s"] = dict(targets)
    return report
