"""The engine over the real broker and database: falls become calls, timers fire with no message at all,
state survives a restart, and a SIGKILL mid-burst never loses or doubles a call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from alerts.engine import run
from carewatch.mqtt import parse_url
from carewatch.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
Conn = psycopg.Connection[dict[str, Any]]


def settings(database_url: str, mqtt_url: str, uid: str, **kw: Any) -> Settings:
    return Settings(
        database_url=database_url,
        mqtt_url=mqtt_url,
        alerts_group=f"alerts-{uid}",
        alerts_worker_id=uid,
        alerts_tick_s=kw.pop("alerts_tick_s", 0.2),
        **kw,
    )


@contextmanager
def engine(cfg: Settings) -> Iterator[threading.Thread]:
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=run, args=(cfg, stop), kwargs={"ready": ready}, daemon=True)
    thread.start()
    try:
        assert ready.wait(15), "engine did not subscribe"
        yield thread
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive()


@contextmanager
def publisher(mqtt_url: str, uid: str) -> Iterator[Callable[[str, str, dict[str, Any]], None]]:
    target = parse_url(mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}", protocol=mqtt.MQTTv5)
    if target.username:
        client.username_pw_set(target.username, target.password)
    client.connect(target.host, target.port)
    client.loop_start()

    def publish(device: str, kind: str, body: dict[str, Any]) -> None:
        info = client.publish(f"care/v1/{device}/{kind}", json.dumps(body), qos=1)
        info.wait_for_publish(5)

    try:
        yield publish
    finally:
        client.disconnect()
        client.loop_stop()


def add_resident(db: Conn, devices: list[tuple[str, str, int]], **cols: Any) -> int:
    cols = {"name": "Test Resident", "timezone": "UTC", **cols}
    if "thresholds" in cols:
        cols["thresholds"] = json.dumps(cols["thresholds"])
    names = ", ".join(cols)
    marks = ", ".join(["%s"] * len(cols))
    row = db.execute(f"INSERT INTO residents ({names}) VALUES ({marks}) RETURNING id", list(cols.values()))
    rid = int(row.fetchone()["id"])  # type: ignore[index]
    for device_id, kind, interval in devices:
        db.execute(
            "INSERT INTO devices (id, kind, resident_id, report_interval_s) VALUES (%s, %s, %s, %s)",
            (device_id, kind, rid, interval),
        )
    return rid


def wait_for(db: Conn, sql: str, params: tuple[Any, ...], *, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = db.execute(sql, params).fetchall()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def test_fall_becomes_one_call_and_redelivery_changes_nothing(
    database_url: str, mqtt_url: str, uid: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    rid = add_resident(db, [(f"wb-{uid}", "wristband", 3600)])
    cfg = settings(database_url, mqtt_url, uid)
    fall = {"ts": iso(datetime.now(UTC)), "seq": 5, "type": "fall", "confidence": 0.93}
    with engine(cfg), publisher(mqtt_url, uid) as publish:
        started = time.monotonic()
        publish(f"wb-{uid}", "event", fall)
        calls = wait_for(db, "SELECT * FROM calls WHERE resident_id = %s", (rid,))
        latency = time.monotonic() - started
        publish(f"wb-{uid}", "event", fall)  # redelivered / duplicate
        publish(f"wb-{uid}", "event", {"ts": "not a time", "seq": 6, "type": "fall"})  # rejected: acked
        publish(
            f"wb-{uid}", "event", {"ts": iso(datetime.now(UTC)), "seq": 7, "type": "cancel", "ref_seq": 5}
        )
        cancelled = wait_for(db, "SELECT * FROM calls WHERE resident_id = %s AND cancelled_by_wearer", (rid,))
    assert len(calls) == 1 and latency < 5
    call = calls[0]
    assert (call["priority"], call["reason"], call["late"]) == (1, "fall", False)
    alerts = db.execute("SELECT * FROM alerts WHERE resident_id = %s", (rid,)).fetchall()
    assert len(alerts) == 1
    assert (alerts[0]["rule"], alerts[0]["count"], alerts[0]["call_id"]) == ("fall", 1, call["id"])
    assert db.execute("SELECT count(*) AS n FROM calls WHERE resident_id = %s", (rid,)).fetchone() == {"n": 1}
    # The wearer's cancel inside the window keeps the call, as a P3 courtesy call-back.
    assert len(cancelled) == 1 and cancelled[0]["priority"] == 3 and cancelled[0]["status"] != "resolved"
    log = db.execute(
        "SELECT from_status, to_status, reason FROM alert_log WHERE alert_id = %s ORDER BY id",
        (alerts[0]["id"],),
    ).fetchall()
    assert log[0]["to_status"] == "open" and "cancelled by wearer" in log[-1]["reason"]
    # Nothing failed along the way, including the hotline's scheduled jobs run by the engine.
    assert [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []


def test_two_workers_on_a_shared_subscription_open_one_call_per_fall(
    database_url: str, mqtt_url: str, uid: str, db: Conn
) -> None:
    n = 10
    residents = [add_resident(db, [(f"wb{i}-{uid}", "wristband", 3600)]) for i in range(n)]
    now = datetime.now(UTC)
    with (
        engine(settings(database_url, mqtt_url, uid)),
        engine(settings(database_url, mqtt_url, uid).model_copy(update={"alerts_worker_id": f"{uid}-b"})),
        publisher(mqtt_url, uid) as publish,
    ):
        for rep in range(3):  # every fall published three times: duplicates land on both workers
            for i in range(n):
                publish(f"wb{i}-{uid}", "event", {"ts": iso(now), "seq": 1, "type": "fall"})
                publish(f"wb{i}-{uid}", "event", {"ts": iso(now), "seq": 2 + rep, "type": "sos"})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT count(*) AS n FROM alerts WHERE resident_id = ANY(%s) AND rule = 'sos' AND count = 3",
                (residents,),
            ).fetchone()
            if row and row["n"] == n:
                break
            time.sleep(0.1)
    calls = db.execute(
        "SELECT resident_id, count(*) AS n FROM calls WHERE resident_id = ANY(%s) GROUP BY resident_id",
        (residents,),
    ).fetchall()
    assert len(calls) == n and all(r["n"] == 1 for r in calls)
    alerts = db.execute(
        "SELECT rule, count, call_id FROM alerts WHERE resident_id = ANY(%s)", (residents,)
    ).fetchall()
    falls = [a for a in alerts if a["rule"] == "fall"]
    sos = [a for a in alerts if a["rule"] == "sos"]
    assert len(falls) == n and all(a["count"] == 1 and a["call_id"] for a in falls)
    assert len(sos) == n and all(a["count"] == 3 and a["call_id"] for a in sos)


def test_late_fall_raises_call_marked_late(database_url: str, mqtt_url: str, uid: str, db: Conn) -> None:
    rid = add_resident(db, [(f"wb-{uid}", "wristband", 3600)])
    original = datetime.now(UTC) - timedelta(hours=2)
    with engine(settings(database_url, mqtt_url, uid)), publisher(mqtt_url, uid) as publish:
        publish(f"wb-{uid}", "event", {"ts": iso(original), "seq": 1, "type": "fall"})
        calls = wait_for(db, "SELECT * FROM calls WHERE resident_id = %s", (rid,))
    assert len(calls) == 1 and calls[0]["late"] is True
    assert abs((calls[0]["event_at"] - original).total_seconds()) < 0.01


def test_silence_with_no_message_at_all(database_url: str, mqtt_url: str, uid: str, db: Conn) -> None:
    rid = add_resident(db, [(f"wb-{uid}", "wristband", 1)])
    with engine(settings(database_url, mqtt_url, uid)):
        alerts = wait_for(db, "SELECT * FROM alerts WHERE resident_id = %s AND rule = 'silence'", (rid,))
    assert len(alerts) == 1
    assert (alerts[0]["priority"], alerts[0]["status"], alerts[0]["device_id"]) == (3, "open", f"wb-{uid}")
    assert alerts[0]["call_id"] is not None


def test_silence_clears_itself_when_device_talks(
    database_url: str, mqtt_url: str, uid: str, db: Conn
) -> None:
    rid = add_resident(db, [(f"wb-{uid}", "wristband", 1)])
    with engine(settings(database_url, mqtt_url, uid)), publisher(mqtt_url, uid) as publish:
        assert wait_for(db, "SELECT 1 FROM alerts WHERE resident_id = %s AND rule = 'silence'", (rid,))
        publish(f"wb-{uid}", "telemetry", {"ts": iso(datetime.now(UTC)), "seq": 1, "hr": 70, "worn": True})
        cleared = wait_for(db, "SELECT * FROM alerts WHERE resident_id = %s AND status = 'cleared'", (rid,))
    assert len(cleared) == 1 and cleared[0]["rule"] == "silence"
    log = db.execute("SELECT to_status FROM alert_log WHERE alert_id = %s ORDER BY id", (cleared[0]["id"],))
    assert [r["to_status"] for r in log] == ["open", "cleared"]


def test_inactivity_welfare_alert_with_threshold_override(
    database_url: str, mqtt_url: str, uid: str, db: Conn
) -> None:
    rid = add_resident(
        db,
        [(f"ir-{uid}", "ir_sensor", 3600)],
        thresholds={"inactivity_s": 2, "waking_start_h": 0, "waking_end_h": 24},
    )
    with engine(settings(database_url, mqtt_url, uid)), publisher(mqtt_url, uid) as publish:
        publish(f"ir-{uid}", "telemetry", {"ts": iso(datetime.now(UTC)), "seq": 1, "motion": True})
        alerts = wait_for(db, "SELECT * FROM alerts WHERE resident_id = %s AND rule = 'inactivity'", (rid,))
    assert len(alerts) == 1 and alerts[0]["priority"] == 2
    call = db.execute("SELECT * FROM calls WHERE id = %s", (alerts[0]["call_id"],)).fetchone()
    assert call is not None and call["priority"] == 2 and call["reason"] == "inactivity"


def test_restart_mid_debounce_raises_exactly_once(
    database_url: str, mqtt_url: str, uid: str, db: Conn
) -> None:
    wb = f"wb-{uid}"
    rid = add_resident(db, [(wb, "wristband", 3600)])
    cfg = settings(database_url, mqtt_url, uid)
    t0 = datetime.now(UTC) - timedelta(seconds=120)

    def hr(i: int, seconds: int) -> dict[str, Any]:
        return {"ts": iso(t0 + timedelta(seconds=seconds)), "seq": i, "hr": 150, "worn": True}

    with engine(cfg), publisher(mqtt_url, uid) as publish:
        publish(wb, "telemetry", hr(1, 0))
        publish(wb, "telemetry", hr(2, 30))
        held = wait_for(
            db,
            "SELECT state FROM engine_state WHERE resident_id = %s "
            "AND (state->'held'->'hr'->>'last_ts')::float8 >= %s",
            (rid, (t0.timestamp() + 30)),
        )
        assert held and held[0]["state"]["held"]["hr"]["since"] == pytest.approx(t0.timestamp())
    assert db.execute("SELECT count(*) AS n FROM alerts WHERE resident_id = %s", (rid,)).fetchone() == {
        "n": 0
    }
    with engine(cfg), publisher(mqtt_url, uid) as publish:
        publish(wb, "telemetry", hr(3, 60))
        publish(wb, "telemetry", hr(3, 60))
        publish(wb, "telemetry", hr(4, 70))
        alerts = wait_for(db, "SELECT * FROM alerts WHERE resident_id = %s AND rule = 'hr'", (rid,))
        wait_for(
            db,
            "SELECT 1 FROM engine_state WHERE resident_id = %s "
            "AND (state->'held'->'hr'->>'last_ts')::float8 >= %s",
            (rid, (t0.timestamp() + 70)),
        )
    assert len(alerts) == 1
    final = db.execute("SELECT count, opened_at FROM alerts WHERE resident_id = %s", (rid,)).fetchall()
    assert len(final) == 1 and final[0]["count"] == 1
    assert abs((final[0]["opened_at"] - (t0 + timedelta(seconds=60))).total_seconds()) < 0.01


def _spawn(cfg: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CAREWATCH_DATABASE_URL": cfg.database_url or "",
        "CAREWATCH_MQTT_URL": cfg.mqtt_url or "",
        "CAREWATCH_ALERTS_GROUP": cfg.alerts_group,
        "CAREWATCH_ALERTS_WORKER_ID": cfg.alerts_worker_id,
        "CAREWATCH_ALERTS_TICK_S": "0.2",
        "PYTHONPATH": str(ROOT),
    }
    try:
        import carewatch.cli  # noqa: F401

        cmd = [sys.executable, "-m", "carewatch.cli", "alerts"]
    except ImportError:
        cmd = [
            sys.executable,
            "-c",
            "import logging; logging.basicConfig(level=logging.INFO); "
            "from alerts.engine import run; from carewatch.settings import Settings; run(Settings())",
        ]
    with log_path.open("ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_sigkill_mid_burst_every_fall_has_exactly_one_call(
    database_url: str, mqtt_url: str, uid: str, db: Conn, tmp_path: Path
) -> None:
    n = 12
    residents = {i: add_resident(db, [(f"wb{i}-{uid}", "wristband", 3600)]) for i in range(n)}
    cfg = settings(database_url, mqtt_url, uid)
    log_path = tmp_path / "engine.log"
    proc = _spawn(cfg, log_path)
    try:
        # The first run creates the persistent sessions; wait until both are subscribed.
        ok = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not ok:
            ok = log_path.read_text().count("connected (session present") >= 2
            time.sleep(0.1)
        assert ok, log_path.read_text()[-2000:]
        time.sleep(0.5)  # SUBACKs follow the CONNACKs
        now = datetime.now(UTC)
        with publisher(mqtt_url, uid) as publish:
            # Resident i falls in round i; the engine is killed as soon as a few calls are committed, so
            # some falls are committed-but-maybe-unacked, some in flight, and the rest queue while it is dead.
            killed = False
            for k in range(3 * n):
                for i in range(n):
                    ts = iso(now + timedelta(milliseconds=k * 10))
                    publish(
                        f"wb{i}-{uid}", "telemetry", {"ts": ts, "seq": k, "hr": 70 + k % 20, "worn": True}
                    )
                    if k == i:
                        publish(f"wb{i}-{uid}", "event", {"ts": ts, "seq": 1000, "type": "fall"})
                if not killed:
                    row = db.execute(
                        "SELECT count(*) AS n FROM calls WHERE resident_id = ANY(%s)",
                        (list(residents.values()),),
                    ).fetchone()
                    if (row and row["n"] >= n // 4) or k == n - 1:
                        proc.send_signal(signal.SIGKILL)
                        killed = True
            proc.wait(10)
            first = db.execute(
                "SELECT count(*) AS n FROM calls WHERE resident_id = ANY(%s)", (list(residents.values()),)
            ).fetchone()
            print(f"calls committed before SIGKILL: {first}")
            proc = _spawn(cfg, log_path)
            # Redelivery of what the killed process had not acked, and the backlog queued meanwhile.
            deadline = time.monotonic() + 30
            count = 0
            while time.monotonic() < deadline:
                row = db.execute(
                    "SELECT count(DISTINCT resident_id) AS n FROM calls WHERE resident_id = ANY(%s)",
                    (list(residents.values()),),
                ).fetchone()
                count = int(row["n"]) if row else 0
                if count == n:
                    break
                time.sleep(0.1)
            time.sleep(1.0)  # let any duplicate (which must not appear) arrive
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert count == n, (first, log_path.read_text()[-3000:])
    rows = db.execute(
        """SELECT a.resident_id, count(*) AS alerts, sum(a.count) AS triggers,
                  count(DISTINCT a.call_id) AS calls
             FROM alerts a WHERE a.resident_id = ANY(%s) AND a.rule = 'fall' GROUP BY a.resident_id""",
        (list(residents.values()),),
    ).fetchall()
    assert len(rows) == n
    assert all((r["alerts"], r["triggers"], r["calls"]) == (1, 1, 1) for r in rows), rows
    per_resident = db.execute(
        "SELECT resident_id, count(*) AS n FROM calls WHERE resident_id = ANY(%s) GROUP BY resident_id",
        (list(residents.values()),),
    ).fetchall()
    assert all(r["n"] == 1 for r in per_resident)
