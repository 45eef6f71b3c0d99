"""Part 3: history queries through the HTTP API (real uvicorn process) over 200 residents x 30 days of
1-per-minute readings, loaded with generate_series: the rollups in full, raw telemetry for the last days."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.api_client import Api
from bench.common import Env, load_sampler, say, summary_ms
from bench.drain import enrol

# One shape for both rollups: a resting heart rate with a daily swing, noise from hashes (repeatable).
_ROLLUP = """
INSERT INTO {table} (resident_id, bucket, hr_min, hr_max, hr_sum, hr_n, spo2_min, spo2_max, spo2_sum, spo2_n,
                     motion_n, steps_max)
SELECT r.id, b, hr - 4, hr + 5, hr * {n}, {n}, 95, 99, 97 * {n}, {n}, (hr %% 3),
       (extract(hour FROM b) * 150)::int
FROM unnest(%(ids)s::bigint[]) AS r(id)
CROSS JOIN generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz, %(step)s::interval) AS b
CROSS JOIN LATERAL (SELECT 62 + (r.id %% 9) + (8 * sin(extract(epoch FROM b) / 13751))::int AS hr) v
"""
_RAW = """
INSERT INTO telemetry (device_id, ts, seq, resident_id, received_at, hr, spo2, battery, worn, steps)
SELECT d.id, b, extract(epoch FROM b)::bigint / 60, d.resident_id, b,
       62 + (d.resident_id %% 9) + (8 * sin(extract(epoch FROM b) / 13751))::int, 97, 80, true,
       (extract(hour FROM b) * 150)::int
FROM devices d
CROSS JOIN generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz, '1 minute'::interval) AS b
WHERE d.kind = 'wristband' AND d.resident_id = ANY(%(ids)s)
"""


def load(env: Env, residents: int, days: int, raw_days: int) -> tuple[list[int], dict[str, Any]]:
    fleet = enrol(env, residents, "hist", seed=21)
    ids = [int(r.db_id) for r in fleet.residents if r.db_id is not None]
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    timings: dict[str, Any] = {}
    halves = [ids[0::2], ids[1::2]]

    def parallel(sql: str, lo: datetime, hi: datetime, step: str | None) -> None:
        """Both cores: one connection per half of the residents."""
        errors: list[BaseException] = []

        def one(part: list[int]) -> None:
            try:
                with env.connect() as c:
                    c.execute(sql, {"ids": part, "lo": lo, "hi": hi, **({"step": step} if step else {})})
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(h,)) for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    began = time.monotonic()
    for day in range(days, 0, -1):  # a day at a time: bounded statements
        lo, hi = now - timedelta(days=day), now - timedelta(days=day - 1, minutes=1)
        parallel(_ROLLUP.format(table="vitals_1m", n=1), lo, hi, "1 minute")
    timings["vitals_1m_s"] = round(time.monotonic() - began, 1)
    say(f"history: vitals_1m {residents * days * 1440:,} rows in {timings['vitals_1m_s']}s")
    began = time.monotonic()
    lo_h = (now - timedelta(days=days)).replace(minute=0)
    parallel(_ROLLUP.format(table="vitals_1h", n=60), lo_h, now, "1 hour")
    timings["vitals_1h_s"] = round(time.monotonic() - began, 1)
    began = time.monotonic()
    for day in range(raw_days, 0, -1):
        lo, hi = now - timedelta(days=day), now - timedelta(days=day - 1, minutes=1)
        parallel(_RAW, lo, hi, None)
    timings["telemetry_s"] = round(time.monotonic() - began, 1)
    say(f"history: telemetry {residents * raw_days * 1440:,} rows in {timings['telemetry_s']}s")
    with env.connect() as conn:
        conn.execute("ANALYZE telemetry")
        conn.execute("ANALYZE vitals_1m")
        conn.execute("ANALYZE vitals_1h")
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in ("telemetry", "vitals_1m", "vitals_1h")
        }
    return ids, {
        "residents": residents,
        "days": days,
        "raw_days": raw_days,
        "rows": counts,
        "load_s": timings,
    }


def _requests(api: Api, ids: list[int], n: int, seed: int) -> list[tuple[str, str, dict[str, str]]]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out: list[tuple[str, str, dict[str, str]]] = []
    for _ in range(n):
        rid = rng.choice(ids)
        out.append(("24h", f"/api/v1/residents/{rid}/vitals", {}))
        out.append(
            ("30d", f"/api/v1/residents/{rid}/vitals", {"from": (now - timedelta(days=30)).isoformat()})
        )
        out.append(("status", f"/api/v1/residents/{rid}/status", {}))
    return out


def _client_run(
    api: Api, reqs: list[tuple[str, str, dict[str, str]]], times: dict[str, list[float]], errors: list[str]
) -> None:
    with httpx.Client(base_url=api.base, headers=api.headers, timeout=30) as client:
        for name, path, params in reqs:
            began = time.perf_counter()
            resp = client.get(path, params=params)
            elapsed = time.perf_counter() - began
            if resp.status_code != 200:
                errors.append(f"{name}: {resp.status_code}")
                continue
            times[name].append(elapsed)


def measure(api: Api, ids: list[int], clients: int, per_client: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"24h": [], "30d": [], "status": []}
    errors: list[str] = []
    # warm-up (connection pool, plan cache), not counted
    _client_run(api, _requests(api, ids, 5, 0), {"24h": [], "30d": [], "status": []}, errors)
    threads = [
        threading.Thread(
            target=_client_run, args=(api, _requests(api, ids, per_client, i + 1), times, errors)
        )
        for i in range(clients)
    ]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.monotonic() - began
    total = sum(len(v) for v in times.values())
    out: dict[str, Any] = {name: summary_ms(v) for name, v in times.items()}
    out.update(
        {
            "clients": clients,
            "requests": total,
            "requests_per_s": round(total / wall, 1),
            "errors": len(errors),
        }
    )
    return out


def _say(label: str, r: dict[str, Any]) -> None:
    say(
        f"history {label}: 24h p99 {r['24h']['p99_ms']} ms, 30d p99 {r['30d']['p99_ms']} ms, "
        f"status p99 {r['status']['p99_ms']} ms"
    )


def run(env: Env, quick: bool) -> dict[str, Any]:
    residents, days, raw_days = (20, 30, 1) if quick else (200, 30, 2)
    with load_sampler() as load_avg:
        ids, loaded = load(env, residents, days, raw_days)
    api = Api(env).start()
    try:
        with load_sampler() as measured:
            one = measure(api, ids, 1, 20 if quick else 80)
            _say("1 client", one)
            many = measure(api, ids, 16, 3 if quick else 10)
            _say("16 clients", many)
    finally:
        for proc in list(env.procs):
            from bench.common import stop_process

            stop_process(proc)
            env.procs.remove(proc)
    return {
        "data": loaded,
        "load_avg_during_load": load_avg,
        "one_client": one,
        "sixteen_clients": many,
        "load_avg_1m": measured,
    }
