"""The MQTT edge shared by the services: MQTT 5, persistent sessions, manual acks, TCP_NODELAY, and
resubscribe-on-every-connect with the broker's SUBACK checked (a lost session must not go unnoticed)."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    def redacted(self) -> str:
        user = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_url(url: str) -> MqttTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError("MQTT URL must start with mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    return MqttTarget(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def _share_property_tables() -> None:
    """paho builds the same two 25-entry lookup tables in every ``Properties()``, i.e. once per received
    MQTT 5 PUBLISH: profiled at over half of ingest's CPU while draining a backlog. The tables are never
    modified after construction, so every instance can share one copy."""
    if getattr(Properties, "_carewatch_shared", False):
        return
    proto = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    shared = {"types": proto.types, "names": proto.names, "properties": proto.properties}

    def __init__(self: Properties, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)
        for name, table in shared.items():
            object.__setattr__(self, name, table)

    private = frozenset(("packetType", *shared))

    def clear(self: Properties) -> None:
        # the original probes all 25 names with hasattr(); only set attributes need deleting
        for name in [k for k in vars(self) if k not in private]:
            object.__delattr__(self, name)

    Properties.__init__ = __init__  # type: ignore[method-assign]
    Properties.clear = clear  # type: ignore[method-assign]
    Properties._carewatch_shared = True  # type: ignore[attr-defined]


_share_property_tables()


class BufferedClient(mqtt.Client):
    """paho reads each packet header one byte per recv() and one packet per select(); draining a backlog
    of small QoS 1 messages then costs most of a core in syscalls. This reads 256 KiB at a time and
    drains every complete packet already buffered before going back to select()."""

    _RECV = 256 * 1024

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rbuf = b""
        self._rpos = 0
        # A consumer that batches anyway may read at most this often (Subscriber's read_every_s).
        self.read_every_s = 0.0
        self._last_read = 0.0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(self._RECV)
            if not data:
                return data
            self._rbuf, self._rpos = data, 0
        chunk = self._rbuf[self._rpos : self._rpos + bufsize]
        self._rpos += len(chunk)
        return chunk

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if self.read_every_s:
            # Let packets gather: a steady 5,000 msg/s otherwise wakes this thread for nearly every
            # message (a select() and a pass through paho's loop each), and each wake-up is also one
            # more task for the scheduler to fit in beside the emergency path. A backlog is unaffected:
            # handling a full read takes longer than the interval.
            wait = self._last_read + self.read_every_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_read = time.monotonic()
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTT_ERR_SUCCESS and self._sock is not None and self._rpos < len(self._rbuf):
            rc = super().loop_read(max_packets)
        return rc

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0
        return super().reconnect()

    # Shared by every received message: paho gives each one an MQTTMessageInfo with its own
    # threading.Condition (18 % of ingest's receive path in the benchmark profile), which only a
    # publisher ever waits on.
    _RECEIVED_INFO = mqtt.MQTTMessageInfo(0)

    def _handle_publish(self) -> MQTTErrorCode:
        """QoS 0/1 MQTT 5 PUBLISH without properties (what devices send), decoded in place; anything
        else (QoS 2, properties such as a topic alias, MQTT 3, paho logging on) goes paho's way."""
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos == 2 or self._protocol != mqtt.MQTTv5 or self.on_log is not None or self._logger is not None:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        end = 2 + int.from_bytes(packet[0:2], "big")
        topic = bytes(packet[2:end])
        mid = 0
        if qos:
            mid = int.from_bytes(packet[end : end + 2], "big")
            end += 2
        if end >= len(packet) or packet[end] != 0 or not topic:  # properties (or malformed): paho decodes
            return super()._handle_publish()
        message = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
        message.timestamp = time.monotonic()
        message.state = mqtt.mqtt_ms_invalid
        message.dup = bool(header & 0x08)
        message.mid = mid
        message._topic = topic
        message.payload = bytes(packet[end + 1 :])
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.info = self._RECEIVED_INFO
        message.properties = None
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        # CareWatch registers no per-topic callbacks, so skip paho's topic-tree match (a fifth of ingest's
        # receive path in the benchmark profile) and hand every message to on_message.
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                log.error("mqtt: on_message failed: %s", err)
                if not self.suppress_exceptions:
                    raise


def _nodelay(client: mqtt.Client, userdata: object, sock: socket.socket | object) -> None:
    if isinstance(sock, socket.socket) or hasattr(sock, "setsockopt"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(
    url: str,
    client_id: str,
    *,
    persistent: bool = False,
    session_expiry_s: int = 7 * 24 * 3600,
    receive_maximum: int | None = None,
    manual_ack: bool = False,
    ca_file: str | None = None,
    will: tuple[str, bytes, int, bool] | None = None,
    keepalive: int = 30,
) -> tuple[mqtt.Client, Properties, MqttTarget]:
    """Build a paho MQTT 5 client; returns it with its CONNECT properties (pass to connect())."""
    target = parse_url(url)
    client = BufferedClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if target.username:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        ctx = ssl.create_default_context(cafile=ca_file)
        client.tls_set_context(ctx)
    if will is not None:
        client.will_set(*will)
    client.on_socket_open = _nodelay
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if persistent:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum:
        props.ReceiveMaximum = receive_maximum
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    return client, props, target


class Subscriber:
    """A persistent-session consumer that (re)subscribes on every connect and checks the SUBACKs.

    ``on_message`` runs on paho's network thread; the owner acks with :meth:`ack` once durable.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        on_message: Callable[[mqtt.MQTTMessage], None],
        *,
        session_expiry_s: int = 7 * 24 * 3600,
        receive_maximum: int = 4096,
        ca_file: str | None = None,
        keepalive: int = 30,
        read_every_s: float = 0.0,
    ) -> None:
        """`read_every_s`: read the socket at most this often (consumers that batch; never events)."""
        self.client, self._props, self.target = make_client(
            url,
            client_id,
            persistent=True,
            session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum,
            manual_ack=True,
            ca_file=ca_file,
            keepalive=keepalive,
        )
        if isinstance(self.client, BufferedClient):
            self.client.read_every_s = read_every_s
        self._subs = list(subscriptions)
        self._keepalive = keepalive
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connects = 0
        self._next_attempt = 0.0
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = lambda _c, _u, msg: on_message(msg)
        self.left = threading.Event()
        self._closing = False

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("mqtt %s: connect refused: %s", self.target.redacted(), reason)
            return
        self.connects += 1
        log.info("mqtt %s: connected (session present: %s)", self.target.redacted(), flags.session_present)
        self.connected.set()
        # Always resubscribe: the broker may have lost the session (expiry, restart without persistence).
        client.subscribe([(topic, SubscribeOptions(qos=qos)) for topic, qos in self._subs])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        props: Properties | None,
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("mqtt: subscription refused by broker: %s", ", ".join(failed))
        else:
            self.subscribed.set()

    def leave(self) -> None:
        """Unsubscribe from every subscription, and never subscribe again (retiring a worker id): the
        broker stops giving this session a share; what it already queued is still delivered."""
        topics = [topic for topic, _qos in self._subs]
        self._subs = []
        self.left.clear()
        self.client.unsubscribe(topics)

    def _on_unsubscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        props: Properties | None,
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.warning("mqtt: unsubscribe answered with %s", ", ".join(failed))
        self.left.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self._closing:  # our own stop or retirement: nothing to reconnect, nothing to warn about
            log.info("mqtt %s: disconnected", self.target.redacted())
            return
        log.warning("mqtt %s: disconnected (%s); paho reconnects", self.target.redacted(), reason)

    def start(self) -> None:
        self.client.connect_async(
            self.target.host,
            self.target.port,
            keepalive=self._keepalive,
            clean_start=False,
            properties=self._props,
        )
        self.client.loop_start()

    def connect(self) -> None:
        """Single-threaded mode: connect now (retrying), then call :meth:`pump` from the owner's loop."""
        self.client.connect_async(
            self.target.host,
            self.target.port,
            keepalive=self._keepalive,
            clean_start=False,
            properties=self._props,
        )
        self._next_attempt = 0.0
        self._reconnect()

    def _reconnect(self) -> None:
        import time

        if time.monotonic() < self._next_attempt:
            return
        self._next_attempt = time.monotonic() + 1.0
        try:
            self.client.reconnect()
        except OSError as exc:
            log.warning("mqtt %s: cannot connect (%s); retrying", self.target.redacted(), exc)

    def pump(self, timeout: float) -> None:
        """Run the network loop once: read what is there, send acks, keep the connection alive."""
        import time

        rc = self.client.loop(timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self.connected.clear()
            self._reconnect()
            if not self.client.is_connected():
                time.sleep(min(timeout, 0.2))

    def ack(self, message: mqtt.MQTTMessage) -> None:
        if message.qos > 0:
            self.client.ack(message.mid, message.qos)

    def ack_all(self, messages: Sequence[mqtt.MQTTMessage]) -> None:
        """Acknowledge a committed batch with one write: paho queues and sends each PUBACK on its own
        (a syscall per message: a quarter of ingest's CPU in the benchmark profile). The PUBACKs go through
        paho's own output queue as one block, so they never interleave with a packet paho is writing."""
        puback = bytearray()
        for m in messages:
            if m.qos == 1:
                puback += b"\x40\x02" + m.mid.to_bytes(2, "big")  # PUBACK, success (no reason code)
            elif m.qos == 2:
                self.client.ack(m.mid, m.qos)
        if puback:
            self.client._packet_queue(PUBACK, bytes(puback), 0, 0)

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect. `end_session` (retiring a worker id, after every ack): with session expiry 0, so
        the broker deletes the session instead of collecting this worker's share for it."""
        props = None
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._closing = True
        self.client.disconnect(properties=props)
        if self.client._thread is not None:
            self.client.loop_stop()
        else:
            self.client.loop(0.1)
