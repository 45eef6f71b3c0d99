"""Service requests and work orders: the state machine, overdue flags and queue rank. Pure, no I/O.

A request (from a device 'service' event or a phone call) is open until an operator assigns it to a
provider organisation; that makes a work order. The provider accepts (or declines: the request is open
again), names a worker, who checks in on arrival and checks out on completion; the resident or family
may then rate it once. Declined and cancelled orders are final; the request may be reassigned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

CATEGORIES = (
    "meal_delivery",
    "cleaning",
    "bathing",
    "hospital_escort",
    "repairs",
    "shopping",
    "chat",
    "other",
)

# request statuses
R_OPEN, R_ASSIGNED, R_DONE, R_CANCELLED = "open", "assigned", "done", "cancelled"
REQUEST_STATUSES = (R_OPEN, R_ASSIGNED, R_DONE, R_CANCELLED)

# order statuses
ASSIGNED = "assigned"
ACCEPTED = "accepted"
DECLINED = "declined"
WORKER_ASSIGNED = "worker_assigned"
CHECKED_IN = "checked_in"
COMPLETED = "completed"
CANCELLED = "cancelled"
ORDER_STATUSES = (ASSIGNED, ACCEPTED, DECLINED, WORKER_ASSIGNED, CHECKED_IN, COMPLETED, CANCELLED)
FINAL_ORDER_STATUSES = frozenset({DECLINED, COMPLETED, CANCELLED})

# action -> (order statuses it may start from, order status it leads to)
ORDER_TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "accept": ((ASSIGNED,), ACCEPTED),
    "decline": ((ASSIGNED,), DECLINED),
    "assign_worker": ((ACCEPTED, WORKER_ASSIGNED), WORKER_ASSIGNED),
    "check_in": ((WORKER_ASSIGNED,), CHECKED_IN),
    "check_out": ((CHECKED_IN,), COMPLETED),
    "cancel": ((ASSIGNED, ACCEPTED, WORKER_ASSIGNED), CANCELLED),
}
ORDER_ACTIONS = tuple(ORDER_TRANSITIONS)
# What the order's new status does to its request.
REQUEST_AFTER = {DECLINED: R_OPEN, CANCELLED: R_OPEN, COMPLETED: R_DONE}

STAFF_ROLES = frozenset({"admin", "supervisor", "operator"})
# Below every hotline priority (1..4): a service request never outranks an emergency.
SERVICE_RANK = 5


class InvalidTransition(Exception):
    """Not allowed from the current status (HTTP 422)."""


class Forbidden(Exception):
    """The role may not do this (HTTP 403)."""


def next_order_status(status: str, action: str) -> str:
    if action not in ORDER_TRANSITIONS:
        raise InvalidTransition(f"unknown action {action!r}; one of {', '.join(ORDER_ACTIONS)}")
    sources, target = ORDER_TRANSITIONS[action]
    if status not in sources:
        raise InvalidTransition(
            f"cannot {action.replace('_', ' ')} a {status} order (allowed from: {', '.join(sources)})"
        )
    return target


def check_order_action(action: str, *, role: str, worker_name: str | None) -> None:
    """Staff act for providers (their workers use operator accounts); a worker must be named."""
    if role not in STAFF_ROLES:
        raise Forbidden(f"the {role} role may not change work orders")
    if action == "assign_worker" and not (worker_name or "").strip():
        raise InvalidTransition("assign_worker needs a worker_name")


def can_assign(request_status: str) -> None:
    if request_status != R_OPEN:
        raise InvalidTransition(f"cannot assign a {request_status} request (it must be open)")


def can_cancel_request(request_status: str) -> None:
    if request_status not in (R_OPEN, R_ASSIGNED):
        raise InvalidTransition(f"cannot cancel a {request_status} request")


def check_rating(order_status: str, rating: int, already_rated: bool) -> None:
    if order_status != COMPLETED:
        raise InvalidTransition(f"only a completed order can be rated (this one is {order_status})")
    if already_rated:
        raise InvalidTransition("this order has already been rated")
    if not 1 <= rating <= 5:
        raise InvalidTransition("rating must be 1..5")


def validate_category(category: str) -> str:
    if category not in CATEGORIES:
        raise InvalidTransition(f"unknown category {category!r}; one of {', '.join(CATEGORIES)}")
    return category


@dataclass(frozen=True)
class OverdueRules:
    """A provider must accept within ``accept_within_s`` of assignment (and before the wanted time)."""

    accept_within_s: int = 2 * 3600


def order_overdue(
    *, status: str, wanted_at: datetime, assigned_at: datetime, now: datetime, rules: OverdueRules
) -> str | None:
    """'not_accepted' / 'not_started' when the provider is late, else None (supervisors see these)."""
    if status == ASSIGNED:
        deadline = min(assigned_at + timedelta(seconds=rules.accept_within_s), wanted_at)
        return "not_accepted" if now >= deadline else None
    if status in (ACCEPTED, WORKER_ASSIGNED):
        return "not_started" if now > wanted_at else None
    return None


def request_overdue(*, status: str, wanted_at: datetime, now: datetime) -> str | None:
    """An open request nobody assigned before its wanted time."""
    return "not_assigned" if status == R_OPEN and now > wanted_at else None


def queue_rank(kind: str, priority: int | None = None) -> int:
    """Rank in the shared queue: calls by priority (1..4), service requests always after them."""
    if kind == "call":
        assert priority is not None
        return priority
    return SERVICE_RANK
