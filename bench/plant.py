"""A plant-shaped load through the real telemetry flow into Delta: 500 assets x 20 scalar sensors
at 10 Hz plus 50 vibration sensors with 1 s frames at 12.8 kHz, in the three message shapes
plants send.

Shapes (all carry the same readings):

- ``one``: one reading per message (a tag-per-message gateway);
- ``ten``: ten readings of one sensor per message (a 10 Hz sensor batched per second);
- ``multi``: one multi-sensor message per asset per 100 ms (20 tags, one timestamp: what
  Sparkplug B / OPC UA gateways send).

The vibration frames are the same binary frames in every shape.  Eight "gateway" partitions
each carry 1/8 of the assets, interleaved in event-time order, so every micro-batch holds many
assets.  This process encodes each gateway's messages once, second by second, into a file of
length-prefixed records before the clock starts; the measured processes read them a micro-batch
at a time (so they hold one batch of payloads, not the run's: ``harness_*`` in the JSON).

Measured, for each shape:

- readings/s through the flow on 1 worker and on 2 and 4 *processes* (``python -m bytewax.run
  -i/-a`` on loopback): scalar readings committed to ``readings`` over the time from the first
  reading processed (its ``ingest_ts``) to the last ``readings`` commit in the Delta log, and the
  speedup of 2 processes over one (``<shape>_speedup_2p``);
- readings per CPU second of the measured processes (user + system, from ``wait4``, less what
  each spent before its first batch): what an optimisation changes, whatever else the machine
  runs;
- decode-only readings/s of the same payloads (``dataplane.wire.decode_batch``): the ceiling;
- peak RSS of the largest process; the load average before and during each run.

The paced run at the plant's own rate is ``bench.soak`` (load from its own processes, through
MQTT and Kafka).  No model is registered in this bench: scores come from the online detectors
(the champion path is measured by ``bench.stream``).
"""

from __future__ import annotations

import os
import resource
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from bench.common import Timer, parser, report, start_cluster
from dataplane.wire import Batch, Message, decode_batch, encode_frame
from expectations.contracts import SensorContract
from lake import Lake
from physics.bearing import SKF_6205, BearingGeometry

T0 = 1_767_225_600_000_000
GATEWAYS = 8
SCALAR_HZ = 10
VIB_HZ = 12_800.0
SHAPES = ("one", "ten", "multi")
ROOT = Path(__file__).resolve().parents[1]
RECORD = struct.Struct("<qI")  # event time (µs), payload length; then the payload


class BenchPlant:
    """The bench's plant: assets ``a000``..; scalar sensors ``s00``..``s19`` at 10 Hz; a
    drive-end accelerometer ``vib`` at 12.8 kHz on the first 50 assets."""

    scalar = SensorContract("s", "process", "1", -1e6, 1e6, float(SCALAR_HZ), stuck_after_s=None)
    vib = SensorContract(
        "vib", "vibration", "g", -500.0, 500.0, VIB_HZ, frames=True, min_frame_samples=1024
    )

    def contract(self, asset_id: str, sensor_id: str) -> SensorContract | None:
        if sensor_id == "vib":
            return self.vib
        return self.scalar if sensor_id.startswith("s") else None

    def bearing(self, asset_id: str, sensor_id: str | None = None) -> BearingGeometry:
        return SKF_6205


def _assets(n_assets: int) -> list[str]:
    return [f"a{i:03d}" for i in range(n_assets)]


def gateway_seconds(
    shape: str, g: int, seconds: int, n_assets: int, n_sensors: int, n_vib: int
) -> Iterator[list[tuple[int, bytes]]]:
    """Gateway ``g``'s messages (its assets: every ``GATEWAYS``-th), one second of event time
    at a time, each second's in event-time order."""
    rng = np.random.default_rng(g)
    assets = [a for i, a in enumerate(_assets(n_assets)) if i % GATEWAYS == g]
    vib_assets = set(_assets(n_assets)[:n_vib])
    sensors = [f"s{j:02d}" for j in range(n_sensors)]
    base = rng.uniform(10, 100, (len(assets), n_sensors))
    frame_t = np.arange(int(VIB_HZ)) / VIB_HZ
    for sec in range(seconds):
        out: list[tuple[int, bytes]] = []
        ts = T0 + sec * 1_000_000 + np.arange(SCALAR_HZ) * 100_000
        values = base[:, :, None] + rng.normal(0, 1, (len(assets), n_sensors, SCALAR_HZ))
        if shape == "ten":
            t_last = int(ts[-1])
            ts_l = ts.tolist()
            for a, asset in enumerate(assets):
                for j, sensor in enumerate(sensors):
                    body = {"asset_id": asset, "sensor_id": sensor, "ts": ts_l}
                    body["value"] = values[a, j].tolist()
                    out.append((t_last, orjson.dumps(body)))
        else:
            for k in range(SCALAR_HZ):
                t = int(ts[k])
                for a, asset in enumerate(assets):
                    row = values[a, :, k].tolist()
                    if shape == "multi":
                        body = {
                            "asset_id": asset,
                            "ts": t,
                            "values": dict(zip(sensors, row, strict=True)),
                        }
                        out.append((t, orjson.dumps(body)))
                    else:
                        out += [
                            (
                                t,
                                orjson.dumps(
                                    {"asset_id": asset, "sensor_id": s, "ts": t, "value": v}
                                ),
                            )
                            for s, v in zip(sensors, row, strict=True)
                        ]
        t0 = T0 + sec * 1_000_000
        for asset in assets:
            if asset in vib_assets:
                x = np.sin(2 * np.pi * 157.0 * frame_t) + rng.normal(0, 0.3, frame_t.size)
                out.append((t0 + 999_999, encode_frame(asset, "vib", t0, VIB_HZ, x)))
        yield out


def write_timelines(
    folder: Path, shape: str, seconds: int, n_assets: int, n_sensors: int, n_vib: int
) -> int:
    """Every gateway's messages as a file of records in ``folder`` (``gw-<g>.bin``), written
    second by second (this process holds one second of one gateway); returns the bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for g in range(GATEWAYS):
        with open(folder / f"gw-{g}.bin", "wb") as f:
            for second in gateway_seconds(shape, g, seconds, n_assets, n_sensors, n_vib):
                chunk = b"".join(RECORD.pack(t, len(p)) + p for t, p in second)
                f.write(chunk)
                total += len(chunk)
    return total


def read_records(path: Path, start: int = 0, limit: int | None = None) -> Iterator[bytes]:
    """The payloads of a timeline file, from byte ``start``."""
    with open(path, "rb") as f:
        f.seek(start)
        n = 0
        while limit is None or n < limit:
            head = f.read(RECORD.size)
            if len(head) < RECORD.size:
                return
            _, size = RECORD.unpack(head)
            yield f.read(size)
            n += 1


_started: list[float] = []  # this process's CPU seconds when its first batch was read


def _note_start(folder: Path) -> None:
    """The CPU time this process spent before its first batch (start-up: imports, the flow's
    build), noted once per process beside the timelines so the bench can subtract it."""
    if not _started:
        _started.append(time.process_time())
        (folder / f"startup-cpu-{os.getpid()}").write_text(repr(_started[0]))


class _FilePartition(StatefulSourcePartition[Batch, tuple[int, int]]):
    """One gateway's file, ``batch`` records per micro-batch, read in blocks of 1 MiB (one
    ``read`` per block, the records sliced out of it); resumes at (index, byte)."""

    def __init__(self, name: str, path: Path, position: tuple[int, int], batch: int):
        self.name, self.batch, self.folder = name, batch, path.parent
        self.index, start = position
        self.file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.file.seek(start)
        self.buf, self.pos = b"", 0  # read but not yet emitted: buf[pos:]

    def next_batch(self) -> list[Batch]:
        _note_start(self.folder)
        messages: list[Message] = []
        received = time.time_ns() // 1000
        buf, pos, head, name = self.buf, self.pos, RECORD.size, self.name
        while len(messages) < self.batch:
            end = pos + head + (RECORD.unpack_from(buf, pos)[1] if len(buf) - pos >= head else 0)
            if len(buf) - pos < head or end > len(buf):
                more = self.file.read(1 << 20)
                if not more:
                    break
                buf, pos = buf[pos:] + more, 0
                continue
            messages.append(Message(name, self.index, received, buf[pos + head : end]))
            self.index += 1
            pos = end
        self.buf, self.pos = buf, pos
        if not messages:
            raise StopIteration()
        return [Batch(messages)]

    def snapshot(self) -> tuple[int, int]:
        return self.index, self.file.tell() - (len(self.buf) - self.pos)

    def close(self) -> None:
        self.file.close()


class TimelineFiles(FixedPartitionedSource[Batch, tuple[int, int]]):
    """The gateways' timeline files (``write_timelines``) as a resumable source."""

    def __init__(self, folder: Path, batch: int = 4096):
        self.folder, self.batch = Path(folder), batch

    def list_parts(self) -> list[str]:
        return [f"gw-{g}" for g in range(GATEWAYS)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
    ) -> _FilePartition:
        path = self.folder / f"{for_part}.bin"
        return _FilePartition(for_part, path, resume_state or (0, 0), self.batch)


def flow_for(timelines: str, lake_uri: str, batch: int = 4096) -> Any:
    """The real telemetry flow over the plant-shaped timeline files in folder ``timelines``
    (``bytewax.run`` target)."""
    from bytewax_flows.calibration import CalibrationCache
    from bytewax_flows.sinks import DeltaSink
    from bytewax_flows.telemetry import build_flow
    from dataplane.step import Context

    ctx = Context(plant=BenchPlant(), calibration=CalibrationCache(lake_uri))
    return build_flow(TimelineFiles(Path(timelines), batch), DeltaSink(lake_uri), ctx)


class LoadWatch:
    """The 1-minute load average before a run and the highest seen during it (sampled every
    half second), for the record beside each figure."""

    def __enter__(self) -> LoadWatch:
        self.before = os.getloadavg()[0]
        self.during = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.during = max(self.during, os.getloadavg()[0])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_processes(
    target: str, processes: int, env_extra: dict[str, str] | None = None, timeout_s: float = 900.0
) -> tuple[int, float]:
    """Run ``target`` as ``processes`` Bytewax processes on loopback; returns the largest
    peak RSS in bytes and the CPU seconds (user + system) of all of them."""
    procs = start_cluster(target, processes, {**os.environ, **(env_extra or {})}, cwd=ROOT)
    peak, cpu, deadline = 0, 0.0, time.monotonic() + timeout_s
    try:
        for p in procs:
            while True:
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    peak = max(peak, usage.ru_maxrss * 1024)
                    cpu += usage.ru_utime + usage.ru_stime
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{target} did not finish in {timeout_s} s")
                time.sleep(0.1)
    finally:
        for p in procs:
            if p.returncode is None:
                os.killpg(p.pid, signal.SIGKILL)
    bad = [p.returncode for p in procs if p.returncode]
    if bad:
        raise RuntimeError(f"{target}: a process exited with {bad}")
    return peak, cpu


def throughput(lake: Lake) -> tuple[float, int]:
    """Readings committed / (last ``readings`` commit - first reading processed)."""
    n = lake.count("readings")
    first = lake.dataset("readings").to_table(columns=["ingest_ts"]).column("ingest_ts")
    first_ms = pa.compute.min(first).cast(pa.int64()).as_py() / 1000.0
    last_ms = float(lake.history("readings", 1)[0]["timestamp"])  # local or object store
    return n / ((last_ms - first_ms) / 1000.0), n


def decode_only(folder: Path, batch: int = 4096) -> float:
    """Readings/s of ``decode_batch`` alone over one gateway's payloads (the flow's ceiling)."""
    payloads = list(read_records(folder / "gw-0.bin"))
    messages = [Message("gw-0", i, 0, p) for i, p in enumerate(payloads)]
    n = 0
    with Timer() as t:
        for k in range(0, len(messages), batch):
            n += decode_batch(messages[k : k + batch]).n_readings
    return n / t.seconds


def measure(
    lake_uri: str, folder: Path, processes: int, env: dict[str, str] | None = None
) -> dict[str, float]:
    """One run of the flow over the timeline files in ``folder`` into the (fresh) lake:
    readings/s, readings per CPU second, peak RSS, readings committed, and the load."""
    lake = Lake(lake_uri)
    lake.create_tables()  # once, not by N processes racing
    for old in folder.glob("startup-cpu-*"):
        old.unlink()
    with LoadWatch() as load:
        peak, cpu = run_processes(
            f"bench.plant:flow_for({str(folder)!r}, {lake_uri!r})", processes, env
        )
    rate, n = throughput(lake)
    startup = sum(float(f.read_text()) for f in folder.glob("startup-cpu-*"))
    return {
        "readings_per_s": rate,
        "readings_per_cpu_s": n / (cpu - startup),  # the flow's CPU from its first batch on
        "cpu_s": cpu - startup,
        "startup_cpu_s": startup,
        "peak_rss_mb": peak / 2**20,
        "readings": float(n),
        "load_before": load.before,
        "load_during": load.during,
    }


def main(argv: list[str] | None = None) -> dict:
    p = parser("plant", __doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=None, help="seconds of event time per run")
    p.add_argument("--processes", default="1,2,4", help="process counts to measure")
    p.add_argument("--shapes", default=",".join(SHAPES), help="message shapes to measure")
    args = p.parse_args(argv)
    quick = args.quick
    n_assets, n_sensors, n_vib = (40, 20, 4) if quick else (500, 20, 50)
    seconds = args.seconds or (3 if quick else 10)
    counts = [int(x) for x in args.processes.split(",")]
    if quick:
        counts = [c for c in counts if c <= 2]
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {
        "assets": n_assets,
        "scalar_sensors_per_asset": n_sensors,
        "vibration_sensors": n_vib,
        "seconds_of_event_time": seconds,
        "load_average": {},
    }
    expected = n_assets * n_sensors * SCALAR_HZ * seconds
    with tempfile.TemporaryDirectory(prefix="bench-plant-") as tmp:
        for shape in args.shapes.split(","):
            folder = Path(tmp) / f"{shape}.timelines"
            on_disk = write_timelines(folder, shape, seconds, n_assets, n_sensors, n_vib)
            details[f"{shape}_timeline_mb_on_disk"] = on_disk / 2**20
            metrics[f"{shape}_decode_only_readings_per_s"] = decode_only(folder)
            for procs in counts:
                run = measure(f"{tmp}/{shape}-{procs}p", folder, procs)
                if run["readings"] != expected:
                    raise RuntimeError(
                        f"{shape}/{procs}: {run['readings']:.0f} readings committed, "
                        f"{expected} sent"
                    )
                for key in ("readings_per_s", "readings_per_cpu_s", "peak_rss_mb"):
                    metrics[f"{shape}_{key}_{procs}p"] = run[key]
                details["load_average"][f"{shape}_{procs}p"] = {
                    "before": round(run["load_before"], 2),
                    "during_max": round(run["load_during"], 2),
                }
                print(
                    f"{shape}, {procs} process(es): {run['readings_per_s']:,.0f} readings/s, "
                    f"{run['readings_per_cpu_s']:,.0f} per CPU s (load average "
                    f"{run['load_before']:.2f} before, up to {run['load_during']:.2f} during)",
                    flush=True,
                )
            if f"{shape}_readings_per_s_1p" in metrics and 2 in counts:
                metrics[f"{shape}_speedup_2p"] = (
                    metrics[f"{shape}_readings_per_s_2p"] / metrics[f"{shape}_readings_per_s_1p"]
                )
            for path in folder.iterdir():
                path.unlink()
    # what this (the harness) process held: one second of one gateway while writing, one
    # gateway's payloads for the decode-only ceiling; the workers hold one batch of records
    metrics["harness_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report(
        "plant",
        metrics,
        {
            "one_readings_per_s_1p": ">= 250000",
            "ten_readings_per_s_1p": ">= 1000000",
            "multi_readings_per_s_1p": ">= 2000000",
            "ten_speedup_2p": ">= 1.7",
            "multi_speedup_2p": ">= 1.7",
        },
        quick=quick,
        out=args.out,
        extra=details,
    )


if __name__ == "__main__":
    main()
