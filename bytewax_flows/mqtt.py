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

Delivery: QoS 1 from publisher to broker to worker.  Unlike the simulator and replay sources, an
MQTT message has no position the broker can rewind to, so messages received but not yet
committed when a worker is killed are lost; restarts resume with new offsets (the receive time
in microseconds), which keeps the sink's offset-keyed commits correct.
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

from bytewax_flows.payloads import Message
from bytewax_flows.sources import chunk_payloads, now_us

__all__ = ["CircuitBreaker", "MQTTSource", "TOPIC", "publish", "topic_for"]

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


class _MQTTPartition(StatelessSourcePartition[Message]):
    def __init__(self, source: MQTTSource, worker_index: int):
        self.cfg = source
        self.name = f"mqtt:{source.host}:{source.port}:w{worker_index}"
        self.buffer: deque[tuple[int, bytes]] = deque()
        self.lock = threading.Lock()
        self.breaker = CircuitBreaker(source.high_watermark, source.low_watermark,
                                      source.keep_every)
        self.last_offset = 0
        self.last_message = time.monotonic()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"plantpulse-{source.group}-w{worker_index}-{now_us()}",
            protocol=mqtt.MQTTv5,
        )
        self.subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect(source.host, source.port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise ConnectionError(f"no subscription to {source.topic} on "
                                  f"{source.host}:{source.port} within 10 s")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        client.subscribe(f"$share/{self.cfg.group}/{self.cfg.topic}", qos=self.cfg.qos)

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.buffer.append((now_us(), msg.payload))

    def next_batch(self) -> Iterable[Message]:
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
        out = []
        for received, payload in taken:
            offset = max(received, self.last_offset + 1)
            self.last_offset = offset
            shed = None
            if not self.breaker.admit(backlog):
                shed = (f"load shedding: {backlog} messages waiting (> {self.breaker.high}); "
                        f"kept 1 in {self.breaker.keep_every}")
            out.append(Message(self.name, offset, received, payload, shed))
        return out

    def next_awake(self) -> datetime | None:
        with self.lock:
            empty = not self.buffer
        return datetime.now(UTC) + timedelta(milliseconds=5) if empty else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class MQTTSource(DynamicSource[Message]):
    """Every worker subscribes to ``topic`` in the shared group ``group`` on the broker."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        topic: str = TOPIC,
        group: str = SHARE_GROUP,
        qos: int = 1,
        batch: int = 1024,
        high_watermark: int = 50_000,
        low_watermark: int = 5_000,
        keep_every: int = 10,
        idle_stop_s: float | None = None,
    ):
        self.host, self.port, self.topic, self.group, self.qos = host, port, topic, group, qos
        self.batch, self.idle_stop_s = batch, idle_stop_s
        self.high_watermark, self.low_watermark = high_watermark, low_watermark
        self.keep_every = keep_every

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MQTTPartition:
        return _MQTTPartition(self, worker_index)


def publish(
    messages: Iterable[tuple[str, bytes]], host: str = "127.0.0.1", port: int = 1883,
    qos: int = 1,
) -> int:
    """Publish ``(topic, payload)`` pairs and wait until the broker has them all."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=qos) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
    client.loop_stop()
    client.disconnect()
    return len(infos)


def mqtt_flow(host: str = "127.0.0.1", port: int = 1883):
    """The telemetry flow fed by the broker:
    ``python -m bytewax.run "bytewax_flows.mqtt:mqtt_flow('127.0.0.1', 1883)"``."""
    from bytewax_flows.telemetry import get_flow

    return get_flow(MQTTSource(host, port))


def publish_simulator(host: str, port: int, n_machines: int = 3) -> None:
    """Publish the live simulated fleet to the broker, one chunk per machine per second (what
    devices at the edge would send)."""
    from physics.simulator import default_fleet

    sim = default_fleet(n_machines, start_us=(now_us() // 1_000_000) * 1_000_000)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(host, port)
    client.loop_start()
    k = 0
    try:
        while True:
            due = sim.start_us / 1e6 + (k + 1) * sim.chunk_s
            time.sleep(max(0.0, due - time.time()))
            for asset in sim.asset_ids:
                for sid, payload in chunk_payloads(sim.chunk(asset, k)):
                    client.publish(topic_for(asset, sid), payload, 1)
            k += 1
    finally:
        client.loop_stop()
        client.disconnect()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="publish the live simulated fleet over MQTT")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    a = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        publish_simulator(a.host, a.port)
