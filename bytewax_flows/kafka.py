"""Kafka as the production bus: librdkafka's consumer (``confluent_kafka``), one per topic
partition, as Bytewax's own connector (``bytewax.connectors.kafka``) uses it, whose partition
listing this module takes; its per-message objects are skipped (a quarter of a soaking
worker's time went to making them).

Configuration (environment):

==============================  ===========================================  ======================
variable                        meaning                                      default
==============================  ===========================================  ======================
``PLANTPULSE_KAFKA_BROKERS``    ``host:port`` of the brokers, comma-separated  (required)
``PLANTPULSE_KAFKA_TOPIC``      the telemetry topic                          ``plantpulse.telemetry``
``PLANTPULSE_KAFKA_CONFIG``     JSON object of librdkafka properties for     ``{}``
                                both consumer and producer (TLS, SASL, ...)
``PLANTPULSE_KAFKA_BATCH``      messages per poll of one partition           ``1000``
==============================  ===========================================  ======================

Partitioning: producers key every message by its ``asset_id`` and use Kafka's Java-compatible
murmur2 partitioner (``partitioner=murmur2_random``, :func:`producer_config`), so one machine's
messages are in one Kafka partition, in order: ``partition_for(asset_id, n)``.  Each Kafka
partition is one partition of Bytewax's ``KafkaSource``; Bytewax spreads them over the cluster's
workers, and the flow re-keys by asset for its stateful steps, so any spread is correct.  More
partitions than workers (say 4-8 per worker) let a cluster grow without re-partitioning the topic.

Offsets and recovery: ``KafkaSource`` keeps no consumer-group offsets (``enable.auto.commit`` is
off); the offset of each partition is in Bytewax's recovery snapshot, and a restarted cluster
resumes each partition from its snapshot (at the latest, the epoch before the crash), which
re-delivers what came after.  Every row the stream writes carries its message's source
(``kafka:<topic>:<partition>``) and Kafka offset, and the Delta sink commits the newest offset of
each source as an application transaction in the same commit as the rows (docs/data-plane.md,
"Exactly once"): re-delivered messages at or below it are dropped.  So Kafka's at-least-once
delivery (and ``KafkaSink``'s, whose messages of the resume epoch are produced again) becomes
exactly-once in the lake.  First start: from the beginning of the topic (``OFFSET_BEGINNING``).

No Kafka broker is installed on the development machines; the tests run the connector against
librdkafka's built-in mock cluster (``test.mock.num.brokers``), the client library's own test
broker.  Run against a real cluster with
``python -m bytewax.run "bytewax_flows.kafka:get_flow()" -i <i> -a <addresses>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from bytewax_flows.payloads import Batch, Message
from bytewax_flows.sources import now_us

__all__ = [
    "KafkaConfigError",
    "KafkaSettings",
    "TelemetryKafkaSource",
    "get_flow",
    "message_key",
    "murmur2",
    "partition_for",
    "producer_config",
    "source_name",
]

DEFAULT_TOPIC = "plantpulse.telemetry"


class KafkaConfigError(ValueError):
    """A Kafka setting that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class KafkaSettings:
    brokers: tuple[str, ...]
    topic: str = DEFAULT_TOPIC
    config: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        env = os.environ if env is None else env
        brokers = tuple(
            b.strip() for b in env.get("PLANTPULSE_KAFKA_BROKERS", "").split(",") if b.strip()
        )
        if not brokers:
            raise KafkaConfigError(
                "PLANTPULSE_KAFKA_BROKERS is not set (host:port of the brokers, comma-separated)"
            )
        bad = [b for b in brokers if not b.rpartition(":")[2].isdigit()]
        if bad:
            raise KafkaConfigError(f"PLANTPULSE_KAFKA_BROKERS: {', '.join(bad)} is not host:port")
        raw = env.get("PLANTPULSE_KAFKA_CONFIG") or "{}"
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise KafkaConfigError(f"PLANTPULSE_KAFKA_CONFIG is not valid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise KafkaConfigError("PLANTPULSE_KAFKA_CONFIG must be a JSON object")
        batch = env.get("PLANTPULSE_KAFKA_BATCH") or "1000"
        if not batch.isdigit() or int(batch) < 1:
            raise KafkaConfigError(
                f"PLANTPULSE_KAFKA_BATCH must be a positive integer, got {batch!r}"
            )
        return cls(
            brokers,
            env.get("PLANTPULSE_KAFKA_TOPIC") or DEFAULT_TOPIC,
            {str(k): str(v) for k, v in config.items()},
            int(batch),
        )


def producer_config(settings: KafkaSettings) -> dict[str, str]:
    """librdkafka settings for whoever publishes telemetry: keyed by asset with the
    Java-compatible murmur2 partitioner, idempotent, acknowledged by all in-sync replicas."""
    return {
        "bootstrap.servers": ",".join(settings.brokers),
        "partitioner": "murmur2_random",
        "enable.idempotence": "true",
        "acks": "all",
        **settings.config,
    }


def message_key(asset_id: str) -> bytes:
    return asset_id.encode()


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``), signed 32-bit.

    >>> murmur2(b"21"), murmur2(b"foobar"), murmur2(b"abc")
    (-973932308, -790332482, 479470107)
    """
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(asset_id: str, n_partitions: int) -> int:
    """The Kafka partition of ``asset_id``'s messages (murmur2 of the key, as Kafka's Java
    client and librdkafka's ``murmur2_random`` partitioner compute it)."""
    return (murmur2(message_key(asset_id)) & 0x7FFFFFFF) % n_partitions


def source_name(topic: str, partition: int) -> str:
    """The ``source`` of a Kafka partition's rows: the exactly-once key is (source, offset)."""
    return f"kafka:{topic}:{partition}"


class _TelemetryPartition(StatefulSourcePartition[Batch, int]):
    """One Kafka partition read with librdkafka's consumer, each poll's messages handed on as
    one micro-batch of the stream's ``Message``s; its snapshot is the next offset to read (as
    Bytewax's ``KafkaSource`` partition, whose per-message ``KafkaSourceMessage`` - eight
    fields copied from each message - took a quarter of a soaking worker's time)."""

    def __init__(self, config: dict[str, Any], topic: str, partition: int, offset: int, batch: int):
        self._source, self._offset, self._batch = source_name(topic, partition), offset, batch
        self._eof = False
        self._consumer = Consumer(config)
        # assign, not subscribe: no consumer group; the offset lives in the recovery snapshot
        self._consumer.assign([TopicPartition(topic, partition, offset)])

    def next_batch(self) -> list[Batch]:
        if self._eof:
            raise StopIteration()
        received = now_us()
        source = self._source
        out = []
        last = None
        for msg in self._consumer.consume(self._batch, 0.001):
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._eof = True  # the end of a non-tailing read: stop after this batch
                    break
                raise RuntimeError(f"Kafka error on {source}: {error}")
            last = msg.offset()
            if last is None:  # a consumed message always has one
                raise RuntimeError(f"Kafka message without an offset on {source}")
            out.append(Message(source, last, received, msg.value() or b""))
        if last is not None:
            self._offset = last + 1
        return [Batch(out)] if out else []  # one micro-batch: the flow's unit of work

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class TelemetryKafkaSource(FixedPartitionedSource[Batch, int]):
    """The telemetry topic's partitions (listed by Bytewax's ``KafkaSource``), each read from
    the beginning (or its snapshot's offset) as micro-batches of ``Message``s whose (source,
    offset) are (``kafka:<topic>:<partition>``, the Kafka offset)."""

    def __init__(self, settings: KafkaSettings, *, tail: bool = True):
        self._settings, self._tail = settings, tail
        self._kafka = KafkaSource(
            list(settings.brokers), [settings.topic], tail=tail, add_config=dict(settings.config)
        )

    def list_parts(self) -> list[str]:
        return self._kafka.list_parts()

    @classmethod
    def from_env(cls, *, tail: bool = True) -> TelemetryKafkaSource:
        return cls(KafkaSettings.from_env(), tail=tail)

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _TelemetryPartition:
        idx, topic = for_part.split("-", 1)
        config: dict[str, Any] = {
            "group.id": "plantpulse-unused",  # required by librdkafka; no group is joined
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._settings.brokers),
            "enable.partition.eof": str(not self._tail).lower(),
            **self._settings.config,
        }
        offset = OFFSET_BEGINNING if resume_state is None else resume_state
        return _TelemetryPartition(config, topic, int(idx), offset, self._settings.batch_size)


def get_flow(lake_uri: str | None = None, *, tail: bool = True) -> Dataflow:
    """The telemetry flow reading the Kafka topic of ``PLANTPULSE_KAFKA_*`` (``tail=False``:
    stop at the end of the topic, for replays and tests)."""
    from bytewax_flows.telemetry import get_flow as telemetry_flow

    return telemetry_flow(TelemetryKafkaSource.from_env(tail=tail), lake_uri)
