"""Ingest over the real broker and database: exactly once, dead letters with reasons, rollups consistent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from carewatch.settings import Settings
from ingest.service import Ingest
from tests.support import Publisher, add_device, add_resident, now_ms, scalar, wait_for


@pytest.fixture
def ingest_worker(fresh_database_url: str, mqtt_url: str, uid: str) -> Iterator[Ingest]:
    settings = Settings(
        database_url=fresh_database_url,
        mqtt_url=mqtt_url,
        ingest_group=f"ingest-{uid}",
        ingest_worker_id=uid,
        ingest_batch_wait_ms=5,
    )
    worker = Ingest(settings, fresh_database_url, mqtt_url)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    assert worker.subscriber.subscribed.wait(10), "ingest did not subscribe"
    yield worker
    stop.set()
    thread.join(15)


def _conn(url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def test_every_message_stored_exactly_once(ingest_worker: Ingest, mqtt_url: str, uid: str) -> None:
    url = ingest_worker.database_url
    with _conn(url) as conn:
        rid = add_resident(conn, f"Wang {uid}")
        add_device(conn, f"wb-{uid}", rid)
        add_device(conn, f"ir-{uid}", rid, "ir_sensor", room="kitchen")
    base = now_ms() - 600_000
    msgs: list[tuple[str, str]] = []
    for i in range(300):
        msgs.append(
            (
                f"care/v1/wb-{uid}/telemetry",
                json.dumps({"ts": base + i * 1000, "seq": i, "hr": 60 + i % 30, "spo2": 97, "worn": True}),
            )
        )
    # resends of the same readings (device retried after a lost PUBACK) and a store-and-forward batch
    # overlapping with what was already sent
    msgs += msgs[:50]
    msgs.append(
        (
            f"care/v1/wb-{uid}/telemetry",
            json.dumps(
                {
                    "samples": [
                        {"ts": base + i * 1000, "seq": i, "hr": 60 + i % 30, "spo2": 97, "worn": True}
                        for i in range(290, 310)
                    ]
                }
            ),
        )
    )
    msgs += [
        (
            f"care/v1/ir-{uid}/telemetry",
            json.dumps({"ts": base + i * 5000, "seq": i, "room": "kitchen", "motion": i % 2 == 0}),
        )
        for i in range(40)
    ]
    msgs.append((f"care/v1/wb-{uid}/event", json.dumps({"ts": base + 5000, "seq": 9000, "type": "fall"})))
    msgs.append((f"care/v1/wb-{uid}/event", json.dumps({"ts": base + 5000, "seq": 9000, "type": "fall"})))
    pub = Publisher(mqtt_url, f"pub-{uid}")
    try:
        pub.publish_all(msgs)
    finally:
        pub.close()
    with _conn(url) as conn:
        wait_for(lambda: scalar(conn, "SELECT count(*) FROM telemetry") >= 350, 30, what="telemetry rows")
        wait_for(lambda: scalar(conn, "SELECT count(*) FROM events") >= 1, 10, what="event row")
        assert scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = %s", (f"wb-{uid}",)) == 310
        assert scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = %s", (f"ir-{uid}",)) == 40
        assert scalar(conn, "SELECT count(*) FROM events") == 1
        # rollups count only rows really inserted: duplicates must not inflate them
        assert scalar(conn, "SELECT sum(hr_n) FROM vitals_1m") == 310
        assert scalar(conn, "SELECT sum(hr_n) FROM vitals_1h") == 310
        assert scalar(conn, "SELECT sum(motion_n) FROM vitals_1m") == 20
        expected = sum(60 + i % 30 for i in range(310))
        assert scalar(conn, "SELECT sum(hr_sum) FROM vitals_1m") == expected
        row = conn.execute("SELECT min(hr_min) AS lo, max(hr_max) AS hi FROM vitals_1h").fetchone()
        assert row == {"lo": 60, "hi": 89}
        assert scalar(conn, "SELECT count(*) FROM dead_letters") == 0
        assert scalar(conn, "SELECT resident_id FROM telemetry LIMIT 1") == rid


def test_bad_input_is_dead_lettered_with_reason_while_good_traffic_flows(
    ingest_worker: Ingest, mqtt_url: str, uid: str
) -> None:
    url = ingest_worker.database_url
    dev = f"wb-{uid}"
    with _conn(url) as conn:
        rid = add_resident(conn, f"Li {uid}")
        add_device(conn, dev, rid)
        add_device(conn, f"off-{uid}", rid)
        conn.execute("UPDATE devices SET enabled = false WHERE id = %s", (f"off-{uid}",))
    t = now_ms()
    future = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    bad = {
        "bad_json": (f"care/v1/{dev}/telemetry", b"{not json"),
        "not_object": (f"care/v1/{dev}/telemetry", b"[1, 2, 3]"),
        "not_utf8": (f"care/v1/{dev}/telemetry", b"\xff\xfe\x00"),
        "out_of_range": (f"care/v1/{dev}/telemetry", json.dumps({"ts": t, "seq": 1, "hr": 900}).encode()),
        "schema": (f"care/v1/{dev}/event", json.dumps({"ts": t, "seq": 2, "type": "party"}).encode()),
        "future_timestamp": (
            f"care/v1/{dev}/event",
            json.dumps({"ts": future, "seq": 3, "type": "fall"}).encode(),
        ),
        "stale_timestamp": (
            f"care/v1/{dev}/event",
            json.dumps({"ts": "2019-01-01T00:00:00Z", "seq": 4, "type": "fall"}).encode(),
        ),
        "oversize": (f"care/v1/{dev}/telemetry", b'{"ts": %d, "seq": 5, "x": "%s"}' % (t, b"a" * 20000)),
        "unknown_device": (f"care/v1/nobody-{uid}/telemetry", json.dumps({"ts": t, "seq": 6}).encode()),
        "device_mismatch": (
            f"care/v1/{dev}/event",
            json.dumps({"ts": t, "seq": 7, "type": "sos", "device_id": "someone-else"}).encode(),
        ),
        "bad_topic": (f"care/v1/{dev}/telemetry/extra", b"{}"),
    }
    disabled = (f"care/v1/off-{uid}/telemetry", json.dumps({"ts": t, "seq": 8, "hr": 70}).encode())
    good = [
        (f"care/v1/{dev}/telemetry", json.dumps({"ts": t - 1000 * i, "seq": 100 + i, "hr": 70}).encode())
        for i in range(20)
    ]
    mixed: list[tuple[str, bytes]] = []
    for i, item in enumerate([*bad.values(), disabled]):
        mixed.append(item)
        mixed.append(good[i])
    mixed += good[len(bad) + 1 :]
    pub = Publisher(mqtt_url, f"pub-{uid}")
    try:
        # wrong-topic messages need a subscription that sees them: ingest only subscribes to its three
        # kinds, so the extra-level topic never reaches it; publish it anyway to prove it harms nothing
        pub.publish_all(mixed)
    finally:
        pub.close()
    with _conn(url) as conn:
        wait_for(lambda: scalar(conn, "SELECT count(*) FROM telemetry") >= 20, 30, what="good rows")
        wait_for(
            lambda: scalar(conn, "SELECT count(*) FROM dead_letters") >= len(bad) - 1 + 1,
            15,
            what="dead letters",
        )
        reasons = {
            r["reason"]: r
            for r in conn.execute(
                "SELECT reason, detail, topic, payload_bytes, length(payload) AS kept FROM dead_letters"
            ).fetchall()
        }
        expected = set(bad) - {"bad_topic"}
        assert expected <= set(reasons), f"missing {expected - set(reasons)}"
        unknown = conn.execute("SELECT detail FROM dead_letters WHERE reason = 'unknown_device'").fetchall()
        assert any("disabled" in r["detail"] for r in unknown)
        assert any("not registered" in r["detail"] for r in unknown)
        assert reasons["oversize"]["payload_bytes"] > 16384 and reasons["oversize"]["kept"] <= 2048
        assert "hr" in reasons["out_of_range"]["detail"]
        assert scalar(conn, "SELECT count(*) FROM telemetry") == 20
        assert scalar(conn, "SELECT count(*) FROM events") == 0


def test_poison_row_is_isolated_and_the_rest_is_stored(
    fresh_database_url: str, mqtt_url: str, uid: str
) -> None:
    """A batch the database refuses (here: a check constraint added by an operator) is split until the
    one offending message is dead-lettered; its neighbours in the same batch are stored."""
    from carewatch.contract import Reason

    with _conn(fresh_database_url) as conn:
        rid = add_resident(conn, f"Zhao {uid}")
        add_device(conn, f"wb-{uid}", rid)
        conn.execute("ALTER TABLE telemetry ADD CONSTRAINT no_steps_666 CHECK (steps IS DISTINCT FROM 666)")
    settings = Settings(
        database_url=fresh_database_url,
        mqtt_url=mqtt_url,
        ingest_group=f"p-{uid}",
        ingest_worker_id=f"p{uid}",
        ingest_batch_wait_ms=200,
    )
    worker = Ingest(settings, fresh_database_url, mqtt_url)
    t = now_ms()
    msgs = [
        (
            f"care/v1/wb-{uid}/telemetry",
            json.dumps({"ts": t - i * 1000, "seq": i, "steps": 666 if i == 7 else i}).encode(),
        )
        for i in range(30)
    ]
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert worker.subscriber.subscribed.wait(10)
        pub = Publisher(mqtt_url, f"pub-{uid}")
        pub.publish_all(msgs)
        pub.close()
        with _conn(fresh_database_url) as conn:
            wait_for(lambda: scalar(conn, "SELECT count(*) FROM telemetry") == 29, 30, what="29 rows")
            wait_for(lambda: scalar(conn, "SELECT count(*) FROM dead_letters") == 1, 10, what="poison")
            row = conn.execute("SELECT reason, detail FROM dead_letters").fetchone()
            assert row is not None and row["reason"] == Reason.DB_REJECTED
            assert "no_steps_666" in row["detail"]
    finally:
        stop.set()
        thread.join(15)
