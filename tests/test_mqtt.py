"""MQTT through a real Mosquitto broker (installed and started by the project's script):
JSON scalar batches and binary vibration frames, and the load-shedding circuit breaker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bytewax.testing import run_main

from bytewax_flows.mqtt import CircuitBreaker, MQTTSource, publish, topic_for
from bytewax_flows.payloads import encode_frame, encode_scalars
from bytewax_flows.sinks import DeltaSink
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
