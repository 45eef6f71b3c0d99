"""The ingest loop: MQTT in, one transaction per batch, acks only after commit.

One thread does everything: it pumps paho's network loop to fill a batch, stores it, then acks in receive
order (a second thread would only fight the first for the GIL).
On a database outage nothing is acked: the loop backs off and retries the same batch while the broker
holds the rest of the session's backlog. A batch the database refuses for its content is split until the
poison message is found and dead-lettered, so one bad row never stalls the stream.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from carewatch.contract import Reason
from carewatch.db import connect
from carewatch.mqtt import Subscriber
from carewatch.settings import Settings
from ingest import metrics
from ingest.batch import Device, Raw, Rows, classify, dead_row, device_ids
from ingest.retention import RetentionJob
from ingest.store import Stored, lookup_devices, prepare, store

log = logging.getLogger(__name__)

KINDS = ("telemetry", "event", "status")
POSITIVE_TTL_S = 30.0
NEGATIVE_TTL_S = 10.0
READ_EVERY_S = 0.005  # ingest batches anyway: read the socket at most this often (see BufferedClient)


def subscriptions(group: str) -> list[tuple[str, int]]:
    return [(f"$share/{group}/care/v1/+/{kind}", 1) for kind in KINDS]


@dataclass
class _Cached:
    device: Device | None
    expires: float


class Registry:
    """Device cache: one query per batch for unknown ids; revocations take effect within 30 s."""

    def __init__(self) -> None:
        self._cache: dict[str, _Cached] = {}

    def resolve(self, conn: psycopg.Connection[Any], ids: set[str]) -> dict[str, Device]:
        now = time.monotonic()
        missing = [i for i in ids if (c := self._cache.get(i)) is None or c.expires < now]
        if missing:
            found = lookup_devices(conn, missing)
            for i in missing:
                dev = found.get(i)
                self._cache[i] = _Cached(dev, now + (POSITIVE_TTL_S if dev else NEGATIVE_TTL_S))
            if len(self._cache) > 200_000:
                self._cache = {k: v for k, v in self._cache.items() if v.expires >= now}
        out: dict[str, Device] = {}
        for i in ids:
            dev = self._cache[i].device
            if dev is not None:
                out[i] = dev
        return out


class Ingest:
    def __init__(self, settings: Settings, database_url: str, mqtt_url: str) -> None:
        self.settings = settings
        self.database_url = database_url
        self.mqtt_url = mqtt_url
        self.inbox: deque[mqtt.MQTTMessage] = deque()
        self.registry = Registry()
        self.retention = RetentionJob(settings)
        self.conn: psycopg.Connection[Any] | None = None
        self.subscriber = Subscriber(
            mqtt_url,
            f"{settings.mqtt_client_id_prefix}-ingest-{settings.ingest_worker_id}",
            subscriptions(settings.ingest_group),
            self.inbox.append,
            session_expiry_s=settings.mqtt_session_expiry_s,
            receive_maximum=settings.mqtt_receive_maximum,
            ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
            keepalive=settings.mqtt_keepalive_s,
            read_every_s=READ_EVERY_S,
        )

    # --- database --------------------------------------------------------------------------
    def _db(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = connect(self.database_url, application_name="carewatch-ingest")
            prepare(self.conn)
        return self.conn

    def _drop_conn(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None

    # --- batching --------------------------------------------------------------------------
    def _take_batch(self, stop: threading.Event) -> list[mqtt.MQTTMessage]:
        """Pump the network until a full batch is held or the oldest message has waited long enough."""
        limit = self.settings.ingest_batch_max
        wait = self.settings.ingest_batch_wait_ms / 1000
        started: float | None = None
        while not stop.is_set():
            if len(self.inbox) >= limit:
                break  # read no further: unread messages stay in the socket and the broker (back-pressure)
            self.subscriber.pump(0.0 if self.inbox else 0.1)
            if not self.inbox:
                continue
            if started is None:
                started = time.monotonic()
            if len(self.inbox) >= limit or time.monotonic() - started >= wait:
                break
            if wait:
                self.subscriber.pump(min(wait, 0.005))
        n = min(limit, len(self.inbox))
        return [self.inbox.popleft() for _ in range(n)]

    def _hold(self, stop: threading.Event, seconds: float) -> bool:
        """Wait without acking, keeping the MQTT connection alive; True if asked to stop."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if stop.is_set():
                return True
            self.subscriber.pump(min(0.1, max(0.0, deadline - time.monotonic())))
        return stop.is_set()

    def _rows(self, conn: psycopg.Connection[Any], raws: list[Raw]) -> Rows:
        devices = self.registry.resolve(conn, device_ids(raws))
        return classify(
            raws,
            devices,
            max_future_s=self.settings.max_future_skew_s,
            max_age_days=self.settings.max_past_age_days,
        )

    def _commit(self, raws: list[Raw]) -> Stored:
        conn = self._db()
        t0 = time.perf_counter()
        with conn.transaction():
            rows = self._rows(conn, raws)
            stored = store(conn, rows)
        metrics.observe_commit(time.perf_counter() - t0, len(raws), stored, rows.dead_reasons)
        return stored

    def _commit_isolating(self, raws: list[Raw]) -> Stored:
        """Store a batch; if the database refuses its content, split it until the culprit is alone."""
        try:
            return self._commit(raws)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            if len(raws) == 1:
                raw = raws[0]
                log.warning(
                    "ingest: database refused one message on %s: %s", raw.topic[:120], type(exc).__name__
                )
                conn = self._db()
                with conn.transaction():
                    store(
                        conn,
                        Rows(
                            dead=[
                                dead_row(
                                    raw,
                                    Reason.DB_REJECTED,
                                    str(exc).splitlines()[0][:300],
                                    device_ids([raw]).pop() if device_ids([raw]) else None,
                                )
                            ]
                        ),
                    )
                metrics.DEAD.labels(reason=Reason.DB_REJECTED).inc()
                return Stored(0, 0, 0, 0, 0, 1)
            mid = len(raws) // 2
            a = self._commit_isolating(raws[:mid])
            b = self._commit_isolating(raws[mid:])
            return Stored(
                *(
                    x + y
                    for x, y in zip(
                        (
                            a.telemetry_rows,
                            a.telemetry_inserted,
                            a.events_rows,
                            a.events_inserted,
                            a.statuses,
                            a.dead,
                        ),
                        (
                            b.telemetry_rows,
                            b.telemetry_inserted,
                            b.events_rows,
                            b.events_inserted,
                            b.statuses,
                            b.dead,
                        ),
                        strict=True,
                    )
                )
            )

    def process(self, messages: list[mqtt.MQTTMessage], stop: threading.Event) -> None:
        now = datetime.now(UTC)
        raws = [Raw(m.topic, bytes(m.payload), now) for m in messages]
        metrics.RECEIVED.inc(len(raws))
        delay = 0.2
        while True:
            try:
                self._commit_isolating(raws)
                break
            except psycopg.OperationalError as exc:
                self._drop_conn()
                metrics.DB_ERRORS.inc()
                log.warning(
                    "ingest: database unavailable (%s); holding %d acks, retry in %.1fs",
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                    len(raws),
                    delay,
                )
                if self._hold(stop, delay):
                    return  # shutting down: unacked messages stay with the broker
                delay = min(delay * 2, 5.0)
        self.subscriber.ack_all(messages)
        metrics.ACKED.inc(len(messages))

    def run(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        self.subscriber.connect()
        log.info(
            "ingest: worker %s consuming %s as group %r (receive maximum %d, batch <= %d)",
            self.settings.ingest_worker_id,
            self.subscriber.target.redacted(),
            self.settings.ingest_group,
            self.settings.mqtt_receive_maximum,
            self.settings.ingest_batch_max,
        )
        if ready:
            ready()
        try:
            while not stop.is_set():
                batch = self._take_batch(stop)
                metrics.QUEUE_DEPTH.set(len(self.inbox))
                if batch:
                    self.process(batch, stop)
                self.retention.maybe_run(self.database_url)
        finally:
            self.subscriber.stop()
            self._drop_conn()
            log.info("ingest: stopped")

    def retire(self, stop: threading.Event, quiet_s: float = 2.0) -> int | None:
        """Retire this worker id (scaling down): take its session over, leave the shared group, store
        everything the session held or is still handed, then end the session so the broker forgets it
        and gives its share to the other workers. Returns how many messages were stored; None if
        stopped first (the session is kept, nothing lost: run it again)."""
        self.subscriber.connect()
        deadline = time.monotonic() + 30
        while not self.subscriber.subscribed.is_set():  # the session is ours once the SUBACK is back
            if stop.is_set() or time.monotonic() > deadline:
                return None
            self.subscriber.pump(0.1)
        self.subscriber.leave()
        stored = 0
        quiet_since = time.monotonic()
        while not stop.is_set():
            self.subscriber.pump(0.05)
            if self.inbox:
                batch = [
                    self.inbox.popleft() for _ in range(min(len(self.inbox), self.settings.ingest_batch_max))
                ]
                self.process(batch, stop)
                stored += len(batch)
                quiet_since = time.monotonic()
            elif self.subscriber.left.is_set() and time.monotonic() - quiet_since >= quiet_s:
                self.subscriber.pump(0.05)  # the last PUBACKs out before the session ends
                self.subscriber.stop(end_session=True)
                self._drop_conn()
                log.info(
                    "ingest: worker %s retired; %d held messages stored",
                    self.settings.ingest_worker_id,
                    stored,
                )
                return stored
        self.subscriber.stop()
        self._drop_conn()
        return None


def retire(settings: Settings, stop: threading.Event | None = None) -> int | None:
    """`carewatch ingest --retire`: see Ingest.retire."""
    assert settings.database_url and settings.mqtt_url, "resolve the service URLs first"
    return Ingest(settings, settings.database_url, settings.mqtt_url).retire(stop or threading.Event())


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run until `stop` is set; settings must carry resolved URLs (see carewatch.runtime.resolve)."""
    assert settings.database_url and settings.mqtt_url, "resolve the service URLs first"
    stop = stop or threading.Event()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    Ingest(settings, settings.database_url, settings.mqtt_url).run(stop)
