"""Reliability over MQTT: the real telemetry flow (``bytewax_flows.mqtt:mqtt_flow``) fed by a
real Mosquitto, configured as ``plantpulse up --mqtt`` configures it (authentication, ACLs,
queue limits), under faults and load.

- **kill matrix**: a cluster of 2 worker processes (one Bytewax worker each, shared
  subscription) with recovery, while a numbered publisher keeps sending; at random points after
  the cluster has made progress, one process is SIGKILLed (the other falls with the cluster and
  is killed too) and both are restarted.  At the end every published reading must be in
  ``readings`` exactly once (or, counted apart, in ``dead_letter`` as ``late``: a shared
  subscription keeps no order between the two workers).  The publisher's event time runs at
  wall-clock speed, so the contracts' allowed lateness means what it means for real sensors.
- **burst**: the demo fleet's traffic (3 pumps, 4 scalar batches and one 48 KB vibration frame
  per pump-second) at 10x for 60 s into one worker; peak RSS (VmHWM) of the worker and of the
  broker, and every message accounted for: accepted (a ``features`` row per message), shed
  (``dead_letter``), or dropped by the broker under its queue limits (``dropped_by_broker``).
- **poison**: hostile messages (deep nesting, huge integers, a lone surrogate, broken JSON),
  then valid ones into the 2-process cluster, a SIGKILL of one process in between; every valid
  reading must land and every hostile message be dead-lettered.

- **fuzz**: generated hostile payloads (valid messages of every wire shape, mutated: bytes
  flipped, cut, duplicated, fields retyped, numbers blown up, nesting deepened, ids with control
  characters and surrogates) - 100,000 through ``dataplane.wire.decode_batch`` and 5,000 through
  the real Bytewax flow into a Delta lake; counted: crashes, inputs that vanish (neither a row
  nor a dead letter) and dead letters without a reason.

``python -m bench.reliability [--quick]`` (quick: 2 kill points, a 10 s burst, 50 valid
messages after the poison, 5,000 / 500 fuzzed payloads).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import RESULTS, free_ports, parser, report, start_cluster
from bytewax_flows.mqtt import Publisher, credentials, topic_for
from bytewax_flows.payloads import encode_frame, encode_scalars
from lake import Lake
from physics.simulator import default_fleet
from plantpulse_cli.broker import ensure_mosquitto, wait_for_port, write_config

log = logging.getLogger(__name__)

T0 = 1_767_225_600_000_000
ASSETS = ["pump-01", "pump-02", "pump-03"]
SCALARS = ["motor_current", "bearing_temp", "discharge_pressure"]
GIB = 2**30


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Rig:
    """A broker started as the set-up configures it, a lake and a state directory, all in a
    temporary directory; worker processes running ``mqtt_flow`` against them."""

    def __init__(self, root: Path, group: str, processes: int = 1):
        self.root, self.group, self.processes = root, group, processes
        self.port = free_ports(1)[0]
        conf = write_config(root / "mosquitto", self.port, {"simulator": ASSETS + ["pump-99"]})
        self.broker = subprocess.Popen(
            [ensure_mosquitto(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        self.lake = Lake(root / "lake")
        self.lake.create_tables()
        self.recovery = root / "recovery"
        self.recovery.mkdir()
        from bytewax.recovery import init_db_dir

        init_db_dir(self.recovery, processes)
        self.env = {
            **os.environ,
            "PLANTPULSE_HOME": str(root),
            "PLANTPULSE_LAKE": self.lake.uri,
            "PLANTPULSE_MQTT_CREDENTIALS": str(root / "mosquitto" / "credentials.json"),
        }
        os.environ["PLANTPULSE_MQTT_CREDENTIALS"] = self.env["PLANTPULSE_MQTT_CREDENTIALS"]
        from models.registry import client  # the workers share the store: create it once

        client(f"sqlite:///{root / 'mlflow.db'}").search_experiments(max_results=1)
        self.env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        self.workers: list[subprocess.Popen[bytes]] = []
        self.starts = 0
        self._precreate_sessions()

    def _precreate_sessions(self) -> None:
        """Each worker's persistent session exists before the first message is published."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        for i in range(self.processes):
            c = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=f"plantpulse-{self.group}-w{i}",
                protocol=mqtt.MQTTv5,
            )
            auth = credentials("worker", self.env)
            if auth is None:
                raise RuntimeError(f"no worker login in {self.env['PLANTPULSE_MQTT_CREDENTIALS']}")
            c.username_pw_set(*auth)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            c.connect("127.0.0.1", self.port, clean_start=True, properties=props)
            c.loop_start()
            c.subscribe(f"$share/{self.group}/plantpulse/#", qos=1)
            time.sleep(0.3)
            c.loop_stop()
            c.disconnect()

    def start(self) -> None:
        flow = (
            f"bytewax_flows.mqtt:mqtt_flow('127.0.0.1', {self.port}, {self.group!r}, "
            f"{self.processes})"
        )
        self.workers = start_cluster(
            flow, self.processes, self.env, recovery=self.recovery, log=self.root / "workers.log"
        )
        self.starts += 1

    def kill(self, which: int | None = None) -> None:
        """SIGKILL one worker process (default: all), then the rest of the cluster."""
        victims = self.workers if which is None else [self.workers[which]]
        for p in victims + self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(30)

    def died(self) -> bool:
        return any(p.poll() is not None for p in self.workers)

    def close(self) -> None:
        self.kill()
        self.broker.terminate()
        self.broker.wait(10)


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def _count(lake: Lake, table: str) -> int:
    return lake.count(table) if lake.exists(table) else 0


def scalar_message(asset: str, sensor: str, k: int, per_msg: int, rate_hz: float = 0.1) -> bytes:
    """Message ``k`` of a publisher sending ``rate_hz`` messages a second: ``per_msg``
    readings spread over its 1 / ``rate_hz`` s of event time (event time runs as fast as the
    wall clock, so the allowed lateness means as much as it does for a real sensor)."""
    span_us = round(1e6 / rate_hz)
    ts = T0 + k * span_us + np.arange(per_msg) * (span_us // per_msg)
    return encode_scalars(asset, sensor, ts, 20.0 + np.sin(np.arange(per_msg) + k))


def kill_matrix(
    root: Path, n_kills: int, rate_hz: float, seed: int = 7
) -> tuple[dict[str, float], list[float]]:
    """``n_kills`` SIGKILLs of a 2-process cluster at random points while a publisher sends
    ``rate_hz`` messages of 10 readings a second; then lost and duplicated readings."""
    rng = random.Random(seed)
    rig = Rig(root, "killbench", processes=2)
    per_msg, sent = 10, [0]
    stop = threading.Event()
    pub = Publisher("simulator", port=rig.port)

    def send() -> None:
        k = 0
        while not stop.is_set():
            asset, sensor = ASSETS[k % 3], SCALARS[(k // 3) % 3]
            pub.publish(
                topic_for(asset, sensor), scalar_message(asset, sensor, k, per_msg, rate_hz)
            ).wait_for_publish(30)
            k += 1
            sent[0] = k
            time.sleep(1 / rate_hz)

    sender = threading.Thread(target=send, daemon=True)
    t0 = time.monotonic()
    kills, crashes, points = 0, 0, []
    try:
        rig.start()
        sender.start()
        while kills < n_kills:
            before = _count(rig.lake, "readings")

            # a kill point: a random moment after the restarted cluster has written something
            def progressed(b: int = before) -> bool:
                return _count(rig.lake, "readings") > b or rig.died()

            if not _wait(progressed, 300):
                raise RuntimeError("the cluster made no progress in 300 s")
            if rig.died():
                crashes += 1
            else:
                delay = rng.uniform(0.0, 4.0)
                time.sleep(delay)
                rig.kill(rng.randrange(2))
                kills += 1
                points.append(round(delay, 2))
                log.info("kill %d/%d, %.2f s after progress", kills, n_kills, delay)
            rig.kill()
            rig.start()
        stop.set()
        sender.join(60)
        expected = sent[0] * per_msg

        def late() -> int:
            if not _count(rig.lake, "dead_letter"):
                return 0
            return int((rig.lake.read("dead_letter", columns=["reason"])["reason"] == "late").sum())

        # every reading is in the lake (or dead-lettered as late), not one more
        _wait(lambda: _count(rig.lake, "readings") + late() >= expected, 300)
        time.sleep(3)  # a duplicate would have landed by now
        rows = rig.lake.read("readings", columns=["asset_id", "sensor_id", "ts"])
        unique = rows.drop_duplicates()
        # readings set aside one by one (late: a shared subscription does not keep one sensor's
        # messages in order across the two workers) are accounted for, not lost
        dead, n_late = _count(rig.lake, "dead_letter"), late()
    finally:
        stop.set()
        pub.close()
        rig.close()
    return {
        "kill_points": float(kills),
        "worker_crashes_unprovoked": float(crashes),
        "kill_readings_published": float(expected),
        "kill_readings_lost": float(max(0, expected - len(unique) - n_late)),
        "kill_readings_late": float(n_late),
        "kill_readings_duplicated": float(len(rows) - len(unique)),
        "kill_dead_letters": float(dead),
        "kill_matrix_s": time.monotonic() - t0,
    }, points


def burst(root: Path, seconds: float, factor: int = 10) -> dict[str, float]:
    """The demo fleet at ``factor`` times real time for ``seconds`` into one worker."""
    rig = Rig(root, "burstbench", processes=1)
    sim = default_fleet(3, start_us=T0)
    pool = {(a, k): sim.chunk(a, k) for a in ASSETS for k in range(10)}  # reused, re-stamped
    pub = Publisher("simulator", port=rig.port)
    published = 0
    peak_worker = peak_broker = 0
    try:
        rig.start()
        time.sleep(5)  # the worker imports and subscribes (its session queues meanwhile)
        t0 = time.monotonic()
        second = 0
        while time.monotonic() - t0 < seconds:
            for j in range(factor):
                k = second * factor + j
                for a in ASSETS:
                    chunk = pool[(a, k % 10)]
                    shift = (k - k % 10) * 1_000_000
                    for sid, (ts, v) in chunk.scalars.items():
                        pub.publish(topic_for(a, sid), encode_scalars(a, sid, ts + shift, v))
                        published += 1
                    for sid, t_start, rate, x in chunk.frames:
                        pub.publish(
                            topic_for(a, sid), encode_frame(a, sid, t_start + shift, rate, x)
                        )
                        published += 1
            second += 1
            peak_worker = max(peak_worker, peak_rss(rig.workers[0].pid))
            peak_broker = max(peak_broker, peak_rss(rig.broker.pid))
            time.sleep(max(0.0, t0 + second - time.monotonic()))
        burst_s = time.monotonic() - t0

        def accounted() -> int:
            feats = _count(rig.lake, "features")
            dead = (
                rig.lake.read("dead_letter", columns=["reason", "detail"])
                if rig.lake.exists("dead_letter")
                else None
            )
            if dead is None or dead.empty:
                return feats
            dropped = (
                dead[dead["reason"] == "dropped_by_broker"]["detail"]
                .str.extract(r"dropped (\d+) ")[0]
                .astype(float)
                .sum()
            )
            return feats + int((dead["reason"] != "dropped_by_broker").sum()) + int(dropped)

        _wait(lambda: accounted() >= published or rig.died(), 600)
        time.sleep(3)
        peak_worker = max(peak_worker, peak_rss(rig.workers[0].pid))
        peak_broker = max(peak_broker, peak_rss(rig.broker.pid))
        dead = rig.lake.read("dead_letter", columns=["reason", "detail"])
        shed = int((dead["reason"] == "shed").sum())
        dropped = (
            dead[dead["reason"] == "dropped_by_broker"]["detail"]
            .str.extract(r"dropped (\d+) ")[0]
            .astype(float)
            .sum()
        )
        worker_alive = not rig.died()
        total = accounted()
    finally:
        pub.close()
        rig.close()
    return {
        "burst_factor": float(factor),
        "burst_s": burst_s,
        "burst_messages_published": float(published),
        "burst_messages_per_s": published / burst_s,
        "burst_shed": float(shed),
        "burst_dropped_by_broker": float(dropped),
        "burst_unaccounted": float(published - total),
        "burst_worker_alive": float(worker_alive),
        "burst_worker_peak_rss_gib": peak_worker / GIB,
        "burst_broker_peak_rss_gib": peak_broker / GIB,
    }


POISON = {
    "deep_nesting": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "huge_integer": (
        b'{"asset_id": "pump-01", "sensor_id": "motor_current", "ts": ['
        + b"9" * 5000
        + b'], "value": [1.0]}'
    ),
    "float_overflow": (
        b'{"asset_id": "pump-01", "sensor_id": "motor_current", "ts": ['
        + str(T0).encode()
        + b'], "value": [1'
        + b"0" * 400
        + b"]}"
    ),
    "lone_surrogate": (
        b'{"asset_id": "pump-\\udc80", "sensor_id": "motor_current", "ts": ['
        + str(T0).encode()
        + b'], "value": [1.0]}'
    ),
    "broken_json": b'{"asset_id": "pump-01", ',
}


def poison(root: Path, n_valid: int, processes: int = 2) -> dict[str, float]:
    """Each hostile message, then ``n_valid`` valid ones with a SIGKILL of one process of the
    cluster among them (the rest fall with it); the cluster is restarted whenever it is down.
    Every valid reading must land."""
    rig = Rig(root, "poisonbench", processes=processes)
    pub = Publisher("simulator", port=rig.port)
    crashes = 0
    try:
        rig.start()
        for body in POISON.values():
            pub.publish(topic_for("pump-01", "motor_current"), body).wait_for_publish(30)
        for k in range(n_valid):
            valid = scalar_message("pump-02", "motor_current", k, 1, rate_hz=100)
            pub.publish(topic_for("pump-02", "motor_current"), valid).wait_for_publish(30)
            if k == n_valid // 2:
                _wait(lambda: _count(rig.lake, "readings") > 0 or rig.died(), 120)
                rig.kill(processes - 1)
                rig.start()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and _count(rig.lake, "readings") < n_valid:
            if rig.died():
                crashes += 1
                rig.kill()
                rig.start()
            time.sleep(1)
        landed = rig.lake.read("readings", columns=["ts"]) if rig.lake.exists("readings") else None
        n_landed = 0 if landed is None else int(landed["ts"].nunique())
        dead = (
            rig.lake.read("dead_letter", columns=["reason"])
            if rig.lake.exists("dead_letter")
            else None
        )
        n_dead = 0 if dead is None else len(dead)
    finally:
        pub.close()
        rig.close()
    return {
        "poison_messages": float(len(POISON)),
        "poison_dead_lettered": float(n_dead),
        "poison_worker_crashes": float(crashes),
        "poison_valid_published": float(n_valid),
        "poison_valid_landed": float(n_landed),
    }


TARGETS = {
    "fuzz_decode_crashes": "<= 0",
    "fuzz_decode_vanished": "<= 0",
    "fuzz_flow_crashes": "<= 0",
    "fuzz_flow_vanished": "<= 0",
    "fuzz_flow_rows_differing_from_core": "<= 0",
    "fuzz_dead_letters_without_reason": "<= 0",
    "kill_points": ">= 20",
    "kill_readings_lost": "<= 0",
    "kill_readings_duplicated": "<= 0",
    "burst_unaccounted": "<= 0",
    "burst_worker_peak_rss_gib": "<= 1",
    "burst_broker_peak_rss_gib": "<= 1",
    "poison_worker_crashes": "<= 0",
    "poison_valid_landed": ">= 200",
}


def _fuzz_payloads(n: int, seed: int = 7) -> list[bytes]:
    """``n`` hostile payloads: mutations of valid messages of every wire shape."""
    import json

    from dataplane.wire import encode_arrow, encode_multi

    rng = random.Random(seed)
    t = T0
    valid = [
        encode_scalars("pump-01", "motor_current", [t, t + 100_000], [20.0, 21.0]),
        json.dumps(
            {"asset_id": "pump-02", "sensor_id": "bearing_temp", "ts": t, "value": 40.0}
        ).encode(),
        encode_multi("pump-03", t, {"motor_current": 20.0, "discharge_pressure": 5.0}),
        encode_multi("pump-01", [t, t + 1], {"motor_current": [1.0, 2.0]}),
        encode_frame("pump-02", "vib_de", t, 12_000.0, np.zeros(2048)),
        encode_arrow("pump-03", "motor_current", [t, t + 1], [1.0, 2.0]),
    ]
    nasty = [
        b"[" * 5000,
        b"9" * 5000,
        b"1e999",
        b'"\\ud800"',
        b"null",
        b"NaN",
        b"{}",
        b"[]",
        b'"\\u0000x"',
        b"-9223372036854775809",
        b"18446744073709551616",
        b'"x" ' * 50,
    ]
    out = []
    for _ in range(n):
        p = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(7)
            if op == 0 and p:  # flip a byte
                p[rng.randrange(len(p))] = rng.randrange(256)
            elif op == 1 and p:  # cut
                del p[rng.randrange(len(p)) :]
            elif op == 2 and p:  # duplicate a slice
                i = rng.randrange(len(p))
                p[i:i] = p[i : i + rng.randint(1, 64)]
            elif op == 3:  # splice in something nasty at a value position
                i = p.find(b":") + 1 if b":" in p else 0
                p[i:i] = rng.choice(nasty)
            elif op == 4 and b"pump" in p:  # ids that are not clean text
                p = p.replace(b"pump", rng.choice([b"pu\\u0001mp", b"\\udfffp", b"", b"\x00"]), 1)
            elif op == 5:  # a timestamp far out of range or of the wrong type
                p = p.replace(
                    str(t).encode(),
                    rng.choice([b"12", b'"yesterday"', b"1.5", b"9" * 400, b"true"]),
                    1,
                )
            else:  # truncated to nothing or blown up past the limit
                p = (
                    bytearray(rng.choice([b"", b"x" * (4 * 1024 * 1024 + 1)]))
                    if rng.random() < 0.02
                    else p
                )
        out.append(bytes(p))
    return out


def fuzz(root: Path, n_decode: int, n_flow: int) -> dict[str, float]:
    """Hostile payloads through decoding alone and through the real flow into a lake."""
    from bytewax.testing import TestingSource, run_main

    from bytewax_flows.telemetry import get_flow
    from dataplane.step import run_batch
    from dataplane.wire import Batch, Message, decode_batch

    payloads = _fuzz_payloads(n_decode)
    crashes = vanished = 0
    for k in range(0, len(payloads), 512):
        chunk = payloads[k : k + 512]
        messages = [Message("fuzz", k + i, T0, p) for i, p in enumerate(chunk)]
        try:
            d = decode_batch(messages)
        except Exception:  # noqa: BLE001 - a crash is what this counts
            crashes += 1
            continue
        seen = set(d.g_msg.tolist()) | {i for i, _ in d.frames} | {r[0] for r in d.rejects}
        vanished += len(chunk) - len(seen)
    flow_payloads = payloads[:n_flow]
    lake = Lake(root / "lake")
    batches = [
        [Message("fuzz", k + i, T0, p) for i, p in enumerate(flow_payloads[k : k + 100])]
        for k in range(0, len(flow_payloads), 100)
    ]
    flow_crashed = 0
    try:
        run_main(get_flow(TestingSource(batches), lake.uri))
    except Exception:  # noqa: BLE001 - a crash is what this counts
        flow_crashed = 1
    # which messages produced a row: the lake keeps rows, not message offsets, so the core is
    # run again on the same batches (deterministic) and its row counts must equal the lake's
    state, offsets, core_rows = (
        None,
        set(),
        {"readings": 0, "dead_letter": 0, "unknown_readings": 0},
    )
    for b in batches:
        state, rows = run_batch(state, Batch(b))
        for r in rows:
            offsets |= set(np.asarray(r.offset).ravel().tolist())
            if r.table in core_rows:
                core_rows[r.table] += r.rows.num_rows
    lake_rows = {t: lake.count(t) if lake.exists(t) else 0 for t in core_rows}
    dead = lake.read("dead_letter") if lake.exists("dead_letter") else None
    no_reason = 0 if dead is None else int((dead["reason"].isna() | (dead["reason"] == "")).sum())
    return {
        "fuzz_decode_payloads": float(len(payloads)),
        "fuzz_decode_crashes": float(crashes),
        "fuzz_decode_vanished": float(vanished),
        "fuzz_flow_payloads": float(len(flow_payloads)),
        "fuzz_flow_crashes": float(flow_crashed),
        "fuzz_flow_vanished": float(
            len(flow_payloads) - len(offsets & {m.offset for b in batches for m in b})
        ),
        "fuzz_flow_rows_differing_from_core": float(
            sum(abs(lake_rows[t] - core_rows[t]) for t in core_rows)
        ),
        "fuzz_flow_dead_letters": float(lake_rows["dead_letter"]),
        "fuzz_flow_readings": float(lake_rows["readings"]),
        "fuzz_dead_letters_without_reason": float(no_reason),
    }


def main(argv: list[str] | None = None) -> dict:
    p = parser("reliability", __doc__.splitlines()[0])
    p.add_argument(
        "--parts",
        default="fuzz,kill,burst,poison",
        help="comma-separated: fuzz, kill, burst, poison",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parts = set(a.parts.split(","))
    metrics: dict[str, float] = {}
    extra: dict = {}
    with tempfile.TemporaryDirectory(prefix="pp-reliability-") as tmp:
        if "fuzz" in parts:
            m = fuzz(Path(tmp) / "fuzz", 5_000 if a.quick else 100_000, 500 if a.quick else 5_000)
            metrics.update(m)
            log.info("fuzz: %s", m)
        if "kill" in parts:
            m, points = kill_matrix(Path(tmp) / "kill", 2 if a.quick else 20, rate_hz=20)
            metrics.update(m)
            extra["kill_delays_after_progress_s"] = points
            log.info("kill matrix: %s", m)
        if "burst" in parts:
            m = burst(Path(tmp) / "burst", 10 if a.quick else 60)
            metrics.update(m)
            log.info("burst: %s", m)
        if "poison" in parts:
            metrics.update(poison(Path(tmp) / "poison", 50 if a.quick else 200))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    extra["parts_run"] = {part: now for part in sorted(parts)}
    previous = RESULTS / "reliability.json"
    if not a.quick and a.out is None and previous.exists():
        # a run of some parts keeps the other parts' last figures (each dated in parts_run)
        old = json.loads(previous.read_text())
        metrics = {
            **{
                k: v
                for k, v in old.get("metrics", {}).items()
                if not any(k.startswith(f"{part}_") for part in parts)
            },
            **metrics,
        }
        kept = {k: v for k, v in old.get("details", {}).items() if k != "note"}
        extra = {
            **kept,
            **extra,
            "parts_run": {**old.get("details", {}).get("parts_run", {}), **extra["parts_run"]},
        }
    targets = {k: v for k, v in TARGETS.items() if k in metrics}
    if a.quick:
        targets.pop("kill_points", None)
        targets.pop("poison_valid_landed", None)
    return report("reliability", metrics, targets, quick=a.quick, out=a.out, extra=extra)


if __name__ == "__main__":
    main()
