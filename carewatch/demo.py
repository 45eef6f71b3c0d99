"""`carewatch demo`: the whole system in one process — embedded or configured database and broker,
ingest, the alert engine, the API with the console, and a simulated fleet with scripted incidents."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from carewatch.migrate import migrate
from carewatch.runtime import Runtime, resolve, sync_broker
from carewatch.settings import Settings

log = logging.getLogger("carewatch.demo")

DEMO_USERS = (
    ("admin", "admin", "Demo Admin"),
    ("supervisor", "supervisor", "Shift Supervisor"),
    ("operator1", "operator", "Operator One"),
    ("operator2", "operator", "Operator Two"),
    ("family", "family", "Family of resident 1"),
)
INCIDENT_CYCLE = ("fall", "sos", "tachycardia", "low_spo2", "fall", "long_bathroom")


def _logins(data_dir: Path) -> dict[str, str]:
    """Demo passwords: random, made once, kept (0600) next to the demo's data."""
    path = data_dir / "demo-logins.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    path.parent.mkdir(parents=True, exist_ok=True)
    logins = {user: secrets.token_urlsafe(9) for user, _, _ in DEMO_USERS}
    path.write_text(json.dumps(logins, indent=2))
    path.chmod(0o600)
    return logins


def _ensure_users(url: str, logins: dict[str, str], family_resident: int | None) -> None:
    from api.auth import hash_password

    with psycopg.connect(url, row_factory=dict_row) as conn:
        for username, role, name in DEMO_USERS:
            row = conn.execute("SELECT id FROM users WHERE username = %s", (username,)).fetchone()
            if row is None:
                row = conn.execute(
                    "INSERT INTO users (username, display_name, password_hash, role) VALUES (%s, %s, %s, %s)"
                    " RETURNING id",
                    (username, name, hash_password(logins[username]), role),
                ).fetchone()
            assert row is not None
            if role == "family" and family_resident is not None:
                conn.execute(
                    "INSERT INTO family_links (user_id, resident_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (row["id"], family_resident),
                )
        conn.commit()


def _thread(name: str, target: Callable[[], Any], errors: list[str]) -> threading.Thread:
    def body() -> None:
        try:
            target()
        except Exception:
            log.exception("demo: %s stopped with an error", name)
            errors.append(name)

    t = threading.Thread(target=body, name=name, daemon=True)
    t.start()
    return t


def run_demo(
    settings: Settings,
    *,
    residents: int = 12,
    port: int | None = None,
    duration_s: float | None = None,
    incident_every_s: float = 90.0,
) -> int:
    import uvicorn

    from alerts.engine import run as run_alerts
    from api.app import create_app
    from device_sim.fleet import load_fleet, make_fleet, save_fleet
    from device_sim.incidents import IncidentSpec
    from device_sim.runner import run as run_sim
    from ingest.service import run as run_ingest

    runtime: Runtime = resolve(settings.model_copy(update={"api_port": port or settings.api_port}))
    s = runtime.settings
    assert s.database_url and s.mqtt_url
    store = migrate(s.database_url)
    log.info("storage: %s", store)

    fleet_file = s.data_dir / "demo-fleet.json"
    if not fleet_file.exists():
        fleet = make_fleet(residents, seed=7, prefix="demo")
        save_fleet(fleet, fleet_file)
    sync_broker(runtime)  # service account first, so the services can log in
    stop = threading.Event()
    errors: list[str] = []
    ingest_t = _thread("ingest", lambda: run_ingest(s, stop), errors)
    alerts_t = _thread("alerts", lambda: run_alerts(s, stop), errors)

    config = uvicorn.Config(create_app(s), host=s.api_host, port=s.api_port, log_level="warning")
    server = uvicorn.Server(config)
    api_t = _thread("api", server.run, errors)

    horizon = int(duration_s or 7 * 24 * 3600)
    incidents = []
    if incident_every_s > 0:
        for k in range(min(500, int(horizon // incident_every_s))):
            kind = INCIDENT_CYCLE[k % len(INCIDENT_CYCLE)]
            incidents.append(
                IncidentSpec(kind=kind, resident=k % residents, at=int(30 + k * incident_every_s))
            )
    sim_stop = threading.Event()

    def simulate() -> None:
        run_sim(
            s,
            residents=residents,
            speed=1.0,
            seed=7,
            duration_s=horizon,
            fleet_file=fleet_file,
            enrol="db",
            incidents=incidents,
            prefix="demo",
            stop=sim_stop,
            progress=lambda line: log.info("%s", line),
        )

    sim_t = _thread("sim", simulate, errors)
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline and not errors:
        time.sleep(0.1)
    family_resident = None
    while time.monotonic() < deadline + 30 and family_resident is None and not errors:
        enrolled = load_fleet(fleet_file)  # the simulator saves it once its devices are enrolled
        family_resident = enrolled.residents[0].db_id if enrolled.residents else None
        if family_resident is None:
            time.sleep(0.2)
    logins = _logins(s.data_dir)
    _ensure_users(s.database_url, logins, family_resident)
    base = f"http://{s.api_host}:{s.api_port}"
    lines = [
        "",
        "CareWatch demo is running",
        f"  operator console : {base}/console/",
        f"  family page      : {base}/family/",
        f"  API (OpenAPI)    : {base}/openapi.json",
        f"  data             : {s.data_dir}",
        "  logins (also in demo-logins.json there):",
        *(f"    {user:<11} {logins[user]}  ({role})" for user, role, _ in DEMO_USERS),
        f"  incidents        : every {incident_every_s:.0f} s (fall, SOS, tachycardia, low SpO2, ...)",
        "  stop with Ctrl-C",
        "",
    ]
    print("\n".join(lines), flush=True)
    try:
        end = time.monotonic() + duration_s if duration_s else None
        while not errors and (end is None or time.monotonic() < end):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sim_stop.set()
        stop.set()
        server.should_exit = True
        for t in (sim_t, api_t, ingest_t, alerts_t):
            t.join(15)
        if runtime.broker and runtime.broker.process:
            runtime.broker.stop()
    return 1 if errors else 0
