"""The load mode's wire client (device_sim/wire.py) against a real mosquitto: messages arrive intact as
protocol v1, refusals are reported in words, a closed connection ends a publish instead of hanging."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carewatch.broker import hash_password, render_acl, render_passwd, write_atomic
from carewatch.contract import Accepted, parse
from device_sim.fleet import make_fleet, save_fleet
from device_sim.publisher import run_load
from device_sim.routine import Simulation
from device_sim.wire import BrokerClosed, ConnectRefused, WireClient, prepare, properties
from tests.sim.test_publish import _env, _subscribe

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "svc-" + "s" * 24


def _auth_broker(broker_factory, devices: list[str]):
    """A broker with password file and ACL as CareWatch renders them: one service account, some devices."""
    broker = broker_factory(auth=True)
    entries = [("carewatch-bench", hash_password(PASSWORD))] + [
        (d, hash_password("pw-" + d)) for d in devices
    ]
    write_atomic(broker.passwd_file, render_passwd(entries))
    write_atomic(broker.acl_file, render_acl(devices))
    broker.reload()
    time.sleep(0.3)  # SIGHUP is handled asynchronously
    return broker


@pytest.mark.parametrize("protocol", [5, 4])
def test_wire_client_messages_arrive_intact_as_protocol_v1(broker_factory, uid, protocol) -> None:
    broker = broker_factory()
    fleet = make_fleet(3, 5, prefix=f"w{uid}")
    now = datetime.now(UTC)
    msgs = list(Simulation(fleet, start=now - timedelta(hours=2), end=now, seed=5))
    assert len(msgs) > 300 and any(m.retain for m in msgs)
    inbox = _subscribe(broker.url(), f"sub-{uid}")
    client = WireClient(broker.url(), f"wire-{uid}", protocol=protocol, batch=64)
    try:
        for m in msgs:
            client.publish(m.topic, m.encode(), retain=m.retain, tag=1 if m.kind == "status" else 0)
        assert client.wait_acked(30) == len(msgs)
        assert client.refused == 0 and client.unexpected == 0 and client.closed is None
        assert client.acked_by_tag[1] == sum(m.kind == "status" for m in msgs)
        got = inbox.wait_for(lambda items: len(items) >= len(msgs), timeout=20)
        assert sorted((t, p) for t, p, _r in got) == sorted((m.topic, m.encode()) for m in msgs)
        received = datetime.now(UTC)
        assert all(isinstance(parse(t, p, received), Accepted) for t, p, _r in got)
    finally:
        client.close()
        assert inbox.sub is not None
        inbox.sub.stop()
    # the retained status messages really were published retained
    late = _subscribe(broker.url(), f"late-{uid}", "care/v1/+/status")
    try:
        retained = late.wait_for(lambda items: len(items) >= len(fleet.devices()), timeout=10)
        assert {t.split("/")[2] for t, _p, r in retained if r} == {d.id for _r, d in fleet.devices()}
    finally:
        assert late.sub is not None
        late.sub.stop()


def test_prepared_packets_frame_like_mqtt() -> None:
    head, tail = prepare("care/v1/d/telemetry", b"{}", protocol=5)
    assert head[0] == 0x32 and head[1] == 2 + 19 + 2 + 1 + 2 and tail == b"\x00{}"
    head, tail = prepare("care/v1/d/status", b"{}", retain=True, protocol=4)
    assert head[0] == 0x33 and tail == b"{}"
    assert properties(b"\x06\x21\x00\x14\x25\x01") == {0x21: 20, 0x25: 1}


def test_bad_credentials_give_a_clear_error_not_a_hang(broker_factory, uid, tmp_path) -> None:
    broker = _auth_broker(broker_factory, [])
    for protocol in (5, 4):
        with pytest.raises(ConnectRefused, match=r"refused the connection \(user 'carewatch-bench'\): "):
            WireClient(broker.url("carewatch-bench", "wrong"), f"bad-{uid}", protocol=protocol)
    fleet = make_fleet(4, 3, prefix=f"b{uid}")
    with pytest.raises(ConnectionError, match=r"not authorized|bad user name or password"):
        run_load(
            broker.url("carewatch-bench", "wrong"),
            fleet,
            rate=100,
            processes=2,
            duration_s=2,
            seed=1,
            client_id=f"bad-{uid}",
        )
    # and the command line says so and exits 2
    fleet.secrets = {d.id: "unused" for _r, d in fleet.devices()}
    save_fleet(fleet, tmp_path / "fleet.json")
    cli = ["--fleet", str(tmp_path / "fleet.json"), "--enrol", "none", "--load", "100", "--duration", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "device_sim", *cli],
        env=_env(CAREWATCH_MQTT_URL=broker.url("carewatch-bench", "wrong")),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refused the connection (user 'carewatch-bench')" in proc.stderr
    assert "wrong" not in proc.stderr  # the password is never printed


def test_a_refused_puback_is_counted_with_its_reason(broker_factory, uid) -> None:
    dev, other = f"d{uid}", f"o{uid}"
    broker = _auth_broker(broker_factory, [dev, other])
    client = WireClient(broker.url(dev, "pw-" + dev), f"acl-{uid}")
    try:
        client.publish(f"care/v1/{other}/telemetry", b'{"seq":1,"hr":70}', tag=3)  # not its own topic
        client.publish(f"care/v1/{dev}/telemetry", b'{"seq":2,"hr":70}')
        assert client.wait_acked(10) == 1
        assert client.refused == 1 and client.refused_by_tag[3] == 1
        assert dict(client.refusals) == {"not authorized (0x87)": 1}
    finally:
        client.close()


def test_the_broker_closing_the_connection_ends_publishing(broker_factory, uid) -> None:
    broker = broker_factory()
    client = WireClient(broker.url(), f"gone-{uid}", batch=16)
    try:
        for i in range(100):
            client.publish(f"care/v1/g{uid}/telemetry", b'{"seq":%d}' % i)
        assert client.wait_acked(10) == 100
        broker.stop(kill=True)
        with pytest.raises(BrokerClosed, match=r"closed the connection|failed"):
            for i in range(100_000):  # the reader sees the close; the next batch is refused, not queued
                client.publish(f"care/v1/g{uid}/telemetry", b'{"seq":%d}' % i)
        assert client.closed is not None
    finally:
        client.close()


def test_a_load_run_whose_broker_goes_away_reports_it_and_returns(broker_factory, uid) -> None:
    broker = broker_factory()
    fleet = make_fleet(6, 9, prefix=f"k{uid}")

    def progress(line: str) -> None:
        if "publishing" in line:  # both processes connected and started: now take the broker away
            threading.Timer(0.5, broker.stop, kwargs={"kill": True}).start()

    result = run_load(
        broker.url(),
        fleet,
        rate=1000,
        processes=2,
        duration_s=30,
        seed=9,
        client_id=f"kill-{uid}",
        progress=progress,
    )
    assert result.disconnects == 2 and result.errors >= 2
    assert all("closed the connection" in p or "failed" in p for p in result.problems), result.problems
    assert result.acked > 0 and result.acked + result.lost == result.sent
    assert "disconnects: 2" in result.render()
