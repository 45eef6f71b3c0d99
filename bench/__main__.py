"""`python -m bench [--storage timescaledb|postgresql|both] [--quick]` (what bench/run.sh runs).

Each storage path gets its own private tuned mosquitto and its own fresh database, both removed at the
end. Full runs write bench/results/latest.json and the results section of bench/RESULTS.md; --quick runs
(small N, for development) write only bench/results/quick-<storage>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import drain, history, latency, rules_bench, sim_load
from bench.common import SERVERS, VAR, Env, dump, machine, say

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGETS = [
    # key, label, target text, limit, higher is better
    (
        "ingest_drain_msgs_per_s",
        "ingest drain, 500k QoS 1, durable before ack, 2 processes",
        "≥ 20,000 msg/s on 2 cores",
        20000,
        True,
    ),
    (
        "event_to_call_p99_ms",
        "event → call committed, p99",
        "< 20 ms under 5,000 msg/s background",
        20,
        False,
    ),
    ("history_30d_p99_ms", "30-day hourly chart, p99", "< 50 ms", 50, False),
    ("history_24h_p99_ms", "24-hour per-minute chart, p99", "< 50 ms", 50, False),
    (
        "sim_load_msgs_per_s",
        "simulator load mode, QoS 1, acked",
        "≥ 20,000 msg/s into Mosquitto",
        20000,
        True,
    ),
]


def flat(storage: str, parts: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable summary (the keys the issue asks for, all numbers)."""
    out: dict[str, Any] = {"storage": storage, "machine": info}
    d = parts.get("drain")
    if d:
        b = d["backlog"]
        out["ingest_drain_msgs_per_s"] = b["msgs_per_s"]
        out["ingest_drain_workers"] = b["workers"]
        out["ingest_drain_rows_per_s"] = b["rows_per_s"]
        out["ingest_drain_msgs_per_s_from_first_commit"] = b["msgs_per_s_from_first_commit"]
        out["raw_broker_msgs_per_s"] = b["raw_broker_msgs_per_s"]
        out["raw_copy_msgs_per_s"] = b["raw_copy_msgs_per_s"]
        out["ingest_drain_ratio_to_raw_broker"] = round(b["msgs_per_s"] / b["raw_broker_msgs_per_s"], 3)
        out["ingest_drain_ratio_to_raw_copy"] = round(b["msgs_per_s"] / b["raw_copy_msgs_per_s"], 3)
        for s in d["scaling"]:
            out[f"ingest_drain_msgs_per_s_{s['workers']}_workers"] = s["msgs_per_s"]
        st = d["steady"]
        out["steady_offered_msgs_per_s"] = st["offered_msgs_per_s"]
        out["steady_publish_to_visible_p50_ms"] = st["publish_to_visible"]["p50_ms"]
        out["steady_publish_to_visible_p99_ms"] = st["publish_to_visible"]["p99_ms"]
    e = parts.get("latency")
    if e:
        out["event_to_call_p50_ms"] = e["to_call_committed"]["p50_ms"]
        out["event_to_call_p99_ms"] = e["to_call_committed"]["p99_ms"]
        out["event_to_call_max_ms"] = e["to_call_committed"]["max_ms"]
        out["event_to_live_feed_p50_ms"] = e["to_live_feed"]["p50_ms"]
        out["event_to_live_feed_p99_ms"] = e["to_live_feed"]["p99_ms"]
        out["loopback_floor_p50_ms"] = e["loopback_floor"]["p50_ms"]
        out["loopback_floor_p99_ms"] = e["loopback_floor"]["p99_ms"]
        out["event_background_msgs_per_s"] = e["background_achieved_msgs_per_s"]
    h = parts.get("history")
    if h:
        for key, part in (("", "one_client"), ("_16_clients", "sixteen_clients")):
            out[f"history_24h_p99_ms{key}"] = h[part]["24h"]["p99_ms"]
            out[f"history_30d_p99_ms{key}"] = h[part]["30d"]["p99_ms"]
            out[f"status_p99_ms{key}"] = h[part]["status"]["p99_ms"]
    s = parts.get("simload")
    if s:
        out["sim_load_msgs_per_s"] = s["msgs_per_s"]
        out["sim_load_min_1s_msgs_per_s"] = s["min_1s_msgs_per_s"]
        out["sim_load_duration_s"] = s["duration_s"]
        out["sim_load_processes"] = s["processes"]
        out["sim_load_raw_broker_msgs_per_s"] = s["raw_broker_msgs_per_s"]
        out["sim_load_ratio_to_raw_broker"] = s["ratio_to_raw_broker"]
        if s.get("live"):
            out["sim_load_live_msgs_per_s"] = s["live"]["msgs_per_s"]
    for part in ("drain", "latency", "history", "simload"):
        if parts.get(part):
            samples = [parts[part]["load_avg_1m"]] if part in ("latency", "simload") else []
            if part == "drain":
                samples = [parts[part]["backlog"]["load_avg_1m"], parts[part]["steady"]["load_avg_1m"]]
            if part == "history":
                samples = [parts[part]["load_avg_1m"], parts[part]["load_avg_during_load"]]
            out[f"load_avg_max_{part}"] = round(max(x for s in samples for x in s), 2)
    r = parts.get("rules")
    if r:
        out["rules_evaluations_per_s"] = r["evaluations_per_s"]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if isinstance(v, float) and abs(v) < 1:
        return f"{v:.3f}"
    if isinstance(v, int | float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"
    return str(v)


def table(runs: list[dict[str, Any]]) -> str:
    storages = [r["storage"] for r in runs]
    lines = [
        "| measure | target | " + " | ".join(storages) + " |",
        "|---|---|" + "---|" * len(storages),
    ]
    for key, label, target, limit, higher in TARGETS:
        cells = []
        for r in runs:
            v = r.get(key)
            if v is None:
                cells.append("not run")
                continue
            ok = v >= limit if higher else v < limit
            miss = "" if ok else (f" (×{limit / v:.1f} short)" if higher else f" (+{v - limit:,.1f} ms)")
            cells.append(f"{_fmt(v)} {'✅' if ok else '❌'}{miss}")
        lines.append(f"| {label} | {target} | " + " | ".join(cells) + " |")
    extra = [
        ("ingest drain ÷ raw broker drain (mosquitto_sub)", "ingest_drain_ratio_to_raw_broker"),
        ("ingest drain ÷ raw COPY of the same rows", "ingest_drain_ratio_to_raw_copy"),
        ("raw broker drain, msg/s", "raw_broker_msgs_per_s"),
        ("raw COPY, msg-equivalents/s", "raw_copy_msgs_per_s"),
        ("ingest drain, rows/s (batches hold 10 rows)", "ingest_drain_rows_per_s"),
        ("ingest drain, msg/s from first commit", "ingest_drain_msgs_per_s_from_first_commit"),
        ("ingest x1 (scaling run), msg/s", "ingest_drain_msgs_per_s_1_workers"),
        ("ingest x2 (shared subscription), msg/s", "ingest_drain_msgs_per_s_2_workers"),
        ("ingest x4 (shared subscription), msg/s", "ingest_drain_msgs_per_s_4_workers"),
        ("steady load offered, msg/s", "steady_offered_msgs_per_s"),
        ("steady publish → row visible p50, ms", "steady_publish_to_visible_p50_ms"),
        ("steady publish → row visible p99, ms", "steady_publish_to_visible_p99_ms"),
        ("event → call p50, ms", "event_to_call_p50_ms"),
        ("event → call max, ms", "event_to_call_max_ms"),
        ("event → live feed (SSE) p50, ms", "event_to_live_feed_p50_ms"),
        ("event → live feed (SSE) p99, ms", "event_to_live_feed_p99_ms"),
        ("loopback floor p50 / p99, ms", "loopback_floor_p50_ms"),
        ("background achieved during falls, msg/s", "event_background_msgs_per_s"),
        ("24 h chart p99, 16 clients, ms", "history_24h_p99_ms_16_clients"),
        ("30 d chart p99, 16 clients, ms", "history_30d_p99_ms_16_clients"),
        ("status p99, 1 client / 16 clients, ms", "status_p99_ms"),
        ("rules alone, evaluations/s", "rules_evaluations_per_s"),
        ("simulator load ÷ raw broker drain (mosquitto_sub)", "sim_load_ratio_to_raw_broker"),
        ("simulator load: slowest second, msg/s", "sim_load_min_1s_msgs_per_s"),
        ("simulator load: duration s / processes", "sim_load_duration_s"),
        ("raw broker drain in the simulator part, msg/s", "sim_load_raw_broker_msgs_per_s"),
        ("simulator load, messages generated live (no pool), msg/s", "sim_load_live_msgs_per_s"),
        ("1-min load average, max seen: ingest / event→call / history parts", "load_avg_max_drain"),
    ]
    for label, key in extra:
        cells = []
        for r in runs:
            v = r.get(key)
            if key == "loopback_floor_p50_ms" and v is not None:
                cells.append(f"{_fmt(v)} / {_fmt(r.get('loopback_floor_p99_ms'))}")
            elif key == "load_avg_max_drain" and v is not None:
                cells.append(f"{v} / {r.get('load_avg_max_latency')} / {r.get('load_avg_max_history')}")
            elif key == "sim_load_duration_s" and v is not None:
                cells.append(f"{_fmt(v)} / {r.get('sim_load_processes')}")
            elif key == "status_p99_ms" and v is not None:
                cells.append(f"{_fmt(v)} / {_fmt(r.get('status_p99_ms_16_clients'))}")
            else:
                cells.append("—" if v is None else _fmt(v))
        lines.append(f"| {label} | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_results_md(runs: list[dict[str, Any]], header: str) -> None:
    path = HERE / "RESULTS.md"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmark results\n\n<!-- results:begin -->\n<!-- results:end -->\n"
    )
    body = f"<!-- results:begin -->\n{header}\n\n{table(runs)}\n<!-- results:end -->"
    text = re.sub(r"<!-- results:begin -->.*?<!-- results:end -->", lambda _m: body, text, flags=re.S)
    path.write_text(text)


def render(path: Path) -> int:
    """Rebuild the summary from a saved run's details (e.g. after changing the table's layout)."""
    saved = json.loads(path.read_text())
    runs = [
        flat(storage, parts, saved["by_storage"][storage]["machine"])
        for storage, parts in saved["details"].items()
    ]
    m = runs[0]["machine"]
    loadavg = tuple(round(x, 2) for x in m.get("load_avg_at_end", ()))
    header = (
        f"Run {saved['at']} (full, {saved['wall_s'] / 60:.1f} min, `./bench/run.sh --storage "
        f"{'both' if len(runs) > 1 else runs[0]['storage']}`) on {m.get('cores')} cores, "
        f"{m.get('cpu_model')}; load average at the end of the {runs[0]['storage']} path {loadavg}."
    )
    rest = {k: v for k, v in saved.items() if k in ("at", "quick", "wall_s")}
    dump(RESULTS / "latest.json", {**rest, **runs[0], "by_storage": {r["storage"]: r for r in runs}})
    update_results_md(runs, header)
    print(table(runs))
    return 0


def run_storage(
    storage: str, args: argparse.Namespace, rules: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    env = Env(storage, SERVERS[storage], args.quick, VAR / f"{storage}-{os.getpid()}", args.profile)
    parts: dict[str, Any] = {"rules": rules}
    info: dict[str, Any] = {}
    try:
        env.start()
        info = machine(env)
        began = time.monotonic()
        if "drain" in args.parts:
            parts["drain"] = drain.run(env, args.quick)
            say(f"{storage}: ingest part took {time.monotonic() - began:.0f}s")
        if "latency" in args.parts:
            t = time.monotonic()
            fleet = drain.enrol(env, 100 if args.quick else 1000, "bg")
            parts["latency"] = latency.run(env, args.quick, fleet)
            say(f"{storage}: event->call part took {time.monotonic() - t:.0f}s")
        if "history" in args.parts:
            t = time.monotonic()
            parts["history"] = history.run(env, args.quick)
            say(f"{storage}: history part took {time.monotonic() - t:.0f}s")
        if "simload" in args.parts:
            t = time.monotonic()
            parts["simload"] = sim_load.run(env, args.quick)
            say(f"{storage}: simulator load part took {time.monotonic() - t:.0f}s")
    finally:
        env.stop()
    info["load_avg_at_end"] = os.getloadavg()
    return parts, flat(storage, parts, info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.sh", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("--storage", choices=("timescaledb", "postgresql", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="small N, about a minute per storage path")
    parser.add_argument(
        "--parts",
        default="drain,latency,history,rules,simload",
        help="comma-separated subset of drain,latency,history,rules,simload",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the 1-worker ingest drain (20 s)")
    parser.add_argument(
        "--render", metavar="JSON", help="only re-render RESULTS.md and latest.json from a saved full run"
    )
    parser.add_argument(
        "--record", action="store_true", help="also record a --quick run as the latest results"
    )
    args = parser.parse_args(argv)
    args.parts = set(args.parts.split(","))
    if args.render:
        return render(Path(args.render))
    storages = ["timescaledb", "postgresql"] if args.storage == "both" else [args.storage]
    began = time.monotonic()
    say(
        f"start: storage {', '.join(storages)}{' (quick)' if args.quick else ''}; "
        f"load average {os.getloadavg()}"
    )
    rules = rules_bench.run(args.quick) if "rules" in args.parts else {}
    runs: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for storage in storages:
        parts, summary = run_storage(storage, args, rules)
        runs.append(summary)
        details[storage] = parts
    wall = time.monotonic() - began
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {
        "at": stamp,
        "quick": args.quick,
        "wall_s": round(wall),
        **runs[0],
        "by_storage": {r["storage"]: r for r in runs},
        "details": details,
    }
    name = "quick" if args.quick else ("profiled" if args.profile else "full")
    dump(RESULTS / f"{name}-{args.storage}.json", record)
    command = f"./bench/run.sh --storage {args.storage}{' --quick' if args.quick else ''}"
    m = runs[0]["machine"]
    loadavg = tuple(round(x, 2) for x in os.getloadavg())
    header = (
        f"Run {stamp} ({name}, {wall / 60:.1f} min, `{command}`) on {m.get('cores')} cores, "
        f"{m.get('cpu_model')}; load average at the end {loadavg}."
    )
    complete = args.parts >= {"drain", "latency", "history", "rules"}
    if (not args.quick and not args.profile and complete) or args.record:
        dump(RESULTS / "latest.json", {k: v for k, v in record.items() if k != "details"})
        update_results_md(runs, header)
    print()
    print(header)
    print()
    print(table(runs))
    print()
    say(f"done in {wall:.0f}s; details in {RESULTS / f'{name}-{args.storage}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
