"""A lean MQTT 5 subscriber: PUBLISH packets parsed in bulk from the socket buffer, in the
caller's thread.

paho's receive path costs hundreds of µs per message in Python here (packet objects, a
``Properties`` object per message, a callback and a topic matcher on its network thread): at
the plant's 100,000 messages a second the worker did little else
(``bench/results/profile_soak_mqtt_before.txt``).  The stream's MQTT source only needs a small
part of the protocol, as a client that reads when the flow asks for its next batch:

- CONNECT (login, Clean Start, Session Expiry Interval, Receive Maximum) and CONNACK;
- SUBSCRIBE and SUBACK;
- PUBLISH from the broker, QoS 0 or 1, its DUP flag, topic, packet id and user properties
  (``pp-publisher`` / ``pp-seq``); PUBACK sent by the caller when it chooses (after the
  message's rows are durable), many in one write;
- PINGREQ when nothing else was sent for half the keep-alive; DISCONNECT with a Session Expiry.

TLS, when asked (``PLANTPULSE_MQTT_CA``: the CA certificate to verify the broker with, as
``bytewax_flows.mqtt.use_tls`` does for paho clients), wraps the same socket.  Nothing here
knows about Bytewax or the lake.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MQTTProtocolError",
    "Publish",
    "Subscriber",
    "encode_string",
    "encode_varint",
    "puback_packets",
    "receive_maximum_of",
    "tls_context",
]

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0

# PUBLISH properties a broker may send, by identifier: their size, or -1 for a length-prefixed
# string/binary, -2 for a variable byte integer, 0 for a user property (two strings)
_PUBLISH_PROPS = {0x01: 1, 0x02: 4, 0x23: 2, 0x03: -1, 0x08: -1, 0x09: -1, 0x0B: -2, 0x26: 0}
# CONNACK properties: sizes as above
_CONNACK_PROPS = {0x11: 4, 0x21: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x22: 2, 0x13: 2, 0x28: 1}
_CONNACK_PROPS |= {0x29: 1, 0x2A: 1, 0x12: -1, 0x1A: -1, 0x1C: -1, 0x1F: -1, 0x15: -1}
_CONNACK_PROPS |= {0x16: -1, 0x26: 0}


class MQTTProtocolError(ConnectionError):
    """The broker sent something this client cannot read, or closed the connection."""


def encode_varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def encode_string(s: str | bytes) -> bytes:
    """A UTF-8 string (or binary data) with its two-byte length."""
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def _varint_at(data: bytes, i: int) -> tuple[int, int]:
    """``(value, index after it)`` of the variable byte integer at ``data[i]``."""
    n = shift = 0
    while True:
        b = data[i]
        n |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return n, i
        shift += 7
        if shift > 21:
            raise MQTTProtocolError("malformed variable byte integer")


def _properties(
    data: bytes, i: int, end: int, sizes: dict[int, int]
) -> tuple[list[tuple[str, str]], dict[int, int | bytes]]:
    """The user properties and the other properties (id -> number or bytes) in
    ``data[i:end]``."""
    user: list[tuple[str, str]] = []
    other: dict[int, int | bytes] = {}
    while i < end:
        pid = data[i]
        i += 1
        size = sizes.get(pid)
        if size is None:
            raise MQTTProtocolError(f"unknown property {pid:#x}")
        if size == 0:
            n = (data[i] << 8) | data[i + 1]
            key = data[i + 2 : i + 2 + n].decode()
            i += 2 + n
            n = (data[i] << 8) | data[i + 1]
            user.append((key, data[i + 2 : i + 2 + n].decode()))
            i += 2 + n
        elif size == -1:
            n = (data[i] << 8) | data[i + 1]
            other[pid] = data[i + 2 : i + 2 + n]
            i += 2 + n
        elif size == -2:
            other[pid], i = _varint_at(data, i)
        else:
            other[pid] = int.from_bytes(data[i : i + size], "big")
            i += size
    return user, other


def receive_maximum_of(connack: bytes) -> int:
    """Receive Maximum (property 0x21) of a CONNACK's body; 65,535 when absent."""
    n, i = _varint_at(connack, 2)
    _, other = _properties(connack, i, i + n, _CONNACK_PROPS)
    value = other.get(0x21, 65_535)
    return value if isinstance(value, int) else 65_535


def puback_packets(mids: Iterable[int]) -> bytes:
    """PUBACKs (success) for packet ids ``mids``, as one buffer to write."""
    return b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids)


@dataclass(slots=True)
class Publish:
    """One PUBLISH from the broker.  ``problem`` says why its properties could not be read
    (the message itself is whole: it goes on without them)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    user: list[tuple[str, str]] | None
    problem: str | None = None


def tls_context(env: dict[str, str] | None = None) -> ssl.SSLContext | None:
    """A client TLS context verifying the broker with ``PLANTPULSE_MQTT_CA`` when that is
    set (the set-up's CA is ``<state dir>/mosquitto/tls/ca.crt``), else None (plain TCP)."""
    ca = (os.environ if env is None else env).get("PLANTPULSE_MQTT_CA")
    if not ca:
        return None
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Subscriber:
    """One MQTT 5 client connection that subscribes and reads.  Nothing runs in the
    background: ``read()`` takes what the socket has (without waiting) and returns the
    PUBLISH packets in it; ``ack()`` writes PUBACKs.  The broker sends at most
    ``receive_maximum`` unacknowledged QoS 1 messages, so what waits in this process is
    bounded by it; the rest waits in the broker."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        auth: tuple[str, str] | None = None,
        clean_start: bool = False,
        session_expiry_s: int = 0,
        receive_maximum: int = 65_535,
        keepalive_s: int = 60,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
    ):
        self.host, self.port, self.client_id = host, port, client_id
        self.keepalive_s, self.timeout_s = keepalive_s, timeout_s
        raw = socket.create_connection((host, port), timeout=timeout_s)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock: socket.socket = (
            tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
        )
        self._rest = b""
        self._pending: list[Publish] = []  # PUBLISH read while waiting for a SUBACK
        self._suback: dict[int, list[int]] = {}
        self._next_id = 1
        self.last_sent = time.monotonic()
        flags = 0x02 if clean_start else 0x00
        props = b"\x11" + session_expiry_s.to_bytes(4, "big")
        props += b"\x21" + receive_maximum.to_bytes(2, "big")
        payload = encode_string(client_id)
        if auth is not None:
            flags |= 0xC0  # user name and password
            payload += encode_string(auth[0]) + encode_string(auth[1])
        var = b"\x00\x04MQTT\x05" + bytes([flags]) + keepalive_s.to_bytes(2, "big")
        var += encode_varint(len(props)) + props
        self._send(bytes([CONNECT]) + encode_varint(len(var) + len(payload)) + var + payload)
        kind, body = self._wait_for({CONNACK})
        self.session_present = bool(body[0] & 1)
        self.reason = body[1]  # 0: accepted; >= 0x80: refused (0x86 bad login, 0x87 ...)

    # -- sending --------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.last_sent = time.monotonic()

    def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        """Subscribe to ``(topic filter, qos)`` pairs; the SUBACK's reason codes (< 0x80:
        granted)."""
        mid = self._next_id
        self._next_id = self._next_id % 65_535 + 1
        payload = b"".join(encode_string(f) + bytes([qos]) for f, qos in filters)
        var = mid.to_bytes(2, "big") + b"\x00"
        self._send(bytes([SUBSCRIBE]) + encode_varint(len(var) + len(payload)) + var + payload)
        deadline = time.monotonic() + self.timeout_s
        while mid not in self._suback:
            if time.monotonic() > deadline:
                raise MQTTProtocolError(f"no SUBACK from {self.host}:{self.port}")
            self._pending += self._read(wait_s=0.1)
        return self._suback.pop(mid)

    def ack(self, mids: Iterable[int]) -> None:
        """PUBACK each of ``mids`` (one write)."""
        data = puback_packets(mids)
        if data:
            self._send(data)

    def keep_alive(self) -> None:
        """A PINGREQ when nothing was sent for half the keep-alive (the broker closes a
        connection silent for 1.5 keep-alives)."""
        if time.monotonic() - self.last_sent > self.keepalive_s / 2:
            self._send(bytes([PINGREQ, 0]))

    def disconnect(self, session_expiry_s: int | None = None) -> None:
        """A DISCONNECT (changing the session's expiry when given), then close."""
        try:
            if session_expiry_s is None:
                self._send(bytes([DISCONNECT, 0]))
            else:
                props = b"\x11" + session_expiry_s.to_bytes(4, "big")
                var = b"\x00" + encode_varint(len(props)) + props
                self._send(bytes([DISCONNECT]) + encode_varint(len(var)) + var)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- reading --------------------------------------------------------------------------
    def read(self, max_bytes: int = 8 << 20) -> list[Publish]:
        """The PUBLISH packets the socket holds now (up to about ``max_bytes`` read),
        without waiting.  ``MQTTProtocolError`` when the connection is gone."""
        out, self._pending = self._pending, []
        return out + self._read(0.0, max_bytes)

    def _readable(self, wait_s: float) -> bool:
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        return bool(select.select([self.sock], [], [], wait_s)[0])

    def _read(self, wait_s: float, max_bytes: int = 8 << 20) -> list[Publish]:
        chunks = [self._rest] if self._rest else []
        got = 0
        while got < max_bytes and self._readable(wait_s if not got else 0.0):
            try:
                chunk = self.sock.recv(min(1 << 20, max_bytes - got))
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            if not chunk:
                raise MQTTProtocolError(
                    f"the broker at {self.host}:{self.port} closed the connection"
                )
            chunks.append(chunk)
            got += len(chunk)
        if not got:
            return []
        data = b"".join(chunks)
        out, used = self._parse(data)
        self._rest = data[used:]
        return out

    def _wait_for(self, kinds: set[int]) -> tuple[int, bytes]:
        """The next packet of one of ``kinds`` (during the connection handshake)."""
        deadline = time.monotonic() + self.timeout_s
        data = self._rest
        while True:
            if len(data) >= 2:
                try:
                    n, i = _varint_at(data, 1)
                except IndexError:  # the length itself is cut
                    n, i = len(data), 1
                if len(data) >= i + n:
                    kind, body = data[0] & 0xF0, data[i : i + n]
                    data = data[i + n :]
                    if kind in kinds:
                        self._rest = data
                        return kind, body
                    continue
            if time.monotonic() > deadline:
                raise MQTTProtocolError(f"no answer from the broker at {self.host}:{self.port}")
            if not self._readable(0.1):
                continue
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise MQTTProtocolError(
                    f"the broker at {self.host}:{self.port} closed the connection"
                )
            data += chunk

    def _parse(self, data: bytes) -> tuple[list[Publish], int]:
        """The whole packets at the start of ``data``: its PUBLISH packets, and how many bytes
        they took (a packet cut at the end waits for the next read)."""
        out: list[Publish] = []
        n_data = len(data)
        i = 0
        while n_data - i >= 2:
            head = data[i]
            # the remaining length (a variable byte integer, inlined: this runs per message)
            j, length, shift = i + 1, 0, 0
            while j < n_data:
                b = data[j]
                length |= (b & 0x7F) << shift
                j += 1
                if b < 0x80:
                    break
                shift += 7
            else:
                break  # the length itself is cut
            end = j + length
            if end > n_data:
                break
            kind = head & 0xF0
            if kind == PUBLISH:
                out.append(self._publish(data, head, j, end))
            elif kind == SUBACK:
                mid = (data[j] << 8) | data[j + 1]
                plen, k = _varint_at(data, j + 2)
                self._suback[mid] = list(data[k + plen : end])
            elif kind == DISCONNECT:
                reason = data[j] if length else 0
                raise MQTTProtocolError(
                    f"the broker at {self.host}:{self.port} disconnected (reason {reason:#x})"
                )
            elif kind not in (PINGRESP, PUBACK):
                log.debug("ignored MQTT packet type %#x", kind)
            i = end
        return out, i

    @staticmethod
    def _publish(data: bytes, head: int, j: int, end: int) -> Publish:
        qos = (head >> 1) & 3
        n = (data[j] << 8) | data[j + 1]
        k = j + 2 + n
        topic = data[j + 2 : k].decode(errors="replace")
        mid = 0
        if qos:
            mid = (data[k] << 8) | data[k + 1]
            k += 2
        plen = data[k]
        if plen < 0x80:
            k += 1
        else:
            plen, k = _varint_at(data, k)
        start = k + plen
        user: list[tuple[str, str]] | None = None
        problem: str | None = None
        if plen:
            try:
                # user properties inline (what the stream's publishers send, per message);
                # anything else through the general reader
                user = []
                while k < start and data[k] == 0x26:
                    n = (data[k + 1] << 8) | data[k + 2]
                    key = data[k + 3 : k + 3 + n].decode()
                    k += 3 + n
                    n = (data[k] << 8) | data[k + 1]
                    user.append((key, data[k + 2 : k + 2 + n].decode()))
                    k += 2 + n
                if k < start:
                    user += _properties(data, k, start, _PUBLISH_PROPS)[0]
                if k > start:
                    raise MQTTProtocolError("properties overrun their length")
            except (MQTTProtocolError, UnicodeDecodeError, IndexError) as exc:
                user, problem = None, f"unreadable properties ({exc})"
        return Publish(topic, data[start:end], mid, qos, bool(head & 0x08), user, problem)
