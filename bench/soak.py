"""Soak: the plant's own load from outside the worker, for minutes or hours, through the real
path, with every reading accounted for at the end.

Load generators run in processes of their own and make their messages on the fly at a given
rate and shape (no pre-encoded timeline): 500 assets x 20 scalar sensors at the rate's
frequency (100,000 readings/s: 10 Hz), plus 50 vibration sensors with one 1 s frame each per
second at 12.8 kHz.  Shapes as ``bench.plant``: ``one`` reading per message (the default),
``ten`` readings of a sensor per message, ``multi``: one message per asset per sample with all
its tags.  Event time is the generator's wall clock.  The path (``--via``):

- ``mqtt``: the project's Mosquitto (``plantpulse_cli.broker.write_config``: password file,
  ACLs, limits), each generator a publisher under its own login with its own assets, QoS 1,
  numbered messages (``pp-publisher``/``pp-seq``, as ``bytewax_flows.mqtt.Publisher``), written
  by a small MQTT 5 client of its own (paho's Python publisher costs ~0.3 ms a message here);
  the worker reads with the stream's ``MQTTSource``, acknowledging after durability;
- ``kafka``: librdkafka's mock cluster, hosted by the (one) generator process, keyed by asset;
  the worker reads with ``bytewax_flows.kafka.TelemetryKafkaSource``.

The worker is ``python -m bytewax.run`` of the real telemetry flow into a local lake.  Every
``--every-s`` (10 s) the bench records: offered and ingested readings, the lag, the worker's RSS,
the broker's RSS (for Kafka: the generator hosting the mock cluster), ingest -> score p50/p99 of
the scores committed in the interval (the scorer's ``latency_ms``), and score -> visible in Delta
p99 (the commit time of the file holding a score less its window's end and its latency: the
window's end is the generator's clock, so this counts the way to the worker too: an upper bound).
At the end, after the generators stop and the worker drains: every reading offered is in
``readings``, in ``dead_letter`` with a reason (shed by the breaker, out of range, ...) or
counted by the broker as dropped; ``lost`` is what is none of these (``not_ingested_at_end``
instead when the worker had not drained its backlog ``--drain-timeout-s`` after the load
stopped: still queued in the broker).

``python -m bench.soak [--minutes 10] [--rate 100000] [--shape one] [--via mqtt|kafka]``;
``--quick`` is a seconds-long run of both paths at a low rate.  JSON: ``bench/results/soak.json``
(``soak-kafka.json`` for Kafka).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import orjson
import pyarrow.parquet as pq

from bench.common import free_ports, parser, report
from bytewax_flows.mqtt_wire import encode_string, encode_varint, receive_maximum_of
from dataplane.wire import encode_frame

ROOT = Path(__file__).resolve().parents[1]
VIB_HZ = 12_800.0
TABLES = ("readings", "scores", "dead_letter", "features")


# -- the load ---------------------------------------------------------------------------------
class Load:
    """One generator's share of the plant: its assets (every ``n_gen``-th from ``index``), each
    with ``n_sensors`` scalar sensors sampled at ``hz``, and a vibration sensor on the first
    ``n_vib`` assets of the plant.  ``step(k, t_us)`` makes sample ``k``'s messages as
    ``(asset, sensor, payload, readings)``: all of them in the ``one`` and ``multi`` shapes, a
    sensor's last ten samples every tenth sample in ``ten``; the frames once a second."""

    def __init__(
        self, shape: str, index: int, n_gen: int, n_assets: int, n_sensors: int, n_vib: int
    ):
        self.shape = shape
        self.assets = [f"a{i:03d}" for i in range(n_assets) if i % n_gen == index]
        self.vib = [a for a in self.assets if int(a[1:]) < n_vib]
        self.sensors = [f"s{j:02d}" for j in range(n_sensors)]
        self.rng = np.random.default_rng(index)
        self.base = self.rng.uniform(10, 100, (len(self.assets), n_sensors))
        self.history: list[tuple[int, np.ndarray]] = []  # (t_us, values) of the last samples
        self._frame_t = np.arange(int(VIB_HZ)) / VIB_HZ

    @property
    def readings_per_sample(self) -> int:
        return len(self.assets) * len(self.sensors)

    def step(self, k: int, t_us: int, hz: float) -> list[tuple[str, str, bytes, int]]:
        values = self.base + self.rng.normal(0, 1, self.base.shape)
        out: list[tuple[str, str, bytes, int]] = []
        body: dict[str, Any]
        doc: dict[str, Any]
        if self.shape == "one":
            for a, asset in enumerate(self.assets):
                row = values[a].tolist()
                for sensor, v in zip(self.sensors, row, strict=True):
                    body = {"asset_id": asset, "sensor_id": sensor, "ts": t_us, "value": v}
                    out.append((asset, sensor, orjson.dumps(body), 1))
        elif self.shape == "multi":
            for a, asset in enumerate(self.assets):
                tags = dict(zip(self.sensors, values[a].tolist(), strict=True))
                body = {"asset_id": asset, "ts": t_us, "values": tags}
                out.append((asset, "multi", orjson.dumps(body), len(self.sensors)))
        else:  # ten: a sensor's ten samples together, every tenth sample
            self.history.append((t_us, values))
            if len(self.history) == 10:
                ts = [t for t, _ in self.history]
                stack = np.stack([v for _, v in self.history], axis=-1)  # assets x sensors x 10
                self.history = []
                for a, asset in enumerate(self.assets):
                    for j, sensor in enumerate(self.sensors):
                        doc = {"asset_id": asset, "sensor_id": sensor, "ts": ts}
                        doc["value"] = stack[a, j].tolist()
                        out.append((asset, sensor, orjson.dumps(doc), 10))
        every = max(1, round(hz))
        if k % every == every - 1:  # a second of samples done: its frames
            t0 = t_us - 1_000_000 + round(1e6 / hz)
            for asset in self.vib:
                x = np.sin(2 * np.pi * 157.0 * self._frame_t) + self.rng.normal(0, 0.3, int(VIB_HZ))
                out.append((asset, "vib", encode_frame(asset, "vib", t0, VIB_HZ, x), 0))
        return out


# -- a small MQTT 5 publisher ------------------------------------------------------------------
class RawPublisher:
    """MQTT 5, QoS 1, over one TCP connection: publishes without waiting, keeping at most the
    broker's Receive Maximum unacknowledged, reading PUBACKs as they come.  Each message
    carries ``pp-publisher`` and an increasing ``pp-seq`` (``bytewax_flows.mqtt``'s numbering),
    so the stream writes it exactly once.  A PUBACK with an error code counts as refused."""

    def __init__(self, host: str, port: int, user: str, password: str, client_id: str):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0x80 | 0x40 | 0x02  # user name, password, clean start
        var = b"\x00\x04MQTT\x05" + bytes([flags]) + (30).to_bytes(2, "big") + b"\x00"
        body = var + encode_string(client_id) + encode_string(user) + encode_string(password)
        self.sock.sendall(b"\x10" + encode_varint(len(body)) + body)
        self.buf = b""
        kind, packet = self._packet(blocking=True)
        if kind != 0x20 or packet[1] != 0:
            raise ConnectionError(f"MQTT connect refused (reason code {packet[1]:#x})")
        self.window = receive_maximum_of(packet)
        self.inflight, self.next_id, self.acked, self.refused = 0, 1, 0, 0
        self.user, self.seq = user.encode(), 0
        self.sock.setblocking(False)

    def _packet(self, blocking: bool = False) -> tuple[int, bytes]:
        """The next whole packet from the socket (type nibble, body), or (0, b"")."""
        while True:
            if len(self.buf) >= 2:
                n, i, shift = 0, 1, 0
                while i < len(self.buf):
                    b = self.buf[i]
                    n |= (b & 0x7F) << shift
                    i, shift = i + 1, shift + 7
                    if not b & 0x80:
                        break
                else:
                    i = -1
                if i > 0 and len(self.buf) >= i + n:
                    kind, body, self.buf = (
                        self.buf[0] & 0xF0,
                        self.buf[i : i + n],
                        self.buf[i + n :],
                    )
                    return kind, body
            if not blocking:
                try:
                    more = self.sock.recv(1 << 16)
                except BlockingIOError:
                    return 0, b""
            else:
                more = self.sock.recv(1 << 16)
            if not more:
                raise ConnectionError("the broker closed the connection")
            self.buf += more

    def _read_acks(self, wait_s: float) -> None:
        select.select([self.sock], [], [], wait_s)
        while True:
            kind, body = self._packet()
            if not kind:
                return
            if kind == 0x40:  # PUBACK: packet id, then a reason code when not success
                self.inflight -= 1
                if len(body) > 2 and body[2] >= 0x80:
                    self.refused += 1
                else:
                    self.acked += 1

    def publish(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Send ``(topic, payload)`` pairs, as many at a time as the window allows."""
        out: list[bytes] = []
        for topic, payload in messages:
            while self.inflight >= self.window:
                if out:
                    self._send(b"".join(out))
                    out = []
                self._read_acks(0.05)
            self.seq = max(time.time_ns() // 1000, self.seq + 1)
            props = b"\x26" + encode_string(b"pp-publisher") + encode_string(self.user)
            props += b"\x26" + encode_string(b"pp-seq") + encode_string(str(self.seq))
            var = (
                encode_string(topic)
                + self.next_id.to_bytes(2, "big")
                + encode_varint(len(props))
                + props
            )
            out.append(b"\x32" + encode_varint(len(var) + len(payload)) + var + payload)
            self.next_id = self.next_id % 65_535 + 1
            self.inflight += 1
        if out:
            self._send(b"".join(out))
        self._read_acks(0)

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
                view = view[sent:]
            except BlockingIOError:
                select.select([], [self.sock], [], 0.05)
                self._read_acks(0)

    def drain(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.inflight and time.monotonic() < deadline:
            self._read_acks(0.05)

    def close(self) -> None:
        self.sock.close()


# -- a generator process ----------------------------------------------------------------------
def generate(cfg: dict[str, Any]) -> None:
    """One generator: makes and sends its share at its rate until ``seconds`` have passed,
    writing its counts to ``status`` every second (and at the end, ``done``)."""
    load = Load(cfg["shape"], cfg["index"], cfg["n_gen"], cfg["assets"], cfg["sensors"], cfg["vib"])
    hz = cfg["rate"] / (cfg["assets"] * cfg["sensors"])
    status = Path(cfg["status"])
    counts = {"messages": 0, "readings": 0, "frames": 0, "behind_s": 0.0, "refused": 0}
    send = _mqtt_sender(cfg) if cfg["via"] == "mqtt" else _kafka_sender(cfg, status)
    t0 = time.time()
    k, last_status = 0, 0.0
    while True:
        due = t0 + k / hz
        now = time.time()
        if due > now:
            time.sleep(due - now)
        elif now - due > counts["behind_s"]:
            counts["behind_s"] = now - due  # how far the generator fell behind its schedule
        if due - t0 >= cfg["seconds"] or now - t0 >= cfg["seconds"]:
            break  # the schedule's end, or its time (a generator behind offers less, said)
        batch = load.step(k, round(due * 1e6), hz)
        counts["refused"] = send(batch)
        counts["messages"] += len(batch)
        counts["readings"] += sum(n for *_, n in batch)
        counts["frames"] += sum(1 for *_, n in batch if n == 0)
        k += 1
        if time.time() - last_status >= 1.0:
            last_status = time.time()
            _write_json(status, {**counts, "t": last_status - t0})
    counts["refused"] = send(None)  # flush, wait for the acknowledgements
    _write_json(status, {**counts, "t": time.time() - t0, "done": True})
    if cfg["via"] == "kafka":  # the mock cluster lives here: keep it up for the worker
        while not Path(cfg["stop"]).exists():
            time.sleep(0.2)


def _mqtt_sender(cfg: dict[str, Any]):
    pub = RawPublisher("127.0.0.1", cfg["port"], cfg["user"], cfg["password"], cfg["user"])

    def send(batch: list[tuple[str, str, bytes, int]] | None) -> int:
        if batch is None:
            pub.drain()
            pub.close()
        else:
            sensor_topic = {"multi": "multi"}
            pub.publish(
                [
                    (f"plantpulse/{a}/{sensor_topic.get(s, s)}".encode(), payload)
                    for a, s, payload, _ in batch
                ]
            )
        return pub.refused

    return send


def _kafka_sender(cfg: dict[str, Any], status: Path):
    from confluent_kafka import Producer

    from bytewax_flows.kafka import DEFAULT_TOPIC, KafkaSettings, message_key, producer_config

    settings = KafkaSettings(
        ("unused:9092",), config={"test.mock.num.brokers": "1", "linger.ms": "5"}
    )
    producer = Producer(producer_config(settings))
    broker = next(iter(producer.list_topics(timeout=10).brokers.values()))
    failed, started = [0], [False]

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failed[0] += 1

    def send(batch: list[tuple[str, str, bytes, int]] | None) -> int:
        if batch is None:
            producer.flush(60)
            return failed[0]
        for asset, _, payload, _ in batch:
            while True:
                try:
                    producer.produce(
                        DEFAULT_TOPIC, payload, key=message_key(asset), on_delivery=delivered
                    )
                    break
                except BufferError:  # librdkafka's queue is full: let it send
                    producer.poll(0.01)
        producer.poll(0)
        if not started[0]:  # the topic exists now (the mock cluster made it): the worker may start
            producer.flush(10)
            Path(cfg["bootstrap"]).write_text(f"{broker.host}:{broker.port}")
            started[0] = True
        return failed[0]

    return send


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


# -- the worker -------------------------------------------------------------------------------
def worker_flow(
    via: str,
    lake_uri: str,
    endpoint: str,
    partitions: int = 1,
    idle_stop_s: float = 30.0,
    clients: int = 16,
) -> Any:
    """The real telemetry flow (``bytewax.run`` target) over MQTT (``endpoint``: the broker's
    port; ``partitions`` clients, each with the largest receive window, acknowledging after
    durability) or Kafka (``endpoint``: the mock cluster's bootstrap address)."""
    from bench.plant import BenchPlant
    from bytewax_flows.sinks import DeltaSink
    from bytewax_flows.telemetry import build_flow
    from dataplane.step import Context

    if via == "mqtt":
        from bytewax_flows.mqtt import MQTTSource

        source: Any = MQTTSource(
            "127.0.0.1",
            int(endpoint),
            lake_uri=lake_uri,
            receive_maximum=65_535,
            partitions=partitions,
            clients=clients,
            idle_stop_s=idle_stop_s,
            writers=1,
            ack_check_s=0.5,
        )
    else:
        from bytewax_flows.kafka import KafkaSettings, TelemetryKafkaSource

        source = TelemetryKafkaSource(KafkaSettings((endpoint,), batch_size=4096))
    # commits by size or age (1 s: score -> visible within the 2 s target) and at every epoch;
    # the MQTT source's acknowledgements wait for the durability marks of a snapshot
    # one writer per table: one process (a writer per shard, the default, is for spreading the
    # tables over processes; here it made four commits per table per epoch)
    sink = DeltaSink(lake_uri, max_age_s=1.0, mark_every_s=1.0, writers=1)
    return build_flow(source, sink, Context(plant=BenchPlant()))


# -- measuring --------------------------------------------------------------------------------
def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (the figure that the machine's other
    load changes least)."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class LakeWatch:
    """Reads the lake's Delta logs as they grow (local lake): rows added per table, and each
    new ``scores`` file's latencies and visibility."""

    def __init__(self, lake: Path):
        self.lake = lake
        self.next_version = dict.fromkeys(TABLES, 0)
        self.rows = dict.fromkeys(TABLES, 0)

    def poll(self) -> tuple[list[float], list[float]]:
        """New commits since the last poll: (latency_ms, visible_ms) of the new scores."""
        latency: list[float] = []
        visible: list[float] = []
        for table in TABLES:
            log = self.lake / table / "_delta_log"
            while True:
                path = log / f"{self.next_version[table]:020d}.json"
                try:
                    actions = [json.loads(x) for x in path.read_text().splitlines() if x]
                except (FileNotFoundError, ValueError):
                    break  # not there yet (or being written)
                self.next_version[table] += 1
                when = next((a["commitInfo"]["timestamp"] for a in actions if "commitInfo" in a), 0)
                for a in actions:
                    if "add" not in a:
                        continue
                    self.rows[table] += json.loads(a["add"].get("stats") or "{}").get(
                        "numRecords", 0
                    )
                    if table == "scores":
                        t = pq.read_table(
                            self.lake / table / unquote(a["add"]["path"]),
                            columns=["window_end", "latency_ms"],
                        )
                        lat = np.asarray(t.column("latency_ms"), float)
                        end_ms = np.asarray(t.column("window_end").cast("int64"), float) / 1e3
                        latency += lat.tolist()
                        visible += (float(when) - end_ms - lat).tolist()
        return latency, visible


def _accounting(lake_dir: Path, shape: str, n_sensors: int) -> dict[str, float]:
    """Every reading of the lake's ``readings`` and ``dead_letter`` (by reason): a dead letter
    counts the readings of its raw payload (a message, one rejected reading or tag); the
    broker's ``dropped_by_broker`` rows count the messages it dropped."""
    from dataplane.wire import Message, decode_batch
    from lake import Lake

    lake = Lake(str(lake_dir))
    out = {"landed": float(lake.count("readings")) if lake.exists("readings") else 0.0}
    dead: dict[str, float] = {}
    if lake.exists("dead_letter"):
        t = lake.read_arrow("dead_letter", columns=["reason", "raw", "detail"])
        per_msg = {"one": 1, "ten": 10}.get(shape, n_sensors)
        for reason, raw, detail in zip(
            t.column("reason").to_pylist(),
            t.column("raw").to_pylist(),
            t.column("detail").to_pylist(),
            strict=True,
        ):
            if reason == "dropped_by_broker":
                n = float(detail.split()[3]) * per_msg  # "the broker dropped N QoS 1 ..."
            elif raw and raw[:1] == b"{":
                n = float(decode_batch([Message("dl", 0, 0, raw)]).n_readings or per_msg)
            else:
                n = 0.0  # a frame, or not a reading
            dead[reason] = dead.get(reason, 0.0) + n
    out["dead_lettered"] = sum(dead.values())
    out["dead_letter_readings_by_reason"] = dead  # type: ignore[assignment]
    return out


def run(args: Any, via: str, tmp: Path) -> dict[str, Any]:
    """One soak through ``via``: broker, generators, worker, measurements, accounting."""
    seconds = args.seconds
    lake_dir = tmp / f"lake-{via}"
    lake_dir.mkdir()
    n_gen = 1 if via == "kafka" else args.generators
    gen_cfg: dict[str, Any] = {
        "via": via,
        "shape": args.shape,
        "n_gen": n_gen,
        "assets": args.assets,
        "sensors": args.sensors,
        "vib": args.vib,
        "rate": args.rate,  # of the whole plant: each generator sends its assets' share
        "seconds": seconds,
        "stop": str(tmp / f"{via}.stop"),
    }
    procs: list[subprocess.Popen] = []
    broker_pid: int | None = None
    env = dict(os.environ)
    try:
        if via == "mqtt":
            from bytewax_flows.mqtt import credentials
            from plantpulse_cli.broker import ensure_mosquitto, wait_for_port, write_config

            port = free_ports(1)[0]
            assets = [f"a{i:03d}" for i in range(args.assets)]
            publishers = {f"gen-{g}": assets[g::n_gen] for g in range(n_gen)}
            conf = write_config(tmp / "mosquitto", port, publishers)
            broker = subprocess.Popen(
                [ensure_mosquitto(), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            procs.append(broker)
            broker_pid = broker.pid
            wait_for_port(port)
            env["PLANTPULSE_MQTT_CREDENTIALS"] = str(tmp / "mosquitto" / "credentials.json")
            creds = {
                g: credentials(
                    g, {"PLANTPULSE_MQTT_CREDENTIALS": env["PLANTPULSE_MQTT_CREDENTIALS"]}
                )
                for g in publishers
            }
            endpoint = str(port)
        gens = []
        for g in range(n_gen):
            cfg = {**gen_cfg, "index": g, "status": str(tmp / f"{via}-gen-{g}.json")}
            if via == "mqtt":
                user, password = creds[f"gen-{g}"]  # type: ignore[misc]
                cfg |= {"port": port, "user": user, "password": password}
            else:
                cfg["bootstrap"] = str(tmp / "kafka.bootstrap")
            gens.append(cfg)
        worker_cmd = lambda ep: [  # noqa: E731
            sys.executable,
            "-m",
            "bytewax.run",
            f"bench.soak:worker_flow({via!r}, {str(lake_dir)!r}, {ep!r}, {args.partitions}, "
            f"{args.idle_stop_s}, {args.clients})",
            "-s",
            str(args.epoch_s),
        ]
        worker_log = open(tmp / f"worker-{via}.log", "wb")  # noqa: SIM115 - the worker's
        worker = None
        if via == "mqtt":  # the worker subscribes first: nothing is published into the void
            worker = subprocess.Popen(
                worker_cmd(endpoint),
                cwd=ROOT,
                env=env,
                start_new_session=True,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
            procs.append(worker)
            time.sleep(args.worker_start_s)
        gen_procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.soak", "--generate", json.dumps(cfg)],
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
            for cfg in gens
        ]
        procs += gen_procs
        if via == "kafka":
            bootstrap = Path(gens[0]["bootstrap"])
            deadline = time.monotonic() + 60
            while not bootstrap.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the Kafka generator did not start its mock cluster")
                time.sleep(0.1)
            broker_pid = gen_procs[0].pid
            worker = subprocess.Popen(
                worker_cmd(bootstrap.read_text()),
                cwd=ROOT,
                env=env,
                start_new_session=True,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
            )
            procs.append(worker)
        assert worker is not None
        return _measure(args, via, lake_dir, gens, gen_procs, worker, broker_pid, tmp)
    finally:
        Path(gen_cfg["stop"]).touch()
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def _offered(gens: list[dict[str, Any]]) -> dict[str, float]:
    total = {"messages": 0.0, "readings": 0.0, "frames": 0.0, "behind_s": 0.0, "refused": 0.0}
    total["t"] = 0.0  # how long the slowest generator took (longer than asked when behind)
    done = True
    for cfg in gens:
        try:
            s = json.loads(Path(cfg["status"]).read_text())
        except (OSError, ValueError):
            done = False
            continue
        for k in total:
            total[k] = max(total[k], s[k]) if k in ("behind_s", "t") else total[k] + s[k]
        done &= bool(s.get("done"))
    total["done"] = float(done)
    return total


def _measure(
    args: Any,
    via: str,
    lake_dir: Path,
    gens: list[dict[str, Any]],
    gen_procs: list[subprocess.Popen],
    worker: subprocess.Popen,
    broker_pid: int | None,
    tmp: Path,
) -> dict[str, Any]:
    watch = LakeWatch(lake_dir)
    timeline: list[dict[str, float]] = []
    all_latency: list[float] = []
    all_visible: list[float] = []
    start = time.time()
    next_tick = start + args.every_s
    drained_since: float | None = None
    last_seen, drained = -1.0, False
    while True:
        time.sleep(max(0.0, next_tick - time.time()))
        next_tick += args.every_s
        if worker.poll() is not None:
            if worker.returncode == 0 and _offered(gens)["done"]:
                # the worker stops once idle: the load is over and the broker holds nothing
                # more for it (what the broker dropped is counted apart)
                latency, visible = watch.poll()
                all_latency += latency
                all_visible += visible
                drained = True
                break
            tail = (tmp / f"worker-{via}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the worker exited with {worker.returncode}:\n{tail}")
        latency, visible = watch.poll()
        all_latency += latency
        all_visible += visible
        offered = _offered(gens)
        ingested = float(watch.rows["readings"])
        row = {
            "t_s": time.time() - start,
            "offered_readings": offered["readings"],
            "ingested_readings": ingested,
            "lag_readings": offered["readings"] - ingested,
            "worker_rss_mb": _rss_mb(worker.pid),
            "worker_cpu_s": _cpu_s(worker.pid),
            "load_average_1m": os.getloadavg()[0],
            "broker_rss_mb": _rss_mb(broker_pid),
            "ingest_to_score_p50_ms": _pct(latency, 50),
            "ingest_to_score_p99_ms": _pct(latency, 99),
            "score_to_visible_p99_ms": _pct(visible, 99),
            "dead_letter_rows": float(watch.rows["dead_letter"]),
            "generator_behind_s": offered["behind_s"],
        }
        timeline.append(row)
        print(json.dumps({k: round(v, 1) for k, v in row.items()}), flush=True)
        if offered["done"] and all(p.poll() is not None or via == "kafka" for p in gen_procs):
            seen = ingested + watch.rows["dead_letter"]
            if seen != last_seen:
                last_seen, drained_since = seen, time.time()
            elif drained_since and time.time() - drained_since >= args.drain_s:
                drained = True  # nothing new for a while
                break
            if time.time() - start > args.seconds + args.drain_timeout_s:
                break  # still ingesting: what is left waits in the broker, not counted lost
    if via == "mqtt":  # the source stops itself once its input is idle; give it the time
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGTERM)
    else:  # everything is committed (drained): stop the worker, then the mock cluster
        os.killpg(worker.pid, signal.SIGINT)
        worker.wait(60)
    Path(gens[0]["stop"]).touch()
    watch.poll()
    offered = _offered(gens)
    acct = _accounting(lake_dir, args.shape, args.sensors)
    rss = [r["worker_rss_mb"] for r in timeline if np.isfinite(r["worker_rss_mb"])]
    third = max(1, len(rss) // 3)
    during = [r for r in timeline if r["t_s"] <= args.seconds]
    metrics = {
        "duration_s": float(args.seconds),
        # over the time the generators took: a generator that fell behind offered less per s
        "offered_readings_per_s": offered["readings"] / max(offered["t"], args.seconds),
        "ingested_readings_per_s": acct["landed"] / max(offered["t"], args.seconds),
        "ingested_share_of_offered": acct["landed"] / max(offered["readings"], 1.0),
        # what the worker did with the CPU it got (the machine is shared)
        "worker_cpu_s": max((r["worker_cpu_s"] for r in timeline), default=float("nan")),
        "ingested_readings_per_worker_cpu_s": acct["landed"]
        / max((r["worker_cpu_s"] for r in timeline), default=float("nan")),
        "load_average_max": max((r["load_average_1m"] for r in timeline), default=float("nan")),
        "worker_rss_mb_max": max(rss) if rss else float("nan"),
        "worker_rss_growth_ratio": float(np.mean(rss[-third:]) / np.mean(rss[:third]))
        if rss
        else float("nan"),
        "broker_rss_mb_max": max(
            (r["broker_rss_mb"] for r in timeline if np.isfinite(r["broker_rss_mb"])), default=0.0
        ),
        "ingest_to_score_p50_ms": _pct(all_latency, 50),
        "ingest_to_score_p99_ms": _pct(all_latency, 99),
        "score_to_visible_p99_ms": _pct(all_visible, 99),
        "lag_readings_max_while_offered": max((r["lag_readings"] for r in during), default=0.0),
        "generator_behind_s_max": offered["behind_s"],
        "offered_readings": offered["readings"],
        "landed_readings": acct["landed"],
        "dead_lettered_readings": acct["dead_lettered"],
        "refused_by_broker_messages": offered["refused"],
        "drained": float(drained),
    }
    # once drained, what is neither landed nor dead-lettered is lost; before, it may still be
    # queued in the broker (the worker did not keep up): said apart, not called lost
    unaccounted = offered["readings"] - acct["landed"] - acct["dead_lettered"]
    metrics["lost" if drained else "not_ingested_at_end"] = unaccounted
    return {
        "metrics": metrics,
        "timeline": timeline,
        "dead_letter_readings_by_reason": acct["dead_letter_readings_by_reason"],
        "frames_offered": offered["frames"],
        "vibration_features": watch.rows["features"],
    }


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


TARGETS = {
    "ingested_share_of_offered": ">= 0.99",
    "worker_rss_mb_max": "<= 1536",
    "worker_rss_growth_ratio": "<= 1.10",
    "ingest_to_score_p99_ms": "<= 50",
    "score_to_visible_p99_ms": "<= 2000",
    "lost": "<= 0",
}


def main(argv: list[str] | None = None) -> dict:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--generate"]:
        generate(json.loads(argv[1]))
        return {}
    p = parser("soak", __doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long the load is offered")
    p.add_argument("--rate", type=float, default=100_000.0, help="scalar readings per second")
    p.add_argument("--shape", default="one", choices=("one", "ten", "multi"))
    p.add_argument("--via", default="mqtt", help="mqtt, kafka, or both (mqtt,kafka)")
    p.add_argument("--generators", type=int, default=2, help="MQTT generator processes")
    # a client holds at most 65,535 unacknowledged messages (MQTT 5 Receive Maximum) and the
    # stream acknowledges after the epoch's snapshot: one client with 1 s epochs takes some
    # 40,000 messages/s, more than one worker processes here.  More clients (their messages
    # in one batch) lift that bound, but the broker deals a sensor's messages round the
    # shared subscription's clients, so every series then arrives out of order in a batch,
    # which the event-time checks take one series at a time
    p.add_argument("--partitions", type=int, default=1, help="MQTT source partitions")
    p.add_argument("--clients", type=int, default=1, help="MQTT connections per partition")
    p.add_argument("--every-s", type=float, default=10.0, help="measurement interval")
    p.add_argument("--drain-timeout-s", type=float, default=300.0, help="wait to drain, s")
    p.add_argument("--epoch-s", type=int, default=1, help="the worker's epoch, s (bytewax -s)")
    a = p.parse_args(argv)
    a.assets, a.sensors, a.vib = (20, 5, 2) if a.quick else (500, 20, 50)
    a.worker_start_s, a.idle_stop_s = 8.0, 30.0  # the MQTT worker: subscribed; idle -> stops
    if a.quick:
        a.rate, a.minutes, a.every_s = min(a.rate, 2_000.0), 0.25, 3.0
        a.via, a.worker_start_s, a.idle_stop_s = "mqtt,kafka", 6.0, 15.0
    a.seconds = a.minutes * 60
    a.drain_s = 2 * a.every_s
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        for via in a.via.split(","):
            print(f"soak via {via}: {a.rate:,.0f} readings/s for {a.seconds:.0f} s", flush=True)
            load_before = os.getloadavg()
            results[via] = run(a, via, Path(tmp))
            results[via]["load_average_before"] = load_before
            results[via]["load_average_after"] = os.getloadavg()
    first = next(iter(results))
    extra = {
        "via": list(results),
        "rate": a.rate,
        "shape": a.shape,
        "assets": a.assets,
        "scalar_sensors_per_asset": a.sensors,
        "vibration_sensors": a.vib,
        "runs": {k: {x: y for x, y in v.items() if x != "metrics"} for k, v in results.items()},
    }
    metrics = dict(results[first]["metrics"])
    for via in list(results)[1:]:
        metrics |= {f"{via}_{k}": v for k, v in results[via]["metrics"].items()}
    targets = dict(TARGETS)
    for via in list(results)[1:]:
        targets |= {f"{via}_{k}": v for k, v in TARGETS.items()}
    out = a.out
    if out is None and first == "kafka" and not a.quick:
        out = str(Path(__file__).resolve().parent / "results" / "soak-kafka.json")
    return report("soak", metrics, targets, quick=a.quick, out=out, extra=extra)


if __name__ == "__main__":
    main()
