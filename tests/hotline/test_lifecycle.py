"""The pure state machine: every action from every status, who may act, escalation and claim timeout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hotline import lifecycle as lc

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

VALID = {
    ("queued", "claim"): "claimed",
    ("claimed", "release"): "queued",
    ("in_progress", "release"): "queued",
    ("claimed", "start"): "in_progress",
    ("claimed", "resolve"): "resolved",
    ("in_progress", "resolve"): "resolved",
    ("resolved", "reopen"): "queued",
    ("queued", "note"): "queued",
    ("claimed", "note"): "claimed",
    ("in_progress", "note"): "in_progress",
    ("resolved", "note"): "resolved",
    ("claimed", "contact_attempt"): "claimed",
    ("in_progress", "contact_attempt"): "in_progress",
    ("claimed", "dispatch"): "claimed",
    ("in_progress", "dispatch"): "in_progress",
    ("claimed", "arrived"): "claimed",
    ("in_progress", "arrived"): "in_progress",
    ("resolved", "arrived"): "resolved",
    ("queued", "escalate"): "queued",
    ("claimed", "claim_timeout"): "queued",
}
ALL = [(s, a) for s in lc.STATUSES for a in lc.TRANSITIONS]


@pytest.mark.parametrize(("status", "action"), [k for k in ALL if k in VALID])
def test_valid_transitions(status, action):
    assert lc.next_status(status, action) == VALID[(status, action)]


@pytest.mark.parametrize(("status", "action"), [k for k in ALL if k not in VALID])
def test_every_other_transition_is_invalid(status, action):
    with pytest.raises(lc.InvalidTransition):
        lc.next_status(status, action)


def test_table_covers_every_status_action_pair():
    assert len(ALL) == len(lc.STATUSES) * len(lc.TRANSITIONS) == 44
    assert sum(1 for k in ALL if k not in VALID) == 24


def test_unknown_action_is_invalid():
    with pytest.raises(lc.InvalidTransition):
        lc.next_status("queued", "teleport")


def test_outcomes():
    for outcome in (
        "genuine_emergency",
        "resident_ok",
        "false_alarm",
        "no_answer_help_sent",
        "technical_fault",
        "cancelled_by_wearer",
    ):
        assert lc.validate_outcome(outcome) == outcome
    with pytest.raises(lc.InvalidTransition):
        lc.validate_outcome("dispatched")


def test_family_may_not_act_and_only_supervisors_reopen():
    with pytest.raises(lc.Forbidden):
        lc.check_actor("note", role="family", actor_id=1, status="queued", holder_id=None)
    with pytest.raises(lc.Forbidden):
        lc.check_actor("reopen", role="operator", actor_id=1, status="resolved", holder_id=None)
    lc.check_actor("reopen", role="supervisor", actor_id=1, status="resolved", holder_id=None)
    lc.check_actor("reopen", role="admin", actor_id=1, status="resolved", holder_id=None)
    with pytest.raises(lc.Forbidden):
        lc.check_actor("escalate", role="admin", actor_id=1, status="queued", holder_id=None)


def test_a_held_call_belongs_to_its_holder():
    with pytest.raises(lc.HeldByOther):
        lc.check_actor("claim", role="supervisor", actor_id=2, status="claimed", holder_id=1)
    with pytest.raises(lc.HeldByOther):
        lc.check_actor("resolve", role="operator", actor_id=2, status="in_progress", holder_id=1)
    lc.check_actor("resolve", role="operator", actor_id=1, status="in_progress", holder_id=1)
    lc.check_actor("resolve", role="supervisor", actor_id=2, status="in_progress", holder_id=1)  # step in
    lc.check_actor("note", role="operator", actor_id=2, status="claimed", holder_id=1)  # notes by anyone


def test_escalation_steps_repeat_and_stop_once_claimed():
    first = lc.escalation_step(status="queued", level=0, next_escalation_at=T0, now=T0, repeat_s=60)
    assert first == lc.Escalation(1, T0, T0 + timedelta(seconds=60))
    assert (
        lc.escalation_step(
            status="queued",
            level=1,
            next_escalation_at=first.next_at,
            now=T0 + timedelta(seconds=59),
            repeat_s=60,
        )
        is None
    )
    again = lc.escalation_step(
        status="queued",
        level=1,
        next_escalation_at=first.next_at,
        now=T0 + timedelta(seconds=61),
        repeat_s=60,
    )
    assert again is not None and again.level == 2
    assert lc.escalation_step(status="claimed", level=2, next_escalation_at=T0, now=T0, repeat_s=60) is None
    assert lc.escalation_step(status="queued", level=0, next_escalation_at=None, now=T0, repeat_s=60) is None


def test_claim_expiry():
    later = T0 + timedelta(seconds=300)
    assert lc.claim_expired(status="claimed", last_action_at=T0, now=later, timeout_s=300)
    assert not lc.claim_expired(
        status="claimed", last_action_at=T0, now=later - timedelta(seconds=1), timeout_s=300
    )
    assert not lc.claim_expired(status="in_progress", last_action_at=T0, now=later, timeout_s=300)


def test_priority_and_cancel_title():
    assert lc.more_urgent(1, 2) and not lc.more_urgent(3, 3) and not lc.more_urgent(4, 1)
    title = lc.wearer_cancel_title("Fall detected")
    assert title.startswith("Cancelled by wearer: courtesy call-back") and "Fall detected" in title
    assert lc.wearer_cancel_title(title) == title
