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

from carewatch.db import atomic
from hotline import lifecycle
from hotline.store import fetch_one, log_action, queue_live


@dataclass(frozen=True)
class CallRef:
    call_id: int
    created: bool
    priority: int


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
) -> CallRef:
    """Open a call for the alert, or attach the alert to the resident's open call (raising its priority).

    The work is the database function ``open_or_attach_call`` (migration 0006), which the alert engine's
    ``raise_alert`` also runs: one statement, so the emergency path needs no round trip for it."""
    if priority not in lifecycle.PRIORITIES:
        raise ValueError(f"priority must be 1..4, got {priority}")
    row = fetch_one(
        conn,
        "SELECT call_id, created, priority FROM open_or_attach_call(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            resident_id,
            alert_id,
            priority,
            rule,
            title,
            event_at,
            late,
            now,
            answer_target_s,
            family_priorities(),
        ),
    )
    assert row is not None  # the function returns a row or raises
    return CallRef(int(row["call_id"]), bool(row["created"]), int(row["priority"]))


def family_priorities() -> list[int]:
    """The hotline's policy, as the database functions take it."""
    return sorted(lifecycle.FAMILY_NOTIFY_PRIORITIES)


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
