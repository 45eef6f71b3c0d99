"""Devices with clocks hours off or in the wrong year: ingest dead-letters them with the reason, the
engine raises nothing from them, and a correct-clock fall from the same device still raises its call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from tests.support import Publisher, add_device, add_resident, scalar, wait_for

from .conftest import System, connect, fall_summary, iso, probe


def test_wrong_clocks_are_dead_lettered_and_neither_trigger_nor_suppress_alerts(
    database_url: str, mqtt_url: str, uid: str, system_factory: Callable[..., System]
) -> None:
    with connect(database_url) as conn:
        rid = add_resident(conn, f"Clock {uid}")
        device = f"clk-{uid}"
        add_device(conn, device, rid, report_interval_s=3600)
        probe_rid = add_resident(conn, f"Probe {uid}")
        add_device(conn, f"probe-{uid}", probe_rid)
        system = system_factory(database_url, mqtt_url, uid)
        system.start("ingest", "alerts")
        probe(conn, mqtt_url, uid, f"probe-{uid}", probe_rid, fall=True)

        now = datetime.now(UTC)
        ahead, wrong_year = now + timedelta(hours=5), now.replace(year=now.year - 3)
        bad = [
            # a fall and alarming vitals from a clock five hours ahead, then the same from a wrong year
            (f"care/v1/{device}/event", {"ts": iso(ahead), "seq": 1, "type": "fall"}),
            (f"care/v1/{device}/telemetry", {"ts": iso(ahead), "seq": 2, "hr": 25, "spo2": 80}),
            (f"care/v1/{device}/event", {"ts": iso(wrong_year), "seq": 3, "type": "sos"}),
            (f"care/v1/{device}/telemetry", {"ts": iso(wrong_year), "seq": 4, "hr": 190}),
        ]
        pub = Publisher(mqtt_url, f"clk-pub-{uid}")
        try:
            pub.publish_all([(t, json.dumps(p)) for t, p in bad])
            reasons = wait_for(
                lambda: (
                    [
                        r["reason"]
                        for r in conn.execute(
                            "SELECT reason FROM dead_letters WHERE device_id = %s ORDER BY id", (device,)
                        ).fetchall()
                    ]
                    if scalar(conn, "SELECT count(*) FROM dead_letters WHERE device_id = %s", (device,)) == 4
                    else None
                ),
                30,
                what="four dead letters",
            )
            assert sorted(reasons) == sorted(
                ["future_timestamp", "future_timestamp", "stale_timestamp", "stale_timestamp"]
            )
            details = [
                r["detail"]
                for r in conn.execute("SELECT detail FROM dead_letters WHERE device_id = %s", (device,))
            ]
            assert all("device clock wrong" in d for d in details)
            time.sleep(2.0)  # give the engine every chance to (wrongly) react
            assert scalar(conn, "SELECT count(*) FROM alerts WHERE resident_id = %s", (rid,)) == 0
            assert scalar(conn, "SELECT count(*) FROM calls WHERE resident_id = %s", (rid,)) == 0
            assert scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = %s", (device,)) == 0
            assert scalar(conn, "SELECT count(*) FROM events WHERE device_id = %s", (device,)) == 0

            # The same device, its clock fixed: the wrong-clock messages must not suppress this fall.
            good = {"ts": iso(datetime.now(UTC)), "seq": 1, "type": "fall"}
            pub.publish_all([(f"care/v1/{device}/event", json.dumps(good))])
            wait_for(lambda: fall_summary(conn, [rid])[rid][2] == 1, 30, what="the correct-clock fall's call")
            time.sleep(0.5)
            assert fall_summary(conn, [rid])[rid] == (1, 1, 1)
            assert scalar(conn, "SELECT count(*) FROM alerts WHERE resident_id = %s", (rid,)) == 1
        finally:
            pub.close()
