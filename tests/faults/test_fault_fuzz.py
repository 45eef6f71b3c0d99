"""Payload fuzzing: any bytes on any topic are Accepted or Rejected (never an exception), through the
contract and through ingest's classify; and a few hundred hostile payloads through the real broker never
stall a real ingest process."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carewatch.contract import Accepted, Rejected, parse
from ingest.batch import Device, Raw, classify
from tests.support import Publisher, add_device, add_resident, scalar, wait_for

from .conftest import System, connect, iso

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
DEVICE = "wb-fuzz"

topics = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda d, k: f"care/v1/{d}/{k}",
        st.one_of(st.just(DEVICE), st.text(min_size=1, max_size=80)),
        st.sampled_from(["telemetry", "event", "status", "cmd", "", "telemetry/x"]),
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
known = {"ts", "seq", "hr", "spo2", "battery", "worn", "type", "samples", "device_id", "online", "location"}
objects = st.dictionaries(st.sampled_from(sorted(known)) | st.text(max_size=8), json_values, max_size=8)
payloads = st.one_of(
    st.binary(max_size=2048),
    objects.map(lambda o: json.dumps(o, allow_nan=True).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n),
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topics, payload=payloads)
def test_any_bytes_on_any_topic_is_accepted_or_rejected(topic: str, payload: bytes) -> None:
    verdict = parse(topic, payload, NOW)
    assert isinstance(verdict, Accepted | Rejected)
    if isinstance(verdict, Rejected):
        assert verdict.reason and isinstance(verdict.detail, str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(topics, payloads), max_size=8))
def test_classify_turns_every_message_into_rows_or_a_dead_letter(batch: list[tuple[str, bytes]]) -> None:
    registry = {DEVICE: Device(DEVICE, 1, "wristband", True)}
    raws = [Raw(t, p, NOW) for t, p in batch]
    rows = classify(raws, registry, max_future_s=300, max_age_days=30)
    verdicts = [parse(r.topic, r.payload, NOW) for r in raws]
    dead = [v for v in verdicts if isinstance(v, Rejected) or v.device_id != DEVICE]
    assert len(rows.dead) == len(dead)  # each message is stored or dead-lettered, never dropped
    assert len(rows.events) + len(rows.statuses) + len(rows.dead) <= len(raws)
    assert all(len(bytes(d[5])) <= 2048 for d in rows.dead)  # type: ignore[call-overload]  # dead letters keep a bounded payload


def _hostile(rng: random.Random, device: str, n: int) -> list[tuple[str, bytes]]:
    kinds = ["telemetry", "event", "status"]
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        topic = f"care/v1/{device}/{rng.choice(kinds)}"
        choice = i % 6
        if choice == 0:
            payload = rng.randbytes(rng.randrange(0, 600))
        elif choice == 1:
            payload = b"{" * rng.randrange(1, 5000)
        elif choice == 2:
            payload = json.dumps(
                {"ts": rng.choice([-1, 10**20, "yesterday", None]), "seq": rng.random()}
            ).encode()
        elif choice == 3:
            payload = json.dumps(
                {"ts": iso(datetime.now(UTC)), "seq": i, "hr": rng.choice([-5, 10**9, "x"])}
            ).encode()
        elif choice == 4:
            payload = b'{"ts": "' + "\u202e\x00".encode() * 50 + b'", "seq": 1}'
        else:
            payload = rng.randbytes(17_000)  # oversize
        out.append((topic, payload))
    return out


def test_hostile_payloads_through_the_broker_never_stall_ingest(
    database_url: str, mqtt_url: str, uid: str, system_factory: Callable[..., System]
) -> None:
    rng = random.Random(uid)
    device = f"fz-{uid}"
    with connect(database_url) as conn:
        rid = add_resident(conn, f"Fuzz {uid}")
        add_device(conn, device, rid)
        system = system_factory(database_url, mqtt_url, uid)
        system.start("ingest")
        pub = Publisher(mqtt_url, f"fz-pub-{uid}")
        try:
            first = (f"care/v1/{device}/telemetry", json.dumps({"ts": iso(datetime.now(UTC)), "seq": 0}))
            wait_for(
                lambda: (
                    pub.publish_all([first])
                    and scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = %s", (device,)) == 1
                ),
                60,
                interval=0.5,
                what="ingest subscribed",
            )
            hostile = _hostile(rng, device, 300)
            pub.publish_all(hostile)
            sent_at = time.monotonic()
            good: list[tuple[str, bytes | str]] = [
                (
                    f"care/v1/{device}/telemetry",
                    json.dumps({"ts": iso(datetime.now(UTC)), "seq": 100 + i, "hr": 70}),
                )
                for i in range(20)
            ]
            pub.publish_all(good)
            wait_for(
                lambda: scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = %s", (device,)) == 21,
                20,
                interval=0.2,
                what="the good readings after the hostile ones",
            )
            elapsed = time.monotonic() - sent_at
        finally:
            pub.close()
        dead: Any = scalar(conn, "SELECT count(*) FROM dead_letters WHERE device_id = %s", (device,))
        stored = scalar(conn, "SELECT count(*) FROM telemetry WHERE device_id = %s AND seq < 100", (device,))
        events = scalar(conn, "SELECT count(*) FROM events WHERE device_id = %s", (device,))
        statuses = scalar(conn, "SELECT count(*) FROM device_status WHERE device_id = %s", (device,))
    assert dead >= 250, dead  # nearly all hostile payloads are dead-lettered with a reason
    assert system.procs["ingest"].poll() is None, "ingest must survive hostile input"
    assert elapsed < 20
    print(
        f"hostile: {dead} dead letters, {stored - 1} readings, {events} events, {statuses} statuses; "
        f"good traffic stored {elapsed:.2f}s after the hostile burst"
    )
