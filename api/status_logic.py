"""Pure rules behind the resident status card and chart resolution (no I/O; ``now`` passed in)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Bucket = Literal["raw", "1m", "1h"]
Overall = Literal["ok", "attention", "emergency"]

RAW_MAX = timedelta(hours=2)  # auto: raw readings up to 2 hours
MINUTE_MAX = timedelta(days=2)  # auto: per-minute up to 2 days, hourly beyond
# Longest range each resolution may be asked for explicitly (bounds the rows a request can read).
LIMITS: dict[Bucket, timedelta] = {
    "raw": timedelta(days=1),
    "1m": timedelta(days=7),
    "1h": timedelta(days=800),
}
LOW_BATTERY = 20


def choose_bucket(start: datetime, end: datetime) -> Bucket:
    span = end - start
    if span <= RAW_MAX:
        return "raw"
    if span <= MINUTE_MAX:
        return "1m"
    return "1h"


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine), good to a few metres at geofence scale."""
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(min(1.0, a)))


@dataclass(frozen=True)
class Whereabouts:
    place: Literal["home", "away", "unknown"]
    how: Literal["geofence", "room", "none"]
    room: str | None = None
    distance_m: float | None = None


def whereabouts(
    *,
    home: tuple[float, float] | None,
    geofence_m: float,
    fix: tuple[datetime, float, float] | None,
    room: tuple[datetime, str] | None,
    now: datetime,
    fresh: timedelta = timedelta(minutes=30),
) -> Whereabouts:
    """Home or away from the latest position fix, or from a room sensor seeing the resident.

    The fresher signal wins; a signal older than ``fresh`` says nothing.
    """
    fix_ok = fix is not None and now - fix[0] <= fresh
    room_ok = room is not None and now - room[0] <= fresh
    if fix_ok and home is not None and fix is not None and (not room_ok or room is None or fix[0] >= room[0]):
        d = distance_m(home[0], home[1], fix[1], fix[2])
        return Whereabouts("home" if d <= geofence_m else "away", "geofence", None, round(d, 1))
    if room_ok and room is not None:
        return Whereabouts("home", "room", room[1])
    return Whereabouts("unknown", "none")


def overall(
    *,
    open_call_priorities: list[int],
    open_alerts: int,
    last_seen: datetime | None,
    now: datetime,
    stale_after: timedelta,
    worn: bool | None,
    battery: int | None,
) -> tuple[Overall, list[str]]:
    """A plain state for people: emergency (an open priority-1/2 call), attention, or ok; with reasons."""
    reasons: list[str] = []
    if any(p <= 2 for p in open_call_priorities):
        reasons.append("urgent call open")
        return "emergency", reasons
    if open_call_priorities:
        reasons.append("call open")
    if open_alerts:
        reasons.append(f"{open_alerts} open alert(s)")
    if last_seen is None:
        reasons.append("no readings yet")
    elif now - last_seen > stale_after:
        reasons.append("no recent readings")
    if worn is False:
        reasons.append("wristband not worn")
    if battery is not None and battery < LOW_BATTERY:
        reasons.append("battery low")
    return ("attention" if reasons else "ok"), reasons
