"""Part `simload`: how fast the simulator's load mode (``carewatch sim --load``) gets messages into Mosquitto.

1. ``device_sim.publisher.run_load`` publishes a fleet's routine protocol-v1 traffic from 2 processes, one raw
   MQTT 5 QoS 1 connection each, as fast as the bench's private tuned mosquitto acks, for 25 s, while a QoS 1
   ``mosquitto_sub`` consumes everything (as ingest would) and counts it: every acked message must arrive.
   Reported: messages acked per second over the run (clock start -> last ack) and the slowest whole second.
2. The raw limit, in the same run: a second load run (messages generated live, no pool: what the load mode
   sustains in a long run) is queued for a stopped persistent session, and ``mosquitto_sub`` drains that
   backlog, as in the ingest part: the broker's own delivery rate, which no Python client reaches.

The consumer in step 1 stays live so that the broker's queue stays short: a backlog of most of a million
messages makes mosquitto's once-a-second persistence save the bottleneck, not the publishers.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

from bench.common import Env, load_sampler, say, stop_process, wait_for
from device_sim.fleet import make_fleet
from device_sim.publisher import POOL_MAX, LoadResult, run_load

PROCESSES = 2
RAW_CLIENT = "bench-simload-raw"


def _sub(env: Env, client_id: str, *extra: str) -> list[str]:
    """mosquitto_sub on every topic of the protocol, QoS 1."""
    assert env.broker is not None
    sub = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    port = str(env.broker.port)
    return [sub, "-h", "127.0.0.1", "-p", port, "-i", client_id, "-q", "1", "-t", "care/v1/#", *extra]


def _summary(result: LoadResult) -> dict[str, Any]:
    steady = sorted(result.steady)
    return {
        "processes": result.processes,
        "devices": result.devices,
        "sent": result.sent,
        "acked": result.acked,
        "errors": result.errors,
        "problems": result.problems,
        "duration_s": round(result.wall_s, 2),
        "msgs_per_s": round(result.rate),
        "min_1s_msgs_per_s": steady[0] if steady else 0,
        "median_1s_msgs_per_s": steady[len(steady) // 2] if steady else 0,
        "per_second": result.per_second,
        "pregenerated_per_process": result.pregenerated,
        "prepare_s": round(result.prepare_s, 1),
        "by_kind": dict(result.by_kind),
    }


def _check(result: LoadResult, what: str) -> None:
    say(result.render())
    if result.errors or result.acked != result.sent:
        raise RuntimeError(f"simload: the {what} run had errors: {result.problems or result.render()}")


def run(env: Env, quick: bool) -> dict[str, Any]:
    residents, duration_s = (100, 6.0) if quick else (1000, 25.0)
    fleet = make_fleet(residents, 17, prefix="sl")
    env.restart_broker()
    counted = env.run_dir / "simload-delivered.txt"
    with open(counted, "wb") as sink:  # one byte per message (mosquitto_sub flushes after each)
        consumer = subprocess.Popen(_sub(env, "bench-simload-consumer", "-N", "-F", "."), stdout=sink)
    try:
        time.sleep(0.5)  # subscribed before the first publish
        say(f"simload: {residents * 5:,} devices, {PROCESSES} processes, {duration_s:.0f}s as fast as acked")
        with load_sampler() as load:
            result = run_load(
                env.mqtt_url,
                fleet,
                rate=0,
                processes=PROCESSES,
                duration_s=duration_s,
                seed=17,
                client_id="bench-simload",
                pool=POOL_MAX,
                progress=say,
            )
        _check(result, "measured")
        wait_for(lambda: counted.stat().st_size >= result.acked, 120, "the consumer to receive every message")
        time.sleep(1.0)  # anything beyond the count would show up now
        delivered = counted.stat().st_size
    finally:
        stop_process(consumer)  # type: ignore[arg-type]
    if delivered != result.acked:
        raise RuntimeError(f"simload: {result.acked} messages acked but {delivered} delivered")
    out = _summary(result)
    out["delivered"] = delivered
    out["load_avg_1m"] = load

    # The raw limit: a backlog queued for a stopped persistent session, drained by mosquitto_sub.
    env.restart_broker()
    subprocess.run(_sub(env, RAW_CLIENT, "-c", "-E"), check=True, timeout=30, capture_output=True)
    live = run_load(
        env.mqtt_url,
        fleet,
        rate=0,
        processes=PROCESSES,
        duration_s=4.0 if quick else 10.0,
        seed=18,
        client_id="bench-simload-live",
        pool=0,
        progress=say,
    )
    _check(live, "backlog")
    t0 = time.monotonic()
    # -R: the retained status copies the broker sends on re-subscribing are not part of the backlog
    drain = _sub(env, RAW_CLIENT, "-c", "-R", "-C", str(live.acked))
    subprocess.run(drain, check=True, timeout=900, stdout=subprocess.DEVNULL)
    raw_s = time.monotonic() - t0
    out["live"] = _summary(live)
    out["raw_broker_messages"] = live.acked
    out["raw_broker_s"] = round(raw_s, 2)
    out["raw_broker_msgs_per_s"] = round(live.acked / raw_s)
    out["ratio_to_raw_broker"] = round(result.rate / (live.acked / raw_s), 3)
    say(
        f"simload: {out['msgs_per_s']:,} msg/s acked for {out['duration_s']}s, slowest second "
        f"{out['min_1s_msgs_per_s']:,}, every one delivered; without pre-generated messages "
        f"{out['live']['msgs_per_s']:,} msg/s; mosquitto_sub drains a backlog at "
        f"{out['raw_broker_msgs_per_s']:,} msg/s (ratio {out['ratio_to_raw_broker']})"
    )
    env.restart_broker()  # leave an empty broker for the next part
    return out
