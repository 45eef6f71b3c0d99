"""The rescue timeline of a call, from alarm to hand-over. Pure: built from plain rows.

Steps come from the call (alarm, call opened, first claim, resolution) and its dispatches (sent,
arrived, hand-over). Staff also see who acted and the notes of the audit log; the family summary
leaves out internal notes, responder names and operators.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

HANDOVER_LABELS = {
    "hospital": "handed over to hospital",
    "family": "handed over to family",
    "resolved_at_home": "resolved at home",
    "other": "handed over",
}


def _step(kind: str, at: datetime | None, **extra: Any) -> dict[str, Any] | None:
    return None if at is None else {"kind": kind, "at": at, **extra}


def build(
    call: Mapping[str, Any],
    dispatches: Sequence[Mapping[str, Any]],
    log: Sequence[Mapping[str, Any]] = (),
    *,
    family: bool = False,
) -> dict[str, Any]:
    """Steps in time order and the headline durations (seconds from the alarm)."""
    steps: list[dict[str, Any] | None] = [
        _step("alarm", call["event_at"], reason=call["reason"]),
        _step("opened", call["created_at"], priority=call["priority"]),
        _step(
            "claimed",
            call.get("first_claimed_at"),
            **({} if family else {"by": call.get("first_claimed_by_name")}),
        ),
    ]
    for d in dispatches:
        who = {} if family else {"responder_name": d.get("responder_name") or "", "by": d.get("sent_by")}
        steps.append(_step("dispatched", d["sent_at"], responder_kind=d["responder_kind"], **who))
        steps.append(_step("arrived", d.get("arrived_at"), responder_kind=d["responder_kind"]))
        if d.get("handover"):
            steps.append(
                _step(
                    "handover",
                    d.get("handover_at") or d.get("arrived_at"),
                    handover=d["handover"],
                    label=HANDOVER_LABELS.get(str(d["handover"]), "handed over"),
                )
            )
    steps.append(_step("resolved", call.get("resolved_at"), outcome=call.get("outcome")))
    if not family:
        for entry in log:
            if entry["action"] == "note" and entry.get("note"):
                steps.append(
                    _step(
                        "note", entry["at"], note=entry["note"], by=entry["actor"], internal=entry["internal"]
                    )
                )
    ordered = sorted((s for s in steps if s is not None), key=lambda s: (s["at"], _ORDER.get(s["kind"], 9)))
    alarm = call["event_at"]

    def since(kind: str) -> float | None:
        first = next((s["at"] for s in ordered if s["kind"] == kind), None)
        return None if first is None else (first - alarm).total_seconds()

    handover = next((s for s in ordered if s["kind"] == "handover"), None)
    return {
        "call_id": call["id"],
        "resident_id": call["resident_id"],
        "priority": call["priority"],
        "status": call["status"],
        "steps": ordered,
        "durations_s": {
            "to_claim": since("claimed"),
            "to_dispatch": since("dispatched"),
            "to_arrival": since("arrived"),
            "to_handover": since("handover"),
            "to_resolved": since("resolved"),
        },
        "handover": handover["handover"] if handover else None,
    }


_ORDER = {"alarm": 0, "opened": 1, "claimed": 2, "dispatched": 3, "arrived": 4, "handover": 5, "resolved": 7}
