"""The work-order state machine, overdue flags and queue rank, on plain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from welfare import lifecycle as lc

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
RULES = lc.OverdueRules(accept_within_s=3600)


def test_happy_path_reaches_completed() -> None:
    status = lc.ASSIGNED
    for action, expected in [
        ("accept", lc.ACCEPTED),
        ("assign_worker", lc.WORKER_ASSIGNED),
        ("assign_worker", lc.WORKER_ASSIGNED),  # the provider may swap the worker before arrival
        ("check_in", lc.CHECKED_IN),
        ("check_out", lc.COMPLETED),
    ]:
        status = lc.next_order_status(status, action)
        assert status == expected
    assert lc.REQUEST_AFTER[status] == lc.R_DONE


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (lc.ASSIGNED, "check_in"),
        (lc.ASSIGNED, "assign_worker"),
        (lc.ACCEPTED, "check_in"),
        (lc.ACCEPTED, "accept"),
        (lc.WORKER_ASSIGNED, "check_out"),
        (lc.WORKER_ASSIGNED, "decline"),
        (lc.CHECKED_IN, "cancel"),
        (lc.CHECKED_IN, "accept"),
        (lc.COMPLETED, "cancel"),
        (lc.COMPLETED, "check_out"),
        (lc.DECLINED, "accept"),
        (lc.CANCELLED, "accept"),
    ],
)
def test_invalid_transitions(status: str, action: str) -> None:
    with pytest.raises(lc.InvalidTransition, match=f"a {status} order"):
        lc.next_order_status(status, action)


def test_unknown_action() -> None:
    with pytest.raises(lc.InvalidTransition, match="unknown action"):
        lc.next_order_status(lc.ASSIGNED, "teleport")


def test_decline_and_cancel_reopen_the_request() -> None:
    assert lc.REQUEST_AFTER[lc.next_order_status(lc.ASSIGNED, "decline")] == lc.R_OPEN
    assert lc.REQUEST_AFTER[lc.next_order_status(lc.WORKER_ASSIGNED, "cancel")] == lc.R_OPEN


def test_who_may_act() -> None:
    lc.check_order_action("accept", role="operator", worker_name=None)
    with pytest.raises(lc.Forbidden):
        lc.check_order_action("accept", role="family", worker_name=None)
    with pytest.raises(lc.InvalidTransition, match="worker_name"):
        lc.check_order_action("assign_worker", role="operator", worker_name="  ")


def test_requests_assign_and_cancel_only_when_allowed() -> None:
    lc.can_assign(lc.R_OPEN)
    for st in (lc.R_ASSIGNED, lc.R_DONE, lc.R_CANCELLED):
        with pytest.raises(lc.InvalidTransition):
            lc.can_assign(st)
    lc.can_cancel_request(lc.R_ASSIGNED)
    with pytest.raises(lc.InvalidTransition):
        lc.can_cancel_request(lc.R_DONE)
    with pytest.raises(lc.InvalidTransition):
        lc.validate_category("massage")


def test_rating_only_once_and_only_completed() -> None:
    lc.check_rating(lc.COMPLETED, 5, False)
    with pytest.raises(lc.InvalidTransition, match="completed"):
        lc.check_rating(lc.CHECKED_IN, 5, False)
    with pytest.raises(lc.InvalidTransition, match="already"):
        lc.check_rating(lc.COMPLETED, 4, True)
    with pytest.raises(lc.InvalidTransition):
        lc.check_rating(lc.COMPLETED, 6, False)


def test_not_accepted_after_the_accept_window() -> None:
    wanted = T0 + timedelta(hours=5)
    kw = {"status": lc.ASSIGNED, "wanted_at": wanted, "assigned_at": T0, "rules": RULES}
    assert lc.order_overdue(now=T0 + timedelta(minutes=59), **kw) is None  # type: ignore[arg-type]
    assert lc.order_overdue(now=T0 + timedelta(minutes=60), **kw) == "not_accepted"  # type: ignore[arg-type]


def test_not_accepted_by_the_wanted_time_when_that_comes_first() -> None:
    wanted = T0 + timedelta(minutes=30)
    kw = {"status": lc.ASSIGNED, "wanted_at": wanted, "assigned_at": T0, "rules": RULES}
    assert lc.order_overdue(now=T0 + timedelta(minutes=29), **kw) is None  # type: ignore[arg-type]
    assert lc.order_overdue(now=wanted, **kw) == "not_accepted"  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [lc.ACCEPTED, lc.WORKER_ASSIGNED])
def test_not_started_by_the_wanted_time(status: str) -> None:
    wanted = T0 + timedelta(hours=2)
    kw = {"status": status, "wanted_at": wanted, "assigned_at": T0, "rules": RULES}
    assert lc.order_overdue(now=wanted, **kw) is None  # type: ignore[arg-type]
    assert lc.order_overdue(now=wanted + timedelta(seconds=1), **kw) == "not_started"  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [lc.CHECKED_IN, lc.COMPLETED, lc.DECLINED, lc.CANCELLED])
def test_started_or_closed_orders_are_never_overdue(status: str) -> None:
    assert (
        lc.order_overdue(status=status, wanted_at=T0, assigned_at=T0, now=T0 + timedelta(days=3), rules=RULES)
        is None
    )


def test_unassigned_request_overdue_after_wanted_time() -> None:
    assert lc.request_overdue(status=lc.R_OPEN, wanted_at=T0, now=T0) is None
    assert lc.request_overdue(status=lc.R_OPEN, wanted_at=T0, now=T0 + timedelta(seconds=1)) == "not_assigned"
    assert lc.request_overdue(status=lc.R_ASSIGNED, wanted_at=T0, now=T0 + timedelta(days=1)) is None


def test_service_never_outranks_an_emergency() -> None:
    items = [("service", None), ("call", 4), ("call", 1), ("service", None), ("call", 3)]
    ranked = sorted(items, key=lambda i: lc.queue_rank(i[0], i[1]))
    assert [k for k, _ in ranked] == ["call", "call", "call", "service", "service"]
    assert all(lc.queue_rank("service") > lc.queue_rank("call", p) for p in (1, 2, 3, 4))
