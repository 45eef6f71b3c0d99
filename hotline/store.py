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

AnyConn = psycopg.Connection[Any]

# The fields of a call that anybody allowed to see the call may see (family included): no notes, no log.
# The view is defined in migration 0006; the live feed's payloads are built from it too.
SUMMARY_SQL = "SELECT * FROM call_summaries WHERE id = %s"


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


def queue_live(conn: AnyConn, call_id: int, kind: str, at: datetime) -> None:
    """Insert the live_events row for a change (its trigger NOTIFYs on commit). The database function
    builds the payload, the same way the alert engine's raise_alert does (migration 0006)."""
    conn.execute("SELECT queue_live(%s, %s, %s)", (call_id, kind, at))


def emit_live(conn: AnyConn, call_id: int, kind: str, at: datetime) -> dict[str, Any]:
    """:func:`queue_live`, then the call's summary for the caller's response."""
    queue_live(conn, call_id, kind, at)
    return call_summary(conn, call_id)


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
