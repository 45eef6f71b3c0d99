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

Processes: events (falls, SOS) are handled in a child process of their own, with their own MQTT
session and database connection, one message per transaction. In the same process as the telemetry
thread they waited for the GIL at every socket read and every database round trip (up to the 5 ms switch
interval each time, a dozen times per fall): p99 event -> call was hundreds of ms under 5,000 msg/s of
telemetry. The parent runs telemetry and status in batches, a ticker for the absence rules (silence,
inactivity) every ``alerts_tick_s``, and the hotline's scheduled jobs every second. The child dies with
its parent (PR_SET_PDEATHSIG), and the parent restarts a child that died.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from alerts import rules, store
from alerts.models import Action, ResidentInfo
from carewatch.contract import Accepted, parse
from carewatch.db import connect, pipelined_transaction
from carewatch.mqtt import Subscriber
from carewatch.settings import Settings
from hotline import notify, scheduled
from welfare import service as welfare_service

log = logging.getLogger(__name__)

CACHE_TTL_S = 5.0
TELEMETRY_BATCH_MAX = 256
TELEMETRY_BATCH_WAIT_S = 0.02
TELEMETRY_READ_EVERY_S = 0.005  # telemetry waits for a batch anyway; events are read the moment they arrive
SCHEDULED_EVERY_S = 1.0
VISIT_PLANNING_EVERY_S = 600.0
EVENTS = "events"
MAIN_PARTS = frozenset({"telemetry", "timers", "scheduled"})
ALL_PARTS = MAIN_PARTS | {EVENTS}


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

    def _cached(self, ids: Iterable[int], now: float) -> tuple[dict[int, ResidentInfo], list[int]]:
        """Cached facts for these residents, and the ids to ask the database for (hold the lock)."""
        infos: dict[int, ResidentInfo] = {}
        missing: list[int] = []
        for rid in ids:
            entry = self._residents.get(rid)
            if entry is not None and entry.expires > now:
                if entry.value is not None:  # None: cached as inactive or unknown
                    infos[rid] = entry.value
            else:
                missing.append(rid)
        return infos, missing

    def _remember(self, ids: Iterable[int], loaded: dict[int, ResidentInfo], now: float) -> None:
        """Cache what was loaded, and the absence of the ids that were asked for but not found."""
        for rid in ids:
            self._residents[rid] = _Entry(loaded.get(rid), now + CACHE_TTL_S)

    def lookup(
        self,
        conn: psycopg.Connection[Any],
        device_ids: set[str],
        send: Callable[[list[int], list[str]], object] | None = None,
    ) -> tuple[dict[str, int | None], dict[int, ResidentInfo]]:
        """Each device's resident (None: unknown, disabled or inactive) and those residents' facts; all
        cache misses in one query. `send(known resident ids, devices missed)` runs after that query is
        sent and before it is read, so in pipeline mode what it sends shares the round trip."""
        now = time.monotonic()
        with self._lock:
            owners = {d: e.value for d in device_ids if (e := self._devices.get(d)) and e.expires > now}
            missing_devices = sorted(d for d in device_ids if d not in owners)
            infos, missing_ids = self._cached({r for r in owners.values() if r is not None}, now)
        asked = (
            store.send_residents(conn, sorted(missing_ids), missing_devices)
            if missing_devices or missing_ids
            else None
        )
        if send is not None:
            send(sorted({r for r in owners.values() if r is not None}), missing_devices)
        if asked is not None:
            loaded = store.read_residents(asked)
            wanted = set(missing_devices)
            found = {
                d.device_id: rid
                for rid, info in loaded.items()
                for d in info.devices
                if d.device_id in wanted
            }
            with self._lock:
                for d in missing_devices:
                    owners[d] = found.get(d)
                    self._devices[d] = _Entry(owners[d], now + CACHE_TTL_S)
                self._remember([*missing_ids, *loaded], loaded, now)
            infos.update(loaded)
        return owners, {rid: infos[rid] for rid in set(owners.values()) if rid is not None and rid in infos}

    def residents(self, conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, ResidentInfo]:
        """Facts for these residents (inactive or unknown ones are left out); one query for all misses."""
        now = time.monotonic()
        with self._lock:
            out, missing = self._cached(ids, now)
        if missing:
            loaded = store.load_residents(conn, missing)
            with self._lock:
                self._remember(missing, loaded, now)
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
    """One worker's threads for some `parts` of the work: "events", "telemetry", "timers", "scheduled"."""

    def __init__(self, settings: Settings, stop: threading.Event, parts: frozenset[str] = ALL_PARTS) -> None:
        assert settings.database_url and settings.mqtt_url
        self.settings = settings
        self.url: str = settings.database_url
        self.stop = stop
        self.parts = parts
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
        self.subscribers: list[Subscriber] = []
        self.telemetry_sub: Subscriber | None = None
        self.events_sub: Subscriber | None = None
        if "telemetry" in parts:
            self.telemetry_sub = Subscriber(
                settings.mqtt_url,
                base,
                subscriptions(settings.alerts_group, ("telemetry", "status")),
                self.telemetry_q.put,
                read_every_s=TELEMETRY_READ_EVERY_S,
                **common,
            )
            self.subscribers.append(self.telemetry_sub)
        if EVENTS in parts:
            # Events are NOT on the shared subscription: every worker receives every event and the first
            # to commit acts (engine_seen under the resident's row lock makes the others skip). A shared
            # group would park 1/N of all falls in a dead worker's session until it came back; events
            # are rare, so handling each one N times costs little and no worker's death ever delays an
            # emergency.
            self.events_sub = Subscriber(
                settings.mqtt_url,
                f"{base}-events",
                [("care/v1/+/event", 1)],
                self.events_q.put,
                **common,
            )
            self.subscribers.append(self.events_sub)

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
        # Pipeline mode: statements whose results nobody reads (state write-back, audit rows, live
        # events) travel with the next one that is read: a fall is a handful of round trips, not twenty.
        with pipelined_transaction(conn):
            events = [(a.device_id, a.event.ts, a.event.seq) for a in accepted if a.event is not None]
            sent: list[store.SeenAndLock] = []
            owners, infos = self.registry.lookup(
                conn,
                {a.device_id for a in accepted},
                lambda ids, devices: sent.append(store.SeenAndLock(conn, events, ids, devices)),
            )
            by_resident: dict[int, list[Accepted]] = defaultdict(list)
            for a in accepted:
                rid = owners.get(a.device_id)
                if rid is not None and rid in infos:
                    by_resident[rid].append(a)
            # One statement locks every resident of the batch, in id order (no deadlocks between workers),
            # and one writes them back: a batch holds its locks for a few round trips, not one per resident.
            fresh, states = sent[0].read(sorted(by_resident))
            saved: list[tuple[int, rules.ResidentState, datetime | None]] = []
            todo: list[tuple[int, list[Action]]] = []
            for rid, state in states.items():
                info = infos[rid]
                actions: list[Action] = []
                for a in by_resident[rid]:
                    ev = a.event
                    if ev is not None and (a.device_id, ev.ts, ev.seq) not in fresh:
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
        self,
        name: str,
        q: queue.Queue[mqtt.MQTTMessage],
        sub: Subscriber,
        batch_max: int,
        wait_s: float,
        *,
        pumped: bool = False,
        quiet_s: float | None = None,
    ) -> int | None:
        """Decide, commit, then ack. `pumped`: this thread also runs `sub`'s network loop (single-threaded,
        the events path: no hand-off between threads, each of which is a wake-up on a busy machine).
        `quiet_s` (retiring a worker id): return how many messages were acked once `sub` has left its
        group and nothing has arrived for that long. None when stopped."""
        conn: psycopg.Connection[Any] | None = None
        pending: list[mqtt.MQTTMessage] = []
        backoff = 0.1
        handled = 0
        quiet_since = time.monotonic()
        if pumped:
            sub.connect()
        while not self.stop.is_set():
            if not pending:
                if pumped:
                    sub.pump(0.0 if not q.empty() else 0.2)
                    while len(pending) < batch_max and not q.empty():
                        pending.append(q.get_nowait())
                    if not pending:
                        continue
                else:
                    try:
                        pending.append(q.get(timeout=0.2))
                    except queue.Empty:
                        if (
                            quiet_s is not None
                            and sub.left.is_set()
                            and time.monotonic() - quiet_since >= quiet_s
                        ):
                            break
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
                if pumped:  # keep the MQTT session alive (pings) while the database is away
                    deadline = time.monotonic() + backoff
                    while time.monotonic() < deadline and not self.stop.is_set():
                        sub.pump(min(0.2, max(0.0, deadline - time.monotonic())))
                else:
                    self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue  # nothing acked: retry the same messages
            sub.ack_all(pending)
            handled += len(pending)
            quiet_since = time.monotonic()
            pending = []
            backoff = 0.1
        if conn is not None:
            conn.close()
        return None if self.stop.is_set() else handled

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

    def retire(self, quiet_s: float = 2.0) -> int | None:
        """Retire this worker id (scaling down): take its telemetry session over, leave the shared group,
        decide on everything the session held or is still handed, then end the session so the broker
        forgets it. Returns how many messages were handled; None if stopped first (the session is kept).
        Events need no retiring: they are not shared, and the events session keeps nothing for others."""
        sub = self.telemetry_sub
        assert sub is not None, "retire needs the telemetry part"
        sub.start()
        if not sub.subscribed.wait(30):
            sub.stop()
            return None
        sub.leave()
        handled = self._consume(
            "retire", self.telemetry_q, sub, TELEMETRY_BATCH_MAX, TELEMETRY_BATCH_WAIT_S, quiet_s=quiet_s
        )
        if handled is None:
            sub.stop()
            return None
        sub.stop(end_session=True)
        log.info(
            "alerts: worker %s retired; %d held messages handled", self.settings.alerts_worker_id, handled
        )
        return handled

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
            if not self.settings.notify_webhook_url:
                log.warning(
                    "CAREWATCH_NOTIFY_WEBHOOK_URL is not set: family and escalation notifications reach only "
                    "contacts with a webhook of their own; the others are recorded and retried"
                )
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
    def _threads(self) -> list[threading.Thread]:
        threads: list[threading.Thread] = []
        if self.events_sub is not None:
            threads.append(
                threading.Thread(
                    target=self._consume,
                    name="alerts-events",
                    daemon=True,
                    args=("events", self.events_q, self.events_sub, 8, 0.0),
                    kwargs={"pumped": True},
                )
            )
        if self.telemetry_sub is not None:
            threads.append(
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
                )
            )
        if "timers" in self.parts:
            threads.append(
                threading.Thread(
                    target=self._every,
                    name="alerts-timers",
                    daemon=True,
                    args=(
                        "timers",
                        lambda: self.settings.alerts_tick_s,
                        lambda c: self.run_timers(c, utcnow()),
                    ),
                )
            )
        if "scheduled" in self.parts:
            # Its own thread: a slow webhook must never delay the silence and inactivity timers.
            threads.append(
                threading.Thread(
                    target=self._every,
                    name="alerts-scheduled",
                    daemon=True,
                    args=("scheduled", lambda: SCHEDULED_EVERY_S, lambda c: self.run_scheduled(c, utcnow())),
                )
            )
        return threads

    def serve(self, ready: threading.Event | None = None, *, events_child: bool = False) -> None:
        """Run until `stop`; with `events_child`, events run in a child process (see the module doc)."""
        threads = self._threads()
        for t in threads:
            t.start()
        if self.telemetry_sub is not None:
            self.telemetry_sub.start()  # the events subscriber is pumped by its own thread
        child = EventsChild(self.settings) if events_child else None
        log.info(
            "alert engine %s running %s (group %s)%s",
            self.settings.alerts_worker_id,
            ", ".join(sorted(self.parts)),
            self.settings.alerts_group,
            "; events in a child process" if child else "",
        )
        try:
            while not self.stop.is_set():
                up = all(s.subscribed.is_set() for s in self.subscribers) and (
                    child is None or child.ready.is_set()
                )
                if ready is not None and up:
                    ready.set()
                if child is not None:
                    child.keep_alive()
                self.stop.wait(0.05 if ready is not None and not ready.is_set() else 0.5)
        finally:
            self.stop.set()
            if child is not None:
                child.stop()
            for t in threads:
                t.join(timeout=10)
            # Disconnect only after the workers stopped: unacked messages stay in the broker session.
            for sub in self.subscribers:
                sub.stop()
            log.info("alert engine %s stopped", self.settings.alerts_worker_id)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies, so a killed engine leaves no orphan session."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child notices its parent is gone below
        pass


def _events_main(settings: Settings, stop: Any, ready: Any, parent: int) -> None:
    """The events child: its own interpreter, so no GIL is shared with the telemetry batches."""
    from carewatch import logs

    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        return
    logs.setup(settings.log_level, json_lines=settings.log_json)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, settings.alerts_events_nice)
    except OSError as exc:
        log.warning(
            "alerts events: priority %s refused (%s); normal priority", settings.alerts_events_nice, exc
        )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop (stop event)
    local_stop, local_ready = threading.Event(), threading.Event()

    def watch() -> None:
        while not local_stop.is_set():
            if stop.wait(0.5) or os.getppid() != parent:
                local_stop.set()
            if local_ready.is_set():
                ready.set()

    threading.Thread(target=watch, name="alerts-events-watch", daemon=True).start()
    Engine(settings, local_stop, frozenset({EVENTS})).serve(local_ready)


class EventsChild:
    """The events process, (re)started by the engine's main process."""

    RESTART_AFTER_S = 1.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ctx = mp.get_context("spawn")
        self.ready = self._ctx.Event()
        self._stop = self._ctx.Event()
        self._next_start = 0.0
        self.proc: Any = None
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        self.proc = self._ctx.Process(
            target=_events_main,
            args=(self.settings, self._stop, self.ready, os.getpid()),
            name="carewatch-alerts-events",
            daemon=True,
        )
        self.proc.start()

    def keep_alive(self) -> None:
        if self.proc.is_alive() or self._stop.is_set():
            return
        if self._next_start == 0.0:
            log.error("alerts: events process exited (code %s); restarting it", self.proc.exitcode)
            self._next_start = time.monotonic() + self.RESTART_AFTER_S
        if time.monotonic() >= self._next_start:
            self._next_start = 0.0
            self.restarts += 1
            self._start()

    def stop(self) -> None:
        self._stop.set()
        self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def retire(settings: Settings, stop: threading.Event | None = None) -> int | None:
    """`carewatch alerts --retire`: see Engine.retire."""
    assert settings.database_url and settings.mqtt_url, "resolve the service URLs first"
    return Engine(settings, stop or threading.Event(), frozenset({"telemetry"})).retire()


def run(
    settings: Settings, stop: threading.Event | None = None, *, ready: threading.Event | None = None
) -> None:
    """Run one engine worker until `stop` is set (the `carewatch alerts` command calls this).

    `ready` is set once every MQTT subscription, the events child's included, is acknowledged (tests and
    supervisors wait on it).
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
    Engine(settings, stop or threading.Event(), MAIN_PARTS).serve(ready, events_child=True)
