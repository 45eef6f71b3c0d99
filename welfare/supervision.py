"""Supervision figures for the authority: per day and district, answer times against targets, providers.

Pure: takes plain rows and returns plain dicts, so every figure is checked against hand-computed
fixtures. Days are calendar days in the supervisor's time zone (``tz``).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class CallRow:
    created_at: datetime
    district: str
    priority: int
    first_claimed_at: datetime | None


@dataclass(frozen=True)
class OrderRow:
    assigned_at: datetime
    district: str
    org: str
    status: str
    wanted_at: datetime
    checked_in_at: datetime | None
    rating: int | None


@dataclass(frozen=True)
class VisitRow:
    visited_at: datetime
    district: str


DAILY_FIELDS = ("day", "district", "calls", "calls_in_target", "service_orders", "visits")
PROVIDER_FIELDS = (
    "org",
    "orders",
    "completed",
    "declined",
    "cancelled",
    "on_time",
    "on_time_rate",
    "avg_rating",
)


def _day(ts: datetime, tz: ZoneInfo) -> date:
    return ts.astimezone(tz).date()


def in_target(c: CallRow, targets: Mapping[int, int]) -> bool:
    if c.first_claimed_at is None:
        return False
    target = targets.get(c.priority, max(targets.values()))
    return (c.first_claimed_at - c.created_at).total_seconds() <= target


def figures(
    calls: Iterable[CallRow],
    orders: Iterable[OrderRow],
    visits: Iterable[VisitRow],
    *,
    targets: Mapping[int, int],
    tz: str = "UTC",
) -> dict[str, Any]:
    zone = ZoneInfo(tz)
    calls, orders, visits = list(calls), list(orders), list(visits)
    daily: dict[tuple[date, str], dict[str, int]] = defaultdict(
        lambda: {"calls": 0, "calls_in_target": 0, "service_orders": 0, "visits": 0}
    )
    for c in calls:
        cell = daily[(_day(c.created_at, zone), c.district)]
        cell["calls"] += 1
        cell["calls_in_target"] += int(in_target(c, targets))
    for o in orders:
        daily[(_day(o.assigned_at, zone), o.district)]["service_orders"] += 1
    for v in visits:
        daily[(_day(v.visited_at, zone), v.district)]["visits"] += 1

    answer = []
    for p in sorted({c.priority for c in calls}):
        mine = [c for c in calls if c.priority == p]
        waits = [(c.first_claimed_at - c.created_at).total_seconds() for c in mine if c.first_claimed_at]
        ok = sum(in_target(c, targets) for c in mine)
        answer.append(
            {
                "priority": p,
                "target_s": targets.get(p, max(targets.values())),
                "calls": len(mine),
                "answered": len(waits),
                "in_target": ok,
                "in_target_rate": round(ok / len(mine), 4),
                "median_answer_s": statistics.median(waits) if waits else None,
            }
        )

    providers = []
    by_org: dict[str, list[OrderRow]] = defaultdict(list)
    for o in orders:
        by_org[o.org].append(o)
    for org, rows in sorted(by_org.items()):
        done = [o for o in rows if o.status == "completed"]
        on_time = sum(1 for o in done if o.checked_in_at is not None and o.checked_in_at <= o.wanted_at)
        ratings = [o.rating for o in rows if o.rating is not None]
        providers.append(
            {
                "org": org,
                "orders": len(rows),
                "completed": len(done),
                "declined": sum(o.status == "declined" for o in rows),
                "cancelled": sum(o.status == "cancelled" for o in rows),
                "on_time": on_time,
                "on_time_rate": round(on_time / len(done), 4) if done else None,
                "avg_rating": round(sum(ratings) / len(ratings), 2) if ratings else None,
            }
        )
    return {
        "daily": [{"day": d, "district": dist, **v} for (d, dist), v in sorted(daily.items())],
        "answer_times": answer,
        "providers": providers,
    }


def to_csv(rows: Iterable[Mapping[str, Any]], fields: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return out.getvalue()
