"""Publisher processes: the backlog and the steady background load, generated cheaply so the publishers
themselves take as little of the 2 cores as possible (payloads are protocol v1, as devices send them).

The wire client is the simulator's (``device_sim.wire.WireClient``: MQTT 5 QoS 1 packets written straight
onto a socket): paho costs ~100 us of Python per publish, which on 2 cores would make the publishers, not
the system under test, the bottleneck."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import time
from dataclasses import dataclass
from typing import Any

from device_sim.wire import WINDOW, WireClient

BATCH_SAMPLES = 10
# A cycle of 20 messages: 12 wristband readings, 7 infrared/presence motion reports, 1 store-and-forward
# batch of BATCH_SAMPLES readings (a wristband back in range after being offline).
CYCLE = ["wb"] * 12 + ["sensor"] * 7 + ["batch"]
ROOM = {"bed": "bedroom", "kit": "kitchen", "bath": "bathroom", "liv": "living_room"}


@dataclass
class Spec:
    url: str
    client_id: str
    wristbands: list[str]
    sensors: list[str]
    count: int
    rate: float = 0.0  # messages/s; 0 = as fast as the broker acks
    live_ts: bool = False  # ts = publish time (steady load) instead of a spread in the past (backlog)
    base_ms: int = 0
    qos: int = 1
    seed: int = 1


@dataclass
class Published:
    messages: int = 0
    rows: int = 0
    acked: int = 0
    wall_s: float = 0.0


def _payload(kind: str, device: str, seq: int, ts_ms: int, rng: random.Random) -> tuple[bytes, int]:
    if kind == "wb":
        body: dict[str, Any] = {
            "ts": ts_ms,
            "seq": seq,
            "hr": rng.randint(55, 95),
            "spo2": rng.randint(93, 99),
            "battery": 80,
            "worn": True,
            "steps": seq * 3,
        }
        rows = 1
    elif kind == "batch":
        samples = [
            {"ts": ts_ms - (BATCH_SAMPLES - i) * 1000, "seq": seq + i, "hr": rng.randint(55, 95), "spo2": 97}
            for i in range(BATCH_SAMPLES)
        ]
        body, rows = {"samples": samples}, BATCH_SAMPLES
    else:
        room = ROOM.get(device.rsplit("-", 1)[-1], "kitchen")
        body = {"ts": ts_ms, "seq": seq, "room": room}
        body["presence" if room == "bathroom" else "motion"] = rng.random() < 0.5
        rows = 1
    return json.dumps(body, separators=(",", ":")).encode(), rows


def _worker(spec: Spec, out: Any) -> None:
    rng = random.Random(spec.seed)
    client = WireClient(spec.url, spec.client_id, window=WINDOW)
    seqs: dict[str, int] = {}
    # seq advances by BATCH_SAMPLES+1 per message so the (device, ts, seq) of every row is unique
    step = BATCH_SAMPLES + 1
    result = Published()
    began = time.monotonic()
    pace = max(int(spec.rate / 200), 1) if spec.rate else 0
    wi = si = 0
    for n in range(spec.count):
        kind = CYCLE[n % len(CYCLE)]
        if kind == "sensor" and spec.sensors:
            device = spec.sensors[si % len(spec.sensors)]
            si += 1
        else:
            kind = "wb" if kind == "sensor" else kind
            device = spec.wristbands[wi % len(spec.wristbands)]
            wi += 1
        seq = seqs.get(device, 0)
        seqs[device] = seq + step
        ts_ms = int(time.time() * 1000) if spec.live_ts else spec.base_ms + (seq // step) * 20_000
        payload, rows = _payload(kind, device, seq, ts_ms, rng)
        client.publish(f"care/v1/{device}/telemetry", payload)
        result.messages += 1
        result.rows += rows
        if pace and n % pace == 0:
            client.flush()
            ahead = n / spec.rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
    result.acked = client.wait_acked(300)
    result.wall_s = time.monotonic() - began
    client.close()
    out.put(result)


class Publishers:
    """Start publisher processes now, collect their results later (so a load can run in the background)."""

    def __init__(self, specs: list[Spec]) -> None:
        ctx = mp.get_context("spawn")
        self.out: Any = ctx.Queue()
        self.procs = [ctx.Process(target=_worker, args=(s, self.out), daemon=True) for s in specs]
        for p in self.procs:
            p.start()

    def join(self, timeout: float) -> Published:
        total = Published()
        deadline = time.monotonic() + timeout
        for _ in self.procs:
            part: Published = self.out.get(timeout=max(1.0, deadline - time.monotonic()))
            total.messages += part.messages
            total.rows += part.rows
            total.acked += part.acked
            total.wall_s = max(total.wall_s, part.wall_s)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(5)
        return total

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)


def split(devices: list[str], parts: int) -> list[list[str]]:
    return [devices[i::parts] for i in range(parts)]
