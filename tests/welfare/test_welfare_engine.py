"""A device 'service' event through the real broker and alert engine becomes exactly one service request."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import psycopg

from alerts.engine import run
from carewatch.settings import Settings
from tests.support import Publisher, add_device, add_resident, wait_for

Conn = psycopg.Connection[dict[str, Any]]


def test_service_event_opens_one_request_and_no_call(
    database_url: str, mqtt_url: str, uid: str, db: Conn
) -> None:
    rid = add_resident(db, f"Service {uid}")
    device = f"wb-svc-{uid}"
    add_device(db, device, rid, report_interval_s=3600)
    cfg = Settings(
        database_url=database_url,
        mqtt_url=mqtt_url,
        alerts_group=f"alerts-{uid}",
        alerts_worker_id=uid,
        alerts_tick_s=0.5,
    )
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=run, args=(cfg, stop), kwargs={"ready": ready}, daemon=True)
    thread.start()
    pub = Publisher(mqtt_url, f"pub-{uid}")
    try:
        assert ready.wait(15), "engine did not subscribe"
        ts = datetime.now(UTC).replace(microsecond=0)
        event = {
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "seq": 41,
            "type": "service",
            "category": "hospital_escort",
        }
        pub.publish_all([(f"care/v1/{device}/event", json.dumps(event))] * 2)  # the second is a redelivery
        rows = wait_for(
            lambda: db.execute("SELECT * FROM service_requests WHERE resident_id = %s", (rid,)).fetchall(),
            15,
            what="service request",
        )
        # A later fall on the same device proves the engine processed past both service events.
        fall = {"ts": event["ts"], "seq": 42, "type": "fall", "confidence": 0.9}
        pub.publish_all([(f"care/v1/{device}/event", json.dumps(fall))])
        wait_for(lambda: db.execute("SELECT 1 FROM calls WHERE resident_id = %s", (rid,)).fetchone(), 15)
    finally:
        pub.close()
        stop.set()
        thread.join(15)
    assert not thread.is_alive()
    rows = db.execute("SELECT * FROM service_requests WHERE resident_id = %s", (rid,)).fetchall()
    assert len(rows) == 1
    assert (rows[0]["category"], rows[0]["source"], rows[0]["wanted_at"], rows[0]["device_id"]) == (
        "hospital_escort",
        "device",
        ts,
        device,
    )
    calls = db.execute("SELECT reason FROM calls WHERE resident_id = %s", (rid,)).fetchall()
    assert [c["reason"] for c in calls] == ["fall"]  # the service event itself opened no call
