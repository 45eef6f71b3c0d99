"""The alert engine process: MQTT in, rules per resident, alerts and calls out, acks only after commit.

Scale-out: every worker subscribes to the same shared subscriptions, and all rule state lives in
PostgreSQL (engine_state: one JSON document per resident). A worker applies a message or a timer only while
holding that resident's row lock (SELECT ... FOR UPDATE), and writes the new state, the alerts and the call
in the same transaction. So any number of workers (and restarts, and redeliveries) stay correct: two workers
never interleave on one resident, a crash loses nothing that was acked, and engine_seen turns a redelivered
event into a no-op. Locks are always taken in resident-id order, so batches cannot deadlock each other; the
timer scan uses SKIP LOCKED so it never waits behind message traffic.

Events (falls, SOS) are fanned out to every worker rather than shared, so a dead worker never holds
an emergency back; telemetry and status are shared (a dead worker's share waits in its session).

Threads: paho's network threads only enqueue. Events (falls, SOS) have their own MQTT session, queue,
thread and database connection, one message per transaction, so an emergency never waits behind a
telemetry batch. Telemetry and status go in batches. A ticker runs the absence rules (silence, inactivity)
every ``alerts_tick_s`` and the hotline's scheduled jobs every second.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from alerts import rules, store
from alerts.models import Action, ResidentInfo
from carewatch.contract import Accepted, parse
from carewatch.db import connect
from carewatch.mqtt import Subscriber
from carewatch.settings import Settings
from hotline import notify, scheduled
from welfare import service as welfare_service

log = logging.getLogger(__name__)

CACHE_TTL_S = 5.0
TELEMETRY_BATCH_MAX = 256
TELEMETRY_BATCH_WAIT_S = 0.02
SCHEDULED_EVERY_S = 1.0
VISIT_PLANNING_EVERY_S = 600.0


def subscriptions(group: str, kinds: tuple[str, ...]) -> list[tuple[str, int]]:
    return [(f"$share/{group}/care/v1/+/{kind}", 1) for kind in kinds]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Entry:
    value: Any
    expires: float


class Registry:
    """Device → resident and resident facts, cached briefly: registry edits apply within CACHE_TTL_S."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, _Entry] = {}
        self._residents: dict[int, _Entry] = {}

    def residents_of(self, conn: psycopg.Connection[Any], device_ids: set[str]) -> dict[str, int | None]:
        now = time.monotonic()
        with self._lock:
            hits = {d: e.value for d in device_ids if (e := self._devices.get(d)) and e.expires > now}
        missing = [d for d in device_ids if d not in hits]
        if missing:
            found = store.device_residents(conn, missing)
            with self._lock:
                for d, r in found.items():
                    self._devices[d] = _Entry(r, now + CACHE_TTL_S)
            hits.update(found)
        return hits

    def residents(self, conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, ResidentInfo]:
        """Facts for these residents (inactive or unknown ones are left out); one query for all misses."""
        now = time.monotonic()
        out: dict[int, ResidentInfo] = {}
        missing: list[int] = []
        with self._lock:
            for rid in ids:
                entry = self._residents.get(rid)
                if entry is not None and entry.expires > now:
                    if entry.value is not None:
                        out[rid] = entry.value
                else:
                    missing.append(rid)
        if missing:
            loaded = store.load_residents(conn, missing)
            with self._lock:
                for rid in missing:
                    self._residents[rid] = _Entry(loaded.get(rid), now + CACHE_TTL_S)
            out.update(loaded)
        return out


def _open_service_request(
    conn: psycopg.Connection[Any], rid: int, device_id: str, ev: Any, now: datetime
) -> None:
    """A 'service' event (the green key) opens a welfare service request in this transaction."""
    from welfare import intake

    intake.open_from_event(
        conn, resident_id=rid, device_id=device_id, event_ts=ev.ts, seq=ev.seq, category=ev.category, now=now
    )


class Engine:
    """One worker: owns its MQTT sessions, threads and database connections."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        assert settings.database_url and settings.mqtt_url
        self.settings = settings
        self.url: str = settings.database_url
        self.stop = stop
        self.registry = Registry()
        self._notifier_obj: Any = None
        self._next_visit_planning = 0.0
        self.events_q: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.telemetry_q: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        base = f"{settings.mqtt_client_id_prefix}-alerts-{settings.alerts_worker_id}"
        common: dict[str, Any] = {
            "session_expiry_s": settings.mqtt_session_expiry_s,
            "receive_maximum": settings.mqtt_receive_maximum,
            "ca_file": str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
            "keepalive": settings.mqtt_keepalive_s,
        }
        self.telemetry_sub = Subscriber(
            settings.mqtt_url,
            base,
            subscriptions(settings.alerts_group, ("telemetry", "status")),
            self.telemetry_q.put,
            **common,
        )
        # Events are NOT on the shared subscription: every worker receives every event and the first to
        # commit acts (engine_seen under the resident's row lock makes the others skip). A shared group
        # would park 1/N of all falls in a dead worker's session until it came back; events are rare,
        # so handling each one N times costs little and no worker's death ever delays an emergency.
        self.events_sub = Subscriber(
            settings.mqtt_url,
            f"{base}-events",
            [("care/v1/+/event", 1)],
            self.events_q.put,
            **common,
        )

    # --- message path -------------------------------------------------------------------------
    def process(self, conn: psycopg.Connection[Any], messages: list[mqtt.MQTTMessage], now: datetime) -> None:
        """Decide on a batch and commit it (the caller acks afterwards); `conn` must be in autocommit mode."""
        accepted: list[Accepted] = []
        for m in messages:
            verdict = parse(
                m.topic,
                bytes(m.payload),
                now,
                max_future_s=self.settings.max_future_skew_s,
                max_age_days=self.settings.max_past_age_days,
            )
            if isinstance(verdict, Accepted):
                accepted.append(verdict)
        if not accepted:
            return
        owners = self.registry.residents_of(conn, {a.device_id for a in accepted})
        by_resident: dict[int, list[Accepted]] = defaultdict(list)
        for a in accepted:
            rid = owners.get(a.device_id)
            if rid is not None:
                by_resident[rid].append(a)
        with conn.transaction():
            infos = self.registry.residents(conn, sorted(by_resident))
            # One statement locks every resident of the batch, in id order (no deadlocks between workers),
            # and one writes them back: a batch holds its locks for a few round trips, not one per resident.
            states = store.lock_states(conn, sorted(infos))
            saved: list[tuple[int, rules.ResidentState, datetime | None]] = []
            todo: list[tuple[int, list[Action]]] = []
            for rid, state in states.items():
                info = infos[rid]
                actions: list[Action] = []
                for a in by_resident[rid]:
                    ev = a.event
                    if ev is not None and not store.mark_seen(conn, a.device_id, ev.ts, ev.seq):
                        continue  # redelivered: already acted on
                    if ev is not None and ev.type == "service":
                        _open_service_request(conn, rid, a.device_id, ev, now)
                    actions.extend(rules.apply(state, info, a, now))
                saved.append((rid, state, rules.next_due(state, info, now)))
                if actions:
                    todo.append((rid, actions))
            store.save_states(conn, saved, now)
            for rid, actions in todo:
                store.apply_actions(conn, rid, actions, now, self.settings)

    def _consume(
        self, name: str, q: queue.Queue[mqtt.MQTTMessage], sub: Subscriber, batch_max: int, wait_s: float
    ) -> None:
        conn: psycopg.Connection[Any] | None = None
        pending: list[mqtt.MQTTMessage] = []
        backoff = 0.1
        while not self.stop.is_set():
            if not pending:
                try:
                    pending.append(q.get(timeout=0.2))
                except queue.Empty:
                    continue
                deadline = time.monotonic() + wait_s
                while len(pending) < batch_max:
                    left = deadline - time.monotonic()
                    try:
                        pending.append(q.get(timeout=left) if left > 0 else q.get_nowait())
                    except queue.Empty:
                        break
            try:
                if conn is None or conn.closed:
                    conn = connect(self.url, autocommit=True, application_name=f"carewatch-alerts-{name}")
                self._process_isolating(conn, pending)
            except psycopg.OperationalError as exc:
                log.warning("alerts %s: database unavailable (%s); retrying", name, type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue  # nothing acked: retry the same messages
            for m in pending:
                sub.ack(m)
            pending = []
            backoff = 0.1
        if conn is not None:
            conn.close()

    def _process_isolating(self, conn: psycopg.Connection[Any], batch: list[mqtt.MQTTMessage]) -> None:
        """A message whose content the database refuses must not stall the stream: split to find it."""
        try:
            self.process(conn, batch, utcnow())
        except psycopg.OperationalError:
            raise
        except (psycopg.Error, ValueError, LookupError, RuntimeError):
            if len(batch) == 1:
                log.exception("alerts: message on %s could not be applied; acked and skipped", batch[0].topic)
                return
            half = len(batch) // 2
            self._process_isolating(conn, batch[:half])
            self._process_isolating(conn, batch[half:])

    # --- timers -------------------------------------------------------------------------------
    def run_timers(self, conn: psycopg.Connection[Any], now: datetime) -> int:
        """Apply due timers; returns how many residents were handled."""
        with conn.transaction():
            store.discover(conn, now)
        handled = 0
        while not self.stop.is_set():
            with conn.transaction():
                due = store.lock_due(conn, now, limit=50)
                infos = self.registry.residents(conn, [rid for rid, _ in due])
                for rid, state in due:
                    info = infos.get(rid)
                    if info is None:  # resident gone or inactive: park the row
                        store.save_states(conn, [(rid, state, None)], now)
                        continue
                    actions = rules.tick(state, info, now)
                    store.save_states(conn, [(rid, state, rules.next_due(state, info, now))], now)
                    store.apply_actions(conn, rid, actions, now, self.settings)
            handled += len(due)
            if len(due) < 50:
                break
        return handled

    def _notifier(self) -> Any:
        """The hotline's default notifier (webhooks), built once."""
        if self._notifier_obj is None:
            self._notifier_obj = notify.WebhookNotifier(self.settings.notify_webhook_url)
        return self._notifier_obj

    def run_scheduled(self, conn: psycopg.Connection[Any], now: datetime) -> None:
        """The hotline's periodic jobs: escalation, stale claims, notification delivery."""
        notifier = self._notifier()
        jobs: list[tuple[str, Callable[[], object]]] = [
            ("escalate_due", lambda: scheduled.escalate_due(conn, now, self.settings)),
            ("release_stale_claims", lambda: scheduled.release_stale_claims(conn, now, self.settings)),
            ("deliver_notifications", lambda: scheduled.deliver_notifications(conn, notifier)),
        ]
        if time.monotonic() >= self._next_visit_planning:
            # welfare visits fall due by the day: planning them every ten minutes is plenty
            self._next_visit_planning = time.monotonic() + VISIT_PLANNING_EVERY_S
            jobs.append(("schedule_visits", lambda: welfare_service.schedule_due(conn, now)))
        for name, job in jobs:
            try:
                with conn.transaction():
                    job()
            except psycopg.OperationalError:
                raise
            except Exception:
                log.exception("scheduled job %s failed", name)

    def _every(
        self, name: str, period_s: Callable[[], float], job: Callable[[psycopg.Connection[Any]], object]
    ) -> None:
        """Run `job` every period on a connection of its own; a database outage only delays it."""
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = connect(self.url, autocommit=True, application_name=f"carewatch-alerts-{name}")
                job(conn)
            except psycopg.OperationalError as exc:
                log.warning("alerts %s: database unavailable (%s)", name, type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
            except Exception:
                log.exception("alerts %s: run failed", name)
            self.stop.wait(max(0.0, period_s() - (time.monotonic() - started)))
        if conn is not None:
            conn.close()

    # --- lifecycle ----------------------------------------------------------------------------
    def serve(self, ready: threading.Event | None = None) -> None:
        threads = [
            threading.Thread(
                target=self._consume,
                name="alerts-events",
                daemon=True,
                args=("events", self.events_q, self.events_sub, 8, 0.0),
            ),
            threading.Thread(
                target=self._consume,
                name="alerts-telemetry",
                daemon=True,
                args=(
                    "telemetry",
                    self.telemetry_q,
                    self.telemetry_sub,
                    TELEMETRY_BATCH_MAX,
                    TELEMETRY_BATCH_WAIT_S,
                ),
            ),
            threading.Thread(
                target=self._every,
                name="alerts-timers",
                daemon=True,
                args=("timers", lambda: self.settings.alerts_tick_s, lambda c: self.run_timers(c, utcnow())),
            ),
            # Its own thread: a slow webhook must never delay the silence and inactivity timers.
            threading.Thread(
                target=self._every,
                name="alerts-scheduled",
                daemon=True,
                args=("scheduled", lambda: SCHEDULED_EVERY_S, lambda c: self.run_scheduled(c, utcnow())),
            ),
        ]
        for t in threads:
            t.start()
        self.events_sub.start()
        self.telemetry_sub.start()
        log.info(
            "alert engine %s running (group %s)", self.settings.alerts_worker_id, self.settings.alerts_group
        )
        try:
            while ready is not None and not self.stop.is_set():
                if self.events_sub.subscribed.is_set() and self.telemetry_sub.subscribed.is_set():
                    ready.set()
                    break
                self.stop.wait(0.05)
            self.stop.wait()
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=10)
            # Disconnect only after the workers stopped: unacked messages stay in the broker session.
            self.events_sub.stop()
            self.telemetry_sub.stop()
            log.info("alert engine %s stopped", self.settings.alerts_worker_id)


def run(
    settings: Settings, stop: threading.Event | None = None, *, ready: threading.Event | None = None
) -> None:
    """Run one engine worker until `stop` is set (the `carewatch alerts` command calls this).

    `ready` is set once both MQTT subscriptions are acknowledged (tests and supervisors wait on it).
    """
    from carewatch.migrate import migrate

    if not settings.database_url or not settings.mqtt_url:
        from carewatch.runtime import resolve

        settings = resolve(settings).settings
    assert settings.database_url is not None
    migrate(settings.database_url)
    if settings.metrics_port:  # compose's healthcheck probes it (deploy/healthcheck.py)
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr="127.0.0.1")
    Engine(settings, stop or threading.Event()).serve(ready)
