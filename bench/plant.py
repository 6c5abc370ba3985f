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
assets.  Payloads are encoded before the clock starts (in each process, for its partitions).

Measured, for each shape:

- readings/s through the flow on 1 worker and on 2 and 4 *processes* (``python -m bytewax.run
  -i/-a`` on loopback): scalar readings committed to ``readings`` over the time from the first
  reading processed (its ``ingest_ts``) to the last ``readings`` commit in the Delta log;
- decode-only readings/s of the same payloads (``dataplane.wire.decode_batch``): the ceiling;
- peak RSS of the largest process.

And at a paced 100,000 readings/s in 1-reading messages (real time, all 500 x 20 sensors):
ingest -> score p50/p99 (the ``latency_ms`` the scorer stamps: from the arrival of the message
that closed the window), score -> visible in Delta p99, and RSS over the run (``--soak-s``).

No model is registered in this bench: scores come from the online detectors (the champion path
is measured by ``bench.stream``).  The process detector's warm-up is shortened to 20 windows in
the paced run so that scores exist within seconds; it changes when scores start, not their cost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from bench.common import Timer, parser, report, start_cluster
from bench.stream import commit_times_ms
from dataplane.wire import Message, decode_batch, encode_frame
from expectations.contracts import SensorContract
from lake import Lake
from physics.bearing import SKF_6205, BearingGeometry

T0 = 1_767_225_600_000_000
GATEWAYS = 8
SCALAR_HZ = 10
VIB_HZ = 12_800.0
SHAPES = ("one", "ten", "multi")
ROOT = Path(__file__).resolve().parents[1]


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


def gateway_timeline(
    shape: str, g: int, seconds: int, n_assets: int, n_sensors: int, n_vib: int
) -> list[tuple[int, bytes]]:
    """Gateway ``g``'s messages (its assets: every ``GATEWAYS``-th), in event-time order."""
    rng = np.random.default_rng(g)
    assets = [a for i, a in enumerate(_assets(n_assets)) if i % GATEWAYS == g]
    vib_assets = {a for a in _assets(n_assets)[:n_vib]}
    sensors = [f"s{j:02d}" for j in range(n_sensors)]
    base = rng.uniform(10, 100, (len(assets), n_sensors))
    out: list[tuple[int, bytes]] = []
    frame_t = np.arange(int(VIB_HZ)) / VIB_HZ
    for sec in range(seconds):
        ts = T0 + sec * 1_000_000 + np.arange(SCALAR_HZ) * 100_000
        values = base[:, :, None] + rng.normal(0, 1, (len(assets), n_sensors, SCALAR_HZ))
        if shape == "ten":
            for a, asset in enumerate(assets):
                for j, sensor in enumerate(sensors):
                    out.append(
                        (
                            int(ts[-1]),
                            orjson.dumps(
                                {
                                    "asset_id": asset,
                                    "sensor_id": sensor,
                                    "ts": ts.tolist(),
                                    "value": values[a, j].tolist(),
                                }
                            ),
                        )
                    )
        else:
            for k in range(SCALAR_HZ):
                t = int(ts[k])
                for a, asset in enumerate(assets):
                    if shape == "multi":
                        out.append(
                            (
                                t,
                                orjson.dumps(
                                    {
                                        "asset_id": asset,
                                        "ts": t,
                                        "values": dict(
                                            zip(sensors, values[a, :, k].tolist(), strict=True)
                                        ),
                                    }
                                ),
                            )
                        )
                    else:
                        out += [
                            (
                                t,
                                orjson.dumps(
                                    {
                                        "asset_id": asset,
                                        "sensor_id": sensor,
                                        "ts": t,
                                        "value": float(values[a, j, k]),
                                    }
                                ),
                            )
                            for j, sensor in enumerate(sensors)
                        ]
        for asset in assets:
            if asset in vib_assets:
                x = np.sin(2 * np.pi * 157.0 * frame_t) + rng.normal(0, 0.3, frame_t.size)
                t0 = T0 + sec * 1_000_000
                out.append((t0 + 999_999, encode_frame(asset, "vib", t0, VIB_HZ, x)))
    out.sort(key=lambda m: m[0])
    return out


class _Timelines(dict):
    """Gateway timelines built on first use, in the process whose partition needs them."""

    def __init__(self, shape: str, seconds: int, n_assets: int, n_sensors: int, n_vib: int):
        super().__init__({f"gw-{g}": None for g in range(GATEWAYS)})
        self.args = (shape, seconds, n_assets, n_sensors, n_vib)

    def __getitem__(self, key: str) -> list[tuple[int, bytes]]:
        value = super().__getitem__(key)
        if value is None:
            value = gateway_timeline(self.args[0], int(key.removeprefix("gw-")), *self.args[1:])
            self[key] = value
        return value


def _marked_source(timelines: _Timelines, speed: float | None, batch: int, marks: Path):
    """The replay source, noting when each gateway partition starts its clock (paced runs:
    message at event time e is released at start + (e - T0) / speed)."""
    from bytewax_flows.replay import ReplaySource

    class Marked(ReplaySource):
        def build_part(self, step_id, for_part, resume_state):
            part = super().build_part(step_id, for_part, resume_state)
            (marks / f"{for_part.removeprefix('replay:')}.start").write_text(str(part._wall0))
            return part

    return Marked(timelines, speed=speed, batch=batch)


def flow_for(
    shape: str,
    seconds: int,
    lake_uri: str,
    n_assets: int = 500,
    n_sensors: int = 20,
    n_vib: int = 50,
    speed: float | None = None,
    batch: int = 4096,
):
    """The real telemetry flow over the plant-shaped replay (``bytewax.run`` target)."""
    from bytewax_flows.calibration import CalibrationCache
    from bytewax_flows.sinks import DeltaSink
    from bytewax_flows.telemetry import build_flow
    from dataplane.step import Context

    timelines = _Timelines(shape, seconds, n_assets, n_sensors, n_vib)
    if speed:  # the paced run notes its partitions' start times beside a local lake
        marks = Path(lake_uri).parent / (Path(lake_uri).name + ".marks")
        marks.mkdir(exist_ok=True)
        source = _marked_source(timelines, speed, batch, marks)
    else:
        from bytewax_flows.replay import ReplaySource

        source = ReplaySource(timelines, batch=batch)
    ctx = Context(plant=BenchPlant(), calibration=CalibrationCache(lake_uri))
    max_age = 0.25 if speed else 1.0
    return build_flow(source, DeltaSink(lake_uri, max_age_s=max_age), ctx)


def run_processes(
    target: str, processes: int, env_extra: dict[str, str] | None = None, timeout_s: float = 900.0
) -> int:
    """Run ``target`` as ``processes`` Bytewax processes on loopback; returns the largest
    peak RSS in bytes."""
    procs = start_cluster(target, processes, {**os.environ, **(env_extra or {})}, cwd=ROOT)
    peak, deadline = 0, time.monotonic() + timeout_s
    try:
        for p in procs:
            while True:
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    peak = max(peak, usage.ru_maxrss * 1024)
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
    return peak


def throughput(lake: Lake) -> tuple[float, int]:
    """Readings committed / (last ``readings`` commit - first reading processed)."""
    n = lake.count("readings")
    first = lake.dataset("readings").to_table(columns=["ingest_ts"]).column("ingest_ts")
    first_ms = pa.compute.min(first).cast(pa.int64()).as_py() / 1000.0
    last_ms = float(lake.history("readings", 1)[0]["timestamp"])  # local or object store
    return n / ((last_ms - first_ms) / 1000.0), n


def decode_only(
    shape: str, seconds: int, n_assets: int, n_sensors: int, n_vib: int, batch: int = 4096
) -> float:
    """Readings/s of ``decode_batch`` alone over the same payloads (the flow's ceiling)."""
    timeline = gateway_timeline(shape, 0, seconds, n_assets, n_sensors, n_vib)
    messages = [Message("gw-0", i, 0, p) for i, (_, p) in enumerate(timeline)]
    n = 0
    with Timer() as t:
        for k in range(0, len(messages), batch):
            n += decode_batch(messages[k : k + batch]).n_readings
    return n / t.seconds


def paced(seconds: int, soak_s: int, n_assets: int, n_sensors: int, n_vib: int) -> dict[str, float]:
    """1-reading messages at the plant's own rate (real time): latency and RSS over time."""
    lake = Lake(tempfile.mkdtemp(prefix="bench-plant-paced-"))
    run_s = max(seconds, soak_s)
    target = (
        f"bench.plant:flow_for('one', {run_s}, {lake.uri!r}, {n_assets}, {n_sensors}, "
        f"{n_vib}, speed=1.0)"
    )
    env = {**os.environ, "PLANTPULSE_PROCESS_WARMUP": "20"}
    wall0_ms = time.time() * 1000.0  # for the RSS timeline
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", target], cwd=ROOT, env=env, start_new_session=True
    )
    rss: list[tuple[float, float]] = []
    try:
        while proc.poll() is None:
            time.sleep(5.0)
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except FileNotFoundError:
                break
            kb = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")]
            if kb:  # (absent once the process has exited)
                rss.append((time.time() * 1000.0 - wall0_ms, kb[0] / 1024.0))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode:
        raise RuntimeError(f"the paced flow exited with {proc.returncode}")
    t = lake.dataset("scores").to_table(
        columns=["asset_id", "window_end", "latency_ms", "__filename"]
    )
    lat = np.asarray(t.column("latency_ms"))
    event_us = np.asarray(t.column("window_end").cast(pa.int64()))
    commits = commit_times_ms(lake, "scores")
    committed = np.array([commits[f] for f in t.column("__filename").to_pylist()])
    # the message closing a window at event time e was released at its gateway's start +
    # (e - T0) (speed 1); its score followed latency_ms later; visible at its file's commit
    marks = Path(lake.uri).parent / (Path(lake.uri).name + ".marks")
    starts = {
        int(f.stem.removeprefix("gw-")): float(f.read_text()) * 1000.0
        for f in marks.glob("*.start")
    }
    gateway = np.array([int(a[1:]) % GATEWAYS for a in t.column("asset_id").to_pylist()])
    start_ms = np.array([starts[g] for g in gateway])
    scored_at = start_ms + (event_us - T0) / 1000.0 + lat
    visible = committed - scored_at
    readings = lake.count("readings")
    out = {
        "paced_readings_per_s": readings / run_s,
        "paced_scores": float(lat.size),
        "paced_ingest_to_score_p50_ms": float(np.percentile(lat, 50)),
        "paced_ingest_to_score_p99_ms": float(np.percentile(lat, 99)),
        "paced_score_to_delta_p99_ms": float(np.percentile(visible, 99)),
    }
    if len(rss) >= 4:
        steady = [m for t_ms, m in rss if t_ms > 0.2 * rss[-1][0]]
        out["paced_rss_mb_first_fifth"] = float(
            np.mean([m for t_ms, m in rss if t_ms <= 0.2 * rss[-1][0]])
        )
        out["paced_rss_mb_last"] = float(rss[-1][1])
        out["paced_rss_mb_max_after_first_fifth"] = float(max(steady))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = parser("plant", __doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=None, help="seconds of event time per run")
    p.add_argument("--soak-s", type=int, default=None, help="length of the paced run")
    p.add_argument("--processes", default="1,2,4", help="process counts to measure")
    args = p.parse_args(argv)
    quick = args.quick
    n_assets, n_sensors, n_vib = (40, 20, 4) if quick else (500, 20, 50)
    seconds = args.seconds or (3 if quick else 10)
    soak_s = args.soak_s if args.soak_s is not None else (15 if quick else 120)
    counts = [int(x) for x in args.processes.split(",")]
    if quick:
        counts = [c for c in counts if c <= 2]
    metrics: dict[str, float] = {}
    details: dict[str, object] = {
        "assets": n_assets,
        "scalar_sensors_per_asset": n_sensors,
        "vibration_sensors": n_vib,
        "seconds_of_event_time": seconds,
    }
    for shape in SHAPES:
        metrics[f"{shape}_decode_only_readings_per_s"] = decode_only(
            shape, seconds, n_assets, n_sensors, n_vib
        )
        for procs in counts:
            lake = Lake(tempfile.mkdtemp(prefix=f"bench-plant-{shape}-{procs}-"))
            target = (
                f"bench.plant:flow_for({shape!r}, {seconds}, {lake.uri!r}, {n_assets}, "
                f"{n_sensors}, {n_vib})"
            )
            peak = run_processes(target, procs)
            rate, n = throughput(lake)
            expected = n_assets * n_sensors * SCALAR_HZ * seconds
            if n != expected:
                raise RuntimeError(f"{shape}/{procs}: {n} readings committed, {expected} sent")
            metrics[f"{shape}_readings_per_s_{procs}p"] = rate
            metrics[f"{shape}_peak_rss_mb_{procs}p"] = peak / 2**20
            details[f"{shape}_{procs}p_features"] = lake.count("features")
            details[f"{shape}_{procs}p_scores"] = lake.count("scores")
            print(
                json.dumps({"shape": shape, "processes": procs, "readings_per_s": rate}), flush=True
            )
    metrics.update(paced(seconds, soak_s, n_assets, n_sensors, n_vib))
    return report(
        "plant",
        metrics,
        {
            "one_readings_per_s_1p": ">= 250000",
            "ten_readings_per_s_1p": ">= 1000000",
            "multi_readings_per_s_1p": ">= 2000000",
            "paced_ingest_to_score_p99_ms": "<= 50",
        },
        quick=quick,
        out=args.out,
        extra=details,
    )


if __name__ == "__main__":
    main()
