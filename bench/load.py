"""Publisher processes: the backlog and the steady background load, generated cheaply so the publishers
themselves take as little of the 2 cores as possible (payloads are protocol v1, as devices send them)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

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


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


class RawPublisher:
    """MQTT 3.1.1 QoS 1 publishing straight onto a socket: paho costs ~100 us of Python per publish, which
    on 2 cores would make the publishers, not the system under test, the bottleneck. A reader thread
    counts PUBACKs; at most 50,000 are outstanding so packet ids are never reused while in flight."""

    WINDOW = 50_000

    def __init__(self, url: str, client_id: str) -> None:
        from carewatch.mqtt import parse_url

        target = parse_url(url)
        self.sock = socket.create_connection((target.host, target.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0x02
        payload = _str(client_id.encode())
        if target.username:
            flags |= 0x80 | (0x40 if target.password else 0)
            payload += _str(target.username.encode())
            if target.password:
                payload += _str(target.password.encode())
        body = _str(b"MQTT") + bytes([4, flags]) + (0).to_bytes(2, "big") + payload
        self.sock.sendall(_packet(0x10, body))
        connack = self.sock.recv(4)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"broker refused the bench publisher: {connack!r}")
        self.sock.settimeout(None)
        self.sent = 0
        self.acked = 0
        self._buf: list[bytes] = []
        self._buffered = 0
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            pending += data
            n = len(pending) // 4  # only PUBACKs (0x40 0x02 id id) come back to a publisher
            pending = pending[n * 4 :]
            with self._cond:
                self.acked += n
                self._cond.notify_all()

    def publish(self, topic: str, payload: bytes) -> None:
        self.sent += 1
        pid = (self.sent - 1) % 65535 + 1
        self._buf.append(_packet(0x32, _str(topic.encode()) + pid.to_bytes(2, "big") + payload))
        self._buffered += 1
        if self._buffered >= 256:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        with self._cond:
            self._cond.wait_for(lambda: self.sent - self.acked < self.WINDOW, timeout=120)
        self.sock.sendall(b"".join(self._buf))
        self._buf.clear()
        self._buffered = 0

    def wait_acked(self, timeout: float) -> int:
        self.flush()
        with self._cond:
            self._cond.wait_for(lambda: self.acked >= self.sent, timeout=timeout)
            return self.acked

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(bytes([0xE0, 0]))
            self.sock.close()


def _worker(spec: Spec, out: Any) -> None:
    rng = random.Random(spec.seed)
    client = RawPublisher(spec.url, spec.client_id)
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
