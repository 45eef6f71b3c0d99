"""The simulator against a real mosquitto: per-device credentials and ACL, Last Will, load mode, enrolment.

Publishers and subscribers never share a process (a QoS 1 publisher and subscriber in one process stall):
the simulator runs as ``python -m device_sim`` (or a small script) in a subprocess, the test subscribes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt

from carewatch.broker import hash_password, verify_password
from carewatch.contract import Accepted, parse
from carewatch.mqtt import Subscriber
from carewatch.registry_sync import sync_broker
from device_sim.fleet import enrol_via_db, load_fleet, make_fleet, save_fleet
from device_sim.incidents import load_scenario
from device_sim.publisher import run_load
from device_sim.routine import Simulation

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PASSWORD = "bench-" + "p" * 20


class Inbox:
    """Everything a subscriber received, thread-safe (paho's network thread appends)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.sub: Subscriber | None = None

    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.items.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
        assert self.sub is not None
        self.sub.ack(msg)

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.items)

    def wait_for(self, pred, timeout: float) -> list[tuple[str, bytes, bool]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = self.snapshot()
            if pred(items):
                return items
            time.sleep(0.05)
        return self.snapshot()


def _subscribe(url: str, client_id: str, topic_filter: str = "care/v1/#") -> Inbox:
    inbox = Inbox()
    inbox.sub = Subscriber(url, client_id, [(topic_filter, 1)], inbox.on_message)
    inbox.sub.start()
    deadline = time.monotonic() + 15
    while not inbox.sub.subscribed.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inbox.sub.subscribed.is_set(), "subscriber could not subscribe"
    return inbox


def _enrolled_broker(broker_factory, db, uid: str, residents: int, seed: int):
    broker = broker_factory(auth=True)
    fleet = make_fleet(residents, seed, prefix=f"t{uid}")
    secrets = enrol_via_db(db, fleet)
    sync_broker(
        db,
        broker.passwd_file,
        broker.acl_file,
        service_accounts={"carewatch-bench": hash_password(SERVICE_PASSWORD)},
        reload=broker.reload,
    )
    time.sleep(0.3)  # SIGHUP is handled asynchronously by mosquitto
    return broker, fleet, secrets


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREWATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_enrol_via_db_stores_only_hashes_and_fleet_file_is_private(db, uid, tmp_path) -> None:
    fleet = make_fleet(2, 4, prefix=f"e{uid}")
    secrets = enrol_via_db(db, fleet)
    assert len(secrets) == 10 and all(r.db_id for r in fleet.residents)
    rows = db.execute(
        "SELECT id, kind, room, resident_id, secret_hash FROM devices WHERE id LIKE %s ORDER BY id",
        (f"e{uid}-%",),
    ).fetchall()
    assert len(rows) == 10
    for row in rows:
        assert row["secret_hash"] != secrets[row["id"]]
        assert verify_password(secrets[row["id"]], row["secret_hash"])
    res = db.execute(
        "SELECT timezone, dementia, home_lat FROM residents WHERE id = %s", (fleet.residents[0].db_id,)
    ).fetchone()
    assert res["timezone"] == fleet.residents[0].timezone and res["home_lat"] == fleet.residents[0].home_lat
    path = tmp_path / "fleet.json"
    save_fleet(fleet, path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_fleet(path)
    assert again.residents == fleet.residents and again.secrets == secrets


def test_cli_run_publishes_exactly_the_simulated_messages_with_device_credentials(
    broker_factory, db, uid, tmp_path
) -> None:
    broker, fleet, _secrets = _enrolled_broker(broker_factory, db, uid, residents=2, seed=11)
    fleet_file = tmp_path / "fleet.json"
    save_fleet(fleet, fleet_file)
    start = (datetime.now(UTC) - timedelta(minutes=20)).replace(microsecond=0)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        f"seed: 5\nduration: 20m\nspeed: 0\nstart: '{start.isoformat()}'\n"
        "incidents:\n"
        "  - {kind: fall, resident: r000, at: +5m}\n"
        "  - {kind: hostile, resident: r001, at: +6m}\n"
        "  - {kind: cancel, resident: r001, at: +8m, delay: 15s}\n"
    )
    expected_msgs = list(
        Simulation(
            fleet,
            start=start,
            end=start + timedelta(minutes=20),
            seed=5,
            incidents=load_scenario(scenario).incidents,
        )
    )
    inbox = _subscribe(broker.url("carewatch-bench", SERVICE_PASSWORD), f"sub-{uid}")
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "device_sim",
                "--fleet",
                str(fleet_file),
                "--enrol",
                "none",
                "--scenario",
                str(scenario),
            ],
            env=_env(CAREWATCH_MQTT_URL=broker.url()),
            capture_output=True,
            text=True,
            timeout=90,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "incidents injected: 3" in proc.stderr
        # the broker's ACL drops the wrong-topic message: a device may only publish under its own topics
        deliverable = [m for m in expected_msgs if m.topic.count("/") == 3]
        assert len(deliverable) == len(expected_msgs) - 1
        got = inbox.wait_for(lambda items: len(items) >= len(deliverable), timeout=20)
        # every simulated message arrives and nothing else. The broker drops a device right after a
        # forbidden publish: QoS 1 messages in flight then arrive twice (at least once) and the device says
        # "online" once more on reconnecting.
        want = {(m.topic, m.encode()) for m in deliverable if m.kind != "status"}
        assert {(t, p) for t, p, _r in got if not t.endswith("/status")} == want
        statuses = {(t, p) for t, p, _r in got if t.endswith("/status")}
        assert {(m.topic, m.encode()) for m in deliverable if m.kind == "status"} <= statuses
        reconnected = {t for t, p in statuses if (t, p) not in {(m.topic, m.encode()) for m in deliverable}}
        assert len(reconnected) <= 1 and "reconnects: " in proc.stderr
        # and every message a real device would send is accepted by the protocol on arrival
        now = datetime.now(UTC)
        verdicts = [parse(t, p, now) for t, p, _r in got]
        hostile = {(m.topic, m.encode()) for m in deliverable if m.expect is not None}
        assert all(
            isinstance(v, Accepted)
            for (t, p, _r), v in zip(got, verdicts, strict=True)
            if (t, p) not in hostile
        )
    finally:
        assert inbox.sub is not None
        inbox.sub.stop()


def test_devices_connect_only_with_their_own_secret_and_leave_a_last_will(
    broker_factory, db, uid, tmp_path
) -> None:
    broker, fleet, secrets = _enrolled_broker(broker_factory, db, uid, residents=1, seed=12)
    fleet_file = tmp_path / "fleet.json"
    save_fleet(fleet, fleet_file)
    script = (
        "import sys, time\n"
        "from datetime import UTC, datetime, timedelta\n"
        "from pathlib import Path\n"
        "from device_sim.fleet import load_fleet\n"
        "from device_sim.publisher import FleetPublisher\n"
        "from device_sim.routine import Simulation\n"
        "fleet = load_fleet(Path(sys.argv[1]))\n"
        "pub = FleetPublisher(sys.argv[2], fleet, keepalive=2)\n"
        "pub.connect(timeout=20)\n"
        "now = datetime.now(UTC)\n"
        "for m in Simulation(fleet, start=now - timedelta(seconds=1), end=now).step(now):\n"
        "    pub.publish(m)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    inbox = _subscribe(broker.url("carewatch-bench", SERVICE_PASSWORD), f"sub-{uid}", "care/v1/+/status")
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(fleet_file), broker.url()],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.poll() is not None else line
        ids = {d.id for _r, d in fleet.devices()}
        online = inbox.wait_for(lambda items: len({t for t, _p, _r in items}) >= len(ids), timeout=10)
        first = {t.split("/")[2]: json.loads(p) for t, p, _r in online}
        assert set(first) == ids
        assert all(s["online"] is True and s["fw"] and "seq" in s for s in first.values())
        os.kill(proc.pid, signal.SIGKILL)  # no clean DISCONNECT: the broker must publish each Last Will
        proc.wait(10)
        gone = inbox.wait_for(
            lambda items: sum(p == b'{"online":false}' for _t, p, _r in items) >= len(ids), timeout=15
        )
        wills = {t.split("/")[2] for t, p, _r in gone if json.loads(p) == {"online": False}}
        assert wills == ids
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert inbox.sub is not None
        inbox.sub.stop()
    # another device's secret is refused by the broker: the credentials really are per device
    dev = fleet.residents[0].wristband.id
    reasons: list[object] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bad-{uid}", protocol=mqtt.MQTTv5)
    client.username_pw_set(dev, secrets[fleet.residents[0].devices[1].id])
    client.on_connect = lambda _c, _u, _f, reason, _p: reasons.append(reason)
    client.connect("127.0.0.1", broker.port, keepalive=5)
    deadline = time.monotonic() + 5
    while not reasons and time.monotonic() < deadline:
        client.loop(timeout=0.2)
    client.disconnect()
    assert len(reasons) == 1 and reasons[0].is_failure, reasons


def test_load_mode_delivers_every_message_exactly_as_counted(broker_factory, uid) -> None:
    """Two processes of raw QoS 1 connections: every message the summary counts arrives once, as protocol v1,
    and the per-kind counts add up (rates are the benchmark's business, not a test's)."""
    broker = broker_factory()
    fleet = make_fleet(40, 21, prefix=f"l{uid}")
    inbox = _subscribe(broker.url(), f"sub-{uid}")
    lines: list[str] = []
    try:
        result = run_load(
            broker.url(),
            fleet,
            rate=2000,
            processes=2,
            duration_s=2,
            seed=21,
            client_id=f"load-{uid}",
            progress=lines.append,
        )
        assert result.errors == 0 and not result.problems, result.render()
        assert result.processes == 2 and result.sent > 1000
        assert result.acked == result.sent == sum(result.by_kind.values())
        assert result.acked_by_kind == result.by_kind
        got = inbox.wait_for(lambda items: len(items) >= result.sent, timeout=30)
        time.sleep(0.5)  # anything beyond the count would show up now
        got = inbox.snapshot()
        assert len(got) == result.sent
        assert len({(t, p) for t, p, _r in got}) == len(got)  # no duplicates
        now = datetime.now(UTC)
        verdicts = [parse(t, p, now) for t, p, _r in got]
        assert all(isinstance(v, Accepted) for v in verdicts)  # protocol v1, none in the future
        kinds: Counter[str] = Counter()
        for (_t, p, _r), v in zip(got, verdicts, strict=True):
            assert isinstance(v, Accepted)
            if v.event is not None:
                kinds[f"event:{v.event.type}"] += 1
            elif v.status is not None:
                kinds["status"] += 1
            else:
                kinds["batch" if b'"samples"' in p else "telemetry"] += 1
        assert kinds == result.by_kind
        assert {"telemetry", "status"} <= set(kinds)
        assert "errors: 0" in result.render()
        assert any("publishing" in line for line in lines)
    finally:
        assert inbox.sub is not None
        inbox.sub.stop()


def test_enrol_via_api_gives_credentials_the_broker_accepts(
    broker_factory, database_url, db, uid, tmp_path
) -> None:
    """Through the real API over HTTP: residents and devices created, secrets returned once, and the API's
    rewrite of the broker's password file lets every simulated device connect."""
    import uvicorn

    from api.app import create_app
    from api.tokens import issue
    from carewatch.broker import free_port, render_passwd, write_atomic
    from carewatch.settings import Settings
    from device_sim.fleet import enrol_via_api
    from device_sim.publisher import FleetPublisher

    broker = broker_factory(auth=True)
    write_atomic(broker.passwd_file, render_passwd([("carewatch-bench", hash_password(SERVICE_PASSWORD))]))
    key = "sim-test-key-" + "k" * 32
    settings = Settings(
        database_url=database_url,
        secret_key=key,
        data_dir=tmp_path,
        broker_passwd_file=broker.passwd_file,
        broker_acl_file=broker.acl_file,
        broker_pid_file=broker.pid_file,
        login_attempts_per_minute=10_000,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        row = db.execute(
            "INSERT INTO users (username, password_hash, role) VALUES (%s, 'x', 'admin') RETURNING id",
            (f"simadmin-{uid}",),
        ).fetchone()
        token = issue(key, int(row["id"]), 0, "access", 900)
        fleet = make_fleet(1, 31, prefix=f"a{uid}")
        secrets = enrol_via_api(f"http://127.0.0.1:{port}", token, fleet)
        assert set(secrets) == {d.id for _r, d in fleet.devices()}
        rid = fleet.residents[0].db_id
        assert rid is not None
        stored = db.execute(
            "SELECT count(*) AS n FROM devices WHERE resident_id = %s AND secret_hash IS NOT NULL", (rid,)
        ).fetchone()
        assert stored["n"] == 5
        time.sleep(0.3)  # the API signalled the broker to re-read its password file
        publisher = FleetPublisher(broker.url(), fleet, client_id_suffix="")
        publisher.connect(timeout=15)
        publisher.close(wait_s=1)
        assert publisher.counts["connect_refused"] == 0
    finally:
        server.should_exit = True
        thread.join(15)
