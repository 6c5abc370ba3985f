"""MQTT in: a Bytewax source on a real broker (Mosquitto), with a load-shedding circuit breaker.

Topics are ``plantpulse/<asset_id>/<sensor_id>``; the payload is the same wire format as every
other source (``bytewax_flows.payloads``): a JSON object for a batch of scalar readings, or the
compact binary ``PPF1`` frame for vibration samples.

Several workers share the load through an MQTT *shared subscription*
(``$share/plantpulse/plantpulse/#``): the source has one partition per worker (``w0``, ``w1``,
...), each a client under a stable id, and the broker hands each message to one of them.  The
broker sends each at most ``receive_maximum`` unacknowledged messages (MQTT 5 flow control) and
holds the rest within its queue limits.  Each partition reads its socket in the flow's own
thread when the flow asks for a batch (``bytewax_flows.mqtt_wire``: PUBLISH packets parsed in
bulk; paho's receive path cost hundreds of µs a message), into a buffer bounded in messages and
bytes; when it backs up past the breaker's high watermarks (input
outrunning processing), the breaker opens and keeps one message in ``keep_every`` (none at or
above the marks), sending the rest to ``dead_letter`` with reason ``shed`` (payload kept, so they
can be replayed); it closes again below the low watermarks.  What the broker itself drops under
its queue limits is counted from its ``$SYS`` tree into ``dead_letter`` (``dropped_by_broker``).
Nothing is dropped silently, and a message that cannot be taken in does not end reception.

Delivery across a crash: QoS 1 from publisher to broker to worker, and the worker acknowledges a
message only when its rows are durable in every stream table (the sink's durability marks,
``bytewax_flows.sinks``: one mark per partition and batch, ``Progress(<partition>, position)``,
so checking what to acknowledge is one read per table and writer, whatever the number of
publishers and asset topics).  Each partition keeps a persistent session, so the broker delivers
again, to the restarted worker, whatever was not acknowledged; only an input that went idle ends
the session on close.  Publishers that name themselves and number their messages (user
properties ``pp-publisher`` and ``pp-seq``, as ``Publisher`` does) get exactly-once rows: the
number is the message's offset under the source ``mqtt:<publisher>:<asset>:w<partition>`` (the
asset of the topic, which the broker's ACLs bind to the authenticated client, so a forged
``pp-publisher`` cannot reach a genuine publisher's numbers), the highest number emitted per
source is snapshotted with the flow's state, and a redelivered message at or below it is only
acknowledged.  A numbered message that is not a redelivery yet not above its publisher's
numbers, or numbered more than ``MAX_SEQ_AHEAD_US`` ahead of the receive clock, goes to
``dead_letter`` as ``out_of_sequence``.  Messages without usable marks get receive-time
offsets: nothing lost, but a message written and not yet acknowledged when the worker died is
written again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import time
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bytewax_flows.mqtt_wire import Publish, Subscriber, tls_context
from bytewax_flows.payloads import Message, Progress
from bytewax_flows.routing import SHARDS
from bytewax_flows.sinks import durable_offsets
from bytewax_flows.sources import chunk_payloads, now_us
from dataplane.marks import PUBLISHER, SEQ
from dataplane.wire import Batch, as_batch
from lake import Lake, Settings
from lake.credentials import login

__all__ = [
    "CircuitBreaker",
    "MQTTSource",
    "Publisher",
    "TOPIC",
    "credentials",
    "publish",
    "topic_for",
]

log = logging.getLogger(__name__)

TOPIC = "plantpulse/#"
SHARE_GROUP = "plantpulse"
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
"""Mosquitto's running count of the messages it dropped under its queue limits."""


def topic_for(asset_id: str, sensor_id: str) -> str:
    return f"plantpulse/{asset_id}/{sensor_id}"


@dataclass
class CircuitBreaker:
    """Opens when the backlog exceeds ``high`` messages or ``high_bytes`` bytes, closes when it
    falls below both ``low`` and ``low_bytes``; while open, admits one message in
    ``keep_every``, and none while the backlog is at or above either high mark (so the backlog
    never grows past them: a hard bound on the receive buffer)."""

    high: int = 50_000
    low: int = 5_000
    keep_every: int = 10
    high_bytes: int = 64 * 1024 * 1024
    low_bytes: int = 16 * 1024 * 1024
    open: bool = False
    _n: int = 0

    def admit(self, backlog: int, backlog_bytes: int = 0) -> bool:
        if not self.open and (backlog > self.high or backlog_bytes > self.high_bytes):
            self.open = True
            log.warning(
                "load shedding ON: %d messages (%d bytes) waiting (> %d or > %d bytes)",
                backlog,
                backlog_bytes,
                self.high,
                self.high_bytes,
            )
        elif self.open and backlog < self.low and backlog_bytes < self.low_bytes:
            self.open = False
            log.warning("load shedding OFF: %d messages (%d bytes) waiting", backlog, backlog_bytes)
        if not self.open:
            return True
        if backlog >= self.high or backlog_bytes >= self.high_bytes:
            return False
        self._n += 1
        return self._n % self.keep_every == 0


MAX_SEQ_AHEAD_US = 600_000_000
"""A ``pp-seq`` more than this ahead of the receive clock (µs) is refused, not adopted: numbers
are publish times in µs (``Publisher``) or small counters, so a number far in the future is a
forgery or a broken device, and adopting it would make the publisher's genuine messages
``out_of_sequence`` until the clock caught up."""

_SEQ_DIGITS = 19  # below 2**63: an int64 offset


def _marks(pairs: list[tuple[str, str]] | None) -> tuple[str | None, int | None, str | None]:
    """``(publisher, seq, problem)`` from a message's user properties.  Never raises: a mark
    that is not a plain decimal number (``'²'`` passes ``str.isdigit``), too long for an int64
    or not text leaves the message unnumbered, with the problem said."""
    publisher: str | None = None
    seq: int | None = None
    problem: str | None = None
    for pair in pairs or ():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            problem = f"unreadable user property {pair!r:.80}"
            continue
        key, value = pair
        if key == PUBLISHER:
            if value in _GOOD_NAMES or _good_name(value):
                publisher = value
            else:
                problem = f"pp-publisher {value!r:.80} is not a printable name of 1..128 chars"
        elif key == SEQ:
            if (
                isinstance(value, str)
                and len(value) <= _SEQ_DIGITS
                and value.isascii()
                and value.isdigit()
            ):
                seq = int(value)
            else:
                problem = f"pp-seq {value!r:.80} is not a decimal number below 10**19"
    if problem is not None:
        return None, None, problem
    return publisher, seq, None


_GOOD_NAMES: set[str] = set()  # publisher names already found usable (a plant has few)


def _good_name(value: object) -> bool:
    if isinstance(value, str) and value and value.isprintable() and len(value) <= 128:
        if len(_GOOD_NAMES) < 10_000:
            _GOOD_NAMES.add(value)
        return True
    return False


@dataclass(slots=True)
class _Received:
    """One message as read from the broker, waiting to be taken into a batch."""

    received_us: int
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    publisher: str | None
    seq: int | None
    shed: bool  # the breaker was open when it arrived
    client: int = 0  # which of the partition's connections it came by
    dropped: int = 0  # a report of this many messages the broker dropped (no payload of theirs)


_REFUSALS = {
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x8A: "banned",
}


class _MQTTPartition(StatefulSourcePartition[Batch, dict]):
    """One client of the shared subscription, read in the flow's own thread: each
    ``next_batch`` takes what its socket holds (``bytewax_flows.mqtt_wire``), at most
    ``receive_maximum`` unacknowledged messages, and hands the oldest on as one batch."""

    def __init__(self, source: MQTTSource, worker_index: int, resume: dict | None = None):
        self.cfg = source
        self.worker = worker_index
        # the partition's name: the source of its unnumbered messages' rows, and the key of
        # its durability marks (one per partition, whatever the number of publishers/assets)
        self.name = f"mqtt:{source.host}:{source.port}:w{worker_index}"
        self.lake = Lake(source.lake_uri) if source.lake_uri else None
        # in the order received (a publisher's numbers must be seen rising): admitted
        # messages, and those the breaker set aside on arrival, which do not count against its
        # bounds and go out with the admitted ones around them
        self.buffer: deque[_Received] = deque()
        self.admitted = 0  # admitted messages in the buffer
        self.buffered_bytes = 0  # their payload bytes
        self.bad_marks = 0  # messages whose pp-publisher/pp-seq could not be used
        self.callback_errors = 0
        self.dropped: int | None = None  # the broker's count of dropped messages, last seen
        self.finished = False  # the input ended (idle): the session may go with the worker
        # numbered source -> the highest number it has emitted; snapshotted with the flow's
        # state, so after a crash it matches the recovered state: a redelivery at or below it
        # was processed before the snapshot, one above it was not (and a source not in the
        # snapshot starts unknown: its redeliveries are processed again and their rows, already
        # in the lake, dropped by the sink as replays)
        self.high: dict[str, int] = dict((resume or {}).get("high", {}))
        # (publisher, topic, connection) -> (source, asset)
        self._sources: dict[tuple[str, str, int], tuple[str, str]] = {}
        # acknowledgements wait per batch: (the batch's position, its QoS 1 packet ids per
        # connection), two bytes an id (a fast stream holds a million of them for an epoch)
        self.unacked: deque[tuple[int, list[tuple[int, array[int]]]]] = deque()
        self.breaker = CircuitBreaker(
            source.high_watermark,
            source.low_watermark,
            source.keep_every,
            source.high_watermark_bytes,
            source.low_watermark_bytes,
        )
        # positions (µs of receive time, strictly increasing): every batch's durability mark,
        # and the offsets of unnumbered messages; never below a mark already in the lake, so a
        # restart from an older snapshot cannot take new messages for durable ones
        self.last_offset = int((resume or {}).get("last_offset", 0))
        if self.lake is not None:
            done = durable_offsets(self.lake, [self.name], writers=source.writers)[self.name]
            self.last_offset = max(self.last_offset, done or 0)
        self.last_message = self.last_ack_check = time.monotonic()
        self.auth = (
            (source.username, source.password or "") if source.username else credentials("worker")
        )
        # ``clients`` connections, each with its own receive window, read into one buffer: one
        # batch of all of them (per-connection partitions made batches of a few dozen messages,
        # and the stream's cost is per batch as much as per message)
        self.conns = [self._connect(j) for j in range(source.clients)]

    def client_id(self, j: int = 0) -> str:
        return f"plantpulse-{self.cfg.group}-w{self.worker}" + (f"c{j}" if j else "")

    def _connect(self, j: int) -> Subscriber:
        """Log in (persistent session: what was delivered and not acknowledged is delivered
        again after a crash) and subscribe; a one-line ``ConnectionError`` when refused."""
        cfg = self.cfg
        try:
            conn = Subscriber(
                cfg.host,
                cfg.port,
                self.client_id(j),
                auth=self.auth,
                clean_start=False,
                session_expiry_s=cfg.session_expiry_s,
                # MQTT 5 flow control: the broker sends at most this many unacknowledged QoS 1
                # messages; the rest wait in the broker (within its queue limits)
                receive_maximum=cfg.receive_maximum,
                keepalive_s=cfg.keepalive_s,
                tls=tls_context(),
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionError(
                f"cannot reach the MQTT broker at {cfg.host}:{cfg.port}: {exc}"
            ) from None
        if conn.reason >= 0x80:
            conn.close()
            raise ConnectionError(
                f"the broker on {cfg.host}:{cfg.port} refused the connection: "
                f"{_REFUSALS.get(conn.reason, f'reason code {conn.reason:#x}')} (credentials: "
                f"PLANTPULSE_MQTT_USERNAME/PLANTPULSE_MQTT_PASSWORD or the set-up's "
                f"credentials.json)"
            )
        filters = [(f"$share/{cfg.group}/{cfg.topic}", cfg.qos)]
        if self.worker == 0 and j == 0:  # one client records what the broker drops
            filters.append((DROPPED_TOPIC, 0))
        codes = conn.subscribe(filters)
        if codes[0] >= 0x80:
            conn.close()
            raise ConnectionError(
                f"the broker refused the subscription to {cfg.topic}: reason {codes[0]:#x}"
            )
        if len(codes) > 1 and codes[1] >= 0x80:
            log.warning("cannot read %s: what the broker drops goes unrecorded", DROPPED_TOPIC)
        return conn

    def _reconnect(self, j: int, exc: Exception) -> None:
        """Connection ``j`` is gone: log in again under the same session.  The broker delivers
        again what was not acknowledged, so the packet ids held for it and its messages not
        yet taken are let go (reports of the broker's drops are kept: they come once)."""
        log.warning(
            "MQTT connection of %s lost (%s): reconnecting; what it had not acknowledged "
            "comes again",
            self.client_id(j),
            exc,
        )
        self.conns[j].close()
        self.unacked = deque(
            (mark, [(k, mids) for k, mids in held if k != j]) for mark, held in self.unacked
        )
        self.buffer = deque(m for m in self.buffer if m.dropped or m.client != j)
        kept = [m for m in self.buffer if not m.shed]
        self.admitted, self.buffered_bytes = len(kept), sum(len(m.payload) for m in kept)
        deadline = time.monotonic() + self.cfg.reconnect_s
        while True:
            try:
                self.conns[j] = self._connect(j)
                return
            except ConnectionError as again:
                if "refused" in str(again) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _receive(self) -> None:
        """What the sockets hold now (up to ``read_bytes`` each), into the buffer, each message
        judged by the breaker.  Read only when less than a batch waits: the rest waits in the
        sockets and the broker (which holds it within its queue limits), not in this worker."""
        for j, conn in enumerate(self.conns):
            try:
                conn.keep_alive()
                if self.admitted >= self.cfg.batch:
                    continue
                packets = conn.read(self.cfg.read_bytes)
            except OSError as exc:
                self._reconnect(j, exc)
                continue
            received = now_us()
            for msg in packets:
                self._on_publish(msg, received, j)

    def _on_dropped(self, payload: bytes, received: int) -> None:
        """The broker's count of QoS 1 messages it dropped (queue limits) went up: one
        ``dropped_by_broker`` dead letter per increase, with the count, and a warning."""
        try:
            total = int(payload.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return
        if self.dropped is None:
            self.dropped = total
            if total:
                log.warning("the broker has dropped %d messages since it started", total)
            return
        if total <= self.dropped:
            self.dropped = min(self.dropped, total)  # a restarted broker counts from 0
            return
        n, self.dropped = total - self.dropped, total
        log.warning("the broker dropped %d messages (its queue limits); %d in all", n, total)
        self.buffer.append(
            _Received(
                received, DROPPED_TOPIC, payload, 0, 0, False, None, None, shed=True, dropped=n
            )
        )

    def _on_publish(self, msg: Publish, received: int, client: int = 0) -> None:
        """Take one message in; never raises (a message that cannot be taken in stays
        unacknowledged in the broker's session, and reception goes on)."""
        try:
            self._admit(msg, received, client)
        except Exception:  # noqa: BLE001 (contained: reception goes on)
            self.callback_errors += 1
            log.exception(
                "MQTT message on %r could not be taken in (%d so far); it stays "
                "unacknowledged in the broker's session",
                getattr(msg, "topic", "?"),
                self.callback_errors,
            )

    def _admit(self, msg: Publish, received: int, client: int = 0) -> None:
        """Into the buffer, read for its marks and judged by the breaker."""
        if msg.topic == DROPPED_TOPIC:
            self._on_dropped(msg.payload, received)
            return
        if msg.problem is not None:
            publisher, seq, problem = None, None, msg.problem
        elif msg.user is None:
            publisher, seq, problem = None, None, None
        else:
            publisher, seq, problem = _marks(msg.user)
        if problem is not None:
            self.bad_marks += 1
            if self.bad_marks == 1 or self.bad_marks % 1000 == 0:
                log.warning(
                    "%d message(s) with unusable sequence marks, taken as "
                    "unnumbered (newest on %s: %s)",
                    self.bad_marks,
                    msg.topic,
                    problem,
                )
        payload = msg.payload
        shed = not self.breaker.admit(self.admitted, self.buffered_bytes)
        self.buffer.append(
            _Received(
                received,
                msg.topic,
                payload,
                msg.mid,
                msg.qos,
                msg.dup,
                publisher,
                seq,
                shed,
                client,
            )
        )
        if not shed:
            self.admitted += 1
            self.buffered_bytes += len(payload)

    def next_batch(self) -> list[Batch]:
        taken = self._take()
        return [as_batch(taken)] if taken else []  # one micro-batch: the flow's unit of work

    def _take(self) -> list[Message | Progress]:
        """The oldest messages received (up to ``batch`` admitted ones, with the shed ones
        among them) as ``Message`` items, then the partition's durability mark."""
        self._acknowledge_durable()
        self._receive()
        taken: list[_Received] = []
        n_admitted = 0
        buffer = self.buffer
        while buffer and n_admitted < self.cfg.batch and len(taken) < 16 * self.cfg.batch:
            item = buffer.popleft()
            if not item.shed:
                n_admitted += 1
                self.buffered_bytes -= len(item.payload)
            taken.append(item)
        self.admitted -= n_admitted
        backlog = self.admitted
        if not taken:
            idle = self.cfg.idle_stop_s
            if idle is not None and time.monotonic() - self.last_message > idle:
                self.finished = True
                raise StopIteration()
            return []
        self.last_message = time.monotonic()
        out: list[Message | Progress] = []
        mids: list[list[int]] = [[] for _ in self.conns]
        high = self.high
        for m in taken:
            if m.qos:
                mids[m.client].append(m.mid)
            set_aside = None
            if m.publisher is not None and m.seq is not None:
                # the publisher's numbers are its own per asset topic: the broker's ACLs let a
                # client write only its assets' topics, so a forged pp-publisher cannot reach
                # the numbers of a genuine publisher's assets
                # (and per connection: each sees its own share of them, in order)
                named = self._sources.get((m.publisher, m.topic, m.client))
                if named is None:
                    asset = _asset_of(m.topic)
                    via = f"w{self.worker}" + (f"c{m.client}" if m.client else "")
                    named = self._sources[(m.publisher, m.topic, m.client)] = (
                        f"mqtt:{m.publisher}:{asset}:{via}",
                        asset,
                    )
                    if len(self._sources) > 100_000:  # bounded: a cache, not state
                        self._sources.clear()
                source, asset = named
                offset = m.seq
                done = high.get(source, -1)
                if offset <= done and m.dup:
                    # the broker delivering again what this worker (or the one that crashed)
                    # already had: acknowledged once durable, not processed twice
                    continue
                if offset <= done:  # not a redelivery: numbering gone backwards or a repeat
                    set_aside = (
                        "out_of_sequence",
                        f"pp-seq {m.seq} of publisher {m.publisher!r} is not above "
                        f"{done}, already received; a publisher must keep its numbers "
                        f"rising, also across its restarts",
                    )
                elif offset > m.received_us + MAX_SEQ_AHEAD_US:
                    set_aside = (
                        "out_of_sequence",
                        f"pp-seq {m.seq} of publisher {m.publisher!r} is more than "
                        f"{MAX_SEQ_AHEAD_US // 1_000_000} s ahead of the receive clock "
                        f"({m.received_us} µs); refused, not adopted",
                    )
                else:
                    high[source] = offset
            else:
                asset = None
            if asset is None or set_aside is not None:
                # anonymous (or set aside): positions are receive times (at least once)
                source, offset = self.name, max(m.received_us, self.last_offset + 1)
                self.last_offset = offset
            if m.dropped:
                set_aside = (
                    "dropped_by_broker",
                    f"the broker dropped {m.dropped} QoS 1 messages (a client's queue "
                    f"over max_queued_messages/max_queued_bytes); their payloads are "
                    f"gone, raw is the broker's running count",
                )
            elif set_aside is None and m.shed:
                set_aside = (
                    "shed",
                    f"load shedding: more than {self.breaker.high} messages "
                    f"or {self.breaker.high_bytes} bytes waiting ({backlog} now); "
                    f"kept 1 in {self.breaker.keep_every}",
                )
            out.append(
                Message(
                    source,
                    offset,
                    m.received_us,
                    m.payload,
                    set_aside,
                    None if m.dropped else (asset or _asset_of(m.topic)),
                )
            )
        held = [(j, array("H", ids)) for j, ids in enumerate(mids) if ids]
        if self.lake is None:  # nothing to wait for: acknowledged as handed to the flow
            self._ack(held)
            return out
        # the batch's position: one durability mark for all of it, whatever its sources
        self.last_offset = mark = max(taken[-1].received_us, self.last_offset + 1)
        if held:
            self.unacked.append((mark, held))
        out.append(Progress(self.name, mark))
        return out

    def _ack(self, held: list[tuple[int, array[int]]]) -> None:
        """PUBACK packet ids, per connection: ``(connection, ids)`` pairs."""
        for j, ids in held:
            try:
                self.conns[j].ack(ids.tolist())
            except OSError as exc:
                self._reconnect(j, exc)

    def _acknowledge_durable(self) -> None:
        """Acknowledge, in the order received, the batches whose rows are durable in every
        stream table (one read of the partition's marks, whatever the number of publishers
        and assets); the broker keeps the rest for a restarted worker."""
        if (
            self.lake is None
            or not self.unacked
            or time.monotonic() - self.last_ack_check < self.cfg.ack_check_s
        ):
            return
        self.last_ack_check = time.monotonic()
        durable = self.cfg.durable(self.lake, self.name)
        if durable is None:
            return
        held: list[tuple[int, array[int]]] = []
        while self.unacked and self.unacked[0][0] <= durable:
            held += self.unacked.popleft()[1]
        self._ack(held)

    def snapshot(self) -> dict:
        return {"high": dict(self.high), "last_offset": self.last_offset}

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(milliseconds=5) if not self.buffer else None

    def close(self) -> None:
        """After the input ended (``idle_stop_s``) every message handed to the flow is being
        drained into the lake, so the session (and its unacknowledged deliveries) can go.  Any
        other end - an error in the flow, Ctrl-C - keeps the session for ``session_expiry_s``:
        what was not yet acknowledged is delivered again to the restarted worker."""
        if self.finished:
            for conn in self.conns:
                conn.disconnect(session_expiry_s=0)
            return
        if self.unacked:
            log.warning(
                "closing with %d unacknowledged messages: the broker keeps them for "
                "the restarted worker",
                sum(len(ids) for _, held in self.unacked for _, ids in held),
            )
        for conn in self.conns:
            conn.disconnect()


def _asset_of(topic: str) -> str:
    """``plantpulse/<asset_id>/<sensor_id>`` -> ``asset_id`` (what the broker's ACL checked)."""
    parts = topic.split("/")
    return parts[1] if len(parts) > 1 else ""


class MQTTSource(FixedPartitionedSource[Batch, dict]):
    """``partitions`` clients (``w0``, ``w1``, ...: one per worker is the usual) subscribe to
    ``topic`` in the shared group ``group`` on the broker, each under a stable client id.

    With ``lake_uri`` (the lake the flow writes), messages are acknowledged only once their rows
    are durable there (checked every ``ack_check_s``), in a persistent session the broker keeps
    for ``session_expiry_s`` after a crash; without it, as they are handed to the flow.  The
    broker sends at most ``receive_maximum`` unacknowledged messages (MQTT 5 flow control).
    ``username``/``password`` default to ``credentials("worker")``; ``writers`` is the Delta
    sink's writers per table (``DeltaSink(writers=)``), whose durability marks it waits for.
    ``clients`` connections per partition (client ids ``...-w<i>``, ``...-w<i>c1``, ...) each
    bring their own receive window into one batch: the stream acknowledges after the epoch's
    snapshot, so a partition takes at most ``clients x receive_maximum`` messages per epoch."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        lake_uri: str | None = None,
        topic: str = TOPIC,
        group: str = SHARE_GROUP,
        qos: int = 1,
        batch: int = 4096,
        high_watermark: int = 50_000,
        low_watermark: int = 5_000,
        high_watermark_bytes: int = 64 * 1024 * 1024,
        low_watermark_bytes: int = 16 * 1024 * 1024,
        keep_every: int = 10,
        receive_maximum: int = 2000,
        idle_stop_s: float | None = None,
        session_expiry_s: int = 3600,
        ack_check_s: float = 0.5,
        read_bytes: int = 1024 * 1024,
        keepalive_s: int = 60,
        reconnect_s: float = 60.0,
        username: str | None = None,
        password: str | None = None,
        partitions: int = 1,
        clients: int = 1,
        writers: int = SHARDS,
    ):
        if not 1 <= receive_maximum <= 65_535:
            raise ValueError(f"receive_maximum must be in 1..65535, not {receive_maximum}")
        self.host, self.port, self.topic, self.group, self.qos = host, port, topic, group, qos
        self.lake_uri = lake_uri
        self.batch, self.idle_stop_s = batch, idle_stop_s
        self.high_watermark, self.low_watermark = high_watermark, low_watermark
        self.high_watermark_bytes, self.low_watermark_bytes = (
            high_watermark_bytes,
            low_watermark_bytes,
        )
        self.keep_every, self.receive_maximum = keep_every, receive_maximum
        self.session_expiry_s, self.ack_check_s = session_expiry_s, ack_check_s
        self.keepalive_s, self.reconnect_s = keepalive_s, reconnect_s
        self.read_bytes = read_bytes
        self._durable: dict[str, int | None] = {}  # partition -> durable mark (``durable``)
        self._durable_at = 0.0
        self.username, self.password = username, password
        self.partitions, self.clients, self.writers = partitions, max(1, clients), writers

    def list_parts(self) -> list[str]:
        return [f"w{i}" for i in range(self.partitions)]

    def durable(self, lake: Lake, name: str) -> int | None:
        """``durable_offsets`` of partition ``name``, looked up at most every ``ack_check_s``.
        Each look-up is some 40 Delta reads (one per table and writer, ~0.5 ms each), so the
        other partitions of this process are read only when ``name``'s mark moved: the sink
        records the marks of every partition at the same snapshots (sixteen partitions each
        reading their own marks spent a second a second on it)."""
        now = time.monotonic()
        if name in self._durable and now - self._durable_at < self.ack_check_s:
            return self._durable[name]
        self._durable_at = now
        probe = durable_offsets(lake, [name], writers=self.writers)[name]
        if self._durable.get(name, -1) != probe:
            others = self._durable.keys() - {name}
            self._durable = {**durable_offsets(lake, others, writers=self.writers), name: probe}
        return probe

    def build_part(self, step_id: str, for_part: str, resume_state: dict | None) -> _MQTTPartition:
        return _MQTTPartition(self, int(for_part[1:]), resume_state)


CREDENTIALS_FILE = "credentials.json"
"""Written by the set-up (``plantpulse_cli.broker.write_config``) beside the broker's password
file and ACLs, readable by its owner only: ``{"<username>": "<password>", ...}``; the workers
log in as ``worker``, each publisher under its own name."""


def credentials(role: str, env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """``(username, password)`` for ``role``: ``PLANTPULSE_MQTT_USERNAME`` and
    ``PLANTPULSE_MQTT_PASSWORD`` when set, else the set-up's entry for ``role`` in
    ``$PLANTPULSE_MQTT_CREDENTIALS`` (default ``<state dir>/mosquitto/credentials.json``);
    None when there is neither (a broker without authentication)."""
    env = dict(os.environ if env is None else env)
    if env.get("PLANTPULSE_MQTT_USERNAME"):
        return env["PLANTPULSE_MQTT_USERNAME"], env.get("PLANTPULSE_MQTT_PASSWORD", "")
    path = Path(
        env.get("PLANTPULSE_MQTT_CREDENTIALS")
        or Path(Settings.from_env(env).home) / "mosquitto" / CREDENTIALS_FILE
    )
    return login(path, role)


def use_tls(client: mqtt.Client, env: dict[str, str] | None = None) -> bool:
    """TLS to the broker when ``PLANTPULSE_MQTT_CA`` names the CA certificate to verify it with
    (the set-up's is ``<state dir>/mosquitto/tls/ca.crt``: ``plantpulse up --mqtt-tls``)."""
    ctx = tls_context(env)
    if ctx is not None:
        client.tls_set_context(ctx)
    return ctx is not None


DEFAULT_PUBLISHER = "simulator"


class Publisher:
    """Publishes ``(topic, payload)`` pairs at QoS 1 as publisher ``name``, numbering each
    message (``pp-seq``: its publish time in microseconds, strictly increasing, so numbers keep
    growing across restarts of the publisher).  Logs in with ``auth`` (default: the set-up's
    credentials for ``name``, else for ``simulator``)."""

    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        auth: tuple[str, str] | None = None,
    ):
        self.name, self.seq = name, 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.suppress_exceptions = True
        self.client.enable_logger(logging.getLogger("paho.mqtt"))
        auth = auth or credentials(name) or credentials(DEFAULT_PUBLISHER)
        if auth is not None:
            self.client.username_pw_set(*auth)
        use_tls(self.client)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> mqtt.MQTTMessageInfo:
        self.seq = max(now_us(), self.seq + 1)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [(PUBLISHER, self.name), (SEQ, str(self.seq))]
        return self.client.publish(topic, payload, qos=qos, properties=props)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish(
    messages: Iterable[tuple[str, bytes]],
    host: str = "127.0.0.1",
    port: int = 1883,
    qos: int = 1,
    name: str | None = None,
    auth: tuple[str, str] | None = None,
) -> int:
    """Publish ``(topic, payload)`` pairs and wait until the broker has them all."""
    pub = Publisher(name or f"publish-{now_us()}", host, port, auth=auth)
    infos = [pub.publish(topic, payload, qos) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
    pub.close()
    return len(infos)


def mqtt_flow(
    host: str = "127.0.0.1", port: int = 1883, group: str = SHARE_GROUP, partitions: int = 1
):
    """The telemetry flow fed by the broker through ``partitions`` clients (one per worker):
    ``python -m bytewax.run "bytewax_flows.mqtt:mqtt_flow('127.0.0.1', 1883)"``."""
    from bytewax_flows.telemetry import get_flow

    lake_uri = Settings.from_env().lake_uri
    source = MQTTSource(host, port, lake_uri=lake_uri, group=group, partitions=partitions)
    return get_flow(source, lake_uri)


def publish_simulator(host: str, port: int, n_machines: int = 3) -> None:
    """Publish the live simulated fleet to the broker, one chunk per machine per second (what
    devices at the edge would send)."""
    from physics.simulator import default_fleet

    sim = default_fleet(n_machines, start_us=(now_us() // 1_000_000) * 1_000_000)
    pub = Publisher("simulator", host, port)
    k = 0
    try:
        while True:
            due = sim.start_us / 1e6 + (k + 1) * sim.chunk_s
            time.sleep(max(0.0, due - time.time()))
            for asset in sim.asset_ids:
                for sid, payload in chunk_payloads(sim.chunk(asset, k)):
                    pub.publish(topic_for(asset, sid), payload)
            k += 1
    finally:
        pub.close()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="publish the live simulated fleet over MQTT")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    a = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        publish_simulator(a.host, a.port)
