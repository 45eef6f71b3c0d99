"""Incident types, what each should make CareWatch do, and the scenario file that schedules them.

An incident is requested as an :class:`IncidentSpec` (from a scenario file or ``--incident``) and, once
placed on a fleet and a start time, becomes an :class:`InjectedIncident`: the record tests compare the alerts
and calls against ("this alert, with this priority, for this resident, and nothing else").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from device_sim.fleet import Fleet, Resident

KINDS = (
    "fall",
    "sos",
    "cancel",
    "tachycardia",
    "bradycardia",
    "low_spo2",
    "no_motion",
    "long_bathroom",
    "geofence_exit_night",
    "wristband_removed",
    "device_silent",
    "low_battery",
    "connection_loss",
    "hostile",
)
HOSTILE_VARIANTS = (
    "bad_json",
    "not_object",
    "hr_900",
    "oversize",
    "wrong_topic",
    "future_ts",
    "device_mismatch",
    "schema",
)

# Default length of each incident (seconds): long enough to cross the alert rule's hold time.
DEFAULT_DURATION_S: dict[str, int] = {
    "fall": 0,
    "sos": 0,
    "cancel": 0,
    "hostile": 0,
    "tachycardia": 5 * 60,
    "bradycardia": 5 * 60,
    "low_spo2": 5 * 60,
    "no_motion": 5 * 3600,
    "long_bathroom": 60 * 60,
    "geofence_exit_night": 45 * 60,
    "wristband_removed": 90 * 60,
    "device_silent": 30 * 60,
    "low_battery": 2 * 3600,
    "connection_loss": 20 * 60,
}

# Which alert rule (alerts.rules.PRIORITY names) and priority each incident is meant to raise.
# None: the incident must raise nothing (hostile input is dead-lettered, not alerted on).
EXPECTED: dict[str, tuple[str | None, int | None]] = {
    "fall": ("fall", 1),
    "sos": ("sos", 1),
    "cancel": ("fall", 1),  # still a call, dropped to a P3 courtesy call-back by the wearer's cancel
    "tachycardia": ("hr", 2),
    "bradycardia": ("hr", 2),
    "low_spo2": ("spo2", 2),
    "no_motion": ("inactivity", 2),
    "long_bathroom": ("bathroom", 2),
    "geofence_exit_night": ("geofence", 2),  # P1 for residents with the dementia flag
    "wristband_removed": ("removed", 3),
    "device_silent": ("silence", 3),
    "low_battery": ("battery", 4),
    "connection_loss": ("silence", 3),  # only if longer than 3 report intervals
    "hostile": (None, None),
}


@dataclass(frozen=True)
class IncidentSpec:
    """What a scenario asks for; ``at`` is unresolved (offset, local clock time or absolute)."""

    kind: str
    resident: str | int = 0
    at: str | int | float = 0
    duration_s: int | None = None
    device: str | None = None  # 'wristband' (default) or a room name, for device_silent/connection_loss/fall
    variant: str | None = None  # hostile: one of HOSTILE_VARIANTS (default: all of them)
    with_fall: bool = False  # connection_loss: a fall happens while offline and arrives late
    delay_s: int = 20  # cancel: seconds between the fall and the wearer's cancel


@dataclass(frozen=True)
class InjectedIncident:
    """One incident placed in time: what tests check the alerts and calls against."""

    kind: str
    resident_key: str
    resident_id: int | None
    device_id: str
    at: datetime
    until: datetime
    expected_rule: str | None
    expected_priority: int | None
    late: bool = False
    wearer_cancelled: bool = False
    variant: str | None = None
    also: tuple[tuple[str, int], ...] = ()  # further alerts it causes, e.g. a long outage is also silence
    spec: IncidentSpec = field(default_factory=lambda: IncidentSpec("fall"), repr=False, compare=False)

    @property
    def expected_alerts(self) -> tuple[tuple[str, int], ...]:
        """Every (rule, priority) this incident should raise for its resident."""
        first = ((self.expected_rule, self.expected_priority),) if self.expected_rule else ()
        return tuple((r, p) for r, p in first if p is not None) + self.also


@dataclass(frozen=True)
class Scenario:
    incidents: tuple[IncidentSpec, ...] = ()
    residents: int | None = None
    seed: int | None = None
    speed: float | None = None
    duration_s: int | None = None
    start: datetime | None = None


_DURATION_RE = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*$")


def parse_duration(value: str | int | float) -> int:
    """'90m', '1h30m', '2d', '45s' or a number of seconds."""
    if isinstance(value, int | float):
        return int(value)
    text = value.strip()
    if text.isdigit():
        return int(text)
    match = _DURATION_RE.match(text)
    if not match or not any(match.groups()):
        raise ValueError(f"not a duration: {value!r} (use e.g. 90m, 1h30m, 2d, 45s)")
    d, h, m, s = (int(g) if g else 0 for g in match.groups())
    return ((d * 24 + h) * 60 + m) * 60 + s


def resolve_at(at: str | int | float, start: datetime, timezone: str) -> datetime:
    """Offsets ('+2h', 3600) count from the run start; 'HH:MM' is the resident's next local clock time at or
    after start ('d1 HH:MM' the day after); anything else must be RFC 3339 with an offset."""
    if isinstance(at, int | float):
        return start + timedelta(seconds=at)
    text = at.strip()
    if text.startswith("+"):
        return start + timedelta(seconds=parse_duration(text[1:]))
    clock = re.match(r"^(?:d(\d+)\s+)?(\d{1,2}):(\d{2})$", text)
    if clock:
        days, hh, mm = int(clock.group(1) or 0), int(clock.group(2)), int(clock.group(3))
        zone = ZoneInfo(timezone)
        local_start = start.astimezone(zone)
        candidate = datetime.combine(local_start.date(), time(hh, mm), zone)
        if candidate < local_start:
            candidate += timedelta(days=1)
        return (candidate + timedelta(days=days)).astimezone(UTC)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"incident time {at!r} needs a UTC offset")
    return parsed.astimezone(UTC)


def spec_from_dict(raw: dict[str, Any]) -> IncidentSpec:
    known = {"kind", "resident", "at", "duration", "device", "variant", "with_fall", "delay"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown incident field(s): {', '.join(sorted(unknown))}")
    kind = str(raw.get("kind", ""))
    if kind not in KINDS:
        raise ValueError(f"unknown incident kind {kind!r}; one of: {', '.join(KINDS)}")
    variant = raw.get("variant")
    if variant is not None and variant not in HOSTILE_VARIANTS:
        raise ValueError(f"unknown hostile variant {variant!r}; one of: {', '.join(HOSTILE_VARIANTS)}")
    duration = raw.get("duration")
    return IncidentSpec(
        kind=kind,
        resident=raw.get("resident", 0),
        at=raw.get("at", 0),
        duration_s=parse_duration(duration) if duration is not None else None,
        device=raw.get("device"),
        variant=variant,
        with_fall=bool(raw.get("with_fall", False)),
        delay_s=parse_duration(raw.get("delay", 20)),
    )


def parse_incident_arg(text: str) -> IncidentSpec:
    """Command line form ``KIND[:RESIDENT[:AT[:DURATION]]]``.

    E.g. ``fall:r003:+10m`` or ``no_motion:2:09:00:5h``.
    """
    kind, _, rest = text.partition(":")
    raw: dict[str, Any] = {"kind": kind}
    if rest:
        resident, _, rest = rest.partition(":")
        raw["resident"] = resident
        if rest:
            # AT may itself be HH:MM: a trailing ':<duration>' is only split off when it parses as one
            at, sep, maybe_duration = rest.rpartition(":")
            if sep and at and not re.match(r"^(?:d\d+\s+)?\d{1,2}$", at):
                raw["at"], raw["duration"] = at, maybe_duration
            else:
                raw["at"] = rest
    return spec_from_dict(raw)


def parse_scenario(data: dict[str, Any]) -> Scenario:
    known = {"residents", "seed", "speed", "duration", "start", "incidents"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown scenario field(s): {', '.join(sorted(unknown))}")
    start = data.get("start")
    if isinstance(start, str):
        start_dt: datetime | None = datetime.fromisoformat(start)
    elif isinstance(start, datetime):
        start_dt = start
    else:
        start_dt = None
    if start_dt is not None:
        if start_dt.tzinfo is None:
            raise ValueError("scenario start needs a UTC offset")
        start_dt = start_dt.astimezone(UTC)
    return Scenario(
        incidents=tuple(spec_from_dict(i) for i in data.get("incidents") or ()),
        residents=int(data["residents"]) if "residents" in data else None,
        seed=int(data["seed"]) if "seed" in data else None,
        speed=float(data["speed"]) if "speed" in data else None,
        duration_s=parse_duration(data["duration"]) if "duration" in data else None,
        start=start_dt,
    )


def load_scenario(path: Path) -> Scenario:
    """YAML or JSON (JSON is YAML); see docs/simulator.md for the format."""
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a scenario is a mapping with an 'incidents' list")
    return parse_scenario(data)


def _device_for(spec: IncidentSpec, res: Resident) -> str:
    if spec.device in (None, "wristband"):
        return res.wristband.id
    sensor = res.sensor(spec.device)
    if sensor is None:
        raise ValueError(f"resident {res.key} has no device {spec.device!r}")
    return sensor.id


def _is_night(at: datetime, timezone: str) -> bool:
    local = at.astimezone(ZoneInfo(timezone)).time()
    return local >= time(22, 0) or local < time(6, 0)


def place(
    fleet: Fleet, specs: list[IncidentSpec] | tuple[IncidentSpec, ...], start: datetime
) -> list[InjectedIncident]:
    """Resolve specs against the fleet and the run start, in time order."""
    placed = []
    for spec in specs:
        res = fleet.resident(spec.resident)
        at = resolve_at(spec.at, start, res.timezone)
        duration = spec.duration_s if spec.duration_s is not None else DEFAULT_DURATION_S[spec.kind]
        rule, priority = EXPECTED[spec.kind]
        device_id = _device_for(spec, res)
        late = False
        also: tuple[tuple[str, int], ...] = ()
        if spec.kind == "geofence_exit_night":
            priority = 1 if res.dementia and _is_night(at, res.timezone) else 2
        if spec.kind == "connection_loss":
            _, dev = fleet.device(device_id)
            silent = duration > 3 * dev.report_interval_s
            if spec.with_fall:
                rule, priority, late = "fall", 1, True
                also = (("silence", 3),) if silent else ()
            elif not silent:
                rule, priority = None, None
        placed.append(
            InjectedIncident(
                kind=spec.kind,
                resident_key=res.key,
                resident_id=res.db_id,
                device_id=device_id,
                at=at,
                until=at + timedelta(seconds=duration),
                expected_rule=rule,
                expected_priority=priority,
                late=late,
                wearer_cancelled=spec.kind == "cancel",
                variant=spec.variant,
                also=also,
                spec=spec,
            )
        )
    placed.sort(key=lambda i: (i.at, i.device_id))
    return placed


def one_of_each(fleet: Fleet) -> list[IncidentSpec]:
    """Every incident kind once, on different residents, at local times where each makes sense; used by the
    seeded one-day test and the demo (needs >= 14 residents)."""
    if len(fleet.residents) < len(KINDS):
        raise ValueError(f"one_of_each needs at least {len(KINDS)} residents")
    plan: list[tuple[str, str, dict[str, Any]]] = [
        ("fall", "10:20", {}),
        ("sos", "16:05", {}),
        ("cancel", "11:10", {}),
        ("tachycardia", "14:40", {}),
        ("bradycardia", "03:10", {}),
        ("low_spo2", "23:30", {}),
        ("no_motion", "09:30", {"duration": "5h"}),
        ("long_bathroom", "10:50", {}),
        ("geofence_exit_night", "22:40", {}),
        ("wristband_removed", "09:10", {}),
        ("device_silent", "13:15", {"device": "kitchen"}),
        ("low_battery", "17:30", {}),
        ("connection_loss", "08:40", {"with_fall": True}),
        ("hostile", "12:30", {}),
    ]
    order = list(range(len(plan)))
    # the night geofence exit goes to a resident with dementia when there is one (the P1 case)
    geo = next(i for i, (kind, _at, _x) in enumerate(plan) if kind == "geofence_exit_night")
    dementia = next((i for i, r in enumerate(fleet.residents) if r.dementia), None)
    if dementia is not None and dementia < len(plan):
        order[geo], order[dementia] = order[dementia], order[geo]
    elif dementia is not None:
        order[geo] = dementia
    return [
        spec_from_dict({"kind": kind, "resident": fleet.residents[order[i]].key, "at": at, **extra})
        for i, (kind, at, extra) in enumerate(plan)
    ]
