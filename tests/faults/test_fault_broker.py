"""The broker restarted (persistence on) during a burst: QoS 1 messages queued for the consumers'
persistent sessions are delivered after the restart, and devices and services reconnect by themselves."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from carewatch.broker import ManagedBroker
from tests.support import Publisher, add_device, add_resident, scalar, wait_for

from .conftest import System, connect, fall_summary, iso, probe, residents_with_wristbands


def _phase(devices: dict[int, str], rounds: range, fall: str, t0: datetime) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for k in rounds:
        at = iso(t0 + timedelta(seconds=k))
        for device in devices.values():
            out.append((f"care/v1/{device}/telemetry", json.dumps({"ts": at, "seq": k, "hr": 75}).encode()))
    at = iso(t0 + timedelta(seconds=rounds.start))
    out.append(
        (f"care/v1/{fall}/event", json.dumps({"ts": at, "seq": rounds.start, "type": "fall"}).encode())
    )
    return out


def test_broker_restart_mid_burst_delivers_queued_messages_and_everyone_reconnects(
    fresh_database_url: str,
    broker_factory: Callable[..., ManagedBroker],
    uid: str,
    system_factory: Callable[..., System],
) -> None:
    broker = broker_factory()
    url = broker.url()
    with connect(fresh_database_url) as conn:
        devices = residents_with_wristbands(conn, uid, 3)
        probe_rid = add_resident(conn, f"Probe {uid}")
        add_device(conn, f"probe-{uid}", probe_rid)
        system = system_factory(fresh_database_url, url, uid)
        system.start("ingest", "alerts")
        probe(conn, url, uid, f"probe-{uid}", probe_rid, fall=True)

        ids = list(devices.values())
        t0 = datetime.now(UTC) - timedelta(minutes=5)
        pub = Publisher(url, f"dev-{uid}")  # one device gateway; paho reconnects it after the restart
        try:
            pub.publish_all(_phase(devices, range(0, 100), ids[0], t0))
            # Freeze both consumers so the next phase waits in their persistent sessions (queued or
            # in flight, unacked) when the broker goes down.
            for proc in system.procs.values():
                os.killpg(proc.pid, signal.SIGSTOP)
            try:
                pub.publish_all(_phase(devices, range(100, 200), ids[1], t0))
                time.sleep(1.5)  # past autosave_interval; a clean stop writes everything anyway
                broker.restart()  # same port: every client reconnects to the same URL
                assert broker.port == int(url.rsplit(":", 1)[1])
            finally:
                for proc in system.procs.values():
                    os.killpg(proc.pid, signal.SIGCONT)
            wait_for(pub.client.is_connected, 30, what="the device publisher reconnecting")
            pub.publish_all(_phase(devices, range(200, 300), ids[2], t0))
        finally:
            pub.close()

        expected = 300 * len(ids)
        wait_for(
            lambda: (
                scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (ids,)) == expected
            ),
            90,
            interval=0.5,
            what="every reading, including those queued across the restart",
        )
        rids = list(devices)
        try:
            wait_for(
                lambda: all(v[2] >= 1 for v in fall_summary(conn, rids).values()),
                60,
                interval=0.5,
                what="a call per fall, including the one queued across the restart",
            )
        except AssertionError as exc:
            events = conn.execute(
                "SELECT device_id, ts, seq FROM events WHERE device_id = ANY(%s)", (ids,)
            ).fetchall()
            raise AssertionError(
                f"{exc}; per resident {fall_summary(conn, rids)}; stored fall events {events}; "
                f"engine log: {system.log('alerts').read_text()[-1500:]}"
            ) from exc
        time.sleep(1.0)
        assert scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (ids,)) == expected
        assert all(v == (1, 1, 1) for v in fall_summary(conn, rids).values())
    assert all(p.poll() is None for p in system.procs.values())
    logs = system.logs()
    assert logs.count("session present: True") >= 2, logs[-3000:]  # the sessions survived the restart
