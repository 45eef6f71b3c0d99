"""The pure simulator: determinism, protocol conformance, incidents placed exactly, no false alarms."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from carewatch.contract import Accepted, Reason, parse
from device_sim.fleet import make_fleet
from device_sim.incidents import (
    EXPECTED,
    HOSTILE_VARIANTS,
    KINDS,
    IncidentSpec,
    one_of_each,
    parse_scenario,
    spec_from_dict,
)
from device_sim.routine import Simulation, generate
from tests.sim.sim_reference import replay

# 00:00 in Asia/Shanghai, where most of the fleet lives
START = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def day_run() -> tuple[Simulation, list]:
    fleet = make_fleet(20, 42)
    sim = Simulation(fleet, start=START, end=START + DAY, incidents=one_of_each(fleet))
    return sim, list(sim)


def _wire(msgs: list) -> list[tuple[str, bytes, bool]]:
    return [(m.topic, m.encode(), m.retain) for m in msgs]


def test_same_seed_same_messages_and_other_seed_differs() -> None:
    fleet = make_fleet(3, 7)
    spec = [IncidentSpec("fall", "r001", "+30m"), IncidentSpec("hostile", "r002", "+40m")]
    a = _wire(list(Simulation(fleet, start=START, end=START + timedelta(hours=3), incidents=spec)))
    b = _wire(list(Simulation(make_fleet(3, 7), start=START, end=START + timedelta(hours=3), incidents=spec)))
    c = _wire(list(Simulation(fleet, start=START, end=START + timedelta(hours=3), seed=8, incidents=spec)))
    assert len(a) > 300
    assert a == b
    assert a != c
    assert make_fleet(5, 7) == make_fleet(5, 7)
    assert make_fleet(5, 7) != make_fleet(5, 8)


def test_step_by_step_equals_one_go_and_is_time_ordered() -> None:
    fleet = make_fleet(2, 3)
    end = START + timedelta(hours=2)
    whole = list(Simulation(fleet, start=START, end=end))
    sim = Simulation(fleet, start=START, end=end)
    stepped = []
    t = START
    while not sim.done:
        chunk = sim.step(t)
        assert all(m.at <= t for m in chunk)
        stepped += chunk
        t += timedelta(minutes=7)
        if t > end + timedelta(hours=1):
            break
    assert _wire(stepped) == _wire(whole)
    assert [m.at for m in whole] == sorted(m.at for m in whole)
    assert next(iter(generate(fleet, START, end)))[1] == "status"


def test_every_message_conforms_and_hostile_ones_are_rejected_for_the_right_reason(day_run) -> None:
    sim, msgs = day_run
    result = replay(sim.fleet, msgs, start=sim.start, end=sim.end)
    assert result.nonconforming == []
    reasons = Counter(rej.reason for _m, rej in result.rejected)
    assert set(reasons) == {
        Reason.JSON,
        Reason.NOT_OBJECT,
        Reason.RANGE,
        Reason.OVERSIZE,
        Reason.TOPIC,
        Reason.FUTURE_TS,
        Reason.DEVICE_MISMATCH,
        Reason.SCHEMA,
    }
    assert len(result.rejected) == len(HOSTILE_VARIANTS)
    kinds = Counter(m.label for m in msgs)
    assert kinds["status"] >= 100  # one per device on connect, plus recoveries
    assert kinds["batch"] == 1 and kinds["event:cancel"] == 1 and kinds["event:sos"] == 1
    assert kinds["event:fall"] == 3  # fall, the cancelled fall, the fall stored while offline
    # both timestamp forms of the protocol are exercised: RFC 3339 with offset and epoch milliseconds
    wb = next(m for m in msgs if m.kind == "telemetry" and m.device_id.endswith("-wb"))
    sensor = next(m for m in msgs if m.kind == "telemetry" and m.device_id.endswith("-kit"))
    assert isinstance(wb.payload["ts"], str)
    assert wb.payload["ts"].endswith(("+08:00", "+00:00", "-08:00"))
    assert isinstance(sensor.payload["ts"], int)


def test_one_day_of_twenty_residents_raises_exactly_the_injected_incidents(day_run) -> None:
    sim, msgs = day_run
    assert {i.kind for i in sim.injected} == set(KINDS)
    assert all(sim.start <= i.at and i.until <= sim.end for i in sim.injected)
    expected = {(i.resident_key, rule, prio) for i in sim.injected for rule, prio in i.expected_alerts}
    result = replay(sim.fleet, msgs, start=sim.start, end=sim.end)
    assert result.alerts == expected
    # and the incidents were really needed for those: the same day without them raises nothing at all
    quiet = Simulation(sim.fleet, start=START, end=START + DAY)
    assert replay(sim.fleet, list(quiet), start=quiet.start, end=quiet.end).alerts == set()


def test_normal_routine_invariants_hold_over_two_days() -> None:
    fleet = make_fleet(10, 99)
    sim = Simulation(fleet, start=START - timedelta(hours=5), end=START + 2 * DAY)
    msgs = list(sim)
    result = replay(fleet, msgs, start=sim.start, end=sim.end)
    stats = result.stats
    assert result.alerts == set() and result.nonconforming == []
    assert _engine_replay(fleet, msgs)[0] == set()  # the engine's own rules agree: no false alarms
    assert stats["longest_waking_gap_s"] < 4 * 3600
    assert stats["longest_bathroom_s"] < 45 * 60
    assert stats["hr_min"] >= 40 and stats["hr_max"] <= 130
    assert stats["spo2_min"] >= 90
    assert stats["battery_min"] >= 15
    assert stats["outing_samples"] > 0  # people do go out (within the compound) by day
    # the wristband comes off (shower, charging) and goes back on, each time for less than an hour
    removed = [m for m in msgs if m.label == "event:removed"]
    assert len(removed) >= 10 * 2 * 2 - 3
    # battery drains and is recharged
    levels = [m.payload["battery"] for m in msgs if m.kind == "telemetry" and m.device_id == "sim-r000-wb"]
    assert max(levels) >= 98 and min(levels) < 80
    # heart rate varies with the time of day and activity
    by_act = [m.payload["hr"] for m in msgs if m.device_id == "sim-r000-wb" and "hr" in (m.payload or {})]
    assert max(by_act) - min(by_act) >= 15


def test_incident_details() -> None:
    fleet = make_fleet(4, 5)
    specs = [
        spec_from_dict({"kind": "cancel", "resident": "r000", "at": "+10m", "delay": "30s"}),
        spec_from_dict({"kind": "tachycardia", "resident": 1, "at": "+20m", "duration": "3m"}),
        spec_from_dict({"kind": "connection_loss", "resident": "r002", "at": "+5m", "duration": "30m"}),
        spec_from_dict({"kind": "device_silent", "resident": "r003", "at": "+5m", "device": "bathroom"}),
    ]
    sim = Simulation(fleet, start=START, end=START + timedelta(hours=2), incidents=specs)
    msgs = list(sim)
    events = [
        m
        for m in msgs
        if m.device_id == "sim-r000-wb" and m.kind == "event" and m.payload["type"] in ("fall", "cancel")
    ]
    fall, cancel = events
    assert cancel.payload["ref_seq"] == fall.payload["seq"]
    assert cancel.at - fall.at == timedelta(seconds=30)
    assert fall.at == START + timedelta(minutes=10)
    hr = [
        m.payload.get("hr")
        for m in msgs
        if m.device_id == "sim-r001-wb"
        and m.kind == "telemetry"
        and START + timedelta(minutes=20) <= m.at < START + timedelta(minutes=23)
    ]
    assert len(hr) == 3 and all(h > 130 for h in hr)
    # store-and-forward: nothing live for 30 minutes, then one late batch holding those readings
    r2 = [m for m in msgs if m.device_id == "sim-r002-wb"]
    live = [m.at for m in r2 if m.kind == "telemetry" and "samples" not in m.payload]
    assert not any(START + timedelta(minutes=5) <= t < START + timedelta(minutes=35) for t in live)
    batch = next(m for m in r2 if m.label == "batch")
    assert batch.at == START + timedelta(minutes=35) and len(batch.payload["samples"]) == 30
    verdict = parse(batch.topic, batch.encode(), batch.at)
    assert isinstance(verdict, Accepted) and len(verdict.samples) == 30
    assert all(s.ts < batch.at for s in verdict.samples)
    # a silent device sends nothing for its window, then says it is online again
    bath = [m for m in msgs if m.device_id == "sim-r003-bath"]
    assert not any(START + timedelta(minutes=5) <= m.at < START + timedelta(minutes=35) for m in bath)
    back = next(m for m in bath if m.at >= START + timedelta(minutes=35))
    assert back.kind == "status" and back.payload["online"] is True
    placed = {i.kind: i for i in sim.injected}
    assert placed["connection_loss"].expected_alerts == (("silence", 3),)
    assert placed["cancel"].wearer_cancelled and placed["cancel"].expected_rule == EXPECTED["fall"][0]


def test_scenario_file_parsing() -> None:
    scen = parse_scenario(
        json.loads("""{
        "residents": 5, "seed": 3, "speed": 60, "duration": "6h", "start": "2026-12-02T00:00:00+08:00",
        "incidents": [{"kind": "no_motion", "resident": "r002", "at": "09:30", "duration": "5h"},
                      {"kind": "hostile", "resident": 1, "at": "+1h", "variant": "hr_900"}]}""")
    )
    assert scen.residents == 5 and scen.duration_s == 6 * 3600 and scen.start == START
    assert scen.incidents[0].duration_s == 5 * 3600 and scen.incidents[1].variant == "hr_900"
    with pytest.raises(ValueError, match="unknown incident kind"):
        spec_from_dict({"kind": "explode"})
    with pytest.raises(ValueError, match="unknown incident field"):
        spec_from_dict({"kind": "fall", "when": "now"})
    with pytest.raises(ValueError, match="unknown scenario field"):
        parse_scenario({"incidnets": []})


def _engine_replay(fleet, msgs) -> tuple[set[tuple[str, str, int]], list]:
    """Feed what the devices sent through the alert engine's own pure rules (alerts.rules.replay), one
    resident at a time so that every action is attributed to its resident."""
    from alerts.models import DeviceInfo, Raise, ResidentInfo
    from alerts.rules import replay as rules_replay

    accepted: dict[str, list] = {}
    owner = {d.id: r.key for r, d in fleet.devices()}
    for m in msgs:
        verdict = parse(m.topic, m.encode(), m.at)
        if isinstance(verdict, Accepted):
            accepted.setdefault(owner[m.device_id], []).append((m.device_id, verdict))
    raised, actions = set(), []
    for i, res in enumerate(fleet.residents, start=1):
        devices = tuple(DeviceInfo(d.id, d.kind, i, d.room, d.report_interval_s) for d in res.devices)
        info = ResidentInfo(
            i, res.timezone, res.home_lat, res.home_lon, res.geofence_m, res.dementia, devices=devices
        )
        acts, _states = rules_replay([info], accepted.get(res.key, []))
        actions += acts
        raised |= {(res.key, a.rule, a.priority) for a in acts if isinstance(a, Raise)}
    return raised, actions


def test_the_alert_engine_rules_raise_exactly_the_injected_incidents(day_run) -> None:
    from alerts.models import Cancel, Raise

    sim, msgs = day_run
    expected = {(i.resident_key, rule, prio) for i in sim.injected for rule, prio in i.expected_alerts}
    raised, actions = _engine_replay(sim.fleet, msgs)
    assert raised == expected
    cancels = [a for a in actions if isinstance(a, Cancel)]
    assert len(cancels) == 1 and cancels[0].honoured and cancels[0].rule == "fall"
    late = [a for a in actions if isinstance(a, Raise) and a.rule == "fall" and a.late]
    lost = next(i for i in sim.injected if i.kind == "connection_loss")
    assert [a.device_id for a in late] == [lost.device_id]


def test_virtual_clock_runs_fast_but_never_ahead_of_real_time() -> None:
    from device_sim.runner import VirtualClock

    real = [datetime(2026, 12, 3, 12, 0, tzinfo=UTC)]
    clock = VirtualClock(real[0] - timedelta(hours=1), speed=60, now=lambda: real[0])
    assert clock() == real[0] - timedelta(hours=1)
    real[0] += timedelta(seconds=30)
    assert clock() == real[0] - timedelta(seconds=30) - timedelta(hours=1) + timedelta(minutes=30)
    for _ in range(10):
        real[0] += timedelta(seconds=20)
        assert clock() <= real[0]
    assert clock() == real[0]  # caught up: from now on it follows real time
    real[0] += timedelta(seconds=5)
    assert clock() == real[0]
    with pytest.raises(ValueError, match="future"):
        VirtualClock(real[0] + timedelta(minutes=5), speed=1, now=lambda: real[0])


def test_command_line_incidents() -> None:
    from device_sim.incidents import parse_incident_arg, resolve_at

    assert parse_incident_arg("fall") == IncidentSpec("fall")
    spec = parse_incident_arg("fall:r003:+10m")
    assert (spec.resident, spec.at, spec.duration_s) == ("r003", "+10m", None)
    spec = parse_incident_arg("no_motion:2:09:30:5h")
    assert (spec.resident, spec.at, spec.duration_s) == ("2", "09:30", 5 * 3600)
    spec = parse_incident_arg("long_bathroom:r001:09:30")
    assert (spec.at, spec.duration_s) == ("09:30", None)
    # local clock times are the resident's own: 09:30 in Shanghai is 01:30 UTC
    assert resolve_at("09:30", START, "Asia/Shanghai") == datetime(2026, 12, 2, 1, 30, tzinfo=UTC)
    assert resolve_at("d1 09:30", START, "Asia/Shanghai") == datetime(2026, 12, 3, 1, 30, tzinfo=UTC)
    assert resolve_at("+90m", START, "Europe/London") == START + timedelta(minutes=90)
    with pytest.raises(ValueError):
        parse_incident_arg("meteor:r000")
