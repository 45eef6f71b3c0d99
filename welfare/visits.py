"""Welfare visit tiers, due dates, overdue flags and visit rates. Pure: plain values in and out.

Policy: everyone living alone, with a disability or in hardship is visited at least monthly (target
100 %); the high-risk (dementia, a P1 call or repeated low-activity alerts in the last 30 days) weekly.
Disability and hardship are read from ``care_notes`` keys of those names (no registry columns exist).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

WEEKLY, MONTHLY = "weekly", "monthly"
TIERS = (WEEKLY, MONTHLY)
INTERVAL = {WEEKLY: timedelta(days=7), MONTHLY: timedelta(days=30)}
# A due visit becomes overdue after this grace.
GRACE = {WEEKLY: timedelta(days=1), MONTHLY: timedelta(days=3)}
HISTORY = timedelta(days=30)
REPEATED_LOW_ACTIVITY = 2


@dataclass(frozen=True)
class RiskFacts:
    lives_alone: bool
    dementia: bool
    care_notes: Mapping[str, Any]
    p1_calls_30d: int
    inactivity_alerts_30d: int


def tier(f: RiskFacts) -> str | None:
    """The visit tier, or None for residents outside the visit programme."""
    if f.dementia or f.p1_calls_30d > 0 or f.inactivity_alerts_30d >= REPEATED_LOW_ACTIVITY:
        return WEEKLY
    if f.lives_alone or _flag(f.care_notes.get("disability")) or _flag(f.care_notes.get("hardship")):
        return MONTHLY
    return None


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "no", "none", "false")
    return bool(value)


def next_due(tier_name: str, last_visit: datetime | None, now: datetime) -> datetime:
    """Due one interval after the last visit; never visited: due now."""
    return now if last_visit is None else last_visit + INTERVAL[tier_name]


def should_schedule(
    tier_name: str | None, last_visit: datetime | None, has_pending: bool, now: datetime
) -> bool:
    """Schedule when the resident has a tier, nothing pending, and the next visit falls due within a day."""
    if tier_name is None or has_pending:
        return False
    return next_due(tier_name, last_visit, now) <= now + timedelta(days=1)


def is_overdue(tier_name: str, due_at: datetime, status: str, now: datetime) -> bool:
    return status == "due" and now > due_at + GRACE[tier_name]


@dataclass(frozen=True)
class Covered:
    district: str
    tier: str
    visited: bool


def visit_rates(rows: Iterable[Covered]) -> list[dict[str, Any]]:
    """Share of residents of each (tier, district) visited in the period, plus an 'all' row per tier."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        for key in ((r.tier, r.district), (r.tier, "*")):
            counts[key][0] += 1
            counts[key][1] += int(r.visited)
    out = []
    for (t, d), (total, visited) in sorted(counts.items(), key=lambda kv: (TIERS.index(kv[0][0]), kv[0][1])):
        out.append(
            {
                "tier": t,
                "district": d,
                "residents": total,
                "visited": visited,
                "rate": round(visited / total, 4) if total else None,
            }
        )
    return out
