"""The alert rules: plain code over plain values, no I/O and no hidden clock.

A resident's whole rule state is one `ResidentState` (serialised to JSON in engine_state), so the engine can
lock one row, call `apply` for a message or `tick` for a timer, and write the state back in the same
transaction as the alerts it opened. Times inside the state are epoch seconds (floats) to keep the JSON small
and the replay fast.

Clocks: measured rules (vitals, geofence, bathroom, wristband removed) run on device EVENT time; absence
rules (silence, inactivity, and the timer side of bathroom/removed) compare event times with the `now` the
caller passes, because "nothing arrived" can only be noticed on the wall clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from alerts.models import Action, Cancel, Clear, DeviceInfo, Raise, ResidentInfo, Thresholds
from carewatch.contract import Accepted, Event, Kind, Sample, Status

PRIORITY = {
    "fall": 1,
    "sos": 1,
    "hr": 2,
    "spo2": 2,
    "inactivity": 2,
    "bathroom": 2,
    "geofence": 2,
    "removed": 3,
    "silence": 3,
    "battery": 4,
}
TITLES = {
    "fall": "Fall detected",
    "sos": "SOS button pressed",
    "hr": "Heart rate out of range",
    "spo2": "Blood oxygen low",
    "inactivity": "No movement at home: welfare check",
    "bathroom": "Bathroom occupied too long",
    "geofence": "Left home area",
    "removed": "Wristband removed",
    "silence": "Device silent",
    "battery": "Device battery low",
}
# Technical alerts clear themselves when the condition recovers; the others are closed by an operator.
TECHNICAL = frozenset({"removed", "silence", "battery"})
SENSOR_KINDS = frozenset({"ir_sensor", "presence_sensor"})
RECENT_EVENTS_KEPT = 64


@dataclass
class Held:
    """Debounce on raise and hysteresis on clear for one measured condition (event time)."""

    since: float | None = None
    active: bool = False
    recover_since: float | None = None
    last_ts: float | None = None


@dataclass
class DevState:
    last_seen: float  # wall clock of the last message (or first sight): the silence clock
    online: bool = True
    silent: bool = False
    worn_ts: float | None = None
    removed_since: float | None = None
    removed_alerted: bool = False
    battery_low: bool = False


@dataclass
class ResidentState:
    latest_ts: float | None = None
    devices: dict[str, DevState] = field(default_factory=dict)
    held: dict[str, Held] = field(default_factory=dict)
    last_motion: float | None = None
    inactivity_alerted: bool = False
    bathroom_since: float | None = None
    bathroom_alerted: bool = False
    recent: dict[str, list[Any]] = field(default_factory=dict)  # "device:seq" -> [ts, rule]
    ignored_cancels: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A new document holding only what differs from the defaults (from_json fills them back in): every
        telemetry batch writes back the state of every resident it touched, so the document's size is
        the engine's cost (encoding it, decoding it, and the database's WAL). By hand: dataclasses.asdict
        deep-copies recursively, and it alone was a fifth of the engine's CPU."""
        out = _changed(self, _RESIDENT_DEFAULTS)
        out.pop("devices", None)
        out.pop("held", None)
        if self.devices:
            out["devices"] = {k: _changed(v, _DEVICE_DEFAULTS) for k, v in self.devices.items()}
        if self.held:
            out["held"] = {k: _changed(v, _HELD_DEFAULTS) for k, v in self.held.items()}
        if self.recent:
            out["recent"] = {k: list(v) for k, v in self.recent.items()}
        if self.ignored_cancels:
            out["ignored_cancels"] = [dict(c) for c in self.ignored_cancels]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResidentState:
        if not data:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["devices"] = {k: DevState(**v) for k, v in data.get("devices", {}).items()}
        known["held"] = {k: Held(**v) for k, v in data.get("held", {}).items()}
        return cls(**known)


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


_RESIDENT_DEFAULTS = _defaults(ResidentState)
_DEVICE_DEFAULTS = _defaults(DevState)
_HELD_DEFAULTS = _defaults(Held)


def _changed(obj: object, defaults: dict[str, Any]) -> dict[str, Any]:
    """The fields of a state dataclass that are not at their default (a field without one always)."""
    return {k: v for k, v in vars(obj).items() if k not in defaults or v != defaults[k]}


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def _local_window(ts: float, tz: str, start_h: int, end_h: int) -> tuple[float, float]:
    """Today's [start, end) window in the resident's local time, as epoch seconds."""
    local = _dt(ts).astimezone(_zone(tz))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight + timedelta(hours=start_h)).timestamp(), (midnight + timedelta(hours=end_h)).timestamp()


def in_hours(ts: float, tz: str, start_h: int, end_h: int) -> bool:
    """Local hour-of-day window; wraps midnight when start > end (22–06)."""
    hour = _dt(ts).astimezone(_zone(tz)).hour
    if start_h <= end_h:
        return start_h <= hour < end_h
    return hour >= start_h or hour < end_h


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6371000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(min(1.0, math.sqrt(a)))


def held_step(h: Held, ts: float, breach: bool, recovered: bool, hold_s: float, clear_s: float) -> str | None:
    """Advance one measured condition by one reading; returns 'raise', 'clear' or None.

    Readings older than the last one are ignored (redelivery, out-of-order batches). Raising needs the breach
    held for `hold_s`; clearing needs the separate `recovered` condition held for `clear_s`, never merely
    the absence of the breach, so values hovering at the threshold do not flap.
    """
    if h.last_ts is not None and ts <= h.last_ts:
        return None
    h.last_ts = ts
    if breach:
        h.recover_since = None
        if h.active:
            return None
        if h.since is None:
            h.since = ts
        if ts - h.since >= hold_s:
            h.active, h.since = True, None
            return "raise"
        return None
    h.since = None
    if h.active and recovered:
        if h.recover_since is None:
            h.recover_since = ts
        if ts - h.recover_since >= clear_s:
            h.active, h.recover_since = False, None
            return "clear"
    elif h.active:
        h.recover_since = None
    return None


def new_state(info: ResidentInfo, now: datetime) -> ResidentState:
    state = ResidentState()
    reconcile(state, info, now)
    return state


def reconcile(state: ResidentState, info: ResidentInfo, now: datetime) -> None:
    """Follow registry changes: a new device starts its silence clock now; a removed one is forgotten."""
    n = now.timestamp()
    ids = {d.device_id for d in info.devices}
    for d in info.devices:
        if d.device_id not in state.devices:
            state.devices[d.device_id] = DevState(last_seen=n)
    for gone in [k for k in state.devices if k not in ids]:
        del state.devices[gone]
    if state.last_motion is None and any(d.kind in SENSOR_KINDS for d in info.devices):
        state.last_motion = n


def _raise(rule: str, ts: float, now: float, th: Thresholds, device: str | None, **details: Any) -> Raise:
    late = now - ts > th.late_after_s
    return Raise(rule, PRIORITY[rule], TITLES[rule], _dt(ts), late, device, details)


def apply(state: ResidentState, info: ResidentInfo, msg: Accepted, now: datetime) -> list[Action]:
    """Apply one accepted message from one of the resident's devices; returns what the engine must do."""
    dev = info.device(msg.device_id)
    if dev is None:
        return []
    reconcile(state, info, now)
    n = now.timestamp()
    ds = state.devices[dev.device_id]
    out: list[Action] = []
    if msg.kind is Kind.STATUS and msg.status is not None:
        _status(state, info, dev, ds, msg.status, n, out)
    else:
        ds.last_seen = max(ds.last_seen, n)
        ds.online = True
        _back_online(state, dev, ds, n, out)
        if msg.event is not None:
            _event(state, info, dev, ds, msg.event, n, out)
        for sample in sorted(msg.samples, key=lambda s: (s.ts, s.seq)):
            _sample(state, info, dev, ds, sample, n, out)
    return out


def _back_online(state: ResidentState, dev: DeviceInfo, ds: DevState, n: float, out: list[Action]) -> None:
    if ds.silent:
        ds.silent = False
        if not any(d.silent for d in state.devices.values()):
            out.append(Clear("silence", _dt(n), f"{dev.device_id} talking again"))


def _status(
    state: ResidentState,
    info: ResidentInfo,
    dev: DeviceInfo,
    ds: DevState,
    st: Status,
    n: float,
    out: list[Action],
) -> None:
    ts = st.ts.timestamp() if st.ts is not None else n
    if not st.online:
        # The broker published the Last Will: the device is gone now, no need to wait 3 intervals.
        ds.online = False
        if dev.kind == "wristband":
            _forget_pending(state)
        if not ds.silent:
            ds.silent = True
            out.append(_raise("silence", n, n, info.thresholds, dev.device_id, reason="last_will"))
        return
    ds.online = True
    ds.last_seen = max(ds.last_seen, n)
    _back_online(state, dev, ds, n, out)
    if st.battery is not None:
        _battery(state, info.thresholds, dev, ds, st.battery, ts, n, out)


def _battery(
    state: ResidentState,
    th: Thresholds,
    dev: DeviceInfo,
    ds: DevState,
    value: int,
    ts: float,
    n: float,
    out: list[Action],
) -> None:
    if value < th.battery_low and not ds.battery_low:
        ds.battery_low = True
        out.append(_raise("battery", ts, n, th, dev.device_id, battery=value))
    elif value >= th.battery_clear and ds.battery_low:
        ds.battery_low = False
        if not any(d.battery_low for d in state.devices.values()):
            out.append(Clear("battery", _dt(ts), f"{dev.device_id} at {value}%"))


def _worn(
    state: ResidentState, dev: DeviceInfo, ds: DevState, worn: bool, ts: float, out: list[Action]
) -> None:
    if ds.worn_ts is not None and ts < ds.worn_ts:
        return
    ds.worn_ts = ts
    if not worn:
        if ds.removed_since is None:
            ds.removed_since = ts
        return
    ds.removed_since = None
    if ds.removed_alerted:
        ds.removed_alerted = False
        if not any(d.removed_alerted for d in state.devices.values()):
            out.append(Clear("removed", _dt(ts), f"{dev.device_id} worn again"))


def _event(
    state: ResidentState,
    info: ResidentInfo,
    dev: DeviceInfo,
    ds: DevState,
    ev: Event,
    n: float,
    out: list[Action],
) -> None:
    th = info.thresholds
    ts = ev.ts.timestamp()
    state.latest_ts = max(state.latest_ts or ts, ts)
    if ev.type in ("fall", "sos"):
        details: dict[str, Any] = {"seq": ev.seq, "source": dev.kind}
        if ev.confidence is not None:
            details["confidence"] = ev.confidence
        if ev.room or dev.room:
            details["room"] = ev.room or dev.room
        if ev.location is not None:
            details["location"] = {"lat": ev.location.lat, "lon": ev.location.lon}
        state.recent[f"{dev.device_id}:{ev.seq}"] = [ts, ev.type]
        while len(state.recent) > RECENT_EVENTS_KEPT:
            del state.recent[next(iter(state.recent))]
        out.append(_raise(ev.type, ts, n, th, dev.device_id, **details))
    elif ev.type == "cancel":
        assert ev.ref_seq is not None
        ref = state.recent.get(f"{dev.device_id}:{ev.ref_seq}")
        if ref is None:
            reason = f"cancel names no open event (ref_seq {ev.ref_seq})"
            state.ignored_cancels = [
                *state.ignored_cancels[-9:],
                {"ts": ts, "ref_seq": ev.ref_seq, "why": reason},
            ]
            out.append(Cancel(None, dev.device_id, ev.ref_seq, ev.ts, False, reason))
            return
        delay = ts - float(ref[0])
        honoured = 0 <= delay <= th.cancel_window_s
        reason = (
            f"wearer cancelled {delay:.0f}s after the {ref[1]}"
            if honoured
            else f"cancel {delay:.0f}s after the {ref[1]} is outside the {th.cancel_window_s}s window"
        )
        out.append(Cancel(str(ref[1]), dev.device_id, ev.ref_seq, ev.ts, honoured, reason))
    elif ev.type == "removed" and dev.kind == "wristband":
        _worn(state, dev, ds, False, ts, out)
    elif ev.type == "worn" and dev.kind == "wristband":
        _worn(state, dev, ds, True, ts, out)


def _sample(
    state: ResidentState,
    info: ResidentInfo,
    dev: DeviceInfo,
    ds: DevState,
    s: Sample,
    n: float,
    out: list[Action],
) -> None:
    th = info.thresholds
    ts = s.ts.timestamp()
    state.latest_ts = max(state.latest_ts or ts, ts)
    if s.battery is not None:
        _battery(state, th, dev, ds, s.battery, ts, n, out)
    if dev.kind == "wristband":
        if s.worn is not None:
            _worn(state, dev, ds, s.worn, ts, out)
        _vitals(state, info, dev, ds, s, ts, n, out)
        return
    room = s.room or dev.room
    active = bool(s.motion) or bool(s.presence)
    if active:
        state.last_motion = max(state.last_motion or ts, ts)
        if state.inactivity_alerted:
            state.inactivity_alerted = False
            out.append(Clear("inactivity", _dt(ts), f"motion on {dev.device_id}"))
    if room == "bathroom" and active:
        if state.bathroom_since is None:
            state.bathroom_since = ts
        _bathroom_check(state, th, ts, n, dev.device_id, out)
    elif state.bathroom_since is not None and ts >= state.bathroom_since:
        left = (room == "bathroom" and s.presence is False) or (room != "bathroom" and active)
        if left:
            state.bathroom_since = None
            if state.bathroom_alerted:
                state.bathroom_alerted = False
                out.append(Clear("bathroom", _dt(ts), "bathroom left"))


def _bathroom_check(
    state: ResidentState, th: Thresholds, ts: float, n: float, device: str | None, out: list[Action]
) -> None:
    since = state.bathroom_since
    if since is not None and not state.bathroom_alerted and ts - since >= th.bathroom_s:
        state.bathroom_alerted = True
        out.append(_raise("bathroom", ts, n, th, device, occupied_since=_dt(since).isoformat()))


def _forget_pending(state: ResidentState) -> None:
    """Off the wrist or not talking: readings are noise, so a half-held vital breach starts over."""
    for key in ("hr", "spo2"):
        if key in state.held:
            state.held[key].since = None


def _vitals(
    state: ResidentState,
    info: ResidentInfo,
    dev: DeviceInfo,
    ds: DevState,
    s: Sample,
    ts: float,
    n: float,
    out: list[Action],
) -> None:
    th = info.thresholds
    reference = max(n, state.latest_ts or n)
    stale = reference - ts > th.stale_vitals_s
    suppressed = s.worn is False or ds.removed_since is not None or ds.silent or not ds.online
    if suppressed:
        _forget_pending(state)
        return
    if stale:
        return  # store-and-forward history: stored by ingest, but never a "current" alert
    if s.hr is not None:
        h = state.held.setdefault("hr", Held())
        verdict = held_step(
            h,
            ts,
            s.hr > th.hr_high or s.hr < th.hr_low,
            th.hr_clear_low < s.hr < th.hr_clear_high,
            th.hr_hold_s,
            th.hr_clear_s,
        )
        _verdict(verdict, "hr", ts, n, th, dev.device_id, out, hr=s.hr)
    if s.spo2 is not None:
        h = state.held.setdefault("spo2", Held())
        verdict = held_step(
            h, ts, s.spo2 < th.spo2_low, s.spo2 >= th.spo2_clear, th.spo2_hold_s, th.spo2_clear_s
        )
        _verdict(verdict, "spo2", ts, n, th, dev.device_id, out, spo2=s.spo2)
    if s.location is not None and info.home_lat is not None and info.home_lon is not None:
        night = in_hours(ts, info.timezone, th.night_start_h, th.night_end_h)
        radius = info.geofence_m * (th.geofence_night_factor if night else 1.0)
        radius *= th.geofence_dementia_factor if info.dementia else 1.0
        d = distance_m(info.home_lat, info.home_lon, s.location.lat, s.location.lon)
        h = state.held.setdefault("geofence", Held())
        verdict = held_step(h, ts, d > radius, d < 0.8 * radius, th.geofence_hold_s, th.geofence_clear_s)
        if verdict == "raise":
            r = _raise(
                "geofence",
                ts,
                n,
                th,
                dev.device_id,
                distance_m=round(d),
                radius_m=round(radius),
                night=night,
                lat=s.location.lat,
                lon=s.location.lon,
            )
            if night and info.dementia:
                r = Raise(
                    r.rule, 1, "Left home at night (dementia)", r.event_at, r.late, r.device_id, r.details
                )
            out.append(r)
        elif verdict == "clear":
            out.append(Clear("geofence", _dt(ts), "back home"))


def _verdict(
    verdict: str | None,
    rule: str,
    ts: float,
    n: float,
    th: Thresholds,
    device: str,
    out: list[Action],
    **details: Any,
) -> None:
    if verdict == "raise":
        out.append(_raise(rule, ts, n, th, device, **details))
    elif verdict == "clear":
        out.append(Clear(rule, _dt(ts), "recovered"))


def tick(state: ResidentState, info: ResidentInfo, now: datetime) -> list[Action]:
    """Absence rules, run from a timer: silence, wristband not put back, inactivity, bathroom."""
    reconcile(state, info, now)
    th = info.thresholds
    n = now.timestamp()
    out: list[Action] = []
    for dev in info.devices:
        ds = state.devices[dev.device_id]
        limit = th.silence_factor * dev.report_interval_s
        if not ds.silent and n - ds.last_seen >= limit:
            ds.silent = True
            if dev.kind == "wristband":
                _forget_pending(state)
            out.append(
                _raise(
                    "silence",
                    n,
                    n,
                    th,
                    dev.device_id,
                    last_seen=_dt(ds.last_seen).isoformat(),
                    silent_after_s=limit,
                )
            )
        if ds.removed_since is not None and not ds.removed_alerted and n - ds.removed_since >= th.removed_s:
            ds.removed_alerted = True
            out.append(
                _raise(
                    "removed",
                    ds.removed_since,
                    n,
                    th,
                    dev.device_id,
                    removed_since=_dt(ds.removed_since).isoformat(),
                )
            )
    awake = in_hours(n, info.timezone, th.waking_start_h, th.waking_end_h)
    if state.last_motion is not None and not state.inactivity_alerted and awake:
        start, _ = _local_window(n, info.timezone, th.waking_start_h, th.waking_end_h)
        ref = max(state.last_motion, start) if th.waking_start_h <= th.waking_end_h else state.last_motion
        if n - ref >= th.inactivity_s:
            state.inactivity_alerted = True
            out.append(_raise("inactivity", n, n, th, None, last_motion=_dt(state.last_motion).isoformat()))
    _bathroom_check(state, th, n, n, None, out)
    return out


def next_due(state: ResidentState, info: ResidentInfo, now: datetime) -> datetime | None:
    """The earliest wall-clock time at which `tick` could raise something (None: nothing pending)."""
    th = info.thresholds
    n = now.timestamp()
    due: list[float] = []
    for dev in info.devices:
        ds = state.devices.get(dev.device_id)
        if ds is None:
            due.append(n)
            continue
        if not ds.silent:
            due.append(ds.last_seen + th.silence_factor * dev.report_interval_s)
        if ds.removed_since is not None and not ds.removed_alerted:
            due.append(ds.removed_since + th.removed_s)
    if state.last_motion is not None and not state.inactivity_alerted:
        start, end = _local_window(n, info.timezone, th.waking_start_h, th.waking_end_h)
        if th.waking_start_h <= th.waking_end_h:
            candidate = max(state.last_motion, start) + th.inactivity_s
            if candidate >= end:
                candidate = start + 86400 + th.inactivity_s  # tomorrow's waking hours
        else:
            candidate = state.last_motion + th.inactivity_s
        due.append(candidate)
    if state.bathroom_since is not None and not state.bathroom_alerted:
        due.append(state.bathroom_since + th.bathroom_s)
    if not due:
        return None
    return _dt(max(min(due), n - 1))


def replay(
    residents: Iterable[ResidentInfo], messages: Iterable[tuple[str, Accepted]], now: datetime | None = None
) -> tuple[list[Action], dict[int, ResidentState]]:
    """Run (device_id, message) pairs through the rules with no I/O (benchmarks, simulations, tests).

    With `now` unset the clock follows the messages' own event times, as if delivered live.
    """
    by_device: dict[str, ResidentInfo] = {}
    for resident in residents:
        for d in resident.devices:
            by_device[d.device_id] = resident
    states: dict[int, ResidentState] = {}
    actions: list[Action] = []
    clock = now
    for device_id, msg in messages:
        info = by_device.get(device_id)
        if info is None:
            continue
        if now is None:
            stamps = [s.ts for s in msg.samples]
            if msg.event is not None:
                stamps.append(msg.event.ts)
            if msg.status is not None and msg.status.ts is not None:
                stamps.append(msg.status.ts)
            if stamps and (clock is None or max(stamps) > clock):
                clock = max(stamps)
        if clock is None:
            continue  # a Last Will before any timed message: nothing to anchor it to
        at = clock
        state = states.get(info.resident_id)
        if state is None:
            state = states[info.resident_id] = new_state(info, at)
        actions.extend(apply(state, info, msg, at))
        actions.extend(tick(state, info, at))
    return actions, states
