"""The MQTT edge of the simulator.

- :class:`FleetPublisher`: one paho MQTT 5 client per device, exactly as real devices connect: username =
  device id, password = its secret, a retained Last Will ``{"online": false}`` on its status topic, and a
  retained ``{"online": true, ...}`` status published again on every reconnect. Fine up to a few hundred
  devices.
- :func:`run_load`: the load generator. Several processes, each publishing many devices' messages through a
  few service connections (a QoS 1 publisher reaches ~12k msg/s with enough in flight), so the simulator is
  not what limits a benchmark. Never subscribe in the same process as a QoS 1 publisher (it stalls at
  ~150 msg/s).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from carewatch.contract import Kind, topic
from carewatch.mqtt import make_client, parse_url
from device_sim.fleet import Fleet, fleet_from_dict, fleet_to_dict
from device_sim.routine import Message, Simulation

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


@dataclass
class LoadResult:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.wall_s if self.wall_s > 0 else 0.0


def _load_worker(args: dict[str, Any], results: Any) -> None:
    fleet = fleet_from_dict(args["fleet"])
    rate: float = args["rate"]
    duration_s: float = args["duration_s"]
    start = datetime.fromisoformat(args["start"])
    end = datetime.fromisoformat(args["end"])
    kinds = {d.id: d.kind for _r, d in fleet.devices()}
    sim = Simulation(fleet, start=start, end=end, seed=args["seed"])
    clients = []
    acked = [0]
    lock = threading.Lock()

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: ReasonCode, p: Properties | None) -> None:
        with lock:
            acked[0] += 1

    for i in range(args["connections"]):
        client, props, target = make_client(args["url"], f"{args['client_id']}-{i}", ca_file=args["ca_file"])
        client.max_inflight_messages_set(2000)
        client.on_publish = on_publish
        client.connect(target.host, target.port, keepalive=30, clean_start=True, properties=props)
        client.loop_start()
        clients.append(client)
    result = LoadResult()
    began = time.monotonic()
    deadline = began + duration_s
    batch = max(int(rate / 100), 1)
    for n, msg in enumerate(sim, start=1):
        if time.monotonic() >= deadline:
            break
        # high-rate motion telemetry may go at QoS 0; everything that matters stays at QoS 1
        qos = 0 if msg.kind == "telemetry" and kinds.get(msg.device_id) != "wristband" else 1
        info = clients[n % len(clients)].publish(msg.topic, msg.encode(), qos=qos, retain=msg.retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            result.sent += 1
            result.by_kind[msg.label] += 1
        else:
            result.errors += 1
        if n % batch == 0:
            ahead = n / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
    result.wall_s = time.monotonic() - began
    drain = time.monotonic() + 10
    while time.monotonic() < drain:
        with lock:
            if acked[0] >= result.sent:
                break
        time.sleep(0.02)
    result.acked = acked[0]
    for client in clients:
        client.disconnect()
        client.loop_stop()
    results.put(result)


def run_load(
    url: str,
    fleet: Fleet,
    *,
    rate: float,
    processes: int,
    duration_s: float,
    seed: int,
    connections_per_process: int = 2,
    ca_file: str | None = None,
    client_id: str = "carewatch-sim-load",
    now: datetime | None = None,
) -> LoadResult:
    """Publish the fleet's routine traffic at ``rate`` msg/s in total for ``duration_s`` seconds.

    ``url`` carries a service account that may publish on every device's topics (e.g. carewatch-bench).
    Virtual time is taken far enough in the past that no timestamp is in the future."""
    now = now or datetime.now(UTC)
    per_res_per_s = 1 / 60 + 4 / 300
    need_s = rate * duration_s / max(per_res_per_s * max(len(fleet.residents), 1), 1e-9)
    span = timedelta(seconds=min(need_s * 1.1 + 60, 25 * 86400))
    start, end = now - span, now
    processes = max(1, min(processes, len(fleet.residents)))
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    workers = []
    for i in range(processes):
        part = Fleet(seed=fleet.seed, residents=fleet.residents[i::processes], prefix=fleet.prefix)
        args = {
            "fleet": fleet_to_dict(part),
            "rate": rate / processes,
            "duration_s": duration_s,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "seed": seed,
            "url": url,
            "ca_file": ca_file,
            "connections": connections_per_process,
            "client_id": f"{client_id}-{i}",
        }
        proc = ctx.Process(target=_load_worker, args=(args, results), daemon=True)
        proc.start()
        workers.append(proc)
    total = LoadResult()
    for _ in workers:
        try:
            part_result: LoadResult = results.get(timeout=duration_s + 120)
        except Exception:  # a worker died; report what we have
            total.errors += 1
            continue
        total.sent += part_result.sent
        total.acked += part_result.acked
        total.errors += part_result.errors
        total.by_kind.update(part_result.by_kind)
        total.wall_s = max(total.wall_s, part_result.wall_s)
    for proc in workers:
        proc.join(timeout=15)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    return total
