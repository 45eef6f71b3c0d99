"""The call state machine, outcome rules and who may do what: pure, so every rule is unit-tested.

Lifecycle: queued → claimed → in_progress → resolved. Dispatches, contact attempts and notes are actions
recorded on a claimed/in-progress call, not states: a call with an ambulance on the way is still being
handled. A claim returns to the queue on release or claim timeout; a supervisor may reopen a resolved call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

QUEUED = "queued"
CLAIMED = "claimed"
IN_PROGRESS = "in_progress"
RESOLVED = "resolved"
STATUSES = (QUEUED, CLAIMED, IN_PROGRESS, RESOLVED)
OPEN_STATUSES = (QUEUED, CLAIMED, IN_PROGRESS)
HELD_STATUSES = (CLAIMED, IN_PROGRESS)

OUTCOMES = (
    "genuine_emergency",
    "resident_ok",
    "false_alarm",
    "no_answer_help_sent",
    "technical_fault",
    "cancelled_by_wearer",
)
CONTACT_RESULTS = ("reached", "no_answer", "declined", "busy")
RESPONDER_KINDS = ("ambulance", "care_worker", "family", "property_manager", "police", "other")
PRIORITIES = (1, 2, 3, 4)
# P1 (life-threatening) and P2 calls tell the resident's family that a call exists.
FAMILY_NOTIFY_PRIORITIES = frozenset({1, 2})

STAFF_ROLES = frozenset({"admin", "supervisor", "operator"})
SUPERVISOR_ROLES = frozenset({"admin", "supervisor"})

# action -> (statuses it may start from, status it leads to; None = unchanged)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "claim": ((QUEUED,), CLAIMED),
    "release": (HELD_STATUSES, QUEUED),
    "start": ((CLAIMED,), IN_PROGRESS),
    "resolve": (HELD_STATUSES, RESOLVED),
    "reopen": ((RESOLVED,), QUEUED),
    "note": (STATUSES, None),
    "contact_attempt": (HELD_STATUSES, None),
    "dispatch": (HELD_STATUSES, None),
    "arrived": ((*HELD_STATUSES, RESOLVED), None),
    # system actions
    "escalate": ((QUEUED,), None),
    "claim_timeout": ((CLAIMED,), QUEUED),
}
# Actions only the operator holding the call may take (supervisors/admins may step in on any call).
HOLDER_ACTIONS = frozenset({"release", "start", "resolve", "contact_attempt", "dispatch", "arrived"})
SYSTEM_ACTIONS = frozenset({"escalate", "claim_timeout"})


class InvalidTransition(Exception):
    """The action is not allowed from the call's current status (HTTP 422)."""


class Forbidden(Exception):
    """The role may not take this action at all (HTTP 403)."""


class HeldByOther(Exception):
    """Another operator holds the call (HTTP 409)."""


def next_status(status: str, action: str) -> str:
    """The status after ``action``, or InvalidTransition."""
    if action not in TRANSITIONS:
        raise InvalidTransition(f"unknown action {action!r}")
    sources, target = TRANSITIONS[action]
    if status not in sources:
        allowed = ", ".join(sources)
        raise InvalidTransition(
            f"cannot {action.replace('_', ' ')} a {status} call (allowed from: {allowed})"
        )
    return status if target is None else target


def check_actor(action: str, *, role: str, actor_id: int, status: str, holder_id: int | None) -> None:
    """Who may act: staff only; reopen is for supervisors; a held call belongs to its holder."""
    if action in SYSTEM_ACTIONS:
        raise Forbidden(f"{action} is done by the system only")
    if role not in STAFF_ROLES:
        raise Forbidden(f"the {role} role may not change calls")
    if action == "reopen" and role not in SUPERVISOR_ROLES:
        raise Forbidden("only a supervisor or admin may reopen a resolved call")
    if action == "claim" and status in HELD_STATUSES and holder_id != actor_id:
        raise HeldByOther("the call is already claimed by another operator")
    if (
        action in HOLDER_ACTIONS
        and status in HELD_STATUSES
        and holder_id is not None
        and holder_id != actor_id
        and role not in SUPERVISOR_ROLES
    ):
        raise HeldByOther("the call is held by another operator")


def validate_outcome(outcome: str) -> str:
    if outcome not in OUTCOMES:
        raise InvalidTransition(f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
    return outcome


def more_urgent(new: int, current: int) -> bool:
    """P1 is the most urgent: a smaller number wins."""
    return new < current


@dataclass(frozen=True)
class Escalation:
    level: int
    escalated_at: datetime
    next_at: datetime


def escalation_step(
    *, status: str, level: int, next_escalation_at: datetime | None, now: datetime, repeat_s: int
) -> Escalation | None:
    """The next escalation step if one is due: only queued (unclaimed) calls escalate, once per repeat."""
    if status != QUEUED or next_escalation_at is None or now < next_escalation_at:
        return None
    return Escalation(level=level + 1, escalated_at=now, next_at=now + timedelta(seconds=repeat_s))


def claim_expired(*, status: str, last_action_at: datetime | None, now: datetime, timeout_s: int) -> bool:
    """A claim with no action for ``timeout_s`` goes back to the queue (in-progress calls stay held)."""
    if status != CLAIMED or last_action_at is None:
        return False
    return now - last_action_at >= timedelta(seconds=timeout_s)


def wearer_cancel_title(title: str) -> str:
    prefix = "Cancelled by wearer: courtesy call-back"
    return title if title.startswith(prefix) else f"{prefix} ({title})"
