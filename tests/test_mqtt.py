"""MQTT through a real Mosquitto broker (installed and started by the project's script):
JSON scalar batches and binary vibration frames, and the load-shedding circuit breaker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from bytewax.recovery import init_db_dir
from bytewax.testing import run_main
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bytewax_flows.mqtt import CircuitBreaker, MQTTSource, Publisher, publish, topic_for
from bytewax_flows.payloads import encode_frame, encode_scalars
from bytewax_flows.sinks import DeltaSink, durable_offsets
from bytewax_flows.telemetry import build_flow
from lake import Lake
from physics.simulator import default_fleet
from plantpulse_cli.broker import ensure_mosquitto, wait_for_port, write_config
from tests.conftest import T0_US


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """A real Mosquitto on a free loopback port (installed by the project's script if needed)."""
    binary = ensure_mosquitto()
    port = _free_port()
    conf = write_config(tmp_path_factory.mktemp("mosquitto"), port)
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_port(port)
    yield port
    proc.terminate()
    proc.wait(10)


def _run_while_publishing(source: MQTTSource, lake: Lake, messages: list[tuple[str, bytes]]):
    done = threading.Event()

    def run() -> None:
        try:
            run_main(build_flow(source, DeltaSink(lake.uri, max_rows=10_000, max_age_s=0.2)))
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(1.5)  # the worker connects and subscribes
    publish(messages, port=source.port)
    assert done.wait(60), "the flow did not stop after the input went idle"


def test_json_readings_and_binary_frames_through_a_real_broker(broker: int, tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    rng = np.random.default_rng(0)
    messages = [
        (
            topic_for("pump-01", "motor_current"),
            encode_scalars("pump-01", "motor_current", T0_US + (i * 31 + np.arange(31)) * 32_258,
                           20 + rng.normal(0, 0.1, 31)),
        )
        for i in range(10)
    ]
    sim = default_fleet(1, start_us=T0_US)
    for k in range(2):
        _, t0, rate, x = sim.chunk("pump-01", k).frames[0]
        messages.append((topic_for("pump-01", "vib_de"),
                         encode_frame("pump-01", "vib_de", t0, rate, x)))
    messages.append((topic_for("pump-01", "motor_current"), b'{"asset_id": "pump-01", '))
    _run_while_publishing(MQTTSource(port=broker, idle_stop_s=3.0), lake, messages)
    assert lake.count("readings") == 310
    vib = lake.read("features", filters=[("sensor_id", "=", "vib_de")])
    assert len(vib) == 2 and lake.count("scores") == 2
    dead = lake.read("dead_letter")
    assert dead["reason"].tolist() == ["malformed"]
    assert dead["source"].iloc[0].startswith("mqtt:") and dead["raw"].iloc[0].startswith(b'{"a')


def test_breaker_opens_above_high_and_closes_below_low():
    b = CircuitBreaker(high=100, low=10, keep_every=4)
    assert all(b.admit(50) for _ in range(10))
    admitted = [b.admit(150) for _ in range(8)]
    assert b.open and sum(admitted) == 2
    assert [b.admit(50) for _ in range(4)].count(True) == 1  # between the marks: still open
    assert b.admit(5) and not b.open


def test_a_burst_is_shed_into_dead_letter_and_nothing_is_lost(broker: int, tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    n = 3000
    messages = [
        (
            topic_for("pump-01", "bearing_temp"),
            json.dumps({"asset_id": "pump-01", "sensor_id": "bearing_temp",
                        "ts": T0_US + i * 1000, "value": 40.0}).encode(),
        )
        for i in range(n)
    ]
    source = MQTTSource(port=broker, idle_stop_s=3.0, batch=8, high_watermark=50,
                        low_watermark=10, keep_every=5)
    _run_while_publishing(source, lake, messages)
    dead = lake.read("dead_letter")
    shed = dead[dead["reason"] == "shed"]
    assert len(shed) > 0 and shed["detail"].str.contains("load shedding").all()
    assert lake.count("readings") + len(shed) == n  # every message is somewhere, none twice
    assert set(dead["reason"]) == {"shed"}


def test_plantpulse_up_mqtt_streams_the_fleet_through_its_own_broker(tmp_path: Path):
    """``make run MQTT=<port>``: broker, publisher and stream as separate processes."""
    port = _free_port()
    out = subprocess.run(
        [str(Path(sys.executable).parent / "plantpulse"), "up", "--no-ui", "--mqtt", str(port),
         "--duration", "10"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PLANTPULSE_HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    lake = Lake(tmp_path / "lake")
    assert lake.count("readings") >= 3 * 31 * 4  # at least 4 s of the three pumps
    assert lake.count("scores") >= 3 * 4 and lake.count("dead_letter") == 0
    sources = set(lake.read("readings", columns=["asset_id"])["asset_id"])
    assert sources == {"pump-01", "pump-02", "pump-03"}


def _stream_worker(port: int, group: str, lake: Path, recovery: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run",
         f"bytewax_flows.mqtt:mqtt_flow('127.0.0.1', {port}, {group!r})",
         "-r", str(recovery), "-s", "1", "-b", "0"],
        env={**os.environ, "PLANTPULSE_LAKE": str(lake)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_of_an_mqtt_worker_neither_loses_nor_duplicates(broker: int, tmp_path: Path):
    """A worker reading from the broker is killed with SIGKILL while messages keep coming and
    restarted: what it had received but not made durable comes again from the broker (its
    session persists) and what it had already written is recognised by publisher and number."""
    group, n_msgs, per_msg = "killtest", 300, 10
    # the worker's persistent session exists before the first message, so none is missed
    session = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"plantpulse-{group}-w0",
                          protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    session.connect("127.0.0.1", broker, clean_start=True, properties=props)
    session.loop_start()
    session.subscribe(f"$share/{group}/plantpulse/#", qos=1)[1]
    time.sleep(0.5)
    session.loop_stop()
    session.disconnect()

    lake, recovery = Lake(tmp_path / "lake"), tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    ts = T0_US + np.arange(n_msgs * per_msg).reshape(n_msgs, per_msg) * 100_000
    messages = [(topic_for("pump-01", "motor_current"),
                 encode_scalars("pump-01", "motor_current", t, 20.0 + (t - T0_US) / 1e9))
                for t in ts]
    pub = Publisher("edge-01", port=broker)

    def send() -> None:
        for topic, payload in messages:
            pub.publish(topic, payload).wait_for_publish(10)
            time.sleep(0.02)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    proc = _stream_worker(broker, group, Path(lake.uri), recovery)
    _wait_for(lambda: lake.exists("readings") and lake.count("readings") >= 600, 90,
              "the first worker to write")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    partial = lake.count("readings")
    again = _stream_worker(broker, group, Path(lake.uri), recovery)
    try:
        sender.join(60)
        _wait_for(lambda: lake.count("readings") >= n_msgs * per_msg
                  and durable_offsets(lake, ["mqtt:edge-01:w0"])["mqtt:edge-01:w0"] == pub.seq, 90,
                  "every message to be durable")
        time.sleep(1.5)  # a duplicate would have landed by now
    finally:
        again.kill()
        again.wait(30)
        pub.close()
    assert 0 < partial < n_msgs * per_msg, "the kill must land mid-stream"
    readings = lake.read("readings", columns=["ts", "value"])
    assert len(readings) == n_msgs * per_msg and not readings["ts"].duplicated().any()
    features = lake.read("features", columns=["window_end"])
    assert len(features) == n_msgs and not features["window_end"].duplicated().any()
    assert lake.count("dead_letter") == 0


def test_a_publisher_whose_numbers_go_back_is_dead_lettered_not_dropped(broker: int,
                                                                         tmp_path: Path):
    """A device that restarts its numbering at 1 sends new data under numbers already used:
    those messages cannot be told from replays, so they go to dead_letter (payload kept) with a
    reason that says what to fix, instead of vanishing as replays in the sink."""
    lake = Lake(tmp_path / "lake")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker)
    client.loop_start()

    def send(seq: int, k: int) -> mqtt.MQTTMessageInfo:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("pp-publisher", "device-7"), ("pp-seq", str(seq))]
        body = encode_scalars("pump-01", "motor_current", [T0_US + k * 1_000_000], [20.0 + k])
        return client.publish(topic_for("pump-01", "motor_current"), body, 1, properties=props)

    done = threading.Event()
    source = MQTTSource(port=broker, lake_uri=lake.uri, group="renumber", idle_stop_s=3.0)
    t = threading.Thread(target=lambda: (run_main(build_flow(
        source, DeltaSink(lake.uri, max_age_s=0.2))), done.set()), daemon=True)
    t.start()
    time.sleep(1.5)
    # numbers 1..5, then the device restarts and numbers its next readings 1..3 again
    for seq, k in [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (1, 5), (2, 6), (3, 7)]:
        send(seq, k).wait_for_publish(10)
    assert done.wait(60)
    client.loop_stop()
    client.disconnect()
    assert lake.count("readings") == 5
    dead = lake.read("dead_letter")
    assert dead["reason"].tolist() == ["out_of_sequence"] * 3
    assert dead["detail"].str.contains("device-7").all()
    assert dead["raw"].map(lambda r: b"motor_current" in r).all()
