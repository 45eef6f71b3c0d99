"""An independent reading of the alert table (issue 4) over a simulator message stream, for tests.

It replays messages on event time per resident and says which (resident, rule, priority) the thresholds would
raise, so the seeded one-day test can assert "exactly the injected incidents, no false alarms". It also checks
every message against carewatch.contract.parse on the way. Kept deliberately simple and separate from
device_sim so that it is a second opinion, not the simulator grading itself.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from carewatch.contract import Accepted, Rejected, Sample, parse
from device_sim.fleet import Fleet, Resident
from device_sim.routine import Message

HR_HIGH, HR_LOW, SPO2_LOW, HOLD_S = 130, 40, 90, 60
NO_MOTION_S = 4 * 3600
BATHROOM_S = 45 * 60
REMOVED_S = 60 * 60
BATTERY_LOW = 15


@dataclass
class Replay:
    alerts: set[tuple[str, str, int]] = field(default_factory=set)
    rejected: list[tuple[Message, Rejected]] = field(default_factory=list)
    nonconforming: list[tuple[Message, Accepted | Rejected]] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    dlat = math.radians(lat2 - lat1)
    dlon = math.radians(lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2))
    return 6_371_000 * math.hypot(dlat, dlon)


def _night(at: datetime, zone: ZoneInfo) -> bool:
    local = at.astimezone(zone).time()
    return local >= time(22) or local < time(6)


def _held(points: list[tuple[datetime, bool]], interval_s: float = 0) -> float:
    """Longest run of True in a time-ordered (ts, flag) list, in seconds (a run's last point counts for
    ``interval_s``)."""
    best = 0.0
    run_start: datetime | None = None
    for ts, flag in points:
        if flag and run_start is None:
            run_start = ts
        elif not flag and run_start is not None:
            best = max(best, (ts - run_start).total_seconds())
            run_start = None
        if flag and run_start is not None:
            best = max(best, (ts - run_start).total_seconds() + interval_s)
    return best


def replay(fleet: Fleet, messages: Iterable[Message], *, start: datetime, end: datetime) -> Replay:
    out = Replay()
    by_dev = {d.id: (r, d) for r, d in fleet.devices()}
    samples: dict[str, list[Sample]] = defaultdict(list)  # device -> accepted samples
    arrivals: dict[str, list[datetime]] = defaultdict(list)
    for msg in messages:
        verdict = parse(msg.topic, msg.encode(), msg.at)
        if msg.expect is not None:
            if not isinstance(verdict, Rejected) or verdict.reason != msg.expect:
                out.nonconforming.append((msg, verdict))
            else:
                out.rejected.append((msg, verdict))
            continue
        ok = isinstance(verdict, Accepted) and verdict.kind == msg.kind and verdict.device_id == msg.device_id
        if not isinstance(verdict, Accepted) or not ok:
            out.nonconforming.append((msg, verdict))
            continue
        res, _dev = by_dev[msg.device_id]
        arrivals[msg.device_id].append(msg.at)
        if verdict.event is not None and verdict.event.type in ("fall", "sos"):
            out.alerts.add((res.key, verdict.event.type, 1))
        for s in verdict.samples:
            samples[msg.device_id].append(s)
    for res in fleet.residents:
        _resident_rules(res, samples, arrivals, start, end, out)
    return out


def _resident_rules(
    res: Resident,
    samples: dict[str, list[Sample]],
    arrivals: dict[str, list[datetime]],
    start: datetime,
    end: datetime,
    out: Replay,
) -> None:
    zone = ZoneInfo(res.timezone)
    key = res.key
    stats = out.stats
    wb = sorted(samples[res.wristband.id], key=lambda s: s.ts)
    worn_pts = [(s.ts, bool(s.worn)) for s in wb if s.worn is not None]
    vit = [s for s in wb if s.worn]
    hr = [(s.ts, s.hr) for s in vit if s.hr is not None]
    spo2 = [(s.ts, s.spo2) for s in vit if s.spo2 is not None]
    if _held([(t, v > HR_HIGH) for t, v in hr]) >= HOLD_S:
        out.alerts.add((key, "hr", 2))
    if _held([(t, v < HR_LOW) for t, v in hr]) >= HOLD_S:
        out.alerts.add((key, "hr", 2))
    if _held([(t, v < SPO2_LOW) for t, v in spo2]) >= HOLD_S:
        out.alerts.add((key, "spo2", 2))
    if hr:
        stats["hr_min"] = min(stats.get("hr_min", 999), min(v for _t, v in hr))
        stats["hr_max"] = max(stats.get("hr_max", 0), max(v for _t, v in hr))
    if spo2:
        stats["spo2_min"] = min(stats.get("spo2_min", 999), min(v for _t, v in spo2))
    if _held([(t, not w) for t, w in worn_pts]) >= REMOVED_S:
        out.alerts.add((key, "removed", 3))
    batteries = [s.battery for s in wb if s.battery is not None]
    if batteries:
        stats["battery_min"] = min(stats.get("battery_min", 100), min(batteries))
        if min(batteries) < BATTERY_LOW:
            out.alerts.add((key, "battery", 4))
    for s in wb:
        if s.location is None:
            continue
        # the fence is tighter at night (x0.5) and for residents with dementia (x0.75)
        night = _night(s.ts, zone)
        radius = res.geofence_m * (0.5 if night else 1.0) * (0.75 if res.dementia else 1.0)
        away = _distance_m(res.home_lat, res.home_lon, s.location.lat, s.location.lon)
        if away > radius:
            out.alerts.add((key, "geofence", 1 if night and res.dementia else 2))
        stats["outing_samples"] = stats.get("outing_samples", 0) + 1
    # motion on any of the resident's sensors, during waking hours 07:00-22:00 local
    motion = sorted(
        s.ts for dev in res.devices if dev.kind != "wristband" for s in samples[dev.id] if s.motion
    )
    if motion:
        day = motion[0].astimezone(zone).date()
        while day <= end.astimezone(zone).date():
            w0 = max(datetime.combine(day, time(7), zone), start)
            w1 = min(datetime.combine(day, time(22), zone), end)
            if w1 > w0:
                marks = [w0, *(t for t in motion if w0 <= t < w1), w1]
                gap = max((b - a).total_seconds() for a, b in itertools.pairwise(marks))
                stats["longest_waking_gap_s"] = max(stats.get("longest_waking_gap_s", 0), gap)
                if gap >= NO_MOTION_S:
                    out.alerts.add((key, "inactivity", 2))
            day += timedelta(days=1)
    bath = res.sensor("bathroom")
    if bath is not None:
        pts = sorted((s.ts, bool(s.presence or s.motion)) for s in samples[bath.id])
        stay = _held(pts, bath.report_interval_s)
        stats["longest_bathroom_s"] = max(stats.get("longest_bathroom_s", 0), stay)
        if stay >= BATHROOM_S:
            out.alerts.add((key, "bathroom", 2))
    for dev in res.devices:
        times = sorted(arrivals[dev.id])
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        if gaps and max(gaps) > 3 * dev.report_interval_s:
            out.alerts.add((key, "silence", 3))
