"""Calls from alerts: the alert engine calls these inside its own open transaction.

One open call per resident (the unique partial index ``calls_one_open_per_resident``): a new alert either
opens the call or attaches to the open one. Two engine workers racing on the same resident both end on the
same call: the loser's ``INSERT ... ON CONFLICT DO NOTHING`` waits for the winner's commit and then
re-selects the committed row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from carewatch.db import atomic
from hotline import lifecycle
from hotline.store import fetch_one, log_action, notify_family, queue_live

SYSTEM_ALERTS = "system:alerts"
_OPEN_CALL = "SELECT * FROM calls WHERE resident_id = %s AND status <> 'resolved' FOR UPDATE"


@dataclass(frozen=True)
class CallRef:
    call_id: int
    created: bool
    priority: int


_INSERT_CALL = """INSERT INTO calls (resident_id, priority, status, title, reason, event_at, late,
                                     created_at, target_at, next_escalation_at, last_action_at)
                  VALUES (%s, %s, 'queued', %s, %s, %s, %s, %s, %s, %s, %s)
                  ON CONFLICT (resident_id) WHERE status <> 'resolved' DO NOTHING
                  RETURNING *"""


@dataclass
class Attempt:
    """A call INSERT already sent (pipeline mode): its result is read later, with other statements'."""

    cursor: psycopg.Cursor[dict[str, Any]]

    def row(self) -> dict[str, Any] | None:
        return self.cursor.fetchone()


def try_open(
    conn: psycopg.Connection[Any],
    *,
    resident_id: int,
    priority: int,
    rule: str,
    title: str,
    event_at: datetime,
    late: bool,
    now: datetime,
    answer_target_s: int,
) -> Attempt:
    """Send the INSERT of a new call without waiting for it, so the alert engine's emergency path can
    pipeline it with the alert's INSERT (one round trip for both); pass the result to open_or_attach."""
    if priority not in lifecycle.PRIORITIES:
        raise ValueError(f"priority must be 1..4, got {priority}")
    target_at = now + timedelta(seconds=answer_target_s)
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(
        _INSERT_CALL, (resident_id, priority, title, rule, event_at, late, now, target_at, target_at, now)
    )
    return Attempt(cur)


def open_or_attach(
    conn: psycopg.Connection[Any],
    *,
    resident_id: int,
    alert_id: int,
    priority: int,
    rule: str,
    title: str,
    event_at: datetime,
    late: bool,
    now: datetime,
    answer_target_s: int,
    tried: dict[str, Any] | bool | None = False,
) -> CallRef:
    """Open a call for the alert, or attach the alert to the resident's open call (raising its priority).

    `tried`: the row of a :func:`try_open` already made in this transaction (None if it found an open
    call); False when there was none."""
    if priority not in lifecycle.PRIORITIES:
        raise ValueError(f"priority must be 1..4, got {priority}")
    target_at = now + timedelta(seconds=answer_target_s)
    with atomic(conn):
        created = False
        call: dict[str, Any] | None = None
        for _ in range(5):  # bounded: a concurrent resolve between insert and re-select is rare
            # Insert first: an emergency usually opens a new call, and then this is one round trip.
            if tried is False:
                call = try_open(
                    conn,
                    resident_id=resident_id,
                    priority=priority,
                    rule=rule,
                    title=title,
                    event_at=event_at,
                    late=late,
                    now=now,
                    answer_target_s=answer_target_s,
                ).row()
            else:
                call, tried = (tried if isinstance(tried, dict) else None), False
            if call is not None:
                created = True
                break
            call = fetch_one(conn, _OPEN_CALL, (resident_id,))
            if call is not None:
                break
        if call is None:
            raise RuntimeError(f"could not open or find a call for resident {resident_id}")
        call_id = int(call["id"])

        if created:
            conn.execute("UPDATE alerts SET call_id = %s WHERE id = %s", (call_id, alert_id))
            log_action(
                conn,
                call_id,
                action="created",
                at=now,
                actor=SYSTEM_ALERTS,
                to_status="queued",
                detail={"alert_id": alert_id, "rule": rule, "priority": priority, "late": late},
            )
            queue_live(conn, call_id, "call.created", now)
            notify_family(conn, call_id, resident_id, priority, now)
            return CallRef(call_id, True, priority)

        attached = fetch_one(conn, "SELECT call_id FROM alerts WHERE id = %s", (alert_id,))
        if attached is not None and attached["call_id"] == call_id:
            # Redelivered alert: already on this call, nothing changed.
            return CallRef(call_id, False, int(call["priority"]))
        conn.execute("UPDATE alerts SET call_id = %s WHERE id = %s", (call_id, alert_id))
        log_action(
            conn,
            call_id,
            action="attached",
            at=now,
            actor=SYSTEM_ALERTS,
            from_status=call["status"],
            to_status=call["status"],
            detail={"alert_id": alert_id, "rule": rule, "priority": priority},
        )
        current = int(call["priority"])
        if lifecycle.more_urgent(priority, current):
            # The answer clock for the new priority starts from this alert, but never later than before.
            conn.execute(
                """UPDATE calls SET priority = %(p)s, title = %(title)s, reason = %(rule)s,
                          target_at = LEAST(target_at, %(target)s),
                          next_escalation_at = CASE WHEN status = 'queued'
                              THEN LEAST(COALESCE(next_escalation_at, %(target)s), %(target)s)
                              ELSE next_escalation_at END,
                          version = version + 1
                    WHERE id = %(id)s""",
                {"p": priority, "title": title, "rule": rule, "target": target_at, "id": call_id},
            )
            log_action(
                conn,
                call_id,
                action="priority_changed",
                at=now,
                actor=SYSTEM_ALERTS,
                from_status=call["status"],
                to_status=call["status"],
                detail={"from_priority": current, "to_priority": priority, "alert_id": alert_id},
            )
            current = priority
        else:
            conn.execute("UPDATE calls SET version = version + 1 WHERE id = %s", (call_id,))
        queue_live(conn, call_id, "call.updated", now)
        notify_family(conn, call_id, resident_id, current, now)
        return CallRef(call_id, False, current)


def wearer_cancel(
    conn: psycopg.Connection[Any],
    *,
    call_id: int,
    now: datetime,
    note: str,
    answer_target_s: int | None = None,
) -> None:
    """The wearer pressed "I'm OK": keep the call, but as a P3 courtesy call-back (never erased).

    ``answer_target_s`` is the P3 answer target; unset, the configured one is used.
    """
    if answer_target_s is None:
        from carewatch.settings import get_settings

        answer_target_s = get_settings().answer_target(3)
    with atomic(conn):
        call = fetch_one(conn, "SELECT * FROM calls WHERE id = %s FOR UPDATE", (call_id,))
        if call is None:
            raise LookupError(f"call {call_id} does not exist")
        if call["status"] == lifecycle.RESOLVED or call["cancelled_by_wearer"]:
            return
        new_priority = max(int(call["priority"]), 3)
        target_at = call["created_at"] + timedelta(seconds=answer_target_s)
        conn.execute(
            """UPDATE calls SET priority = %s, cancelled_by_wearer = true, title = %s, target_at = %s,
                      next_escalation_at = CASE WHEN status = 'queued' AND escalation_level = 0 THEN %s
                                                ELSE next_escalation_at END,
                      version = version + 1
                WHERE id = %s""",
            (new_priority, lifecycle.wearer_cancel_title(call["title"]), target_at, target_at, call_id),
        )
        log_action(
            conn,
            call_id,
            action="priority_changed",
            at=now,
            actor="system:wearer",
            from_status=call["status"],
            to_status=call["status"],
            note=note,
            detail={
                "reason": "cancelled_by_wearer",
                "from_priority": call["priority"],
                "to_priority": new_priority,
            },
        )
        queue_live(conn, call_id, "call.updated", now)
