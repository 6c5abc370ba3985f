"""Kafka through Bytewax's own connector.  No Kafka broker is installed here: configuration and
partitioning are tested directly, and the connector end to end against librdkafka's built-in
mock cluster (``test.mock.num.brokers``), the client library's own test broker."""

from __future__ import annotations

import pytest
from bytewax.testing import run_main
from confluent_kafka import Producer

from bytewax_flows.kafka import (
    KafkaConfigError,
    KafkaSettings,
    TelemetryKafkaSource,
    get_flow,
    message_key,
    partition_for,
    producer_config,
    source_name,
)
from bytewax_flows.sources import chunk_payloads
from bytewax_flows.telemetry import SHARDS
from lake import Lake
from physics.simulator import default_fleet
from tests.conftest import T0_US

TOPIC = "plantpulse.telemetry"


def test_settings_from_the_environment():
    s = KafkaSettings.from_env(
        {
            "PLANTPULSE_KAFKA_BROKERS": "k1:9092, k2:9092",
            "PLANTPULSE_KAFKA_CONFIG": '{"security.protocol": "SSL"}',
            "PLANTPULSE_KAFKA_BATCH": "500",
        }
    )
    assert s.brokers == ("k1:9092", "k2:9092") and s.topic == TOPIC and s.batch_size == 500
    conf = producer_config(s)
    assert conf["bootstrap.servers"] == "k1:9092,k2:9092"
    assert conf["partitioner"] == "murmur2_random" and conf["security.protocol"] == "SSL"
    source = TelemetryKafkaSource(s)
    kafka = source._kafka  # Bytewax's own source, which lists the partitions
    assert kafka._add_config == {"security.protocol": "SSL"}
    assert source._settings.batch_size == 500  # each consumer's poll


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "PLANTPULSE_KAFKA_BROKERS is not set"),
        ({"PLANTPULSE_KAFKA_BROKERS": "k1"}, "k1 is not host:port"),
        ({"PLANTPULSE_KAFKA_BROKERS": "k:1", "PLANTPULSE_KAFKA_CONFIG": "[1]"}, "JSON object"),
        ({"PLANTPULSE_KAFKA_BROKERS": "k:1", "PLANTPULSE_KAFKA_CONFIG": "{"}, "not valid JSON"),
        ({"PLANTPULSE_KAFKA_BROKERS": "k:1", "PLANTPULSE_KAFKA_BATCH": "0"}, "positive integer"),
    ],
)
def test_bad_settings_are_one_clear_error(env: dict, message: str):
    with pytest.raises(KafkaConfigError, match=message):
        KafkaSettings.from_env(env)


def _mock_cluster_producer() -> tuple[Producer, str]:
    settings = KafkaSettings(("unused:9092",), config={"test.mock.num.brokers": "1"})
    producer = Producer(producer_config(settings))
    broker = next(iter(producer.list_topics(timeout=10).brokers.values()))
    return producer, f"{broker.host}:{broker.port}"


def test_the_partition_mapping_is_the_one_librdkafka_applies():
    producer, _ = _mock_cluster_producer()
    placed: dict[str, int] = {}
    assets = [f"pump-{i:02d}" for i in range(1, 21)]
    for asset in assets:
        producer.produce(
            TOPIC,
            b"{}",
            key=message_key(asset),
            on_delivery=lambda err, m: placed.__setitem__(m.key().decode(), m.partition()),
        )
    assert producer.flush(20) == 0
    n = len(producer.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions)
    assert n > 1
    assert placed == {a: partition_for(a, n) for a in assets}
    assert len(set(placed.values())) == n  # twenty machines reach every partition


def test_the_connector_feeds_the_flow_and_redelivery_adds_no_rows(tmp_path, monkeypatch):
    """At-least-once from Kafka (a restart without a snapshot re-reads the whole topic) and
    the lake's offset-keyed commits: exactly once in the tables."""
    producer, broker = _mock_cluster_producer()
    fleet = default_fleet(3, start_us=T0_US)
    sent = 0
    for second in range(3):
        for asset in fleet.asset_ids:
            for _, payload in chunk_payloads(fleet.chunk(asset, second)):
                producer.produce(TOPIC, payload, key=message_key(asset))
                sent += 1
    assert producer.flush(20) == 0
    monkeypatch.setenv("PLANTPULSE_KAFKA_BROKERS", broker)
    lake = Lake(tmp_path / "lake")

    run_main(get_flow(lake.uri, tail=False))
    readings = lake.read("readings")
    assert readings.groupby("asset_id").size().to_dict() == {a: 93 for a in fleet.asset_ids}
    assert lake.read("features").groupby("sensor_id").size()["vib_de"] == 9  # 3 s x 3 machines
    sources = {source_name(TOPIC, partition_for(a, 4)) for a in fleet.asset_ids}
    # the exactly-once key is the Kafka partition's offset, per shard path of the flow
    assert any(
        lake.committed_version("readings", f"telemetry:{sorted(sources)[0]}#{k}") is not None
        for k in range(SHARDS)
    )

    counts = {t: lake.count(t) for t in ("readings", "features", "scores")}
    run_main(get_flow(lake.uri, tail=False))  # everything is delivered again
    assert {t: lake.count(t) for t in counts} == counts
    assert not lake.exists("dead_letter")
    assert sent == 3 * 3 * 5
