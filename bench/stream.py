"""Stream throughput and latency: scalar readings and vibration samples through the real
telemetry flow (parse → validate → calibrate → features → score → Delta sink), end to end.

Messages are encoded up front (the wire format is part of what the flow pays for: JSON batches of
``--batch`` readings, binary frames of 12,000 samples) and fed by the replay source as fast as
possible, which stamps each message's arrival time; wall time runs from the first message to
the last commit (the champion lookup, a one-off MLflow import and registry query per worker,
happens before the clock starts). Each figure is measured on one worker and on two (threads of one process,
sharing two machines' partitions). Latency: ``ingest_to_score_*_at_100k`` is measured at a
paced load of 100,000 readings/s (see ``paced``), ``*_unpaced_frames`` in the vibration run
at full speed (queueing included).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
from bytewax.testing import cluster_main, run_main

from bench.common import Timer, parser, report
from bytewax_flows.payloads import encode_frame, encode_scalars
from bytewax_flows.replay import ReplaySource
from bytewax_flows.sinks import DeltaSink
from bytewax_flows.telemetry import build_flow, get_flow
from dataplane.scoring import PROCESS_WARMUP
from lake import Lake, Settings
from models.registry import ChampionWatcher
from physics.simulator import default_fleet

T0 = 1_767_225_600_000_000


def scalar_messages(n_messages: int, batch: int, asset: str = "pump-01") -> list[tuple[int, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_messages):
        ts = T0 + (i * batch + np.arange(batch)) * 1_000  # 1 kHz of event time per sensor
        out.append(
            (
                int(ts[-1]),
                encode_scalars(asset, "motor_current", ts, 20 + rng.normal(0, 1, batch)),
            )
        )
    return out


def frame_messages(n_frames: int, asset: str = "pump-01") -> list[tuple[int, bytes]]:
    sim = default_fleet(1)
    return [
        (
            T0 + k * 1_000_000,
            encode_frame(
                asset,
                "vib_de",
                T0 + k * 1_000_000,
                12_000.0,
                sim.chunk("pump-01", k).frames[0][3],
            ),
        )
        for k in range(n_frames)
    ]


def run(timelines: dict[str, list[tuple[int, bytes]]], workers: int = 1) -> tuple[float, Lake]:
    """The real flow from a replay of ``timelines`` into a fresh lake; returns the wall time."""
    lake = Lake(tempfile.mkdtemp(prefix="bench-stream-"))
    champion = ChampionWatcher(Settings.from_env().mlflow_tracking_uri)
    champion.get()  # the one-off MLflow import and first registry query, before the clock
    flow = get_flow(ReplaySource(timelines, batch=64), lake.uri, champion=champion)
    with Timer() as t:
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, addresses=None, proc_id=0, worker_count_per_proc=workers)
    return t.seconds, lake


def commit_times_ms(lake: Lake, table: str) -> dict[str, float]:
    """When each data file of ``table`` became visible: its commit's timestamp (Delta log)."""
    out: dict[str, float] = {}
    for path in sorted((Path(lake.uri) / table / "_delta_log").glob("*.json")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line]
        ts = next((x["commitInfo"]["timestamp"] for x in lines if "commitInfo" in x), None)
        for x in lines:
            if "add" in x and ts is not None:
                out[unquote(x["add"]["path"])] = float(ts)
    return out


def paced(n_msgs: int, batch: int, rate: float) -> dict[str, float]:
    """Latency at a fixed load of ``rate`` readings/s: messages of ``batch`` readings (one
    second of event time each) released at ``rate / batch`` messages per second.

    Ingest → score is the ``latency_ms`` the scorer stamps.  Score → visible: the replay
    releases the message ending at event time e at ``wall0 + (e - e0) / speed`` (wall0 taken
    just before the flow starts, so this errs towards a longer visibility); its score follows
    ``latency_ms`` later; it is visible when the Delta commit that added its file is written.
    """
    timeline = scalar_messages(n_msgs, batch)
    speed = rate / batch
    lake = Lake(tempfile.mkdtemp(prefix="bench-stream-paced-"))
    wall0_ms = time.time() * 1000.0
    run_main(
        build_flow(
            ReplaySource({"pump-01": timeline}, batch=64, speed=speed),
            DeltaSink(lake.uri, max_age_s=0.25),
        )
    )
    t = lake.dataset("scores").to_table(columns=["window_end", "latency_ms", "__filename"])
    lat = np.asarray(t.column("latency_ms"))
    event_us = np.asarray(t.column("window_end").cast(pa.int64()))
    commits = commit_times_ms(lake, "scores")
    committed = np.array([commits[f] for f in t.column("__filename").to_pylist()])
    scored_at = wall0_ms + (event_us - timeline[0][0]) / 1000.0 / speed + lat
    visible = committed - scored_at
    return {
        "paced_readings_per_s": rate,
        "paced_scores": float(len(lat)),
        "ingest_to_score_p50_ms_at_100k": float(np.percentile(lat, 50)),
        "ingest_to_score_p99_ms_at_100k": float(np.percentile(lat, 99)),
        "score_to_delta_p50_ms": float(np.percentile(visible, 50)),
        "score_to_delta_p99_ms": float(np.percentile(visible, 99)),
    }


def main(argv: list[str] | None = None) -> dict:
    p = parser("stream", __doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000, help="readings per JSON message")
    args = p.parse_args(argv)
    n_msgs = 20 if args.quick else 2000
    n_frames = 20 if args.quick else 600
    metrics: dict[str, float] = {}
    for workers in (1, 2):
        half = n_msgs // 2  # two machines, so that two workers can share them
        scalar_seconds, lake = run(
            {a: scalar_messages(half, args.batch, a) for a in ("pump-01", "pump-02")}, workers
        )
        frame_seconds, vlake = run(
            {a: frame_messages(n_frames // 2, a) for a in ("pump-01", "pump-02")}, workers
        )
        suffix = "" if workers == 1 else "_2_workers"
        metrics[f"readings_per_s{suffix}"] = lake.count("readings") / scalar_seconds
        metrics[f"vibration_samples_per_s{suffix}"] = n_frames * 12_000 / frame_seconds
        if workers == 1:
            latency = vlake.read("scores", columns=["latency_ms"])["latency_ms"]
            metrics["readings_committed"] = float(lake.count("readings"))
            metrics["frames_scored"] = float(len(latency))
            metrics["ingest_to_score_p99_ms_unpaced_frames"] = float(latency.quantile(0.99))
    metrics.update(paced(PROCESS_WARMUP + (20 if args.quick else 1100), 1000, 100_000.0))
    return report(
        "stream",
        metrics,
        {
            "readings_per_s": ">= 1000000",
            "vibration_samples_per_s": ">= 5000000",
            "ingest_to_score_p99_ms_at_100k": "<= 10",
            "score_to_delta_p99_ms": "<= 2000",
        },
        quick=args.quick,
        out=args.out,
        extra={
            "workers": "1, and 2 as threads of one process (bytewax.testing.cluster_main)",
            "readings_per_message": args.batch,
            "frame_samples": 12_000,
            "paced": "100 messages/s of 1,000 readings; the process detector scores after "
            "its 400-window warm-up",
        },
    )


if __name__ == "__main__":
    main()
