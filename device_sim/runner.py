"""A simulator run: fleet, enrolment, virtual clock, publishing, progress and a closing summary.

Time semantics: the server refuses timestamps more than 5 minutes ahead of it, so the virtual clock never runs
ahead of real time. With ``speed > 1`` the virtual day starts in the past (``now - duration``) and runs at
``speed`` until it catches up with now; from then on it follows real time:
``virtual(e) = min(start + speed * e, now0 + e)`` for ``e`` seconds of wall time.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from carewatch.settings import Settings
from device_sim.fleet import Fleet, enrol_via_api, enrol_via_db, load_fleet, make_fleet, save_fleet
from device_sim.incidents import IncidentSpec, InjectedIncident, Scenario, load_scenario
from device_sim.publisher import FleetPublisher, run_load
from device_sim.routine import Simulation

log = logging.getLogger(__name__)

DEFAULT_RESIDENTS = 10
DEFAULT_DURATION_S = 3600
DEFAULT_SEED = 1


@dataclass
class Summary:
    sent: Counter[str] = field(default_factory=Counter)
    incidents: list[InjectedIncident] = field(default_factory=list)
    errors: int = 0
    refused: int = 0
    reconnects: int = 0
    devices: int = 0
    virtual_start: datetime | None = None
    virtual_end: datetime | None = None
    wall_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def render(self) -> str:
        lines = [f"simulator: {self.total} messages from {self.devices} devices in {self.wall_s:.1f}s"]
        if self.virtual_start and self.virtual_end:
            lines.append(f"  virtual time {self.virtual_start.isoformat()} .. {self.virtual_end.isoformat()}")
        for kind, n in sorted(self.sent.items()):
            lines.append(f"  {kind:<18} {n}")
        lines.append(f"  incidents injected: {len(self.incidents)}")
        for inc in self.incidents:
            expect = f"{inc.expected_rule} P{inc.expected_priority}" if inc.expected_rule else "no alert"
            lines.append(
                f"    {inc.at.isoformat()} {inc.kind:<20} {inc.resident_key} {inc.device_id} -> {expect}"
            )
        lines.append(
            f"  errors: {self.errors}  refused by broker: {self.refused}  reconnects: {self.reconnects}"
        )
        return "\n".join(lines)


class VirtualClock:
    """Virtual time that runs at ``speed`` but never ahead of the real clock (speed <= 0: at once)."""

    def __init__(self, start: datetime, speed: float, now: Callable[[], datetime] | None = None) -> None:
        self._now = now or (lambda: datetime.now(UTC))
        self.start = start
        self.speed = speed
        self.real0 = self._now()
        if start > self.real0 + timedelta(seconds=1):
            raise ValueError(
                "the virtual start may not be in the future (the server refuses future timestamps)"
            )

    def __call__(self) -> datetime:
        real = self._now()
        if self.speed <= 0:
            return real
        elapsed = (real - self.real0).total_seconds()
        return min(self.start + timedelta(seconds=self.speed * elapsed), real)

    def real_delay(self, virtual_target: datetime) -> float:
        """Wall seconds until the clock reaches ``virtual_target`` (0 if already there)."""
        virtual = self()
        gap = (virtual_target - virtual).total_seconds()
        if gap <= 0:
            return 0.0
        catching_up = self.speed > 1 and virtual < self._now() - timedelta(seconds=1)
        return gap / self.speed if catching_up else gap


def _resolve_fleet(
    settings: Settings,
    *,
    residents: int,
    seed: int,
    fleet_file: Path | None,
    enrol: str,
    api_url: str | None,
    api_token: str | None,
    prefix: str,
) -> Fleet:
    if fleet_file is not None and fleet_file.exists():
        fleet = load_fleet(fleet_file)
        if fleet.secrets and all(r.db_id is not None for r in fleet.residents):
            return fleet  # already enrolled: enrolling again would duplicate residents
    else:
        fleet = make_fleet(residents, seed, prefix=prefix)
    if enrol == "db":
        if not settings.database_url:
            raise ValueError("--enrol db needs CAREWATCH_DATABASE_URL")
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
            enrol_via_db(conn, fleet)
        _sync_broker(settings)
    elif enrol == "api":
        if not api_url or not api_token:
            raise ValueError("--enrol api needs --api-url and --api-token-file")
        enrol_via_api(api_url, api_token, fleet)
    elif not fleet.secrets:
        raise ValueError("--enrol none needs a --fleet file of an enrolled fleet (with its secrets)")
    if fleet_file is not None:
        save_fleet(fleet, fleet_file)
    return fleet


def _sync_broker(settings: Settings) -> None:
    """After writing devices straight into the registry, make the broker's password file and ACL follow
    (the same rendering the API uses), when this process is told where they are."""
    if not (settings.database_url and settings.broker_passwd_file and settings.broker_acl_file):
        log.warning("sim: broker password file not configured; the broker must learn the device credentials")
        return
    import psycopg
    from psycopg.rows import dict_row

    from carewatch.registry_sync import service_accounts_from, sync_broker

    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        sync_broker(
            conn,
            settings.broker_passwd_file,
            settings.broker_acl_file,
            service_accounts=service_accounts_from(settings.broker_passwd_file),
            reload=None,
            pid_file=settings.broker_pid_file,
        )


def run(
    settings: Settings,
    *,
    residents: int | None = None,
    speed: float | None = None,
    scenario: Path | Scenario | None = None,
    seed: int | None = None,
    duration_s: int | None = None,
    fleet_file: Path | None = None,
    api_url: str | None = None,
    enrol: str = "db",
    api_token: str | None = None,
    incidents: list[IncidentSpec] | None = None,
    load_rate: float | None = None,
    processes: int = 1,
    prefix: str = "sim",
    start: datetime | None = None,
    progress: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    keepalive: int = 30,
) -> Summary:
    """Simulate a fleet against the broker in ``settings.mqtt_url``; returns what was sent and injected."""
    scen = load_scenario(scenario) if isinstance(scenario, Path) else scenario or Scenario()
    residents = residents or scen.residents or DEFAULT_RESIDENTS
    seed = seed if seed is not None else (scen.seed if scen.seed is not None else DEFAULT_SEED)
    speed = speed if speed is not None else (scen.speed if scen.speed is not None else 1.0)
    duration_s = duration_s or scen.duration_s or DEFAULT_DURATION_S
    specs = list(scen.incidents) + list(incidents or ())
    if not settings.mqtt_url:
        raise ValueError("the simulator needs CAREWATCH_MQTT_URL (the broker the devices connect to)")
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))

    fleet = _resolve_fleet(
        settings,
        residents=residents,
        seed=seed,
        fleet_file=fleet_file,
        enrol=enrol,
        api_url=api_url,
        api_token=api_token,
        prefix=prefix,
    )
    summary = Summary(devices=len(fleet.devices()))

    if load_rate is not None:
        # Load mode publishes as the account in CAREWATCH_MQTT_URL (a service account, see run_load).
        result = run_load(
            settings.mqtt_url,
            fleet,
            rate=load_rate,
            processes=processes,
            duration_s=duration_s,
            seed=seed,
            client_id=f"{settings.mqtt_client_id_prefix}-sim-load",
            progress=say,
        )
        summary.sent = result.by_kind
        summary.errors = result.errors
        summary.refused = result.refused
        summary.reconnects = result.disconnects
        summary.wall_s = result.wall_s
        say(result.render())
        return summary

    now = datetime.now(UTC).replace(microsecond=0)
    begin = start or scen.start or (now - timedelta(seconds=duration_s) if speed > 1 or speed <= 0 else now)
    sim = Simulation(
        fleet, start=begin, end=begin + timedelta(seconds=duration_s), seed=seed, incidents=specs
    )
    summary.incidents = sim.injected
    summary.virtual_start, summary.virtual_end = sim.start, sim.end
    publisher = FleetPublisher(
        settings.mqtt_url,
        fleet,
        keepalive=keepalive,
        ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
    )
    publisher.connect()
    clock = VirtualClock(begin, speed)
    wall0 = time.monotonic()
    last_report = wall0
    try:
        while not sim.done and not (stop and stop.is_set()):
            for msg in sim.step(clock()):
                if publisher.publish(msg):
                    summary.sent[msg.label] += 1
                else:
                    summary.errors += 1
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                say(
                    f"sim: virtual {clock().isoformat(timespec='seconds')}  sent {summary.total}  "
                    f"in flight {publisher.pending()}  errors {summary.errors}"
                )
            nxt = sim.next_at()
            if nxt is None:
                break
            wait = min(clock.real_delay(nxt), 0.25)
            if wait > 0:
                if stop is not None:
                    stop.wait(wait)
                else:
                    time.sleep(wait)
    finally:
        publisher.close()
        summary.wall_s = time.monotonic() - wall0
        summary.refused = publisher.counts["refused"]
        summary.reconnects = publisher.counts["reconnects"]
        summary.errors += publisher.counts["connect_refused"]
    say(summary.render())
    return summary
