"""Answer-time figures: pure functions over plain rows, so each number can be checked by hand.

Time to claim = first_claimed_at - created_at; time to resolve = resolved_at - created_at. Percentiles are
linear-interpolated (PostgreSQL's percentile_cont). "Within target" counts a call claimed within its
priority's answer target, out of the calls that were claimed or whose target has already passed (a call
still waiting inside its target is not yet a miss). Days are UTC calendar days of created_at.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

ON_SITE_TARGET_S = 45 * 60


@dataclass(frozen=True)
class CallTimes:
    call_id: int
    priority: int
    created_at: datetime
    first_claimed_at: datetime | None
    first_claimed_by: str | None
    resolved_at: datetime | None


@dataclass(frozen=True)
class DispatchTimes:
    responder_kind: str
    sent_at: datetime
    arrived_at: datetime | None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _group(calls: Sequence[CallTimes], targets: Mapping[int, int], now: datetime) -> dict[str, Any]:
    claim = [(c.first_claimed_at - c.created_at).total_seconds() for c in calls if c.first_claimed_at]
    resolve = [(c.resolved_at - c.created_at).total_seconds() for c in calls if c.resolved_at]
    within = judged = 0
    for c in calls:
        target = timedelta(seconds=targets.get(c.priority, max(targets.values())))
        if c.first_claimed_at is not None:
            judged += 1
            within += c.first_claimed_at - c.created_at <= target
        elif now - c.created_at > target:
            judged += 1
    return {
        "calls": len(calls),
        "claimed": len(claim),
        "resolved": len(resolve),
        "claim_p50_s": percentile(claim, 0.5),
        "claim_p90_s": percentile(claim, 0.9),
        "within_target_share": within / judged if judged else None,
        "resolve_p50_s": percentile(resolve, 0.5),
        "resolve_p90_s": percentile(resolve, 0.9),
    }


def answer_times(
    calls: Iterable[CallTimes], dispatches: Iterable[DispatchTimes], targets: Mapping[int, int], now: datetime
) -> dict[str, Any]:
    """Per priority, per operator (who first claimed) and per day; and dispatch → arrival times."""
    rows = list(calls)
    by_priority = [
        {"priority": p, **_group([c for c in rows if c.priority == p], targets, now)}
        for p in sorted({c.priority for c in rows})
    ]
    operators = sorted({c.first_claimed_by for c in rows if c.first_claimed_by})
    by_operator = [
        {"operator": op, **_group([c for c in rows if c.first_claimed_by == op], targets, now)}
        for op in operators
    ]
    days = sorted({c.created_at.date() for c in rows})
    by_day = [
        {"day": d.isoformat(), **_group([c for c in rows if c.created_at.date() == d], targets, now)}
        for d in days
    ]
    sent = list(dispatches)
    arrival = [(d.arrived_at - d.sent_at).total_seconds() for d in sent if d.arrived_at]
    on_site = sum(a <= ON_SITE_TARGET_S for a in arrival)
    return {
        "overall": _group(rows, targets, now),
        "by_priority": by_priority,
        "by_operator": by_operator,
        "by_day": by_day,
        "dispatch": {
            "dispatches": len(sent),
            "arrived": len(arrival),
            "arrival_p50_s": percentile(arrival, 0.5),
            "arrival_p90_s": percentile(arrival, 0.9),
            "on_site_within_45min_share": on_site / len(sent) if sent else None,
        },
    }


CSV_FIELDS = (
    "group",
    "key",
    "calls",
    "claimed",
    "resolved",
    "claim_p50_s",
    "claim_p90_s",
    "within_target_share",
    "resolve_p50_s",
    "resolve_p90_s",
)


def to_csv(report: Mapping[str, Any]) -> str:
    """One row per group (overall, priority, operator, day) and a final dispatch row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)

    def emit(group: str, key: object, figures: Mapping[str, Any]) -> None:
        writer.writerow([group, key, *("" if figures[f] is None else figures[f] for f in CSV_FIELDS[2:])])

    emit("overall", "", report["overall"])
    for row in report["by_priority"]:
        emit("priority", row["priority"], row)
    for row in report["by_operator"]:
        emit("operator", row["operator"], row)
    for row in report["by_day"]:
        emit("day", row["day"], row)
    d = report["dispatch"]
    writer.writerow([])
    writer.writerow(
        ["dispatch", "dispatches", "arrived", "arrival_p50_s", "arrival_p90_s", "on_site_within_45min_share"]
    )
    writer.writerow(
        [
            "dispatch",
            *(
                "" if d[k] is None else d[k]
                for k in (
                    "dispatches",
                    "arrived",
                    "arrival_p50_s",
                    "arrival_p90_s",
                    "on_site_within_45min_share",
                )
            ),
        ]
    )
    return out.getvalue()
