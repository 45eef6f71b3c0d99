"""SQL edge shared by intake, the service and the scheduled sweeps: audit rows, live events, notifications.

Every function here runs inside the caller's transaction, so a call change, its ``call_log`` row and its
``live_events`` row commit (or roll back) together. Rows are read through a ``dict_row`` cursor so the
functions work whatever row factory the caller's connection uses (the alert engine's may be tuples).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from hotline.lifecycle import FAMILY_NOTIFY_PRIORITIES

AnyConn = psycopg.Connection[Any]

# The fields of a call that anybody allowed to see the call may see (family included): no notes, no log.
SUMMARY_SQL = """
SELECT c.id, c.resident_id, r.name AS resident_name, c.priority, c.status, c.title, c.reason, c.event_at,
       c.late, c.cancelled_by_wearer, c.created_at, c.target_at, c.claimed_by, u.username AS claimed_by_name,
       c.claimed_at, c.first_claimed_at, c.last_action_at, c.resolved_at, c.outcome, c.escalation_level,
       c.escalated_at, c.next_escalation_at, c.version
  FROM calls c
  JOIN residents r ON r.id = c.resident_id
  LEFT JOIN users u ON u.id = c.claimed_by
 WHERE c.id = %s
"""


def fetch_one(conn: AnyConn, query: str, params: Any = None) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchone()


def fetch_all(conn: AnyConn, query: str, params: Any = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def call_summary(conn: AnyConn, call_id: int) -> dict[str, Any]:
    row = fetch_one(conn, SUMMARY_SQL, (call_id,))
    if row is None:
        raise LookupError(f"call {call_id} does not exist")
    return row


def json_ready(value: Any) -> Any:
    """Datetimes as ISO strings: live_events payloads and webhook bodies are JSON."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def log_action(
    conn: AnyConn,
    call_id: int,
    *,
    action: str,
    at: datetime,
    actor: str,
    actor_id: int | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    note: str | None = None,
    internal: bool = False,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one audit row (call_log is append-only by trigger)."""
    conn.execute(
        """INSERT INTO call_log (call_id, at, actor_id, actor, action, from_status, to_status, note, internal,
                                 detail)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            call_id,
            at,
            actor_id,
            actor,
            action,
            from_status,
            to_status,
            note,
            internal,
            Jsonb(json_ready(detail or {})),
        ),
    )


_LIVE_SQL = f"""
INSERT INTO live_events (at, kind, call_id, resident_id, payload)
SELECT %s, %s, s.id, s.resident_id, to_jsonb(s) FROM ({SUMMARY_SQL}) s
"""


def queue_live(conn: AnyConn, call_id: int, kind: str, at: datetime) -> None:
    """Insert the live_events row for a change (its trigger NOTIFYs on commit). The payload is built by
    the database, so in pipeline mode this costs no round trip (the alert engine's emergency path)."""
    conn.execute(_LIVE_SQL, (at, kind, call_id))


def emit_live(conn: AnyConn, call_id: int, kind: str, at: datetime) -> dict[str, Any]:
    """:func:`queue_live`, then the call's summary for the caller's response."""
    queue_live(conn, call_id, kind, at)
    return call_summary(conn, call_id)


def notify_family(conn: AnyConn, call_id: int, resident_id: int, priority: int, now: datetime) -> None:
    """Queue one family notification per recipient per call (UNIQUE(call_id, recipient) keeps it once)."""
    if priority not in FAMILY_NOTIFY_PRIORITIES:
        return
    conn.execute(
        """INSERT INTO notifications (call_id, recipient, channel, kind, created_at)
           SELECT %(call)s, 'contact:' || c.id, 'webhook', 'family', %(now)s
             FROM contacts c WHERE c.resident_id = %(rid)s AND c.notify
           UNION ALL
           SELECT %(call)s, 'user:' || u.id, 'webhook', 'family', %(now)s
             FROM family_links f JOIN users u ON u.id = f.user_id
            WHERE f.resident_id = %(rid)s AND u.role = 'family' AND NOT u.disabled
           ON CONFLICT (call_id, recipient) DO NOTHING""",
        {"call": call_id, "rid": resident_id, "now": now},
    )


def notify_supervisors(conn: AnyConn, call_id: int, now: datetime) -> int:
    """(Re)queue an escalation notification for every active supervisor: one row each, re-armed per step."""
    cur = conn.execute(
        """INSERT INTO notifications (call_id, recipient, channel, kind, created_at)
           SELECT %(call)s, 'user:' || u.id, 'webhook', 'escalation', %(now)s
             FROM users u WHERE u.role = 'supervisor' AND NOT u.disabled
           ON CONFLICT (call_id, recipient) DO UPDATE
              SET state = 'pending', attempts = 0, last_error = NULL, created_at = EXCLUDED.created_at,
                  next_attempt_at = NULL, sent_at = NULL
            WHERE notifications.kind = 'escalation'""",
        {"call": call_id, "now": now},
    )
    return cur.rowcount
