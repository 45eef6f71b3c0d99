"""The MQTT edge of the simulator.

- :class:`FleetPublisher`: one paho MQTT 5 client per device, exactly as real devices connect: username =
  device id, password = its secret, a retained Last Will ``{"online": false}`` on its status topic, and a
  retained ``{"online": true, ...}`` status published again on every reconnect. Fine up to a few hundred
  devices.
- :func:`run_load`: the load generator. Several processes, each publishing many devices' messages through one
  raw MQTT 5 QoS 1 connection (:mod:`device_sim.wire`; paho would cost ~100 us of Python per publish) as a
  service account, from messages generated before the clock starts, so the simulator is not what limits a
  benchmark. Never subscribe with paho in the same process as a paho QoS 1 publisher (it stalls at
  ~150 msg/s).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import multiprocessing as mp
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from carewatch.contract import Kind, topic
from carewatch.mqtt import make_client, parse_url
from device_sim.fleet import Fleet, fleet_from_dict, fleet_to_dict
from device_sim.routine import Message, Simulation
from device_sim.wire import BrokerClosed, Prepared, WireClient, WireError, prepare

log = logging.getLogger(__name__)

WILL_PAYLOAD = b'{"online":false}'


def device_url(base_url: str, device_id: str, secret: str) -> str:
    """The broker URL with this device's own credentials (any credentials in ``base_url`` are replaced)."""
    target = parse_url(base_url)
    scheme = "mqtts" if target.tls else "mqtt"
    return f"{scheme}://{quote(device_id, safe='')}:{quote(secret, safe='')}@{target.host}:{target.port}"


@dataclass
class _Link:
    device_id: str
    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    connects: int = 0
    refused: str | None = None
    last_status: dict[str, Any] | None = None


class FleetPublisher:
    """Per-device MQTT clients; publish :class:`Message` values from a :class:`Simulation`."""

    def __init__(
        self,
        base_url: str,
        fleet: Fleet,
        *,
        ca_file: str | None = None,
        keepalive: int = 30,
        client_id_suffix: str = "",
    ) -> None:
        missing = [d.id for _r, d in fleet.devices() if d.id not in fleet.secrets]
        if missing:
            raise ValueError(
                f"no MQTT secret for {len(missing)} device(s), e.g. {missing[0]}: enrol the fleet first"
            )
        self.links: dict[str, _Link] = {}
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._props: dict[str, Properties] = {}
        self._keepalive = keepalive
        for _res, dev in fleet.devices():
            url = device_url(base_url, dev.id, fleet.secrets[dev.id])
            will = (topic(dev.id, Kind.STATUS), WILL_PAYLOAD, 1, True)
            client, props, _target = make_client(
                url, dev.id + client_id_suffix, will=will, ca_file=ca_file, keepalive=keepalive
            )
            client.max_inflight_messages_set(100)
            link = _Link(dev.id, client)
            client.user_data_set(link)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_publish = self._on_publish
            self.links[dev.id] = link
            self._props[dev.id] = props
        self._target = parse_url(base_url)

    def _on_connect(
        self,
        client: mqtt.Client,
        link: _Link,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if reason.is_failure:
            link.refused = str(reason)
            with self._lock:
                self.counts["connect_refused"] += 1
            log.error("sim: broker refused device %s: %s", link.device_id, reason)
            return
        link.connects += 1
        if link.connects > 1 and link.last_status is not None:
            # A real device announces itself again after the broker saw its Last Will.
            status = {**link.last_status, "ts": datetime.now(UTC).isoformat(timespec="seconds")}
            client.publish(topic(link.device_id, Kind.STATUS), json.dumps(status), qos=1, retain=True)
            with self._lock:
                self.counts["reconnects"] += 1
        link.connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        link: _Link,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        link.connected.clear()

    def _on_publish(
        self, client: mqtt.Client, link: _Link, mid: int, reason: ReasonCode, props: Properties | None
    ) -> None:
        with self._lock:
            if reason.is_failure:
                self.counts["refused"] += 1  # e.g. ACL: not authorized (a hostile wrong-topic message)
            else:
                self.counts["acked"] += 1

    def connect(self, timeout: float = 30.0) -> None:
        """Connect every device and wait until all are up (or raise, naming how many failed)."""
        for device_id, link in self.links.items():
            link.client.connect_async(
                self._target.host,
                self._target.port,
                keepalive=self._keepalive,
                clean_start=True,
                properties=self._props[device_id],
            )
            link.client.loop_start()
        deadline = time.monotonic() + timeout
        for link in self.links.values():
            link.connected.wait(max(deadline - time.monotonic(), 0.0))
        down = [lk.device_id for lk in self.links.values() if not lk.connected.is_set()]
        if down:
            why = next((lk.refused for lk in self.links.values() if lk.refused), "timeout")
            self.close(wait_s=0)
            raise ConnectionError(f"{len(down)} device(s) could not connect ({why}), e.g. {down[0]}")

    def publish(self, msg: Message, qos: int | None = None) -> bool:
        link = self.links[msg.device_id]
        if msg.kind == "status" and msg.payload is not None:
            link.last_status = dict(msg.payload)
        qos = msg.qos if qos is None else qos
        info = link.client.publish(msg.topic, msg.encode(), qos=qos, retain=msg.retain)
        # While reconnecting (e.g. the broker dropped a device that published where its ACL forbids), paho
        # keeps QoS 1 messages and sends them after the reconnect, like a device's store-and-forward.
        ok = info.rc == mqtt.MQTT_ERR_SUCCESS or (info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0)
        with self._lock:
            self.counts["published" if ok else "publish_errors"] += 1
            if info.rc == mqtt.MQTT_ERR_NO_CONN and ok:
                self.counts["queued_offline"] += 1
        return ok

    def pending(self) -> int:
        with self._lock:
            return self.counts["published"] - self.counts["acked"] - self.counts["refused"]

    def close(self, wait_s: float = 10.0) -> None:
        """Wait for outstanding acks, then disconnect cleanly (a clean disconnect sends no Last Will)."""
        deadline = time.monotonic() + wait_s
        while self.pending() > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        for link in self.links.values():
            link.client.disconnect()
        for link in self.links.values():
            link.client.loop_stop()


# --- load mode ------------------------------------------------------------------------------------------

# Messages each process generates before the clock starts (~400 bytes of memory each, so at most ~230 MB a
# process): generating protocol-v1 traffic costs ~45 us of Python per message, several times what writing it
# costs, so a run that fits in the pool is limited by the broker, not by the simulator. Beyond the pool,
# messages are generated live.
POOL_MAX = 600_000
UNPACED_GUESS = 40_000  # msg/s assumed for an unpaced run when sizing the pool and the virtual span
LABELS_MAX = 255
# Unacknowledged messages per connection: enough to hide the round trip, small enough that the broker is never
# handed a backlog it must keep in flight (tens of thousands in flight slowed mosquitto down to a stall).
LOAD_WINDOW = 2_000


@dataclass
class LoadResult:
    """What a load run did. ``sent`` counts PUBLISH packets written; each ends acked, refused or lost."""

    sent: int = 0
    acked: int = 0
    refused: int = 0  # PUBACK with a reason code >= 0x80
    lost: int = 0  # written, never answered (the connection ended)
    disconnects: int = 0  # connections the broker (or the network) ended
    by_kind: Counter[str] = field(default_factory=Counter)
    acked_by_kind: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    processes: int = 0
    protocol: int = 5
    devices: int = 0
    pregenerated: int = 0  # per process (the largest)
    prepare_s: float = 0.0  # connect + pre-generation, before the clock (the slowest process)
    wall_s: float = 0.0  # clock start -> last ack
    per_second: list[int] = field(default_factory=list)  # acks in each 1-s interval, all processes
    ran_out: bool = False  # the fleet's virtual span had no more messages before the deadline

    @property
    def errors(self) -> int:
        """Refused and lost messages, plus every problem (a disconnect is one)."""
        return self.refused + self.lost + len(self.problems)

    @property
    def rate(self) -> float:
        """Messages published and acked by the broker per second of the run."""
        return self.acked / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def steady(self) -> list[int]:
        """The whole 1-s intervals inside the run (the first and the last, partial, left out)."""
        return self.per_second[1:-1] if len(self.per_second) > 2 else list(self.per_second)

    def render(self) -> str:
        proto = "MQTT 5" if self.protocol == 5 else "MQTT 3.1.1"
        lines = [
            f"load: {self.processes} process(es), one {proto} QoS 1 connection each, "
            f"{self.devices} devices' routine traffic",
            f"  prepared up to {self.pregenerated:,} messages per process in {self.prepare_s:.1f}s "
            "(before the clock)",
            f"  sent {self.sent:,}  acked {self.acked:,}  refused {self.refused:,}  lost {self.lost:,}  "
            f"in {self.wall_s:.1f}s = {self.rate:,.0f} msg/s acked",
        ]
        if self.steady:
            ordered = sorted(self.steady)
            lines.append(
                f"  per second: min {ordered[0]:,}  median {ordered[len(ordered) // 2]:,}  "
                f"max {ordered[-1]:,}"
            )
        for kind, n in sorted(self.by_kind.items()):
            lines.append(f"  {kind:<18} {n:>10,} sent {self.acked_by_kind[kind]:>10,} acked")
        for why, n in self.refusals.most_common():
            lines.append(f"  refused: {why} x{n:,}")
        if self.ran_out:
            lines.append("  the fleet's traffic ran out before the deadline: add residents")
        lines.append(f"  errors: {self.errors}  disconnects: {self.disconnects}")
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _load_worker(args: dict[str, Any], index: int, counters: Any, start: Any, stop: Any, out: Any) -> None:
    """One publishing process: connect first (a refusal is reported at once), pre-generate, wait for the
    common start, then publish until the deadline and wait for the acks."""
    t_prep = time.monotonic()
    try:
        client = WireClient(args["url"], args["client_id"], protocol=args["protocol"], window=args["window"])
    except (WireError, ValueError) as err:
        out.put(("failed", index, str(err)))
        return
    fleet = fleet_from_dict(args["fleet"])
    sim = Simulation(
        fleet,
        start=datetime.fromisoformat(args["start"]),
        end=datetime.fromisoformat(args["end"]),
        seed=args["seed"],
    )
    messages = iter(sim)
    tags: dict[str, int] = {}

    def packet(msg: Message) -> tuple[Prepared, int]:
        tag = tags.setdefault(msg.label, min(len(tags), LABELS_MAX - 1))
        return prepare(msg.topic, msg.encode(), retain=msg.retain, protocol=client.protocol), tag

    pool = [packet(m) for m in islice(messages, args["pool"])]
    gc.freeze()  # the pool lives to the end: keep the collector from walking it again and again
    result = LoadResult(processes=1, protocol=client.protocol, devices=len(fleet.devices()))
    result.pregenerated = len(pool)
    result.prepare_s = time.monotonic() - t_prep
    out.put(("ready", index, None))
    start.wait()
    began = time.monotonic()
    rate: float = args["rate"]
    deadline = began + args["duration_s"]
    step = max(1, min(256, int(rate / 200))) if rate else 256
    sent_by_tag = [0] * LABELS_MAX
    n = 0
    try:
        if not stop.is_set():
            for prepared, tag in chain(pool, map(packet, messages)):
                client.send(prepared, tag)
                sent_by_tag[tag] += 1
                n += 1
                if n % step == 0:
                    now = time.monotonic()
                    counters[3 * index] = n
                    counters[3 * index + 1] = client.acked
                    counters[3 * index + 2] = client.refused
                    if now >= deadline or stop.is_set():
                        break
                    ahead = n / rate - (now - began) if rate else 0.0
                    if ahead > 0:
                        client.flush()
                        time.sleep(ahead)
            else:
                result.ran_out = time.monotonic() < deadline
        client.flush()
        drain_until = time.monotonic() + 30
        while client.in_flight() > 0 and client.closed is None and time.monotonic() < drain_until:
            client.wait_acked(0.1)
            counters[3 * index + 1], counters[3 * index + 2] = client.acked, client.refused
    except BrokerClosed as err:
        result.disconnects += 1
        result.problems.append(str(err))
    except WireError as err:
        result.problems.append(str(err))
    ended = time.monotonic()
    if client.closed is not None and not result.disconnects:
        result.disconnects += 1
        result.problems.append(client.closed)
    client.close()
    counters[3 * index], counters[3 * index + 1] = n, client.acked
    counters[3 * index + 2] = client.refused
    names = {tag: label for label, tag in tags.items()}
    result.sent, result.acked, result.refused = client.sent, client.acked, client.refused
    result.lost = max(0, client.sent - client.acked - client.refused)
    result.refusals = client.refusals
    for tag, label in names.items():
        result.by_kind[label] = sent_by_tag[tag]
        result.acked_by_kind[label] = client.acked_by_tag[tag]
    out.put(("done", index, (result, began, ended)))


def run_load(
    url: str,
    fleet: Fleet,
    *,
    rate: float,
    processes: int,
    duration_s: float,
    seed: int,
    client_id: str = "carewatch-sim-load",
    protocol: int = 5,
    pool: int | None = None,
    window: int = LOAD_WINDOW,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadResult:
    """Publish the fleet's routine traffic for ``duration_s`` seconds from ``processes`` processes, at
    ``rate`` msg/s in total (0 = as fast as the broker acks), every message QoS 1.

    ``url`` carries one account for all processes, normally a service account the broker's ACL lets publish
    on every device's topics (``carewatch-bench``): per-device credentials would mean one connection and
    one password check per device, thousands of them, which measures connection handling, not message
    throughput (:class:`FleetPublisher` is the per-device path). Virtual time lies far enough in the past
    that the volume fits before now, so no timestamp is in the future. Raises :class:`ConnectionError` with
    the broker's reason if it refuses the connection."""
    say = progress or (lambda _line: None)
    now = now or datetime.now(UTC)
    processes = max(1, min(processes, len(fleet.residents)))
    per_process = math.ceil((rate or UNPACED_GUESS) / processes * duration_s * 1.05) + 1000
    pool_n = min(per_process, POOL_MAX) if pool is None else pool
    # an unpaced run may outrun the guess: give it twice the volume rather than let the traffic run out
    volume = max(per_process, pool_n) * processes * (1 if rate else 2)
    per_res_per_s = 1 / 60 + 4 / 300
    need_s = volume / (per_res_per_s * max(len(fleet.residents), 1))
    start, end = now - timedelta(seconds=min(need_s * 1.1 + 60, 25 * 86400)), now
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    counters: Any = ctx.Array("q", 3 * processes, lock=False)
    workers = []
    for i in range(processes):
        part = Fleet(seed=fleet.seed, residents=fleet.residents[i::processes], prefix=fleet.prefix)
        args = {
            "fleet": fleet_to_dict(part),
            "rate": rate / processes if rate > 0 else 0.0,
            "duration_s": duration_s,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "seed": seed,
            "url": url,
            "protocol": protocol,
            "pool": pool_n,
            "window": window,
            "client_id": f"{client_id}-{i}",
        }
        proc = ctx.Process(target=_load_worker, args=(args, i, counters, go, stop, out), daemon=True)
        proc.start()
        workers.append(proc)
    say(f"load: {processes} processes connecting and preparing up to {pool_n:,} messages each")
    state = ["starting"] * processes
    failures: list[str] = []
    total = LoadResult(processes=processes, protocol=protocol, devices=len(fleet.devices()))
    spans: list[tuple[float, float]] = []

    def receive(timeout: float) -> None:
        try:
            what, i, payload = out.get(timeout=timeout)
        except queue.Empty:
            return
        if what == "failed":
            state[i] = "failed"
            failures.append(payload)
        elif what == "ready":
            state[i] = "ready"
        else:
            state[i] = "done"
            part, began, ended = payload
            _merge(total, part)
            spans.append((began, ended))

    def reap() -> None:
        for i, proc in enumerate(workers):
            if state[i] in ("starting", "ready") and not proc.is_alive() and out.empty():
                state[i] = "failed"
                failures.append(f"load process {i} exited with code {proc.exitcode}")

    try:
        while "starting" in state:
            receive(1.0)
            reap()
        if failures:
            stop.set()
            go.set()
            raise ConnectionError("; ".join(dict.fromkeys(failures)))
        t0 = time.monotonic()
        go.set()
        say(f"load: publishing for {duration_s:.0f}s{f' at {rate:,.0f} msg/s' if rate else ''}")
        tick, last_acked = t0 + 1.0, 0
        while "ready" in state:
            receive(max(0.0, tick - time.monotonic()))
            if time.monotonic() >= tick:
                acked = sum(counters[3 * i + 1] for i in range(processes))
                total.per_second.append(acked - last_acked)
                last_acked, tick = acked, tick + 1.0
                if len(total.per_second) % 5 == 0:
                    sent = sum(counters[3 * i] for i in range(processes))
                    recent = sum(total.per_second[-5:]) / 5
                    secs = len(total.per_second)
                    say(f"load: {secs}s  sent {sent:,}  acked {acked:,}  ({recent:,.0f} msg/s)")
            reap()
            if time.monotonic() > t0 + duration_s + 180:
                stop.set()
                failures.append("load processes did not finish within 180 s of the deadline")
                break
        total.problems += failures
        total.wall_s = max((e for _b, e in spans), default=t0) - t0
    finally:
        for proc in workers:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    return total


def _merge(total: LoadResult, part: LoadResult) -> None:
    total.sent += part.sent
    total.acked += part.acked
    total.refused += part.refused
    total.lost += part.lost
    total.disconnects += part.disconnects
    total.by_kind.update(part.by_kind)
    total.acked_by_kind.update(part.acked_by_kind)
    total.refusals.update(part.refusals)
    total.problems += part.problems
    total.pregenerated = max(total.pregenerated, part.pregenerated)
    total.prepare_s = max(total.prepare_s, part.prepare_s)
    total.ran_out = total.ran_out or part.ran_out
