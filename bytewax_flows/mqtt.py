"""MQTT in: a Bytewax source on a real broker (Mosquitto), with a load-shedding circuit breaker.

Topics are ``plantpulse/<asset_id>/<sensor_id>``; the payload is the same wire format as every
other source (``bytewax_flows.payloads``): a JSON object for a batch of scalar readings, or the
compact binary ``PPF1`` frame for vibration samples.

Several workers share the load through an MQTT *shared subscription*
(``$share/plantpulse/plantpulse/#``): the broker hands each message to one of them.  Messages
arrive on paho's network thread into a bounded buffer; when the buffer backs up past the
breaker's high watermark (input outrunning processing), the breaker opens and keeps one message
in ``keep_every``, sending the rest to ``dead_letter`` with reason ``shed`` (payload kept, so
they can be replayed); it closes again below the low watermark.  Nothing is dropped silently.

Delivery across a crash: QoS 1 from publisher to broker to worker, and the worker acknowledges a
message only when its rows are durable in every stream table (the sink's durability marks,
``bytewax_flows.sinks``).  Each worker keeps a persistent session under a stable client id, so
the broker delivers again, to the restarted worker, whatever was not acknowledged.  Publishers
that name themselves and number their messages (user properties ``pp-publisher`` and
``pp-seq``, as ``Publisher`` does) get exactly-once rows: the number is the message's offset
under the source ``mqtt:<publisher>:w<worker>``, and a redelivered message already written to a
table is dropped there.  A numbered message that is not a redelivery yet not above its
publisher's numbers goes to ``dead_letter`` as ``out_of_sequence``.  Messages without them get receive-time offsets: nothing lost, but a
message written and not yet acknowledged when the worker died is written again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bytewax_flows.payloads import Message, Progress
from bytewax_flows.sinks import durable_offsets
from bytewax_flows.sources import chunk_payloads, now_us
from dataplane.wire import Batch, as_batch
from lake import Lake, Settings

__all__ = ["CircuitBreaker", "MQTTSource", "Publisher", "TOPIC", "publish", "topic_for"]

log = logging.getLogger(__name__)

TOPIC = "plantpulse/#"
SHARE_GROUP = "plantpulse"


def topic_for(asset_id: str, sensor_id: str) -> str:
    return f"plantpulse/{asset_id}/{sensor_id}"


@dataclass
class CircuitBreaker:
    """Opens when the backlog exceeds ``high`` messages, closes when it falls below ``low``;
    while open, admits one message in ``keep_every``."""

    high: int = 50_000
    low: int = 5_000
    keep_every: int = 10
    open: bool = False
    _n: int = 0

    def admit(self, backlog: int) -> bool:
        if not self.open and backlog > self.high:
            self.open = True
            log.warning("load shedding ON: %d messages waiting (> %d)", backlog, self.high)
        elif self.open and backlog < self.low:
            self.open = False
            log.warning("load shedding OFF: %d messages waiting (< %d)", backlog, self.low)
        if not self.open:
            return True
        self._n += 1
        return self._n % self.keep_every == 0


PUBLISHER, SEQ = "pp-publisher", "pp-seq"
"""MQTT v5 user properties by which a publisher names itself and numbers its messages
(increasing); with them a message redelivered after a crash is recognised as already written."""


class _MQTTPartition(StatelessSourcePartition[Message | Progress]):
    def __init__(self, source: MQTTSource, worker_index: int):
        self.cfg = source
        self.worker = worker_index
        self.name = f"mqtt:{source.host}:{source.port}:w{worker_index}"
        self.lake = Lake(source.lake_uri) if source.lake_uri else None
        # (received_us, payload, mid, qos, dup, publisher, seq), filled by paho's network thread
        self.buffer: deque[tuple[int, bytes, int, int, bool, str | None, int | None]] = deque()
        # numbered source -> the highest number it has had: durable in the lake or emitted
        self.high: dict[str, int] = {}
        self.unacked: deque[tuple[str, int, int, int]] = deque()  # (source, offset, mid, qos)
        self.lock = threading.Lock()
        self.breaker = CircuitBreaker(source.high_watermark, source.low_watermark,
                                      source.keep_every)
        self.last_offset = 0
        self.last_message = self.last_ack_check = time.monotonic()
        # a stable client id and a persistent session: what was delivered and not acknowledged
        # is delivered again after a crash
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"plantpulse-{source.group}-w{worker_index}",
            protocol=mqtt.MQTTv5,
            manual_ack=self.lake is not None,
        )
        self.subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = source.session_expiry_s
        self.client.connect(source.host, source.port, keepalive=30, clean_start=False,
                            properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise ConnectionError(f"no subscription to {source.topic} on "
                                  f"{source.host}:{source.port} within 10 s")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        client.subscribe(f"$share/{self.cfg.group}/{self.cfg.topic}", qos=self.cfg.qos)

    def _on_message(self, client, userdata, msg) -> None:
        publisher, seq = None, None
        for key, value in getattr(msg.properties, "UserProperty", None) or ():
            if key == PUBLISHER:
                publisher = value
            elif key == SEQ and value.isdigit():
                seq = int(value)
        with self.lock:
            self.buffer.append((now_us(), msg.payload, msg.mid, msg.qos, bool(msg.dup),
                                publisher, seq))

    def next_batch(self) -> Iterable[Batch]:
        self._acknowledge_durable()
        with self.lock:
            taken = [self.buffer.popleft() for _ in range(min(len(self.buffer),
                                                              self.cfg.batch))]
            backlog = len(self.buffer)
        if not taken:
            idle = self.cfg.idle_stop_s
            if idle is not None and time.monotonic() - self.last_message > idle:
                raise StopIteration()
            return []
        self.last_message = time.monotonic()
        out: list[Message | Progress] = []
        newest: dict[str, int] = {}
        for received, payload, mid, qos, dup, publisher, seq in taken:
            set_aside = None
            if publisher is not None and seq is not None:
                source, offset = f"mqtt:{publisher}:w{self.worker}", seq
                high = self._high(source)
                if offset <= high and dup:
                    # the broker delivering again what this worker (or the one that crashed)
                    # already had: acknowledged once durable, not processed twice
                    self._hold_for_ack(source, offset, mid, qos)
                    continue
                if offset <= high:  # not a redelivery: numbering gone backwards or a repeat
                    set_aside = ("out_of_sequence",
                                 f"pp-seq {seq} of publisher {publisher!r} is not above {high}, "
                                 f"already received; a publisher must keep its numbers rising, "
                                 f"also across its restarts")
                else:
                    self.high[source] = offset
            if publisher is None or seq is None or set_aside is not None:
                # anonymous (or set aside): positions are receive times (at least once)
                source, offset = self.name, max(received, self.last_offset + 1)
                self.last_offset = offset
            if set_aside is None and not self.breaker.admit(backlog):
                set_aside = ("shed", f"load shedding: {backlog} messages waiting "
                             f"(> {self.breaker.high}); kept 1 in {self.breaker.keep_every}")
            out.append(Message(source, offset, received, payload, set_aside))
            newest[source] = max(newest.get(source, -1), offset)
            self._hold_for_ack(source, offset, mid, qos)
        if self.lake is not None:
            out += [Progress(s, o) for s, o in newest.items()]
        return [as_batch(out)]  # one micro-batch: the flow's unit of work

    def _high(self, source: str) -> int:
        if source not in self.high:  # first sight in this run: what the lake already has
            done = durable_offsets(self.lake, [source])[source] if self.lake else None
            self.high[source] = -1 if done is None else done
        return self.high[source]

    def _hold_for_ack(self, source: str, offset: int, mid: int, qos: int) -> None:
        if self.lake is not None and qos > 0:
            self.unacked.append((source, offset, mid, qos))

    def _acknowledge_durable(self) -> None:
        """Acknowledge, in the order received, the messages whose rows are durable in every
        stream table; the broker keeps the rest for a restarted worker."""
        if not self.unacked or time.monotonic() - self.last_ack_check < self.cfg.ack_check_s:
            return
        self.last_ack_check = time.monotonic()
        durable = durable_offsets(self.lake, {source for source, *_ in self.unacked})
        while self.unacked:
            source, offset, mid, qos = self.unacked[0]
            done = durable[source]
            if done is None or offset > done:
                break
            self.unacked.popleft()
            self.client.ack(mid, qos)

    def next_awake(self) -> datetime | None:
        with self.lock:
            empty = not self.buffer
        return datetime.now(UTC) + timedelta(milliseconds=5) if empty else None

    def close(self) -> None:
        """A clean end: every message handed to the flow is being drained into the lake, so the
        session (and its unacknowledged deliveries) can go."""
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()


class MQTTSource(DynamicSource[Message | Progress]):
    """Every worker subscribes to ``topic`` in the shared group ``group`` on the broker.

    With ``lake_uri`` (the lake the flow writes), messages are acknowledged only once their rows
    are durable there (checked every ``ack_check_s``), in a persistent session the broker keeps
    for ``session_expiry_s`` after a crash; without it, paho acknowledges on receipt."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        lake_uri: str | None = None,
        topic: str = TOPIC,
        group: str = SHARE_GROUP,
        qos: int = 1,
        batch: int = 1024,
        high_watermark: int = 50_000,
        low_watermark: int = 5_000,
        keep_every: int = 10,
        idle_stop_s: float | None = None,
        session_expiry_s: int = 3600,
        ack_check_s: float = 0.5,
    ):
        self.host, self.port, self.topic, self.group, self.qos = host, port, topic, group, qos
        self.lake_uri = lake_uri
        self.batch, self.idle_stop_s = batch, idle_stop_s
        self.high_watermark, self.low_watermark = high_watermark, low_watermark
        self.keep_every = keep_every
        self.session_expiry_s, self.ack_check_s = session_expiry_s, ack_check_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MQTTPartition:
        return _MQTTPartition(self, worker_index)


class Publisher:
    """Publishes ``(topic, payload)`` pairs at QoS 1 as publisher ``name``, numbering each
    message (``pp-seq``: its publish time in microseconds, strictly increasing, so numbers keep
    growing across restarts of the publisher)."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 1883):
        self.name, self.seq = name, 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
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
    messages: Iterable[tuple[str, bytes]], host: str = "127.0.0.1", port: int = 1883,
    qos: int = 1, name: str | None = None,
) -> int:
    """Publish ``(topic, payload)`` pairs and wait until the broker has them all."""
    pub = Publisher(name or f"publish-{now_us()}", host, port)
    infos = [pub.publish(topic, payload, qos) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
    pub.close()
    return len(infos)


def mqtt_flow(host: str = "127.0.0.1", port: int = 1883, group: str = SHARE_GROUP):
    """The telemetry flow fed by the broker:
    ``python -m bytewax.run "bytewax_flows.mqtt:mqtt_flow('127.0.0.1', 1883)"``."""
    from bytewax_flows.telemetry import get_flow

    lake_uri = Settings.from_env().lake_uri
    return get_flow(MQTTSource(host, port, lake_uri=lake_uri, group=group), lake_uri)


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
