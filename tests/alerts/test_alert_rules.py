"""The pure rules on event sequences: raise, debounce, hysteresis, suppression, late data, timers."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from alerts import rules
from alerts.models import Cancel, Clear, DeviceInfo, Raise, ResidentInfo, Thresholds
from carewatch.contract import Accepted, Event, Kind, Sample, Status

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC: waking hours in UTC
WB, IR, PIR = "wb-1", "ir-1", "pir-bath"


def resident(**kw: Any) -> ResidentInfo:
    th = kw.pop("thresholds", Thresholds())
    return ResidentInfo(
        resident_id=1,
        timezone=kw.pop("timezone", "UTC"),
        home_lat=31.2304,
        home_lon=121.4737,
        geofence_m=200,
        thresholds=th,
        devices=(
            DeviceInfo(WB, "wristband", 1, None, 60),
            DeviceInfo(IR, "ir_sensor", 1, "living", 60),
            DeviceInfo(PIR, "presence_sensor", 1, "bathroom", 60),
        ),
        **kw,
    )


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def sample(device: str, at: datetime, seq: int = 0, **fields: Any) -> Accepted:
    return Accepted(device, Kind.TELEMETRY, samples=(Sample(ts=ms(at), seq=seq, **fields),))  # type: ignore[arg-type]


def event(device: str, at: datetime, type_: str, seq: int = 1, **fields: Any) -> Accepted:
    return Accepted(device, Kind.EVENT, event=Event(ts=ms(at), seq=seq, type=type_, **fields))  # type: ignore[arg-type]


def status(device: str, online: bool, **fields: Any) -> Accepted:
    return Accepted(device, Kind.STATUS, status=Status(online=online, **fields))


class Run:
    """Feed messages (delivered at their own event time unless `now` is given) and collect actions."""

    def __init__(self, info: ResidentInfo | None = None, start: datetime = T0) -> None:
        self.info = info or resident()
        self.state = rules.new_state(self.info, start)

    def send(self, msg: Accepted, now: datetime | None = None) -> list[Any]:
        if now is None:
            stamps = [s.ts for s in msg.samples] + ([msg.event.ts] if msg.event else [])
            now = max(stamps) if stamps else T0
        return rules.apply(self.state, self.info, msg, now)

    def tick(self, now: datetime) -> list[Any]:
        return rules.tick(self.state, self.info, now)


def raises(actions: list[Any], rule: str) -> list[Raise]:
    return [a for a in actions if isinstance(a, Raise) and a.rule == rule]


def clears(actions: list[Any], rule: str) -> list[Clear]:
    return [a for a in actions if isinstance(a, Clear) and a.rule == rule]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("type_", "device"), [("fall", WB), ("fall", IR), ("sos", WB)])
def test_fall_and_sos_raise_p1_at_once(type_: str, device: str) -> None:
    out = Run().send(event(device, at(5), type_, seq=7, confidence=0.9))
    [r] = raises(out, type_)
    assert (r.priority, r.event_at, r.late, r.device_id) == (1, at(5), False, device)
    assert r.details["seq"] == 7


def test_late_fall_still_raises_marked_late_with_original_time() -> None:
    out = Run().send(event(WB, at(0), "fall"), now=at(2 * 3600))
    [r] = raises(out, "fall")
    assert r.late is True and r.event_at == at(0) and r.priority == 1


def test_cancel_within_window_is_honoured_after_window_only_recorded() -> None:
    run = Run()
    run.send(event(WB, at(0), "fall", seq=10))
    [c] = run.send(event(WB, at(30), "cancel", seq=11, ref_seq=10))
    assert isinstance(c, Cancel) and c.honoured and c.rule == "fall"
    run.send(event(WB, at(100), "sos", seq=12))
    [late] = run.send(event(WB, at(161), "cancel", seq=13, ref_seq=12))
    assert isinstance(late, Cancel) and not late.honoured and late.rule == "sos"
    [unknown] = run.send(event(WB, at(170), "cancel", seq=14, ref_seq=999))
    assert isinstance(unknown, Cancel) and unknown.rule is None and not unknown.honoured
    assert run.state.ignored_cancels[-1]["ref_seq"] == 999


def test_cancel_window_follows_thresholds() -> None:
    run = Run(resident(thresholds=Thresholds(cancel_window_s=10)))
    run.send(event(WB, at(0), "fall", seq=1))
    [c] = run.send(event(WB, at(20), "cancel", seq=2, ref_seq=1))
    assert isinstance(c, Cancel) and not c.honoured


# --- heart rate / SpO2 -------------------------------------------------------------------------


def test_hr_high_debounced_raises_once_after_held_60s() -> None:
    run = Run()
    assert raises(run.send(sample(WB, at(0), hr=140, worn=True)), "hr") == []
    assert raises(run.send(sample(WB, at(30), seq=1, hr=145)), "hr") == []
    [r] = raises(run.send(sample(WB, at(60), seq=2, hr=150)), "hr")
    assert r.priority == 2 and r.details["hr"] == 150
    assert raises(run.send(sample(WB, at(90), seq=3, hr=150)), "hr") == []


def test_hr_breach_interrupted_restarts_debounce() -> None:
    run = Run()
    run.send(sample(WB, at(0), hr=140))
    run.send(sample(WB, at(30), seq=1, hr=100))
    assert raises(run.send(sample(WB, at(60), seq=2, hr=140)), "hr") == []
    assert raises(run.send(sample(WB, at(119), seq=3, hr=140)), "hr") == []
    assert len(raises(run.send(sample(WB, at(120), seq=4, hr=140)), "hr")) == 1


def test_hr_low_raises() -> None:
    run = Run()
    run.send(sample(WB, at(0), hr=35))
    assert len(raises(run.send(sample(WB, at(60), seq=1, hr=38)), "hr")) == 1


def test_hr_hysteresis_clears_only_on_recovery_band_held_120s() -> None:
    run = Run()
    run.send(sample(WB, at(0), hr=140))
    run.send(sample(WB, at(60), seq=1, hr=140))
    # Just under the raise threshold is not recovery: never clears.
    for i in range(10):
        assert clears(run.send(sample(WB, at(90 + 30 * i), seq=2 + i, hr=125)), "hr") == []
    # Inside the band for 60 s, then out again: the recovery clock restarts.
    run.send(sample(WB, at(400), seq=20, hr=100))
    run.send(sample(WB, at(460), seq=21, hr=100))
    run.send(sample(WB, at(470), seq=22, hr=121))
    assert clears(run.send(sample(WB, at(580), seq=23, hr=100)), "hr") == []
    assert len(clears(run.send(sample(WB, at(700), seq=24, hr=100)), "hr")) == 1
    # Re-armed: a new breach held 60 s raises again (engine turns it into count+1 on the open alert).
    run.send(sample(WB, at(800), seq=25, hr=135))
    assert len(raises(run.send(sample(WB, at(860), seq=26, hr=135)), "hr")) == 1


def test_spo2_low_debounce_and_hysteresis() -> None:
    run = Run()
    run.send(sample(WB, at(0), spo2=85))
    assert len(raises(run.send(sample(WB, at(60), seq=1, spo2=86)), "spo2")) == 1
    run.send(sample(WB, at(100), seq=2, spo2=91))  # above the raise threshold, below recovery
    assert clears(run.send(sample(WB, at(300), seq=3, spo2=92)), "spo2") == []
    run.send(sample(WB, at(310), seq=4, spo2=95))
    assert len(clears(run.send(sample(WB, at(430), seq=5, spo2=96)), "spo2")) == 1


def test_redelivered_and_out_of_order_readings_do_not_count_twice() -> None:
    run = Run()
    run.send(sample(WB, at(0), hr=140))
    run.send(sample(WB, at(0), hr=140))
    assert raises(run.send(sample(WB, at(-30), seq=9, hr=140)), "hr") == []
    out = run.send(sample(WB, at(60), seq=1, hr=140)) + run.send(sample(WB, at(60), seq=1, hr=140))
    assert len(raises(out, "hr")) == 1


def test_vitals_suppressed_while_removed() -> None:
    run = Run()
    run.send(sample(WB, at(0), hr=150, worn=True))
    run.send(event(WB, at(10), "removed"))
    assert raises(run.send(sample(WB, at(70), seq=2, hr=150)), "hr") == []
    assert raises(run.send(sample(WB, at(130), seq=3, hr=150, worn=False)), "hr") == []
    run.send(event(WB, at(140), "worn", seq=4))
    assert raises(run.send(sample(WB, at(150), seq=5, hr=150)), "hr") == []  # debounce restarts
    assert len(raises(run.send(sample(WB, at(210), seq=6, hr=150)), "hr")) == 1


def test_vitals_suppressed_while_device_silent() -> None:
    run = Run()
    run.send(sample(WB, at(0), hr=150))
    out = run.send(status(WB, False), now=at(10))
    assert len(raises(out, "silence")) == 1
    # A reading arriving marks the device talking again, so suppression lifts with it.
    out = run.send(sample(WB, at(70), seq=2, hr=150))
    assert len(clears(out, "silence")) == 1
    assert raises(out, "hr") == []  # the held breach was forgotten while silent


def test_stale_vitals_never_raise_current_alerts() -> None:
    run = Run()
    now = at(3600)
    run.send(sample(WB, at(0), hr=150), now=now)
    assert raises(run.send(sample(WB, at(60), seq=1, hr=150), now=now), "hr") == []


def test_store_and_forward_batch_still_debounces_on_event_time() -> None:
    run = Run()
    batch = Accepted(
        WB, Kind.TELEMETRY, samples=tuple(Sample(ts=ms(at(i * 10)), seq=i, hr=140) for i in (6, 3, 0, 1))
    )
    assert len(raises(run.send(batch, now=at(65)), "hr")) == 1


# --- geofence ---------------------------------------------------------------------------------


def _loc(dist_north_m: float) -> dict[str, float]:
    return {"lat": 31.2304 + dist_north_m / 111_195, "lon": 121.4737}


def test_geofence_debounced_p2_by_day() -> None:
    run = Run()
    run.send(sample(WB, at(0), location=_loc(300)))
    [r] = raises(run.send(sample(WB, at(60), seq=1, location=_loc(310))), "geofence")
    assert r.priority == 2 and 290 < r.details["distance_m"] < 320


def test_geofence_stricter_at_night_and_p1_for_dementia() -> None:
    night = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)
    day = Run(resident(), start=T0)
    day.send(sample(WB, at(0), location=_loc(150)))
    assert raises(day.send(sample(WB, at(60), seq=1, location=_loc(150))), "geofence") == []
    for dementia, priority in ((False, 2), (True, 1)):
        run = Run(resident(dementia=dementia), start=night)
        run.send(sample(WB, night, location=_loc(150)), now=night)
        later = night + timedelta(seconds=60)
        [r] = raises(run.send(sample(WB, later, seq=1, location=_loc(150)), now=later), "geofence")
        assert r.priority == priority


def test_geofence_rearms_only_well_inside() -> None:
    run = Run()
    run.send(sample(WB, at(0), location=_loc(300)))
    run.send(sample(WB, at(60), seq=1, location=_loc(300)))
    run.send(sample(WB, at(100), seq=2, location=_loc(190)))  # inside, but not well inside
    assert clears(run.send(sample(WB, at(300), seq=3, location=_loc(190))), "geofence") == []
    run.send(sample(WB, at(310), seq=4, location=_loc(20)))
    assert len(clears(run.send(sample(WB, at(430), seq=5, location=_loc(20))), "geofence")) == 1


# --- activity ---------------------------------------------------------------------------------


def test_inactivity_raises_from_timer_during_waking_hours_and_motion_clears() -> None:
    run = Run(start=T0)
    run.send(sample(IR, at(0), motion=True))
    assert raises(run.tick(at(4 * 3600 - 1)), "inactivity") == []
    [r] = raises(run.tick(at(4 * 3600)), "inactivity")
    assert r.priority == 2 and r.rule == "inactivity"
    assert raises(run.tick(at(4 * 3600 + 60)), "inactivity") == []  # once per quiet stretch
    assert len(clears(run.send(sample(IR, at(4 * 3600 + 100), seq=1, motion=True)), "inactivity")) == 1


def test_inactivity_not_during_night_and_counts_from_waking_start() -> None:
    evening = datetime(2026, 3, 2, 21, 0, tzinfo=UTC)
    run = Run(start=evening)
    run.send(sample(IR, evening, motion=True), now=evening)
    assert raises(run.tick(evening + timedelta(hours=5)), "inactivity") == []  # 02:00, asleep
    morning = datetime(2026, 3, 3, 10, 59, tzinfo=UTC)
    assert raises(run.tick(morning), "inactivity") == []  # 4 h after 07:00 not reached
    assert len(raises(run.tick(datetime(2026, 3, 3, 11, 0, tzinfo=UTC)), "inactivity")) == 1


def test_inactivity_uses_resident_local_time() -> None:
    # 23:00 UTC is 07:00 next day in Shanghai: waking hours there.
    start = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)
    run = Run(resident(timezone="Asia/Shanghai"), start=start)
    assert len(raises(run.tick(start + timedelta(hours=4)), "inactivity")) == 1


def test_inactivity_threshold_override_and_next_due() -> None:
    run = Run(resident(thresholds=Thresholds(inactivity_s=5, waking_start_h=0, waking_end_h=24)))
    run.send(sample(IR, at(0), motion=True), now=at(0))
    due = rules.next_due(run.state, run.info, at(1))
    assert due == at(5)
    assert len(raises(run.tick(at(5)), "inactivity")) == 1


def test_bathroom_occupied_too_long_then_left() -> None:
    run = Run()
    run.send(sample(PIR, at(0), presence=True))
    assert raises(run.send(sample(PIR, at(44 * 60), seq=1, presence=True)), "bathroom") == []
    assert len(raises(run.tick(at(45 * 60)), "bathroom")) == 1
    assert len(clears(run.send(sample(IR, at(50 * 60), seq=2, motion=True)), "bathroom")) == 1
    # A new visit starts a new clock.
    run.send(sample(PIR, at(60 * 60), seq=3, presence=True))
    assert raises(run.tick(at(100 * 60)), "bathroom") == []
    assert len(raises(run.send(sample(PIR, at(105 * 60), seq=4, presence=True)), "bathroom")) == 1


# --- devices ----------------------------------------------------------------------------------


def test_wristband_removed_and_not_put_back_p3_then_clears() -> None:
    run = Run()
    run.send(sample(WB, at(0), worn=False))
    assert raises(run.tick(at(3599)), "removed") == []
    [r] = raises(run.tick(at(3600)), "removed")
    assert r.priority == 3 and r.event_at == at(0)
    assert len(clears(run.send(sample(WB, at(3700), seq=1, worn=True)), "removed")) == 1


def test_silence_after_three_intervals_then_recovers() -> None:
    run = Run(start=T0)
    assert raises(run.tick(at(179)), "silence") == []
    out = raises(run.tick(at(180)), "silence")
    assert {r.device_id for r in out} == {WB, IR, PIR} and all(r.priority == 3 for r in out)
    assert raises(run.tick(at(240)), "silence") == []  # once per silent stretch
    assert clears(run.send(sample(WB, at(250))), "silence") == []  # other devices still silent
    run.send(sample(IR, at(251)))
    assert len(clears(run.send(sample(PIR, at(252))), "silence")) == 1


def test_last_will_raises_silence_at_once() -> None:
    run = Run()
    [r] = raises(run.send(status(WB, False), now=at(1)), "silence")
    assert r.details["reason"] == "last_will"
    assert len(clears(run.send(status(WB, True), now=at(5)), "silence")) == 1


def test_battery_low_with_hysteresis() -> None:
    run = Run()
    [r] = raises(run.send(sample(WB, at(0), battery=14)), "battery")
    assert r.priority == 4
    assert run.send(sample(WB, at(10), seq=1, battery=16)) == []
    assert run.send(sample(WB, at(20), seq=2, battery=12)) == []
    assert len(clears(run.send(sample(WB, at(30), seq=3, battery=20)), "battery")) == 1


def test_next_due_is_earliest_silence_deadline() -> None:
    run = Run(start=T0)
    run.send(sample(WB, at(100)), now=at(100))
    assert rules.next_due(run.state, run.info, at(100)) == at(180)


# --- state, thresholds, replay -----------------------------------------------------------------


def test_state_survives_json_round_trip_mid_debounce() -> None:
    run = Run()
    run.send(sample(WB, at(0), hr=140))
    run.send(sample(WB, at(30), seq=1, hr=140))
    doc = run.state.to_json()
    full = dataclasses.asdict(run.state)
    assert doc["held"]["hr"]["since"] == full["held"]["hr"]["since"] and "silent" not in doc["devices"][WB]
    assert len(json.dumps(doc)) < len(json.dumps(full)) / 2  # defaults are left out
    assert rules.ResidentState().to_json() == {}
    doc["devices"][WB]["last_seen"] = -1.0  # a copy: writing to it leaves the state alone
    assert run.state.devices[WB].last_seen != -1.0
    assert rules.ResidentState.from_json(full) == run.state  # documents written in full still load
    restored = rules.ResidentState.from_json(json.loads(json.dumps(run.state.to_json())))
    assert restored == run.state
    run.state = restored
    assert len(raises(run.send(sample(WB, at(60), seq=2, hr=140)), "hr")) == 1
    assert raises(run.send(sample(WB, at(61), seq=3, hr=140)), "hr") == []


def test_thresholds_validate_overrides() -> None:
    assert Thresholds.model_validate({"hr_high": 150}).hr_high == 150
    with pytest.raises(ValidationError):
        Thresholds.model_validate({"hr_hgih": 150})
    with pytest.raises(ValidationError):
        Thresholds.model_validate({"hr_clear_high": 140})  # recovery band above the raise threshold
    with pytest.raises(ValidationError):
        Thresholds(battery_low=30)


def test_replay_is_pure_and_fast() -> None:
    info = resident()
    msgs: list[tuple[str, Accepted]] = []
    for i in range(5000):
        msgs.append((WB, sample(WB, at(i), seq=i, hr=150 if 1000 <= i < 1100 else 70, worn=True)))
        msgs.append((IR, sample(IR, at(i), seq=i, motion=i % 7 == 0)))
    msgs.append((WB, event(WB, at(5000), "fall", seq=99999)))
    msgs.append(("unknown", sample("unknown", at(5000))))
    started = time.perf_counter()
    actions, states = rules.replay([info], msgs)
    elapsed = time.perf_counter() - started
    assert [a.rule for a in actions if isinstance(a, Raise)] == ["silence", "hr", "fall"]
    assert len(clears(actions, "hr")) == 1
    assert set(states) == {1}
    assert elapsed < 5, elapsed
