"""Periodic sweeps run by the alert-engine process every second: escalation, claim timeouts, notifications.

Each sweep locks only the rows it works on with ``FOR UPDATE SKIP LOCKED``, so several processes can run
the same sweep at once without doing a step twice or waiting on each other.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from carewatch.settings import Settings
from hotline import lifecycle
from hotline.notify import Message, NoRoute, Notifier
from hotline.store import AnyConn, fetch_all, json_ready, log_action, notify_supervisors, queue_live

log = logging.getLogger(__name__)

BATCH = 100
MAX_ATTEMPTS = 5
RETRY_BASE_S = 5


def escalate_due(conn: AnyConn, now: datetime, settings: Settings) -> int:
    """Escalate queued calls past their answer target (and repeat every escalation_repeat_s)."""
    done = 0
    with conn.transaction():
        due = fetch_all(
            conn,
            """SELECT * FROM calls WHERE status = 'queued' AND next_escalation_at <= %s
                                 ORDER BY next_escalation_at LIMIT %s FOR UPDATE SKIP LOCKED""",
            (now, BATCH),
        )
        for call in due:
            step = lifecycle.escalation_step(
                status=call["status"],
                level=call["escalation_level"],
                next_escalation_at=call["next_escalation_at"],
                now=now,
                repeat_s=settings.escalation_repeat_s,
            )
            if step is None:
                continue
            conn.execute(
                """UPDATE calls SET escalation_level = %s, escalated_at = %s, next_escalation_at = %s,
                                   version = version + 1 WHERE id = %s""",
                (step.level, step.escalated_at, step.next_at, call["id"]),
            )
            overdue = (now - call["target_at"]).total_seconds()
            log_action(
                conn,
                call["id"],
                action="escalated",
                at=now,
                actor="system:escalation",
                from_status=call["status"],
                to_status=call["status"],
                detail={"level": step.level, "overdue_s": overdue, "priority": call["priority"]},
            )
            queue_live(conn, call["id"], "call.escalated", now)
            notify_supervisors(conn, call["id"], now)
            done += 1
    if done:
        log.info("escalated %d unanswered call(s)", done)
    return done


def release_stale_claims(conn: AnyConn, now: datetime, settings: Settings) -> int:
    """Return claimed calls with no action for claim_timeout_s to the queue (escalation resumes)."""
    done = 0
    with conn.transaction():
        stale = fetch_all(
            conn,
            """SELECT * FROM calls WHERE status = 'claimed'
                                      AND last_action_at <= %s - make_interval(secs => %s)
                                   ORDER BY last_action_at LIMIT %s FOR UPDATE SKIP LOCKED""",
            (now, settings.claim_timeout_s, BATCH),
        )
        for call in stale:
            if not lifecycle.claim_expired(
                status=call["status"],
                last_action_at=call["last_action_at"],
                now=now,
                timeout_s=settings.claim_timeout_s,
            ):
                continue
            new = lifecycle.next_status(call["status"], "claim_timeout")
            conn.execute(
                """UPDATE calls SET status = %s, claimed_by = NULL, claimed_at = NULL,
                                   last_action_at = %s, next_escalation_at = GREATEST(target_at, %s),
                                   version = version + 1 WHERE id = %s""",
                (new, now, now, call["id"]),
            )
            log_action(
                conn,
                call["id"],
                action="claim_timeout",
                at=now,
                actor="system:claims",
                from_status=call["status"],
                to_status=new,
                detail={
                    "held_by": call["claimed_by"],
                    "idle_s": (now - call["last_action_at"]).total_seconds(),
                },
            )
            queue_live(conn, call["id"], "call.updated", now)
            done += 1
    if done:
        log.info("returned %d idle claim(s) to the queue", done)
    return done


_PENDING_SQL = """
SELECT n.id, n.call_id, n.recipient, n.kind, n.attempts, ct.webhook_url,
       c.resident_id, r.name AS resident_name, c.priority, c.status, c.title, c.created_at, c.claimed_at,
       c.resolved_at, c.outcome, c.escalation_level, c.target_at
  FROM notifications n
  JOIN calls c ON c.id = n.call_id
  JOIN residents r ON r.id = c.resident_id
  LEFT JOIN contacts ct ON n.recipient = 'contact:' || ct.id
 WHERE n.state = 'pending' AND (n.next_attempt_at IS NULL OR n.next_attempt_at <= now())
 ORDER BY n.created_at, n.id
 LIMIT %s
 FOR UPDATE OF n SKIP LOCKED
"""


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    """What the recipient is told: family learn the call and its state; supervisors also the escalation."""
    call = {
        k: row[k]
        for k in (
            "call_id",
            "resident_id",
            "resident_name",
            "priority",
            "status",
            "created_at",
            "claimed_at",
            "resolved_at",
            "outcome",
        )
    }
    body: dict[str, Any] = {"type": f"call.{row['kind']}", "recipient": row["recipient"], "call": call}
    if row["kind"] == "escalation":
        call.update(title=row["title"], escalation_level=row["escalation_level"], target_at=row["target_at"])
    return json_ready(body)  # type: ignore[no-any-return]


def deliver_notifications(conn: AnyConn, notifier: Notifier) -> int:
    """Send pending notifications through ``notifier``; failures retry with back-off, then stay failed."""
    sent = 0
    with conn.transaction():
        for row in fetch_all(conn, _PENDING_SQL, (BATCH // 4,)):
            message = Message(
                notification_id=row["id"],
                call_id=row["call_id"],
                recipient=row["recipient"],
                kind=row["kind"],
                webhook_url=row["webhook_url"],
                payload=_payload(row),
            )
            try:
                notifier.send(message)
            except Exception as exc:
                attempts = row["attempts"] + 1
                state = "failed" if attempts >= MAX_ATTEMPTS else "pending"
                error = str(exc)[:300] or type(exc).__name__
                conn.execute(
                    """UPDATE notifications SET attempts = %s, state = %s, last_error = %s,
                                       next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s""",
                    (attempts, state, error, RETRY_BASE_S * 2 ** (attempts - 1), row["id"]),
                )
                log.log(
                    logging.INFO if isinstance(exc, NoRoute) else logging.WARNING,
                    "notification %s (call %s) not delivered (attempt %d): %s",
                    row["id"],
                    row["call_id"],
                    attempts,
                    type(exc).__name__,
                )
                continue
            conn.execute(
                """UPDATE notifications SET attempts = attempts + 1, state = 'sent', sent_at = now(),
                                   last_error = NULL WHERE id = %s""",
                (row["id"],),
            )
            sent += 1
    return sent
