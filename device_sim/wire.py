"""The load mode's wire client: MQTT QoS 1 PUBLISH packets written straight onto a TCP socket.

Why it exists: paho spends ~100 us of Python per QoS 1 publish, so on 2 cores two paho publishers reach
~4,300 msg/s and the load generator, not the system under test, would be what a benchmark measures. This
client does only what a QoS 1 publisher needs, and does it in bulk:

- CONNECT as MQTT 5 (``docs/protocol.md``: preferred) or 3.1.1, and a CONNACK check that turns a refusal
  (bad user name or password, not authorised, ...) into :class:`ConnectRefused` with the broker's reason;
- PUBLISH packets batched into one ``sendall``, TCP_NODELAY, at most ``window`` unacknowledged (never more
  than the broker's Receive Maximum), so packet ids are never reused while in flight;
- a reader thread that parses every incoming packet by its remaining length: PUBACKs are counted as acked
  or, with a reason code >= 0x80 (e.g. 0x87 not authorised), as refused with the reason kept; a DISCONNECT
  or a closed socket ends the connection and makes the next publish raise :class:`BrokerClosed` instead of
  waiting forever; PINGREQ keeps an otherwise idle connection alive.

Plain TCP only: a TLS socket may not be read and written from two threads at once, and the load mode is
meant for a broker's local listener.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import Counter

from carewatch.mqtt import parse_url

# A bounded in-flight window below 65,535 keeps every outstanding packet id unique.
WINDOW = 50_000
BATCH = 256

REASONS = {
    0x00: "success",
    0x10: "no matching subscribers",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x93: "receive maximum exceeded",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9F: "connection rate exceeded",
}
V311_CONNACK = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

# MQTT 5 property ids by value type (enough to skip any property and read the ones used here)
_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_TWO = {0x13, 0x21, 0x22, 0x23}
_FOUR = {0x02, 0x11, 0x18, 0x27}
_VARINT = {0x0B}
_STRING = {0x03, 0x08, 0x12, 0x15, 0x16, 0x09, 0x1A, 0x1C, 0x1F}  # UTF-8 strings and binary data
_PAIR = {0x26}
REASON_STRING, RECEIVE_MAXIMUM, SERVER_KEEP_ALIVE = 0x1F, 0x21, 0x13

PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"  # MQTT 5: remaining length 0 = reason 0x00, normal disconnection (no Last Will)

Prepared = tuple[bytes, bytes]  # a PUBLISH split around its packet id: (header + topic, properties + payload)


class WireError(ConnectionError):
    """The broker connection failed; the message says why in words."""


class ConnectRefused(WireError):
    """No session: the broker refused the CONNECT, answered something else, or nothing at all."""


class BrokerClosed(WireError):
    """The broker (or the network) ended an established connection."""


def reason_text(code: int) -> str:
    return f"{REASONS.get(code, 'reason')} (0x{code:02X})"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, next position), or None if the bytes end first."""
    value, shift = 0, 0
    while pos < len(data):
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise WireError("malformed remaining length from the broker")
    return None


def _str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def properties(data: bytes) -> dict[int, int | bytes]:
    """MQTT 5 properties (a varint length, then id/value pairs) -> {id: value}; pairs are skipped."""
    head = _read_varint(data, 0)
    if head is None:
        return {}
    length, pos = head
    end = min(pos + length, len(data))
    out: dict[int, int | bytes] = {}
    while pos < end:
        pid = data[pos]
        pos += 1
        if pid in _BYTE:
            out[pid], pos = data[pos], pos + 1
        elif pid in _TWO:
            out[pid], pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif pid in _FOUR:
            out[pid], pos = int.from_bytes(data[pos : pos + 4], "big"), pos + 4
        elif pid in _VARINT:
            got = _read_varint(data, pos)
            if got is None:
                break
            out[pid], pos = got
        elif pid in _STRING:
            n = int.from_bytes(data[pos : pos + 2], "big")
            out[pid], pos = bytes(data[pos + 2 : pos + 2 + n]), pos + 2 + n
        elif pid in _PAIR:
            for _ in range(2):
                pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
        else:
            break  # unknown property: the rest cannot be framed
    return out


def prepare(topic: str, payload: bytes, *, retain: bool = False, protocol: int = 5) -> Prepared:
    """Build a QoS 1 PUBLISH once, with a gap for the packet id: sending a prepared packet is cheap."""
    name = topic.encode()
    tail = (b"\x00" if protocol == 5 else b"") + payload  # MQTT 5: empty property block
    head = bytes([0x32 | (1 if retain else 0)]) + varint(2 + len(name) + 2 + len(tail)) + _str(name)
    return head, tail


class WireClient:
    """One QoS 1 publishing connection; ``sent``/``acked``/``refused`` are counts of PUBLISH packets.

    ``tag`` (0..254) on :meth:`send` lets a caller count acks per kind of message (``acked_by_tag``).
    Not thread-safe for publishing: one thread publishes, the client's own reader thread counts acks."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        protocol: int = 5,
        window: int = WINDOW,
        batch: int = BATCH,
        keepalive: int = 60,
        connect_timeout: float = 10.0,
        ack_timeout: float = 120.0,
    ) -> None:
        target = parse_url(url)
        if target.tls:
            raise ValueError(
                "the load mode's wire client speaks plain TCP only: use the broker's mqtt:// listener"
            )
        if protocol not in (4, 5):
            raise ValueError("protocol must be 4 (MQTT 3.1.1) or 5 (MQTT 5)")
        self.protocol = protocol
        self.where = target.redacted()
        self.ack_timeout = ack_timeout
        self.keepalive = keepalive
        self.window = max(1, min(window, 65_535 - 2 * batch))
        try:
            self.sock = socket.create_connection((target.host, target.port), timeout=connect_timeout)
        except OSError as err:
            raise ConnectRefused(f"cannot reach the broker at {self.where}: {err}") from err
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._connect(target.username, target.password, client_id)
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(ack_timeout)  # a broker that stops reading cannot block a write forever
        self.batch = max(1, min(batch, self.window))
        self.sent = 0  # PUBLISH packets written to the socket
        self.acked = 0  # PUBACK with a success reason (< 0x80; 0x10 "no matching subscribers" included)
        self.refused = 0  # PUBACK with a reason >= 0x80
        self.unexpected = 0  # PUBACK for a packet id not in flight
        self.refusals: Counter[str] = Counter()
        self.acked_by_tag = [0] * 256
        self.refused_by_tag = [0] * 256
        self.closed: str | None = None  # why the connection ended, if it was not our close()
        self._closing = False
        self._tag_of = bytearray(65_536)  # tag + 1 of each packet id in flight, 0 = free
        self._next_pid = 1
        self._buf: list[bytes] = []
        self._last_write = time.monotonic()
        self._cond = threading.Condition()
        self._wlock = threading.Lock()  # PINGREQ from the reader must not split a batch
        self._reader = threading.Thread(target=self._read, name=f"wire-{client_id}", daemon=True)
        self._reader.start()

    # --- connect ---------------------------------------------------------------------------------------

    def _connect(self, username: str | None, password: str | None, client_id: str) -> None:
        flags = 0x02  # clean start / clean session: a load connection keeps no state
        payload = _str(client_id.encode())
        if username:
            flags |= 0x80
            payload += _str(username.encode())
            if password:
                flags |= 0x40
                payload += _str(password.encode())
        variable = _str(b"MQTT") + bytes([self.protocol, flags]) + self.keepalive.to_bytes(2, "big")
        if self.protocol == 5:
            variable += b"\x00"  # no CONNECT properties
        self.sock.sendall(bytes([0x10]) + varint(len(variable) + len(payload)) + variable + payload)
        who = f"user {username!r}" if username else "anonymous"
        try:
            kind, body = self._read_packet()
        except TimeoutError as err:
            raise ConnectRefused(f"no CONNACK from {self.where} within the timeout ({who})") from err
        except OSError as err:
            raise ConnectRefused(f"connection to {self.where} failed before CONNACK: {err}") from err
        if kind is None:
            raise ConnectRefused(
                f"broker at {self.where} closed the connection without a CONNACK ({who}; does it speak "
                f"MQTT {'5' if self.protocol == 5 else '3.1.1'}?)"
            )
        if kind >> 4 != 2 or len(body) < 2:
            raise ConnectRefused(f"broker at {self.where} answered CONNECT with packet type {kind >> 4}")
        code = body[1]
        if self.protocol == 5:
            props = properties(body[2:])
            if code >= 0x80:
                detail = props.get(REASON_STRING)
                extra = f": {detail.decode(errors='replace')}" if isinstance(detail, bytes) else ""
                raise ConnectRefused(
                    f"broker at {self.where} refused the connection ({who}): {reason_text(code)}{extra}"
                )
            receive_max = props.get(RECEIVE_MAXIMUM)
            if isinstance(receive_max, int) and receive_max > 0:
                self.window = min(self.window, receive_max)
            server_ka = props.get(SERVER_KEEP_ALIVE)
            if isinstance(server_ka, int):
                self.keepalive = server_ka
        elif code != 0:
            text = V311_CONNACK.get(code, "refused")
            raise ConnectRefused(f"broker at {self.where} refused the connection ({who}): {text} ({code})")

    def _read_packet(self) -> tuple[int | None, bytes]:
        """One whole packet on the still-blocking socket (CONNACK only); (None, b"") at EOF."""
        head = self._recv_exact(2)
        if head is None:
            return None, b""
        data = head
        while data[-1] & 0x80:
            more = self._recv_exact(1)
            if more is None:
                return None, b""
            data += more
        got = _read_varint(data, 1)
        assert got is not None
        body = self._recv_exact(got[0]) if got[0] else b""
        return (data[0], body) if body is not None else (None, b"")

    def _recv_exact(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    # --- reading ----------------------------------------------------------------------------------------

    def _read(self) -> None:
        pending = b""
        idle = self.keepalive / 2 if self.keepalive else None
        while True:
            try:
                if idle is not None:
                    ready, _, _ = select.select([self.sock], [], [], idle / 2)
                    if not ready:
                        if time.monotonic() - self._last_write >= idle:
                            with self._wlock:
                                self.sock.sendall(PINGREQ)
                                self._last_write = time.monotonic()
                        continue
                data = self.sock.recv(262_144)
            except TimeoutError:
                continue  # nothing to read for a while (no keepalive): not an error
            except (OSError, ValueError) as err:
                self._lost(f"connection to {self.where} failed: {err}")
                return
            if not data:
                self._lost(f"broker at {self.where} closed the connection")
                return
            pending += data
            try:
                pending = self._handle(pending)
            except WireError as err:
                self._lost(str(err))
                return
            if self.closed is not None:
                return

    def _handle(self, data: bytes) -> bytes:
        """Account for every whole packet in ``data``; returns the incomplete rest."""
        pos, end = 0, len(data)
        acked = refused = unexpected = 0
        tag_of = self._tag_of
        closed: str | None = None
        while pos + 1 < end:
            kind = data[pos]
            got = _read_varint(data, pos + 1)
            if got is None:
                break
            length, start = got
            if start + length > end:
                break
            pos = start + length
            if kind == 0x40 and length >= 2:  # PUBACK: id, [reason, [properties]]
                pid = (data[start] << 8) | data[start + 1]
                code = data[start + 2] if length >= 3 else 0
                tag = tag_of[pid]
                if not tag:
                    unexpected += 1
                    continue
                tag_of[pid] = 0
                if code < 0x80:
                    acked += 1
                    self.acked_by_tag[tag - 1] += 1
                else:
                    refused += 1
                    self.refused_by_tag[tag - 1] += 1
                    detail = properties(data[start + 3 : pos]).get(REASON_STRING) if length > 3 else None
                    extra = f": {detail.decode(errors='replace')}" if isinstance(detail, bytes) else ""
                    why = reason_text(code) + extra
                    self.refusals[why] += 1
            elif kind >> 4 == 14:  # DISCONNECT from the server (MQTT 5)
                code = data[start] if length >= 1 else 0
                closed = f"broker at {self.where} sent DISCONNECT: {reason_text(code)}"
            # PINGRESP and anything else a publisher may be sent: nothing to count
        with self._cond:
            self.acked += acked
            self.refused += refused
            self.unexpected += unexpected
            if closed is not None and not self._closing:
                self.closed = closed
            self._cond.notify_all()
        return data[pos:]

    def _lost(self, why: str) -> None:
        with self._cond:
            if not self._closing and self.closed is None:
                self.closed = why
            self._cond.notify_all()

    # --- publishing -------------------------------------------------------------------------------------

    def in_flight(self) -> int:
        return self.sent - self.acked - self.refused

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, tag: int = 0) -> None:
        self.send(prepare(topic, payload, retain=retain, protocol=self.protocol), tag)

    def send(self, packet: Prepared, tag: int = 0) -> None:
        """Queue one prepared PUBLISH; written with the next full batch (or :meth:`flush`)."""
        tag_of = self._tag_of
        pid = self._next_pid
        while tag_of[pid]:  # still in flight (acks out of order): take the next free id
            pid = pid % 65_535 + 1
        tag_of[pid] = tag + 1
        self._next_pid = pid % 65_535 + 1
        self._buf.append(packet[0] + pid.to_bytes(2, "big") + packet[1])
        if len(self._buf) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Write what is queued once the window has room; raises :class:`BrokerClosed` or
        :class:`WireError` (no acks for ``ack_timeout``) instead of waiting forever."""
        n = len(self._buf)
        if not n:
            return
        with self._cond:
            room = self._cond.wait_for(
                lambda: self.closed is not None or self.in_flight() + n <= self.window, self.ack_timeout
            )
            if self.closed is not None:
                raise BrokerClosed(self.closed)
            if not room:
                raise WireError(f"no PUBACK from {self.where} for {self.ack_timeout:.0f}s")
        try:
            with self._wlock:
                self.sock.sendall(b"".join(self._buf))
                self._last_write = time.monotonic()
        except OSError as err:
            self._lost(f"writing to {self.where} failed: {err}")
            raise BrokerClosed(self.closed or str(err)) from err
        self.sent += n
        self._buf.clear()

    def wait_acked(self, timeout: float) -> int:
        """Flush, then wait until every PUBLISH written is answered (or the connection ended, or
        ``timeout``); returns the number acked."""
        self.flush()
        with self._cond:
            self._cond.wait_for(lambda: self.in_flight() <= 0 or self.closed is not None, timeout)
            return self.acked

    def close(self) -> None:
        """A normal DISCONNECT (no Last Will), then the socket."""
        with self._cond:
            self._closing = True
        with contextlib.suppress(OSError), self._wlock:
            self.sock.sendall(DISCONNECT)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(timeout=5)
