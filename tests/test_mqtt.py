"""MQTT through a real Mosquitto broker (installed and started by the project's script):
JSON scalar batches and binary vibration frames, and the load-shedding circuit breaker."""

from __future__ import annotations

import json
import logging
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

from bytewax_flows.mqtt import (
    SHARE_GROUP,
    CircuitBreaker,
    MQTTSource,
    Publisher,
    credentials,
    publish,
    topic_for,
)
from bytewax_flows.payloads import Message, encode_frame, encode_scalars
from bytewax_flows.sinks import DeltaSink, committed_offset
from bytewax_flows.telemetry import build_flow
from lake import Lake, Settings
from physics.simulator import default_fleet
from plantpulse_cli.broker import ensure_mosquitto, wait_for_port, write_config
from plantpulse_cli.up import prepare, services
from tests.conftest import T0_US


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PUBLISHERS = {"simulator": ["pump-01", "pump-02", "pump-03"], "intruder": ["pump-99"]}


def _start_broker(directory: Path, limits: dict[str, int] | None = None):
    binary = ensure_mosquitto()
    port = _free_port()
    conf = write_config(directory, port, PUBLISHERS, limits)
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port)
    return proc, port


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """A real Mosquitto on a free loopback port (installed by the project's script if needed),
    configured as the set-up does: authentication, ACLs, limits.  The clients of this module
    find their credentials through ``PLANTPULSE_MQTT_CREDENTIALS``."""
    directory = tmp_path_factory.mktemp("mosquitto")
    proc, port = _start_broker(directory)
    old = os.environ.get("PLANTPULSE_MQTT_CREDENTIALS")
    os.environ["PLANTPULSE_MQTT_CREDENTIALS"] = str(directory / "credentials.json")
    yield port
    if old is None:
        os.environ.pop("PLANTPULSE_MQTT_CREDENTIALS", None)
    else:
        os.environ["PLANTPULSE_MQTT_CREDENTIALS"] = old
    proc.terminate()
    proc.wait(10)


def _client(
    port: int, user: str | None = "simulator", client_id: str = "", session_expiry_s: int = 0
) -> mqtt.Client:
    """A plain paho client logged in as ``user`` (None: anonymous), connected."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if user is not None:
        auth = credentials(user)
        assert auth is not None
        c.username_pw_set(*auth)
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, reason, p: (setattr(cl, "reason", reason), connected.set())
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    c.connect("127.0.0.1", port, clean_start=True, properties=props)
    c.loop_start()
    assert connected.wait(10)
    return c


def _numbered(publisher: str, seq: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("pp-publisher", publisher), ("pp-seq", seq)]
    return props


def _run_while_publishing(
    source: MQTTSource,
    lake: Lake,
    messages: list[tuple[str, bytes]],
    auth: tuple[str, str] | None = None,
):
    done = threading.Event()

    def run() -> None:
        try:
            run_main(build_flow(source, DeltaSink(lake.uri, max_rows=10_000, max_age_s=0.2)))
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(1.5)  # the worker connects and subscribes
    publish(messages, port=source.port, auth=auth)
    assert done.wait(60), "the flow did not stop after the input went idle"


def test_json_readings_and_binary_frames_through_a_real_broker(broker: int, tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    rng = np.random.default_rng(0)
    messages = [
        (
            topic_for("pump-01", "motor_current"),
            encode_scalars(
                "pump-01",
                "motor_current",
                T0_US + (i * 31 + np.arange(31)) * 32_258,
                20 + rng.normal(0, 0.1, 31),
            ),
        )
        for i in range(10)
    ]
    sim = default_fleet(1, start_us=T0_US)
    for k in range(2):
        _, t0, rate, x = sim.chunk("pump-01", k).frames[0]
        messages.append(
            (topic_for("pump-01", "vib_de"), encode_frame("pump-01", "vib_de", t0, rate, x))
        )
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
    assert b.open and sum(admitted) == 0  # above the high mark: nothing more (a hard bound)
    assert [b.admit(50) for _ in range(4)].count(True) == 1  # between the marks: 1 in 4
    assert b.admit(5) and not b.open


def test_breaker_bounds_the_backlog_in_bytes_too():
    b = CircuitBreaker(high=1000, low=10, keep_every=2, high_bytes=10_000, low_bytes=1_000)
    assert b.admit(5, 9_000)
    assert not b.admit(6, 10_001) and b.open
    assert [b.admit(6, 5_000) for _ in range(4)].count(True) == 2
    assert not b.admit(3, 2_000) or b.open  # below low in messages, not in bytes: still open
    assert b.open and b.admit(3, 500) and not b.open


def test_a_burst_is_shed_into_dead_letter_and_nothing_is_lost(broker: int, tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    n = 3000
    messages = [
        (
            topic_for("pump-01", "bearing_temp"),
            json.dumps(
                {
                    "asset_id": "pump-01",
                    "sensor_id": "bearing_temp",
                    "ts": T0_US + i * 1000,
                    "value": 40.0,
                }
            ).encode(),
        )
        for i in range(n)
    ]
    source = MQTTSource(
        port=broker, idle_stop_s=3.0, batch=8, high_watermark=50, low_watermark=10, keep_every=5
    )
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
        [
            str(Path(sys.executable).parent / "plantpulse"),
            "up",
            "--no-ui",
            "--mqtt",
            str(port),
            "--duration",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
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
        [
            sys.executable,
            "-m",
            "bytewax.run",
            f"bytewax_flows.mqtt:mqtt_flow('127.0.0.1', {port}, {group!r})",
            "-r",
            str(recovery),
            "-s",
            "1",
            "-b",
            "0",
        ],
        env={**os.environ, "PLANTPULSE_LAKE": str(lake)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
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
    session = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"plantpulse-{group}-w0", protocol=mqtt.MQTTv5
    )
    session.username_pw_set(*credentials("worker"))
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
    messages = [
        (
            topic_for("pump-01", "motor_current"),
            encode_scalars("pump-01", "motor_current", t, 20.0 + (t - T0_US) / 1e9),
        )
        for t in ts
    ]
    pub = Publisher("edge-01", port=broker)
    src = "mqtt:edge-01:pump-01:w0"

    def send() -> None:
        for i, (topic, payload) in enumerate(messages):
            pub.publish(topic, payload).wait_for_publish(10)
            if i == 20:  # the rest once the worker is running (its start-up varies with load)
                _wait_for(
                    lambda: lake.exists("readings") and lake.count("readings") > 0,
                    120,
                    "the worker's first rows",
                )
            time.sleep(0.02)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    proc = _stream_worker(broker, group, Path(lake.uri), recovery)
    _wait_for(
        lambda: lake.exists("readings") and lake.count("readings") >= 600,
        90,
        "the first worker to write",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    partial = lake.count("readings")
    again = _stream_worker(broker, group, Path(lake.uri), recovery)
    try:
        sender.join(60)
        _wait_for(
            lambda: (
                lake.count("readings") >= n_msgs * per_msg
                and committed_offset(lake, "readings", src) == pub.seq
            ),
            180,  # a restarted worker's start-up alone took a minute on a loaded 2-core CI run
            "every message to be durable",
        )
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


def test_a_publisher_whose_numbers_go_back_is_dead_lettered_not_dropped(
    broker: int, tmp_path: Path
):
    """A device that restarts its numbering at 1 sends new data under numbers already used:
    those messages cannot be told from replays, so they go to dead_letter (payload kept) with a
    reason that says what to fix, instead of vanishing as replays in the sink."""
    lake = Lake(tmp_path / "lake")
    client = _client(broker)

    def send(seq: int, k: int) -> mqtt.MQTTMessageInfo:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("pp-publisher", "device-7"), ("pp-seq", str(seq))]
        body = encode_scalars("pump-01", "motor_current", [T0_US + k * 1_000_000], [20.0 + k])
        return client.publish(topic_for("pump-01", "motor_current"), body, 1, properties=props)

    done = threading.Event()
    source = MQTTSource(port=broker, lake_uri=lake.uri, group="renumber", idle_stop_s=3.0)
    t = threading.Thread(
        target=lambda: (
            run_main(build_flow(source, DeltaSink(lake.uri, max_age_s=0.2))),
            done.set(),
        ),
        daemon=True,
    )
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


def _run_flow(source: MQTTSource, lake: Lake, send) -> None:
    """Run the telemetry flow in-process from ``source`` while ``send()`` publishes, until the
    input goes idle."""
    done = threading.Event()

    def run() -> None:
        try:
            run_main(build_flow(source, DeltaSink(lake.uri, max_age_s=0.2)))
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(1.5)  # the worker connects and subscribes
    send()
    assert done.wait(90), "the flow did not stop after the input went idle"


def _reading(k: int, asset: str = "pump-01") -> bytes:
    return encode_scalars(asset, "motor_current", [T0_US + k * 1_000_000], [20.0 + k / 100])


def _take_all(part, want: int, timeout: float = 30.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += [m for m in part._take() if isinstance(m, Message)]
        time.sleep(0.05)
    return got


def test_unusable_sequence_marks_do_not_stop_reception(broker: int, tmp_path: Path):
    """13.2: ``'²'`` passes ``str.isdigit()`` but not ``int()``; raised in paho's callback it
    ended the network thread and the worker silently received nothing more.  Messages with
    unusable marks go on unnumbered, and every message after them is received."""
    lake = Lake(tmp_path / "lake")
    client = _client(broker)
    bad = ["²", "٣", "9" * 40, "-5", "", "1e9"]

    def send() -> None:
        k = 0
        for seq in bad:
            client.publish(
                topic_for("pump-01", "motor_current"),
                _reading(k),
                1,
                properties=_numbered("device-9", seq),
            ).wait_for_publish(10)
            k += 1
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("pp-publisher", "x" * 500), ("pp-seq", "1")]
        client.publish(
            topic_for("pump-01", "motor_current"), _reading(k), 1, properties=props
        ).wait_for_publish(10)
        for seq in range(1, 4):
            k += 1
            client.publish(
                topic_for("pump-01", "motor_current"),
                _reading(k),
                1,
                properties=_numbered("device-9", str(seq)),
            ).wait_for_publish(10)

    try:
        _run_flow(
            MQTTSource(port=broker, lake_uri=lake.uri, group="marks", idle_stop_s=4.0), lake, send
        )
    finally:
        client.loop_stop()
        client.disconnect()
    assert lake.count("readings") == len(bad) + 1 + 3
    assert not lake.exists("dead_letter") or lake.count("dead_letter") == 0


def test_a_callback_that_raises_is_logged_and_reception_goes_on(
    broker: int, caplog: pytest.LogCaptureFixture
):
    part = MQTTSource(port=broker, group="raising").build_part("in", "w0", None)
    original, calls = part._admit, []

    def flaky(msg, received, client=0) -> None:
        if msg.topic.startswith("$SYS"):  # the broker's drop count, read by worker 0
            return original(msg, received, client)
        calls.append(msg.topic)
        if len(calls) == 1:
            raise RuntimeError("boom in a callback")
        original(msg, received, client)

    part._admit = flaky
    try:
        with caplog.at_level(logging.ERROR):
            publish(
                [(topic_for("pump-01", "motor_current"), _reading(k)) for k in range(3)],
                port=broker,
            )
            got = _take_all(part, 2)
    finally:
        part.close()
    assert len(calls) == 3 and len(got) == 2
    assert "boom in a callback" in caplog.text


def test_anonymous_and_unknown_clients_are_refused(broker: int):
    anonymous = _client(broker, user=None)
    anonymous.loop_stop()
    assert anonymous.reason.is_failure and "authorized" in str(anonymous.reason).lower()
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="refused"):
        MQTTSource(port=broker, username="worker", password="not-the-password").build_part(
            "in", "w0", None
        )
    assert time.monotonic() - t0 < 5


def test_a_client_publishing_outside_its_acl_gets_nothing_through(broker: int):
    """The intruder may write only ``plantpulse/pump-99/#``: what it sends for pump-01 never
    reaches a worker; its own topic and the simulator's do."""
    part = MQTTSource(port=broker, group="acl").build_part("in", "w0", None)
    intruder, genuine = _client(broker, "intruder"), _client(broker, "simulator")
    try:
        for k in range(3):
            intruder.publish(topic_for("pump-01", "motor_current"), _reading(k), 1)
        intruder.publish(topic_for("pump-99", "motor_current"), _reading(9, "pump-99"), 1)
        genuine.publish(topic_for("pump-01", "motor_current"), _reading(10), 1)
        got = _take_all(part, 2)
        time.sleep(1.0)
        got += _take_all(part, 1, timeout=0.5)
    finally:
        part.close()
        for c in (intruder, genuine):
            c.loop_stop()
            c.disconnect()
    assert sorted(m.payload for m in got) == sorted([_reading(9, "pump-99"), _reading(10)])


def test_a_forged_sequence_number_does_not_block_a_genuine_publisher(broker: int, tmp_path: Path):
    """13.8: a forged ``pp-publisher=simulator``/``pp-seq=10**18`` made the simulator's next
    messages ``out_of_sequence``.  On the simulator's own topics the ACL refuses it; on the
    forger's topics the numbers are the forger's own, and one so far ahead is refused rather
    than adopted."""
    lake = Lake(tmp_path / "lake")
    intruder = _client(broker, "intruder")
    forged = _numbered("simulator", str(10**18))

    def send() -> None:
        intruder.publish(
            topic_for("pump-01", "motor_current"), _reading(0), 1, properties=forged
        ).wait_for_publish(10)
        intruder.publish(
            topic_for("pump-99", "motor_current"), _reading(1, "pump-99"), 1, properties=forged
        ).wait_for_publish(10)
        time.sleep(0.5)
        pub = Publisher("simulator", port=broker)
        for k in range(2, 5):
            pub.publish(topic_for("pump-01", "motor_current"), _reading(k)).wait_for_publish(10)
        pub.close()

    try:
        _run_flow(
            MQTTSource(port=broker, lake_uri=lake.uri, group="forged", idle_stop_s=4.0), lake, send
        )
    finally:
        intruder.loop_stop()
        intruder.disconnect()
    readings = lake.read("readings")
    assert len(readings) == 3 and set(readings["asset_id"]) == {"pump-01"}
    dead = lake.read("dead_letter")
    assert dead["reason"].tolist() == ["out_of_sequence"]
    assert dead["raw"].tolist() == [_reading(1, "pump-99")]
    assert dead["detail"].str.contains("ahead of the receive clock").all()


def test_the_broker_holds_messages_back_beyond_the_receive_maximum(broker: int, tmp_path: Path):
    """13.7: with acknowledgements waiting for the lake, a worker had every message of a burst
    in memory; MQTT 5 flow control keeps the rest in the broker."""
    part = MQTTSource(
        port=broker, lake_uri=str(tmp_path / "lake"), group="rmax", receive_maximum=20
    ).build_part("in", "w0", None)
    try:
        publish(
            [(topic_for("pump-01", "motor_current"), _reading(k)) for k in range(100)], port=broker
        )
        time.sleep(1.5)
        part._receive()
        held = len(part.buffer)
    finally:
        part.close()
    assert held == 20


def test_the_generated_config_bounds_the_broker(tmp_path: Path):
    conf = write_config(tmp_path, 1883).read_text()
    assert "allow_anonymous false" in conf and "max_inflight_messages 0" not in conf
    for key in (
        "max_inflight_messages",
        "max_queued_messages",
        "max_queued_bytes",
        "message_size_limit",
    ):
        value = next(line.split()[1] for line in conf.splitlines() if line.startswith(key + " "))
        assert int(value) > 0, key
    users = json.loads((tmp_path / "credentials.json").read_text())
    assert set(users) == {"worker", "outbound", "simulator"}
    assert oct((tmp_path / "credentials.json").stat().st_mode & 0o777) == "0o600"
    acl = (tmp_path / "acl").read_text()
    assert "user simulator\ntopic write plantpulse/pump-01/#" in acl
    assert "user outbound\ntopic readwrite plantpulse-out/#" in acl  # not the stream's topics
    assert (
        write_config(tmp_path, 1883)
        and json.loads((tmp_path / "credentials.json").read_text()) == users
    )  # kept across restarts


def test_what_the_broker_drops_is_counted_in_dead_letter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Beyond its queue limit the broker drops QoS 1 messages; the worker records how many
    (``dropped_by_broker``) instead of losing them silently."""
    proc, port = _start_broker(tmp_path / "mosquitto", {"max_queued_messages": 5})
    monkeypatch.setenv(
        "PLANTPULSE_MQTT_CREDENTIALS", str(tmp_path / "mosquitto" / "credentials.json")
    )
    part = MQTTSource(
        port=port, lake_uri=str(tmp_path / "lake"), group="drops", receive_maximum=5
    ).build_part("in", "w0", None)
    try:
        time.sleep(0.5)
        publish(
            [(topic_for("pump-01", "motor_current"), _reading(k)) for k in range(50)], port=port
        )
        got: list = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(m.set_aside for m in got):
            got += [m for m in part._take() if isinstance(m, Message)]
            time.sleep(0.1)
    finally:
        part.close()
        proc.terminate()
        proc.wait(10)
    reports = [m for m in got if m.set_aside is not None]
    assert [m.set_aside[0] for m in reports] == ["dropped_by_broker"]
    assert "dropped 40 " in reports[0].set_aside[1]
    assert sum(1 for m in got if m.set_aside is None) == 5


@pytest.mark.slow
def test_plantpulse_up_mqtt_stream_keeps_its_state_across_a_restart(broker: int, tmp_path: Path):
    """13.6: the MQTT stream of ``plantpulse up --mqtt`` ran without Bytewax recovery, so a
    restarted worker had forgotten which readings it had accepted.  Run as ``up`` runs it, it
    resumes its state from its own recovery store: a reading sent again after a SIGKILL is a
    duplicate, not a second row."""
    home = tmp_path / "home"
    env = {**os.environ, "PLANTPULSE_HOME": str(home)}
    settings = Settings.from_env(env)
    prepare(settings, mqtt=True)
    [stream] = [
        s
        for s in services(
            "127.0.0.1", 3000, False, settings.recovery_dir, ("mosquitto", broker), settings.home
        )
        if s.name == "stream"
    ]
    assert str(home / "recovery-mqtt") in stream.argv
    client_id = f"plantpulse-{SHARE_GROUP}-w0"
    # the worker's session queues from the first message on, while the worker is starting
    session = _client(broker, "worker", client_id=client_id, session_expiry_s=3600)
    session.subscribe(f"$share/{SHARE_GROUP}/plantpulse/#", qos=1)
    time.sleep(0.5)
    session.loop_stop()
    session.disconnect()
    lake, source = Lake(settings.lake_uri), "mqtt:simulator:pump-01:w0"
    pub = Publisher("simulator", port=broker)
    ts = T0_US + np.arange(10) * 1_000_000
    first = second = None
    try:
        first = subprocess.Popen(
            stream.argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        pub.publish(
            topic_for("pump-01", "motor_current"),
            encode_scalars("pump-01", "motor_current", ts, 20.0 + np.arange(10) / 10),
        ).wait_for_publish(10)
        _wait_for(
            lambda: committed_offset(lake, "readings", source) == pub.seq,
            150,
            "the first message to be durable",
        )
        time.sleep(4)  # a state snapshot after it
        first.kill()
        first.wait(30)
        second = subprocess.Popen(
            stream.argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        pub.publish(
            topic_for("pump-01", "motor_current"),
            encode_scalars("pump-01", "motor_current", ts, 21.0 + np.arange(10) / 10),
        ).wait_for_publish(10)
        _wait_for(
            lambda: committed_offset(lake, "dead_letter", source) == pub.seq,
            150,
            "the second message to be durable",
        )
    finally:
        pub.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
        wipe = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        wipe.username_pw_set(*credentials("worker"))
        wipe.connect("127.0.0.1", broker, clean_start=True)
        wipe.disconnect()
    assert lake.count("readings") == 10
    dead = lake.read("dead_letter")
    assert dead["reason"].tolist() == ["duplicate"] * 10


def test_a_worker_that_falls_keeps_its_session_for_the_restart(broker: int, tmp_path: Path):
    """A flow that ends by an error (a poison message) closed its source like a clean end and
    discarded its session: every delivered-but-unacknowledged message was gone for the
    restarted worker.  Only an input that went idle ends the session."""
    source = MQTTSource(port=broker, lake_uri=str(tmp_path / "lake"), group="falls")
    part = source.build_part("in", "w0", None)
    try:
        publish(
            [(topic_for("pump-01", "motor_current"), _reading(k)) for k in range(3)], port=broker
        )
        assert len(_take_all(part, 3)) == 3  # handed to the flow, not yet durable: unacked
    finally:
        part.close()  # the flow fell (no idle end)
    again = source.build_part("in", "w0", None)
    try:
        redelivered = _take_all(again, 3)
        again.finished = True  # end it cleanly: the session goes
    finally:
        again.close()
    assert sorted(m.payload for m in redelivered) == sorted(_reading(k) for k in range(3))


def test_a_payload_speaking_for_another_asset_than_its_topic_is_dead_lettered(
    broker: int, tmp_path: Path
):
    """The intruder may write only ``plantpulse/pump-99/#``; a payload there that claims to be
    pump-01's readings (or a frame of pump-01) is dead-lettered whole as ``asset_mismatch``, and
    the readings it carried stay out of ``readings``; its own asset's readings land."""
    lake = Lake(tmp_path / "lake")
    sim = default_fleet(1, start_us=T0_US)
    _, t0, rate, x = sim.chunk("pump-01", 0).frames[0]
    forged = [_reading(k) for k in range(3)] + [encode_frame("pump-01", "vib_de", t0, rate, x)]
    own = [_reading(k, "pump-99") for k in range(4)]
    _run_while_publishing(
        MQTTSource(port=broker, group="mismatch", idle_stop_s=3.0),
        lake,
        [(topic_for("pump-99", "motor_current"), p) for p in forged + own],
        auth=credentials("intruder"),
    )
    readings = lake.read("readings")
    assert set(readings["asset_id"]) == {"pump-99"} and len(readings) == 4
    dead = lake.read("dead_letter")
    assert dead["reason"].tolist() == ["asset_mismatch"] * 4
    assert set(dead["raw"]) == set(forged) and (dead["asset_id"] == "pump-99").all()
    assert lake.read("features", filters=[("asset_id", "=", "pump-01")]).empty


def test_the_broker_grants_topics_from_the_plant_file(tmp_path: Path):
    """One login per site with the topics of its declared assets; the simulator's assets must
    be ones the plant declares (a pattern is not a topic, so it grants nothing by itself)."""
    from plant import load_plant
    from plantpulse_cli.broker import publishers_for

    plant_file = tmp_path / "plant.yaml"
    plant_file.write_text(
        "plant: two-sites\n"
        "sensor_kinds:\n"
        "  temperature: {unit: degC, range: [-40.0, 200.0], rate_hz: 1.0}\n"
        "sites:\n"
        "  - id: north\n"
        "    assets:\n"
        "      - {id: fan-1, sensors: [{id: t, kind: temperature}]}\n"
        "      - {id: fan-2, sensors: [{id: t, kind: temperature}]}\n"
        "  - id: south\n"
        "    assets:\n"
        "      - {id: chiller-1, sensors: [{id: t, kind: temperature}]}\n"
        "      - {id: sim, match: 'sim-*', sensors: [{id: t, kind: temperature}]}\n"
    )
    plant = load_plant(plant_file)
    pubs = publishers_for(plant, ["sim-1", "sim-2"])
    assert pubs == {
        "site-north": ["fan-1", "fan-2"],
        "site-south": ["chiller-1"],
        "simulator": ["sim-1", "sim-2"],
    }
    write_config(tmp_path / "broker", 1883, pubs)
    acl = (tmp_path / "broker" / "acl").read_text()
    assert "user site-north\ntopic write plantpulse/fan-1/#\ntopic write plantpulse/fan-2/#" in acl
    assert "plantpulse/sim/#" not in acl and "sim-*" not in acl
    # the simulator publishes only the fleet assets the plant declares (none: no login at all)
    assert publishers_for(plant, ["sim-1", "pump-01"])["simulator"] == ["sim-1"]
    assert "simulator" not in publishers_for(plant, ["pump-01"])


def test_the_stream_reads_and_the_publisher_writes_over_tls(tmp_path: Path, monkeypatch):
    """``plantpulse up --mqtt-tls``'s listener: with ``PLANTPULSE_MQTT_CA`` the stream's
    source and a ``Publisher`` connect over TLS, verifying the broker against the set-up's CA;
    every reading lands once."""
    port, tls_port = _free_port(), _free_port()
    conf = write_config(tmp_path / "broker", port, PUBLISHERS, tls=("127.0.0.1", tls_port))
    proc = subprocess.Popen(
        [ensure_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    monkeypatch.setenv("PLANTPULSE_MQTT_CREDENTIALS", str(tmp_path / "broker" / "credentials.json"))
    monkeypatch.setenv("PLANTPULSE_MQTT_CA", str(tmp_path / "broker" / "tls" / "ca.crt"))
    lake = Lake(tmp_path / "lake")
    try:
        wait_for_port(tls_port)
        source = MQTTSource(port=tls_port, lake_uri=lake.uri, group="tls", idle_stop_s=4.0)
        _run_while_publishing(
            source, lake, [(topic_for("pump-01", "motor_current"), _reading(k)) for k in range(5)]
        )
    finally:
        proc.terminate()
        proc.wait(10)
    assert lake.count("readings") == 5
