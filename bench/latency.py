"""Part 2: event -> call. Falls at random times under a fixed background telemetry load, with ingest, the
alert engine and the API as real processes. A prober process of its own publishes each fall and waits for
the NOTIFY its call sends on commit; between falls it measures the loopback floor through the same broker
(publish -> subscribe round trip on a topic no service reads). The live feed (SSE through the API) is
timed from the bench process as a second, end-to-end number."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import time
from typing import Any

from bench.api_client import Api, LiveReader
from bench.common import Env, load_sampler, say, stop_process, summary_ms, wait_for
from bench.drain import Workers, _specs, enrol, py_spy
from bench.load import Publishers
from bench.probe import ProbeClient, ProberPlan, run_prober
from device_sim.fleet import Fleet

BACKGROUND_NICE = 10


def _fall(probe: ProbeClient, device: str, rid: int) -> None:
    body = {"ts": int(time.time() * 1000), "seq": 1, "type": "fall", "confidence": 0.95}
    probe.publish(rid, f"care/v1/{device}/event", json.dumps(body, separators=(",", ":")).encode())


def run(env: Env, quick: bool, fleet: Fleet | None = None) -> dict[str, Any]:
    rate = 1000.0 if quick else 5000.0
    duration = 12.0 if quick else 30.0
    n_falls = 10 if quick else 240  # p99 of 60 samples would just be the maximum
    env.restart_broker()
    with env.connect() as conn:  # the previous parts' writes are flushed now, not during the falls
        conn.execute("CHECKPOINT")
    fleet = fleet or enrol(env, 100 if quick else 1000, "dr")
    fallers = enrol(env, n_falls + 1, "fall", seed=11)
    targets = [(r.db_id, r.wristband.id) for r in fallers.residents]
    assert all(rid is not None for rid, _d in targets)
    probe_fleet = enrol(env, 1, "lprobe", seed=98)
    probe_dev = probe_fleet.residents[0].wristband.id

    ingest = Workers(env, 1)
    ingest.start()
    alerts = env.service("alerts", "alerts")
    api = Api(env).start()
    probe = ProbeClient(env.mqtt_url, "bench-fall-probe")
    live = LiveReader(api)
    live.start()
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    prober = None
    try:
        ingest.ready(probe, probe_dev)
        wait_for(live.connected.is_set, 30, "the live feed")
        # warm-up: one fall end to end (engine subscribed, caches warm, SSE delivering)
        warm_rid, warm_dev = targets.pop()
        _fall(probe, warm_dev, int(warm_rid))  # type: ignore[arg-type]
        wait_for(lambda: int(warm_rid) in live.arrived, 60, "the warm-up fall to reach the live feed")  # type: ignore[arg-type]
        say(f"event->call: engine and live feed up; {rate:,.0f} msg/s background for {duration:.0f}s")
        rng = random.Random(5)
        fall_at = sorted(rng.uniform(3.0, duration - 3.0) for _ in targets)
        plan = ProberPlan(
            env.mqtt_url,
            env.database_url,
            [(at, int(rid), dev) for at, (rid, dev) in zip(fall_at, targets, strict=True)],  # type: ignore[arg-type]
            duration,
        )
        with load_sampler() as load:
            pubs = Publishers(_specs(env, fleet, int(rate * duration), "bg", rate=rate / 2, live_ts=True))
            for p in pubs.procs:  # the load stands for devices on other machines: it yields to the system
                if p.pid is not None:
                    os.setpriority(os.PRIO_PROCESS, p.pid, BACKGROUND_NICE)
            prober = ctx.Process(target=run_prober, args=(plan, results), daemon=True)
            prober.start()
            spy = py_spy(alerts.pid, env.run_dir / "alerts-profile.txt", 20) if env.profile else None
            probed: dict[str, Any] = results.get(timeout=duration + 120)
            pub = pubs.join(timeout=duration + 300)
            if spy is not None:
                spy.wait(60)
            wanted = [rid for rid, _w, _s in probed["falls"]]
            wait_for(lambda: all(r in live.arrived for r in wanted), 120, "every fall on the live feed")
        say(f"event->call: background published {pub.messages:,} at {pub.messages / pub.wall_s:,.0f} msg/s")
    finally:
        if prober is not None and prober.is_alive():
            prober.kill()
        live.stop()
        probe.close()
        ingest.stop()
        for proc in list(env.procs):
            stop_process(proc)
            env.procs.remove(proc)
    committed = [s for _r, _w, s in probed["falls"]]
    sse = [live.arrived[r] - w for r, w, _s in probed["falls"]]
    notify_to_sse = [live.arrived[r] - live.event_at[r] for r in wanted if r in live.event_at]
    floor = probed["floor"]
    li = len(floor) + probed["lost_floor"]
    out: dict[str, Any] = {
        "background_offered_msgs_per_s": rate,
        "background_achieved_msgs_per_s": round(pub.messages / pub.wall_s),
        "background_messages": pub.messages,
        "falls": len(wanted),
        "falls_planned": len(targets),
        "to_call_committed": summary_ms(committed),
        "to_live_feed": summary_ms(sse),
        "live_event_at_to_live_feed": summary_ms(notify_to_sse),
        "loopback_floor": summary_ms(floor),
        "loopback_lost": li - len(floor),
        "load_avg_1m": load,
    }
    c, f, lb = out["to_call_committed"], out["to_live_feed"], out["loopback_floor"]
    say(
        f"event->call: committed p50 {c['p50_ms']} p99 {c['p99_ms']} ms; "
        f"live feed p50 {f['p50_ms']} p99 {f['p99_ms']} ms; loopback p50 {lb['p50_ms']} ms"
    )
    return out
