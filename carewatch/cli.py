"""`carewatch`: one entry point, a subcommand per process. Every option also has a CAREWATCH_* variable."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from carewatch import logs
from carewatch.settings import Settings

log = logging.getLogger("carewatch")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("received signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _prepare(settings: Settings):  # type: ignore[no-untyped-def]
    from carewatch.migrate import migrate
    from carewatch.runtime import resolve

    runtime = resolve(settings)
    assert runtime.settings.database_url
    store = migrate(runtime.settings.database_url)
    log.info(
        "storage: %s",
        "TimescaleDB hypertables"
        if store == "timescaledb"
        else "plain PostgreSQL tables (TimescaleDB not available)",
    )
    return runtime


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    _prepare(settings)
    print("schema is up to date")
    return 0


def _retire(service: str, worker: str, handled: int | None) -> int:
    """The summary of `--retire` (docs/scaling.md): what the session held, or why it is kept."""
    if handled is None:
        print(f"{service}: stopped before worker {worker} was retired; its session is kept (run again)")
        return 1
    print(f"{service}: worker {worker} retired: {handled} held messages handled; session ended")
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from ingest.service import retire, run

    runtime = _prepare(settings)
    if args.retire:
        return _retire("ingest", settings.ingest_worker_id, retire(runtime.settings, _stop_on_signals()))
    run(runtime.settings, _stop_on_signals())
    return 0


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    from alerts.engine import retire, run

    runtime = _prepare(settings)
    if args.retire:
        return _retire("alerts", settings.alerts_worker_id, retire(runtime.settings, _stop_on_signals()))
    run(runtime.settings, _stop_on_signals())
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import run

    updates: dict[str, object] = {}
    if args.host:
        updates["api_host"] = args.host
    if args.port:
        updates["api_port"] = args.port
    runtime = _prepare(settings.model_copy(update=updates))
    run(runtime.settings)
    return 0


def cmd_sim(args: argparse.Namespace, settings: Settings) -> int:
    from carewatch.runtime import resolve
    from device_sim.cli import main

    # Only --enrol db writes to the registry; the other modes must not start an embedded PostgreSQL.
    runtime = resolve(settings, database=args.enrol == "db")
    return int(main(args, runtime.settings))


def cmd_create_admin(args: argparse.Namespace, settings: Settings) -> int:
    import psycopg
    from psycopg.rows import dict_row

    from api.users import create_admin

    password = args.password or os.environ.get("CAREWATCH_ADMIN_PASSWORD")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("error: give --password-stdin, or set CAREWATCH_ADMIN_PASSWORD", file=sys.stderr)
        return 2
    runtime = _prepare(settings)
    assert runtime.settings.database_url
    with psycopg.connect(runtime.settings.database_url, row_factory=dict_row) as conn:
        create_admin(conn, args.username, password, reset=args.reset)
        conn.commit()
    print(f"admin account {args.username!r} is ready")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from carewatch.demo import run_demo

    return run_demo(
        settings,
        residents=args.residents,
        port=args.port,
        duration_s=args.duration,
        incident_every_s=args.incident_every,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carewatch",
        description="CareWatch: monitoring for home-care devices with a 12349-style hotline queue. "
        "Settings come from CAREWATCH_* environment variables (see README); with no "
        "CAREWATCH_DATABASE_URL / CAREWATCH_MQTT_URL, embedded PostgreSQL and mosquitto are started.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (env CAREWATCH_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace, Settings], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    demo = add(
        "demo",
        cmd_demo,
        "Run everything in one process with a simulated fleet, and print the URL and demo logins.",
    )
    demo.add_argument("--residents", type=int, default=12, help="simulated residents (default 12)")
    demo.add_argument("--port", type=int, default=None, help="API port (default 8000)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--incident-every",
        type=float,
        default=90.0,
        help="seconds between scripted incidents (falls, SOS, ...); 0 for none",
    )
    ingest = add("ingest", cmd_ingest, "Consume device telemetry over MQTT and store it (ack after commit).")
    ingest.add_argument(
        "--retire",
        action="store_true",
        help="scale down: store what this worker id's session holds, leave the group, end the session",
    )
    alerts = add(
        "alerts", cmd_alerts, "Run the alert engine and the hotline queue's timers (escalation, claims)."
    )
    alerts.add_argument(
        "--retire",
        action="store_true",
        help="scale down: decide on what this worker id's session holds, leave the group, end the session",
    )
    api = add("api", cmd_api, "Serve the HTTP API, the live feed, the operator console and family page.")
    api.add_argument("--host", default=None, help="bind address (env CAREWATCH_API_HOST)")
    api.add_argument("--port", type=int, default=None, help="port (env CAREWATCH_API_PORT)")
    sim = add("sim", cmd_sim, "Simulate a fleet of devices through the real protocol, with incidents.")
    try:
        from device_sim.cli import add_arguments

        add_arguments(sim)
    except ImportError:  # pragma: no cover - the simulator ships with the package
        pass
    add("migrate", cmd_migrate, "Apply database migrations (also done at every service start).")
    admin = add(
        "create-admin",
        cmd_create_admin,
        "Create the first admin account non-interactively (password from stdin or CAREWATCH_ADMIN_PASSWORD).",
    )
    admin.add_argument("username")
    admin.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    admin.add_argument("--password", default=None, help=argparse.SUPPRESS)
    admin.add_argument("--reset", action="store_true", help="reset the password if the user exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logs.setup(args.log_level or settings.log_level, json_lines=settings.log_json)
    return int(args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
