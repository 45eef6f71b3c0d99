"""Part 2: event -> call. Falls at random times under a fixed background telemetry load, with ingest, the
alert engine and the API as real processes; the loopback floor is measured through the same broker at the
same time (publish -> subscribe round trip of probes on a topic no service reads)."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from bench.api_client import Api, LiveReader
from bench.common import Env, load_sampler, say, summary_ms, wait_for
from bench.drain import Workers, _specs, enrol, py_spy
from bench.load import Publishers
from bench.probe import CallPoller, ProbeClient
from carewatch.mqtt import make_client
from device_sim.fleet import Fleet


class Loopback:
    """A QoS 1 subscriber on bench/loopback: arrival times of the probes the bench publishes."""

    def __init__(self, url: str) -> None:
        self.arrived: dict[int, float] = {}
        self.subscribed = threading.Event()
        self.client, props, target = make_client(url, "bench-loopback-sub")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("bench/loopback", qos=1)
        self.client.connect(target.host, target.port, keepalive=60, clean_start=True, properties=props)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.arrived[int(msg.payload)] = time.time()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _fall(probe: ProbeClient, device: str, rid: int) -> None:
    body = {"ts": int(time.time() * 1000), "seq": 1, "type": "fall", "confidence": 0.95}
    probe.publish(rid, f"care/v1/{device}/event", json.dumps(body, separators=(",", ":")).encode())


def run(env: Env, quick: bool, fleet: Fleet | None = None) -> dict[str, Any]:
    rate = 1000.0 if quick else 5000.0
    duration = 12.0 if quick else 30.0
    n_falls = 10 if quick else 60
    env.restart_broker()
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
    calls = CallPoller(env)
    calls.start()
    loop = Loopback(env.mqtt_url)
    try:
        ingest.ready(probe, probe_dev)
        wait_for(live.connected.is_set, 30, "the live feed")
        wait_for(loop.subscribed.is_set, 30, "the loopback subscription")
        # warm-up: one fall end to end (engine subscribed, caches warm, SSE delivering)
        warm_rid, warm_dev = targets.pop()
        _fall(probe, warm_dev, int(warm_rid))  # type: ignore[arg-type]
        wait_for(lambda: int(warm_rid) in live.arrived, 60, "the warm-up fall to reach the live feed")  # type: ignore[arg-type]
        say(f"event->call: engine and live feed up; {rate:,.0f} msg/s background for {duration:.0f}s")
        rng = random.Random(5)
        fall_at = sorted(rng.uniform(3.0, duration - 3.0) for _ in targets)
        with load_sampler() as load:
            pubs = Publishers(_specs(env, fleet, int(rate * duration), "bg", rate=rate / 2, live_ts=True))
            began = time.monotonic()
            spy = py_spy(alerts.pid, env.run_dir / "alerts-profile.txt", 20) if env.profile else None
            fi = li = 0
            while time.monotonic() - began < duration - 1 and (fi < len(targets)):
                now = time.monotonic() - began
                if fi < len(fall_at) and now >= fall_at[fi]:
                    rid, dev = targets[fi]
                    _fall(probe, dev, int(rid))  # type: ignore[arg-type]
                    fi += 1
                else:
                    li += 1
                    probe.publish(("loop", li), "bench/loopback", str(li).encode())
                    time.sleep(0.02)
            pub = pubs.join(timeout=duration + 300)
            if spy is not None:
                spy.wait(60)
            wanted = [int(rid) for rid, _d in targets[:fi]]  # type: ignore[arg-type]
            wait_for(
                lambda: all(r in calls.seen and r in live.arrived for r in wanted), 120, "every fall's call"
            )
        say(f"event->call: background published {pub.messages:,} at {pub.messages / pub.wall_s:,.0f} msg/s")
    finally:
        calls.stop_flag.set()
        live.stop()
        loop.close()
        probe.close()
        ingest.stop()
        for proc in list(env.procs):
            from bench.common import stop_process

            stop_process(proc)
            env.procs.remove(proc)
    committed = [calls.seen[r][1] - probe.sent[r] for r in wanted]
    visible = [calls.seen[r][0] - probe.sent[r] for r in wanted]
    sse = [live.arrived[r] - probe.sent[r] for r in wanted]
    notify_to_sse = [live.arrived[r] - live.event_at[r] for r in wanted if r in live.event_at]
    floor = [loop.arrived[i] - probe.sent[("loop", i)] for i in range(1, li + 1) if i in loop.arrived]
    out: dict[str, Any] = {
        "background_offered_msgs_per_s": rate,
        "background_achieved_msgs_per_s": round(pub.messages / pub.wall_s),
        "background_messages": pub.messages,
        "falls": len(wanted),
        "to_call_created_at": summary_ms(committed),
        "to_call_visible_poll": summary_ms(visible),
        "to_live_feed": summary_ms(sse),
        "live_event_at_to_live_feed": summary_ms(notify_to_sse),
        "loopback_floor": summary_ms(floor),
        "loopback_lost": li - len(floor),
        "load_avg_1m": load,
    }
    c, f, lb = out["to_call_created_at"], out["to_live_feed"], out["loopback_floor"]
    say(
        f"event->call: created_at p50 {c['p50_ms']} p99 {c['p99_ms']} ms; "
        f"live feed p50 {f['p50_ms']} p99 {f['p99_ms']} ms; loopback p50 {lb['p50_ms']} ms"
    )
    return out
