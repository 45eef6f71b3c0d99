"""``carewatch sim``: options and entry point (the main CLI delegates here; ``python -m device_sim`` too)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from carewatch.settings import Settings
from device_sim.incidents import parse_incident_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--residents", type=int, default=None, help="number of simulated residents (default 10)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        help="virtual seconds per real second (default 1; the run starts `duration` in the "
        "past and catches up with now; 0 = as fast as allowed)",
    )
    parser.add_argument("--scenario", type=Path, default=None, help="YAML/JSON scenario (docs/simulator.md)")
    parser.add_argument(
        "--incident",
        action="append",
        default=[],
        metavar="KIND[:RESIDENT[:AT[:DURATION]]]",
        help="inject an incident, e.g. fall:r003:+10m or no_motion:2:09:30:5h (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=None, help="makes a run reproducible (default 1)")
    parser.add_argument(
        "--duration",
        type=str,
        default=None,
        help="virtual time to simulate, e.g. 24h, 90m (load mode: wall time to run)",
    )
    parser.add_argument(
        "--fleet",
        type=Path,
        default=None,
        help="fleet JSON file: reused if it exists (with its secrets, mode 0600), else written",
    )
    parser.add_argument("--prefix", default="sim", help="device id prefix for a new fleet")
    parser.add_argument("--api-url", default=None, help="CareWatch API base URL for --enrol api")
    parser.add_argument(
        "--api-token-file",
        type=Path,
        default=None,
        help="file holding an admin's bearer token for --enrol api (kept out of argv)",
    )
    parser.add_argument(
        "--enrol",
        choices=("db", "api", "none"),
        default="db",
        help="register the fleet directly in the database, through the API, or not at all",
    )
    parser.add_argument(
        "--load",
        type=_load_rate,
        default=None,
        metavar="RATE",
        help="load mode: publish routine traffic at RATE msg/s in total (or 'max': as fast as the broker "
        "acks) from --processes processes, each one raw QoS 1 connection as the account in "
        "CAREWATCH_MQTT_URL (docs/simulator.md)",
    )
    parser.add_argument("--processes", type=int, default=2, help="load mode: publishing processes")


def _load_rate(text: str) -> float:
    rate = 0.0 if text == "max" else float(text)
    if rate < 0:
        raise argparse.ArgumentTypeError("RATE must be positive or 'max'")
    return rate


def main(args: argparse.Namespace, settings: Settings) -> int:
    from device_sim.incidents import parse_duration
    from device_sim.runner import run

    logging.basicConfig(level=settings.log_level)
    try:
        incidents = [parse_incident_arg(text) for text in args.incident]
        summary = run(
            settings,
            residents=args.residents,
            speed=args.speed,
            scenario=args.scenario,
            seed=args.seed,
            duration_s=parse_duration(args.duration) if args.duration else None,
            fleet_file=args.fleet,
            api_url=args.api_url,
            enrol=args.enrol,
            api_token=args.api_token_file.read_text().strip() if args.api_token_file else None,
            incidents=incidents,
            load_rate=args.load,
            processes=args.processes,
            prefix=args.prefix,
        )
    except (ValueError, ConnectionError, OSError) as err:
        logging.getLogger("device_sim").error("sim: %s", err)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1 if summary.errors else 0
