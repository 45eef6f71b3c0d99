"""Pure generation of what a fleet's devices would send: daily routines in each resident's local time, with
incidents injected. No I/O and no clock: the same fleet, seed, incidents and time range always give the same
messages, so tests check protocol conformance and "no false alarms" without a broker.

A resident's day is a plan of segments (sleep, bathroom, kitchen, living room, out, shower, charging) drawn
from a generator seeded by (seed, resident, local date), so a time's state does not depend on where a run
started.
Each device then samples that state at its report interval. Incidents override the state (vitals, room, worn,
battery, location) or the device's link (silent, store-and-forward) for their time window, or add events.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from carewatch.contract import MAX_SAMPLES, Reason, topic
from device_sim.fleet import Device, Fleet, Resident
from device_sim.incidents import IncidentSpec, InjectedIncident, place

BATTERY_DRAIN_PER_H = 2.0
MOTION_KINDS = ("ir_sensor", "presence_sensor")
_HR_ACTIVITY = {
    "sleep": -7,
    "nap": -5,
    "living": 1,
    "kitchen": 8,
    "bathroom": 5,
    "shower": 6,
    "out": 18,
    "charge": 0,
    "still": -2,
    "wander": 16,
}
_STEPS_PER_MIN = {
    "sleep": 0,
    "nap": 0,
    "living": 3,
    "kitchen": 12,
    "bathroom": 4,
    "shower": 2,
    "out": 70,
    "charge": 2,
    "still": 0,
    "wander": 60,
}
_ROOM = {
    "sleep": "bedroom",
    "nap": "bedroom",
    "living": "living_room",
    "kitchen": "kitchen",
    "bathroom": "bathroom",
    "shower": "bathroom",
    "out": None,
    "charge": "living_room",
    "still": "living_room",
    "wander": None,
}
# chance an infrared sensor sees motion in a report period spent in its room
_MOTION_P = {
    "sleep": 0.2,
    "nap": 0.3,
    "living": 0.97,
    "kitchen": 1.0,
    "bathroom": 1.0,
    "shower": 1.0,
    "charge": 0.97,
    "still": 0.0,
}
# Leaving the home geofence raises an alert at any hour (alerts.rules: 200 m by day, x0.75 with dementia),
# so routine walks stay in the residential compound; leaving it is an incident, not a routine.
NORMAL_OUTING_M = 120.0
DEMENTIA_OUTING_M = 100.0


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publish; ``expect`` is set on deliberately hostile messages (the rejection they must get)."""

    at: datetime
    device_id: str
    kind: str
    payload: dict[str, Any] | None
    raw: bytes | None = None
    topic_override: str | None = None
    qos: int = 1
    retain: bool = False
    expect: Reason | None = None
    incident: str | None = None

    @property
    def topic(self) -> str:
        return self.topic_override or topic(self.device_id, self.kind)

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.payload, separators=(",", ":")).encode()

    @property
    def label(self) -> str:
        """Kind used in run summaries: telemetry/batch/event:<type>/status/hostile."""
        if self.expect is not None:
            return "hostile"
        if self.kind == "event" and self.payload is not None:
            return f"event:{self.payload['type']}"
        if self.kind == "telemetry" and self.payload is not None and "samples" in self.payload:
            return "batch"
        return self.kind


@dataclass(frozen=True, slots=True)
class Segment:
    start: datetime  # UTC
    end: datetime
    activity: str
    bearing: float = 0.0  # direction of an outing

    @property
    def room(self) -> str | None:
        return _ROOM[self.activity]

    @property
    def worn(self) -> bool:
        return self.activity not in ("shower", "charge")


@dataclass(frozen=True, slots=True)
class State:
    activity: str
    room: str | None
    worn: bool
    away_m: float
    bearing: float
    hr: int | None = None  # set by a vitals incident
    spo2: int | None = None
    battery: int | None = None


def _rng(*parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


def day_plan(res: Resident, seed: int, day: date) -> tuple[Segment, ...]:
    """The resident's segments for one local date (midnight to midnight, local time)."""
    rng = _rng("day", seed, res.key, day.isoformat())
    zone = ZoneInfo(res.timezone)
    midnight = datetime.combine(day, time(0), zone)
    items: list[tuple[float, str, float]] = []  # (start minute, activity, bearing)
    cursor = 0.0

    def add(activity: str, at: float, minutes: float, bearing: float = 0.0) -> None:
        nonlocal cursor
        begin = max(cursor, at)
        if begin > cursor:
            items.append((cursor, "living" if cursor >= wake else "sleep", 0.0))
        items.append((begin, activity, bearing))
        cursor = begin + minutes

    wake = rng.uniform(375, 435)
    night_wc = rng.uniform(120, 240)
    add("sleep", 0, night_wc)
    add("bathroom", night_wc, rng.uniform(4, 9))
    add("sleep", cursor, wake - cursor)
    add("bathroom", wake, rng.uniform(8, 14))
    add("kitchen", cursor + rng.uniform(5, 15), rng.uniform(25, 40))
    if res.goes_out and rng.random() < 0.75:
        add("out", rng.uniform(570, 600), rng.uniform(45, 100), rng.uniform(0, 2 * math.pi))
    add("bathroom", max(cursor + 10, rng.uniform(650, 680)), rng.uniform(5, 11))
    add("kitchen", rng.uniform(705, 735), rng.uniform(30, 45))
    add("nap", cursor + rng.uniform(15, 30), rng.uniform(40, 70))
    add("charge", max(cursor + 15, rng.uniform(890, 920)), rng.uniform(35, 50))
    add("bathroom", cursor + rng.uniform(30, 60), rng.uniform(5, 10))
    add("kitchen", rng.uniform(1050, 1080), rng.uniform(35, 50))
    add("shower", rng.uniform(1200, 1230), rng.uniform(15, 25))
    add("bathroom", cursor + rng.uniform(45, 60), rng.uniform(5, 9))
    add("sleep", cursor + rng.uniform(5, 20), 0)
    items.append((cursor, "sleep", 0.0))
    segments = []
    for i, (begin, activity, bearing) in enumerate(items):
        finish = items[i + 1][0] if i + 1 < len(items) else 24 * 60
        if finish <= begin:
            continue
        segments.append(
            Segment(
                (midnight + timedelta(minutes=begin)).astimezone(UTC),
                (midnight + timedelta(minutes=finish)).astimezone(UTC),
                activity,
                bearing,
            )
        )
    return tuple(segments)


@dataclass(frozen=True, slots=True)
class _DayPlan:
    segments: tuple[Segment, ...]
    starts: tuple[datetime, ...]
    cum_steps: tuple[float, ...]
    charges: tuple[Segment, ...]


@dataclass
class _Effects:
    """Incident effects on one resident (state overrides) and on its devices (link faults, extra events)."""

    overrides: list[tuple[datetime, datetime, str, InjectedIncident]] = field(default_factory=list)
    silent: dict[str, list[tuple[datetime, datetime]]] = field(default_factory=dict)
    offline: dict[str, list[tuple[datetime, datetime, InjectedIncident]]] = field(default_factory=dict)
    events: dict[str, list[tuple[datetime, InjectedIncident, str]]] = field(default_factory=dict)


class ResidentModel:
    """The resident's state over time: routine plan plus incident overrides (pure, cached per day)."""

    def __init__(self, res: Resident, seed: int, effects: _Effects) -> None:
        self.res = res
        self.seed = seed
        self.zone = ZoneInfo(res.timezone)
        self.effects = effects
        prof = _rng("profile", seed, res.key)
        self.hr_base = prof.uniform(60, 74)
        self.spo2_base = prof.uniform(96, 98)
        self.outing_m = DEMENTIA_OUTING_M if res.dementia else NORMAL_OUTING_M
        self._plan = lru_cache(maxsize=8)(self._plan_uncached)
        self._last: Segment | None = None

    def _plan_uncached(self, day: date) -> _DayPlan:
        segs = day_plan(self.res, self.seed, day)
        cum, total = [], 0.0
        for seg in segs:
            cum.append(total)
            total += (seg.end - seg.start).total_seconds() / 60 * _STEPS_PER_MIN[seg.activity]
        charges = tuple(seg for seg in segs if seg.activity == "charge")
        return _DayPlan(segs, tuple(seg.start for seg in segs), tuple(cum), charges)

    def _locate(self, at: datetime) -> tuple[_DayPlan, int]:
        day = at.astimezone(self.zone).date()
        plan = self._plan(day)
        i = bisect_right(plan.starts, at) - 1
        if i < 0:  # DST edge: before the first segment of the day, take yesterday's last
            plan = self._plan(day - timedelta(days=1))
            i = len(plan.segments) - 1
        return plan, i

    def segment(self, at: datetime) -> Segment:
        last = self._last
        if last is not None and last.start <= at < last.end:
            return last
        plan, i = self._locate(at)
        self._last = plan.segments[i]
        return self._last

    def state(self, at: datetime) -> State:
        seg = self.segment(at)
        activity, worn, away, bearing = seg.activity, seg.worn, 0.0, seg.bearing
        if activity == "out":
            away = self.outing_m
        hr = spo2 = battery = None
        for begin, end, kind, inc in self.effects.overrides:
            if not begin <= at < end:
                continue
            if kind == "no_motion":
                activity, worn, away = "still", True, 0.0
            elif kind == "long_bathroom":
                activity, worn, away = "bathroom", True, 0.0
            elif kind == "geofence_exit_night":
                activity, worn, away, bearing = "wander", True, 650.0, 1.0
            elif kind == "wristband_removed":
                worn = False
            elif kind in ("tachycardia", "bradycardia", "low_spo2"):
                worn = True
                r = _rng("vital", self.seed, inc.device_id, at.timestamp())
                if kind == "tachycardia":
                    hr = r.randint(142, 152)
                elif kind == "bradycardia":
                    hr = r.randint(32, 36)
                else:
                    spo2 = r.randint(84, 87)
            elif kind == "low_battery":
                span = max((end - begin).total_seconds(), 1.0)
                battery = round(13 - 7 * (at - begin).total_seconds() / span)
        return State(activity, _ROOM.get(activity), worn, away, bearing, hr, spo2, battery)

    def battery(self, at: datetime) -> int:
        """Drains steadily since the last charge; charging (wristband off) refills it to 100."""
        local = at.astimezone(self.zone)
        for back in range(3):
            charges = [c for c in self._plan((local - timedelta(days=back)).date()).charges if c.start <= at]
            if charges:
                last = charges[-1]
                if at < last.end:
                    before = max(100 - BATTERY_DRAIN_PER_H * 24, 30)
                    done = (at - last.start) / (last.end - last.start)
                    return round(before + (100 - before) * done)
                hours = (at - last.end).total_seconds() / 3600
                return max(round(100 - BATTERY_DRAIN_PER_H * hours), 20)
        return 80

    def steps(self, at: datetime) -> int:
        """Steps since local midnight, from the routine's activities."""
        plan, i = self._locate(at)
        seg = plan.segments[i]
        if at.astimezone(self.zone).date() != seg.start.astimezone(self.zone).date():
            return 0
        return int(plan.cum_steps[i] + (at - seg.start).total_seconds() / 60 * _STEPS_PER_MIN[seg.activity])

    def rooms_during(self, begin: datetime, end: datetime) -> dict[str, tuple[float, str]]:
        """room -> (seconds spent there in [begin, end), first activity there), overrides included."""
        out: dict[str, tuple[float, str]] = {}
        if any(b < end and begin < e for b, e, _k, _i in self.effects.overrides):
            step = 30
            t = begin
            while t < end:
                st = self.state(t)
                if st.room is not None:
                    secs, act = out.get(st.room, (0.0, st.activity))
                    out[st.room] = (secs + step, act)
                t += timedelta(seconds=step)
            return out
        t = begin
        while t < end:
            seg = self.segment(t)
            stop = min(seg.end, end)
            if seg.room is not None:
                secs, act = out.get(seg.room, (0.0, seg.activity))
                out[seg.room] = (secs + (stop - t).total_seconds(), act)
            t = stop
        return out


def _iso(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).isoformat(timespec="seconds")


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _phase(device_id: str, interval: int) -> int:
    return _rng("phase", device_id).randrange(interval)


class DeviceStream:
    """Everything one device sends over [start, end), in send order, with its own seq counter."""

    def __init__(self, model: ResidentModel, dev: Device, seed: int, start: datetime, end: datetime) -> None:
        self.model = model
        self.dev = dev
        self.seed = seed
        self.start = start
        self.end = end
        self.seq = 0
        self.zone = model.zone
        self._fall_seq: dict[int, int] = {}

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def status(self, at: datetime, incident: str | None = None) -> Message:
        payload: dict[str, Any] = {
            "online": True,
            "ts": _iso(at, self.zone),
            "seq": self._next_seq(),
            "fw": self.dev.fw,
        }
        return Message(at, self.dev.id, "status", payload, retain=True, incident=incident)

    def _ticks(self) -> Iterator[datetime]:
        interval = self.dev.report_interval_s
        epoch = int(self.start.timestamp())
        first = epoch - epoch % interval + _phase(self.dev.id, interval)
        if first < epoch:
            first += interval
        t = datetime.fromtimestamp(first, UTC)
        step = timedelta(seconds=interval)
        while t < self.end:
            yield t
            t += step

    def _wristband_sample(self, at: datetime) -> dict[str, Any]:
        st = self.model.state(at)
        sample: dict[str, Any] = {"ts": _iso(at, self.zone), "seq": self._next_seq()}
        battery = st.battery if st.battery is not None else self.model.battery(at)
        if st.worn:
            r = _rng("noise", self.seed, self.dev.id, int(at.timestamp()))
            local_h = at.astimezone(self.zone).hour + at.astimezone(self.zone).minute / 60
            circadian = 3 * math.sin((local_h - 10) / 24 * 2 * math.pi)
            hr = self.model.hr_base + _HR_ACTIVITY[st.activity] + circadian + r.gauss(0, 2.5)
            spo2 = self.model.spo2_base - (1 if st.activity in ("sleep", "nap") else 0) + r.gauss(0, 0.7)
            sample["hr"] = st.hr if st.hr is not None else int(min(max(round(hr), 46), 118))
            sample["spo2"] = st.spo2 if st.spo2 is not None else int(min(max(round(spo2), 93), 99))
        sample["battery"] = battery
        sample["worn"] = st.worn
        sample["steps"] = self.model.steps(at)
        if st.away_m > 0:
            res = self.model.res
            dlat = st.away_m * math.cos(st.bearing) / 111_320
            dlon = st.away_m * math.sin(st.bearing) / (111_320 * math.cos(math.radians(res.home_lat)))
            sample["location"] = {
                "lat": round(res.home_lat + dlat, 6),
                "lon": round(res.home_lon + dlon, 6),
                "acc_m": 15.0,
            }
        return sample

    def _sensor_sample(self, at: datetime) -> dict[str, Any]:
        interval = timedelta(seconds=self.dev.report_interval_s)
        room = self.dev.room or ""
        spent = self.model.rooms_during(at - interval, at).get(room)
        motion = False
        if spent is not None:
            secs, activity = spent
            p = _MOTION_P.get(activity, 0.9)
            r = _rng("motion", self.seed, self.dev.id, int(at.timestamp()))
            motion = secs >= 60 and r.random() < p
        sample: dict[str, Any] = {"ts": _ms(at), "seq": self._next_seq(), "room": room, "motion": motion}
        if self.dev.kind == "presence_sensor":
            sample["presence"] = self.model.state(at).room == room
        return sample

    def _event(self, at: datetime, etype: str, incident: str | None, **extra: Any) -> Message:
        payload: dict[str, Any] = {"ts": _iso(at, self.zone), "seq": self._next_seq(), "type": etype, **extra}
        return Message(at, self.dev.id, "event", payload, incident=incident)

    def _hostile(self, at: datetime, variant: str, other_device: str) -> Message:
        seq = self._next_seq()
        ts = _iso(at, self.zone)
        dev = self.dev.id
        tel = "telemetry"
        if variant == "bad_json":
            return Message(
                at,
                dev,
                tel,
                None,
                raw=b'{"ts": "' + ts.encode() + b'", "seq": 1, "hr": 7',
                expect=Reason.JSON,
                incident="hostile",
            )
        if variant == "not_object":
            return Message(
                at, dev, tel, None, raw=b"[72, 73, 74]", expect=Reason.NOT_OBJECT, incident="hostile"
            )
        if variant == "hr_900":
            return Message(
                at, dev, tel, {"ts": ts, "seq": seq, "hr": 900}, expect=Reason.RANGE, incident="hostile"
            )
        if variant == "oversize":
            return Message(
                at,
                dev,
                tel,
                {"ts": ts, "seq": seq, "room": "x" * 20_000},
                expect=Reason.OVERSIZE,
                incident="hostile",
            )
        if variant == "wrong_topic":
            return Message(
                at,
                dev,
                tel,
                {"ts": ts, "seq": seq, "hr": 70},
                topic_override=f"care/v1/{dev}/telemetry/extra",
                expect=Reason.TOPIC,
                incident="hostile",
            )
        if variant == "future_ts":
            future = _iso(at + timedelta(days=400), self.zone)
            return Message(
                at,
                dev,
                tel,
                {"ts": future, "seq": seq, "hr": 70},
                expect=Reason.FUTURE_TS,
                incident="hostile",
            )
        if variant == "device_mismatch":
            return Message(
                at,
                dev,
                tel,
                {"ts": ts, "seq": seq, "hr": 70, "device_id": other_device},
                expect=Reason.DEVICE_MISMATCH,
                incident="hostile",
            )
        if variant == "schema":
            return Message(
                at,
                dev,
                tel,
                {"ts": ts, "seq": seq, "hr": 70, "firmware_debug": True},
                expect=Reason.SCHEMA,
                incident="hostile",
            )
        raise ValueError(f"unknown hostile variant {variant!r}")

    def _extras(self, at: datetime, incident: InjectedIncident, what: str) -> list[Message]:
        kind = incident.kind
        if what == "fall":
            room = self.model.state(at).room
            extra: dict[str, Any] = {"confidence": 0.93}
            if room:
                extra["room"] = room
            return [self._event(at, "fall", kind, **extra)]
        if what == "sos":
            return [self._event(at, "sos", kind)]
        if what == "cancel_fall":
            fall = self._event(at, "fall", kind, confidence=0.81)
            assert fall.payload is not None
            self._fall_seq[id(incident)] = int(fall.payload["seq"])
            return [fall]
        if what == "cancel":
            ref = self._fall_seq.get(id(incident))
            if ref is None:  # the fall was before this run's start
                return []
            return [self._event(at, "cancel", kind, ref_seq=ref)]
        if what.startswith("hostile:"):
            other = next((d.id for d in self.model.res.devices if d.id != self.dev.id), "someone-else")
            return [self._hostile(at, what.split(":", 1)[1], other)]
        raise ValueError(what)

    def messages(self) -> Iterator[Message]:
        dev = self.dev
        fx = self.model.effects
        silent = fx.silent.get(dev.id, [])
        offline = fx.offline.get(dev.id, [])
        # timeline items: (at, order, what, incident); order puts extras before the sample at the same time
        items: list[tuple[datetime, int, str, InjectedIncident | None]] = []
        for at, inc, what in fx.events.get(dev.id, []):
            if self.start <= at < self.end:
                items.append((at, 0, what, inc))
        for _b, e, inc in offline:
            if self.start <= e < self.end:
                items.append((e, 2, "reconnect", inc))
        for _b, e in silent:
            if self.start <= e < self.end:
                items.append((e, 2, "recover", None))
        items.sort(key=lambda x: (x[0], x[1]))
        ticks = self._ticks()
        extra_i = 0
        buffered: list[dict[str, Any]] = []
        held: list[Message] = []
        prev_worn: bool | None = None
        yield self.status(self.start)
        pending_tick = next(ticks, None)
        while pending_tick is not None or extra_i < len(items):
            use_extra = extra_i < len(items) and (pending_tick is None or items[extra_i][0] <= pending_tick)
            out: list[Message] = []
            if use_extra:
                at, _order, what, item_inc = items[extra_i]
                extra_i += 1
                if what == "reconnect":
                    out.append(self.status(at, "connection_loss"))
                    for chunk in range(0, len(buffered), MAX_SAMPLES):
                        out.append(
                            Message(
                                at,
                                dev.id,
                                "telemetry",
                                {"samples": buffered[chunk : chunk + MAX_SAMPLES]},
                                incident="connection_loss",
                            )
                        )
                    buffered = []
                    out.extend(Message(at, m.device_id, m.kind, m.payload, incident=m.incident) for m in held)
                    held = []
                elif what == "recover":
                    out.append(self.status(at, "device_silent"))
                else:
                    assert item_inc is not None
                    out.extend(self._extras(at, item_inc, what))
            else:
                at = pending_tick  # type: ignore[assignment]
                pending_tick = next(ticks, None)
                if dev.kind == "wristband":
                    sample = self._wristband_sample(at)
                    worn = bool(sample["worn"])
                    if prev_worn is not None and worn != prev_worn:
                        out.append(self._event(at, "worn" if worn else "removed", None))
                    prev_worn = worn
                else:
                    sample = self._sensor_sample(at)
                # QoS 1 for everything a device sends; only load mode sends motion telemetry at QoS 0
                out.append(Message(at, dev.id, "telemetry", sample))
            for msg in out:
                if any(b <= msg.at < e for b, e in silent) and msg.kind != "status":
                    continue
                lost = next((inc for b, e, inc in offline if b <= msg.at < e), None)
                if lost is not None:
                    if msg.kind == "telemetry" and msg.payload is not None and "samples" not in msg.payload:
                        buffered.append(msg.payload)
                    elif msg.kind == "event":
                        held.append(msg)
                    continue
                yield msg


def _effects_for(fleet: Fleet, injected: list[InjectedIncident]) -> dict[str, _Effects]:
    effects: dict[str, _Effects] = {r.key: _Effects() for r in fleet.residents}
    for inc in injected:
        fx = effects[inc.resident_key]
        if inc.kind in ("fall", "sos"):
            fx.events.setdefault(inc.device_id, []).append((inc.at, inc, inc.kind))
        elif inc.kind == "cancel":
            fx.events.setdefault(inc.device_id, []).append((inc.at, inc, "cancel_fall"))
            later = inc.at + timedelta(seconds=inc.spec.delay_s)
            fx.events.setdefault(inc.device_id, []).append((later, inc, "cancel"))
        elif inc.kind == "hostile":
            from device_sim.incidents import HOSTILE_VARIANTS

            variants = (inc.variant,) if inc.variant else HOSTILE_VARIANTS
            for i, variant in enumerate(variants):
                fx.events.setdefault(inc.device_id, []).append(
                    (inc.at + timedelta(seconds=i), inc, f"hostile:{variant}")
                )
        elif inc.kind == "device_silent":
            fx.silent.setdefault(inc.device_id, []).append((inc.at, inc.until))
        elif inc.kind == "connection_loss":
            fx.offline.setdefault(inc.device_id, []).append((inc.at, inc.until, inc))
            if inc.spec.with_fall:
                mid = inc.at + (inc.until - inc.at) / 2
                fx.events.setdefault(inc.device_id, []).append((mid, inc, "fall"))
        else:
            fx.overrides.append((inc.at, inc.until, inc.kind, inc))
    for fx in effects.values():
        for lst in fx.events.values():
            lst.sort(key=lambda x: x[0])
    return effects


class Simulation:
    """A seeded run over virtual time: ``injected`` says exactly which incidents happen when, and
    :meth:`step` hands out the messages up to a virtual time, in time order, so tests (and the runner's
    real-time clock) can drive it piece by piece."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        start: datetime,
        end: datetime,
        seed: int | None = None,
        incidents: list[IncidentSpec] | tuple[IncidentSpec, ...] = (),
    ) -> None:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        self.fleet = fleet
        self.seed = fleet.seed if seed is None else seed
        self.start = start.astimezone(UTC)
        self.end = end.astimezone(UTC)
        self.injected = place(fleet, list(incidents), self.start)
        effects = _effects_for(fleet, self.injected)
        streams = []
        for res in fleet.residents:
            model = ResidentModel(res, self.seed, effects[res.key])
            for dev in res.devices:
                streams.append(DeviceStream(model, dev, self.seed, self.start, self.end).messages())
        self._merged = heapq.merge(*streams, key=lambda m: m.at)
        self._peek: Message | None = None
        self.done = False

    def __iter__(self) -> Iterator[Message]:
        return self.messages()

    def messages(self) -> Iterator[Message]:
        while True:
            msg = self._take()
            if msg is None:
                return
            yield msg

    def _take(self) -> Message | None:
        if self._peek is not None:
            peeked, self._peek = self._peek, None
            return peeked
        msg = next(self._merged, None)
        if msg is None:
            self.done = True
        return msg

    def step(self, until: datetime) -> list[Message]:
        """Messages with ``at <= until`` not yet handed out."""
        out = []
        while True:
            msg = self._take()
            if msg is None:
                break
            if msg.at > until:
                self._peek = msg
                break
            out.append(msg)
        return out

    def next_at(self) -> datetime | None:
        if self._peek is None:
            self._peek = next(self._merged, None)
            if self._peek is None:
                self.done = True
        return self._peek.at if self._peek else None


def generate(
    fleet: Fleet,
    start: datetime,
    end: datetime,
    *,
    seed: int | None = None,
    incidents: list[IncidentSpec] | tuple[IncidentSpec, ...] = (),
) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """The plain (device_id, kind, payload) view of a run, in time order."""
    for msg in Simulation(fleet, start=start, end=end, seed=seed, incidents=incidents):
        yield msg.device_id, msg.kind, msg.payload
