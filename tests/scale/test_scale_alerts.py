"""Alert-engine scale-out: rule state lives in PostgreSQL, so two `carewatch alerts` processes on one
shared subscription give exactly the calls one gives, and a SIGKILLed worker's residents are carried on by
the other.

Replay and clocks: the absence rules compare event time with the wall clock, so replaying the past at 60x
would let a timer see a shower's "removed" an hour early. The scripted half hour therefore starts 6 minutes
ago (so the first fall is genuinely late) and runs 24 minutes into the future (the engines accept that skew
here): every rule is then decided on event time alone, and both deployments see the same input at the same
moment, because they are two share groups on one broker, each receiving every message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from carewatch.broker import free_port
from device_sim.fleet import enrol_via_db, make_fleet
from device_sim.incidents import IncidentSpec
from device_sim.routine import Simulation
from tests.conftest import create_database, drop_database
from tests.support import (
    Publisher,
    add_device,
    add_resident,
    run_cli,
    service_env,
    start_service,
    stop_process,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "var" / "test" / "logs"
Conn = psycopg.Connection[dict[str, Any]]
SPEED = 60.0  # virtual seconds per wall second: a fall and its cancel 40 s later are 0.7 s apart


@pytest.fixture
def second_database_url(server_url: str) -> Iterator[str]:
    url = create_database(server_url)
    yield url
    drop_database(server_url, url)


def _engine(
    url: str, mqtt_url: str, group: str, worker: str, **extra: str
) -> tuple[subprocess.Popen[bytes], Path]:
    env = service_env(
        url,
        mqtt_url,
        CAREWATCH_ALERTS_GROUP=group,
        CAREWATCH_ALERTS_WORKER_ID=worker,
        CAREWATCH_ALERTS_TICK_S="0.5",
        **extra,
    )
    log = LOGS / f"scale-alerts-{worker}.log"
    log.unlink(missing_ok=True)
    return start_service("alerts", env, log), log


def _wait_subscribed(logs: list[Path]) -> None:
    """Both sessions of every worker connected (the SUBACKs follow within milliseconds)."""
    wait_for(
        lambda: all(p.exists() and p.read_text().count("connected (session present") >= 2 for p in logs),
        60,
        what="engine workers connected",
    )
    time.sleep(1.0)


def _outcome(url: str) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """Calls and alerts by resident key (ids may differ between databases)."""
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        calls = conn.execute(
            """SELECT r.care_notes->>'key' AS who, c.reason, c.priority, c.late, c.cancelled_by_wearer
                 FROM calls c JOIN residents r ON r.id = c.resident_id"""
        ).fetchall()
        alerts = conn.execute(
            """SELECT r.care_notes->>'key' AS who, a.rule, a.priority, a.late, a.count
                 FROM alerts a JOIN residents r ON r.id = a.resident_id"""
        ).fetchall()
    return {tuple(c.values()) for c in calls}, {tuple(a.values()) for a in alerts}


def test_two_engine_workers_give_the_same_calls_as_one(
    fresh_database_url: str, second_database_url: str, mqtt_url: str, uid: str
) -> None:
    fleet = make_fleet(12, 7, prefix=f"q{uid}")
    for url in (fresh_database_url, second_database_url):
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            enrol_via_db(conn, fleet)
    skew = {"CAREWATCH_MAX_FUTURE_SKEW_S": "3600"}
    procs = [
        _engine(fresh_database_url, mqtt_url, f"one-{uid}", f"one{uid}", **skew),
        _engine(second_database_url, mqtt_url, f"two-{uid}", f"two{uid}a", **skew),
        _engine(second_database_url, mqtt_url, f"two-{uid}", f"two{uid}b", **skew),
    ]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=6)
    incidents = [
        IncidentSpec("fall", resident=0, at=60),  # 5 minutes old when delivered: late
        IncidentSpec("sos", resident=1, at=8 * 60),
        IncidentSpec("hostile", resident=6, at=9 * 60),
        IncidentSpec("cancel", resident=2, at=10 * 60, delay_s=40),
        IncidentSpec("tachycardia", resident=3, at=12 * 60),
        IncidentSpec("bradycardia", resident=4, at=13 * 60),
        IncidentSpec("low_spo2", resident=5, at=15 * 60),
        IncidentSpec("geofence_exit_night", resident=7, at=16 * 60, duration_s=600),
        IncidentSpec("connection_loss", resident=9, at=17 * 60, duration_s=300, with_fall=True),
        IncidentSpec("fall", resident=10, at=20 * 60),
        IncidentSpec("sos", resident=10, at=25 * 60),  # attaches to the resident's open call
    ]
    sim = Simulation(fleet, start=start, end=start + timedelta(minutes=30), seed=3, incidents=incidents)
    pub = Publisher(mqtt_url, f"eq-pub-{uid}")
    try:
        _wait_subscribed([log for _, log in procs])
        t0 = time.monotonic()
        sent = 0
        while not sim.done and time.monotonic() - t0 < 120:
            batch = sim.step(start + timedelta(seconds=SPEED * (time.monotonic() - t0)))
            sent += pub.publish_all([(m.topic, m.encode()) for m in batch])
            time.sleep(0.05)
        assert sim.done, "replay did not finish"

        def settled() -> tuple[Any, ...] | None:
            first = (_outcome(fresh_database_url), _outcome(second_database_url))
            time.sleep(2.0)
            again = (_outcome(fresh_database_url), _outcome(second_database_url))
            return first if first == again and first[0] == first[1] else None

        try:
            one, two = wait_for(settled, 30, interval=0.1, what="both deployments settled and equal")
        except AssertionError:
            one, two = _outcome(fresh_database_url), _outcome(second_database_url)
        print(f"\nreplayed {sent} messages; one worker: {sorted(one[0])} calls, {sorted(one[1])} alerts")
        assert one == two, (one, two)
    finally:
        pub.close()
        for proc, _ in procs:
            stop_process(proc)
    calls, alerts = one
    by_key = {r.key: r for r in fleet.residents}
    # the comparison is not vacuous: the scripted emergencies are all there, with their flags
    assert ("r000", "fall", 1, True, False) in calls  # late
    assert ("r001", "sos", 1, False, False) in calls
    assert any(c[0] == "r002" and c[1] == "fall" and c[4] for c in calls)  # cancelled by the wearer
    assert any(c[:3] == ("r009", "fall", 1) for c in calls)  # held by the device while offline
    for key, rule in (("r003", "hr"), ("r004", "hr"), ("r005", "spo2"), ("r007", "geofence")):
        assert any(a[0] == key and a[1] == rule for a in alerts), (key, rule, alerts)
    assert len([c for c in calls if c[0] == "r010"]) == 1  # the SOS joined the open fall call
    assert not any(a[0] == "r006" for a in alerts)  # hostile input raises nothing
    assert set(by_key) >= {c[0] for c in calls}


def test_killed_worker_residents_are_carried_on_without_a_missed_or_double_call(
    fresh_database_url: str, mqtt_url: str, uid: str
) -> None:
    url = fresh_database_url
    n = 16
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        residents = []
        for i in range(n):
            rid = add_resident(conn, f"Kill {i} {uid}", timezone="UTC")
            add_device(conn, f"kw{i}-{uid}", rid, report_interval_s=3600)
            residents.append(rid)
        quiet = add_resident(conn, f"Quiet {uid}", timezone="UTC")
        add_device(conn, f"kq-{uid}", quiet, report_interval_s=2)  # silent after 6 s of wall clock
    group = f"kill-{uid}"
    a, a_log = _engine(url, mqtt_url, group, f"k{uid}a")
    b_metrics = free_port()
    b, b_log = _engine(url, mqtt_url, group, f"k{uid}b", CAREWATCH_METRICS_PORT=str(b_metrics))
    pub = Publisher(mqtt_url, f"kill-pub-{uid}")
    t0 = datetime.now(UTC) - timedelta(seconds=60)

    def reading(i: int, seq: int, at: datetime, hr: int) -> tuple[str, str]:
        body = f'{{"ts": "{at.isoformat()}", "seq": {seq}, "hr": {hr}, "worn": true}}'
        return (f"care/v1/kw{i}-{uid}/telemetry", body)

    def fall(i: int, at: datetime) -> tuple[str, str]:
        return (f"care/v1/kw{i}-{uid}/event", f'{{"ts": "{at.isoformat()}", "seq": 900, "type": "fall"}}')

    def fall_calls(conn: Conn) -> list[dict[str, Any]]:
        return conn.execute(
            """SELECT a.resident_id, count(*) AS alerts, sum(a.count) AS triggers,
                      count(DISTINCT a.call_id) AS calls
                 FROM alerts a WHERE a.rule = 'fall' GROUP BY a.resident_id"""
        ).fetchall()

    try:
        _wait_subscribed([a_log, b_log])
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            # Both alive: every resident's heart rate goes high (the debounce starts on whichever worker).
            pub.publish_all([reading(i, 1, t0, 150) for i in range(n)])
            pub.publish_all([(f"care/v1/kq-{uid}/telemetry", json.dumps({"ts": t0.isoformat(), "seq": 1}))])
            wait_for(
                lambda: (
                    conn.execute(
                        "SELECT count(*) AS n FROM engine_state "
                        "WHERE state->'held'->'hr'->>'since' IS NOT NULL"
                    ).fetchone()["n"]  # type: ignore[index]
                    == n
                ),
                20,
                what="debounce started for every resident",
            )
            # Mid-burst: half the falls are out, then worker A dies with whatever it holds.
            pub.publish_all([fall(i, t0 + timedelta(seconds=5)) for i in range(n // 2)])
            stop_process(a, kill=True)
            # While A is dead: the rest of the falls, and the readings that complete every debounce.
            pub.publish_all([fall(i, t0 + timedelta(seconds=5)) for i in range(n // 2, n)])
            pub.publish_all([reading(i, 2, t0 + timedelta(seconds=70), 150) for i in range(n)])
            # B runs the timers alone now (A's row locks died with its connection): the quiet device's
            # silence is raised by B, once.
            wait_for(
                lambda: (
                    conn.execute(
                        "SELECT count(*) AS n FROM alerts WHERE resident_id = %s AND rule = 'silence'",
                        (quiet,),
                    ).fetchone()["n"]  # type: ignore[index]
                    == 1
                ),
                30,
                what="silence raised by the surviving worker",
            )
            time.sleep(2.0)
            while_dead = {r["resident_id"] for r in fall_calls(conn)}
            hr_while_dead = conn.execute("SELECT count(*) AS n FROM alerts WHERE rule = 'hr'").fetchone()
            print(
                f"\nwhile A was dead: {len(while_dead)} of {n} falls became calls via B, "
                f"{hr_while_dead['n'] if hr_while_dead else 0} of {n} hr alerts (telemetry waits in A's session)"  # noqa: E501
            )
            # events are fanned out to every worker, so no fall waits for the dead one: B raised them all
            assert len(while_dead) == n, f"only {len(while_dead)} of {n} falls handled while A was dead"
            # the compose healthcheck of an alerts container probes its metrics port
            probe = subprocess.run(
                [sys.executable, str(ROOT / "deploy" / "healthcheck.py")],
                env={"CAREWATCH_METRICS_PORT": str(b_metrics), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                timeout=20,
            )
            assert probe.returncode == 0, probe.stderr
            # A comes back under its id: mosquitto hands it what waited in its session.
            a, _ = _engine(url, mqtt_url, group, f"k{uid}a")
            wait_for(lambda: len(fall_calls(conn)) == n, 60, what="a call for every fall")
            wait_for(
                lambda: (
                    conn.execute("SELECT count(*) AS n FROM alerts WHERE rule = 'hr'").fetchone()["n"]  # type: ignore[index]
                    == n
                ),
                30,
                what="an hr alert for every resident",
            )
            time.sleep(1.5)  # a duplicate, which must not appear, would arrive now
            rows = fall_calls(conn)
            assert len(rows) == n
            assert all((r["alerts"], r["triggers"], r["calls"]) == (1, 1, 1) for r in rows), rows
            per = conn.execute(
                "SELECT resident_id, count(*) AS n FROM calls GROUP BY resident_id HAVING count(*) > 1"
            ).fetchall()
            assert per == []
            hr = conn.execute(
                "SELECT resident_id, count(*) AS n, min(count) AS c FROM alerts WHERE rule = 'hr' GROUP BY 1"
            ).fetchall()
            assert len(hr) == n and all(r["n"] == 1 for r in hr), hr
            assert conn.execute(
                "SELECT count(*) AS n FROM alerts WHERE resident_id = %s AND rule = 'silence'", (quiet,)
            ).fetchone() == {"n": 1}
    finally:
        pub.close()
        stop_process(a)
        stop_process(b)


def test_retiring_an_engine_worker_id_decides_what_it_held_and_hands_its_share_on(
    fresh_database_url: str, mqtt_url: str, uid: str
) -> None:
    """Scaling down the engine: a stopped worker's telemetry share waits in its session until `carewatch
    alerts --retire` (same worker id) decides on it and ends the session; then every reading reaches the
    worker that stays."""
    url = fresh_database_url
    n = 40
    devices = [f"rt{i}-{uid}" for i in range(n)]
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for i, dev in enumerate(devices):
            add_device(conn, dev, add_resident(conn, f"Retire {i} {uid}"), report_interval_s=3600)
    group = f"retire-{uid}"
    gone, gone_log = _engine(url, mqtt_url, group, f"g{uid}")
    stays, stays_log = _engine(url, mqtt_url, group, f"s{uid}")
    pub = Publisher(mqtt_url, f"retire-alerts-pub-{uid}")

    def seen_since(conn: Conn, ts_s: float) -> int:
        row = conn.execute(
            "SELECT count(*) AS n FROM engine_state WHERE (state->>'latest_ts')::float8 >= %s", (ts_s,)
        ).fetchone()
        return int(row["n"]) if row else 0

    def burst() -> float:
        ts = time.time()
        body = json.dumps({"ts": int(ts * 1000), "seq": int(ts), "hr": 72, "worn": True})
        pub.publish_all([(f"care/v1/{dev}/telemetry", body) for dev in devices])
        return int(ts * 1000) / 1000

    try:
        _wait_subscribed([gone_log, stays_log])
        stop_process(gone, kill=True)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            first = burst()
            time.sleep(3.0)
            handled = seen_since(conn, first)
            held = n - handled
            assert 0 < handled < n, "the round robin did not split the burst: nothing to retire"

            env = service_env(
                url, mqtt_url, CAREWATCH_ALERTS_GROUP=group, CAREWATCH_ALERTS_WORKER_ID=f"g{uid}"
            )
            done = run_cli(["alerts", "--retire"], env)
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"retired: {held} held messages handled" in done.stdout
            assert seen_since(conn, first) == n

            second = burst()
            wait_for(lambda: seen_since(conn, second) == n, 20, what="every reading of the second burst")
    finally:
        pub.close()
        stop_process(stays)
        stop_process(gone)
