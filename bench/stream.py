"""Stream throughput on one worker: scalar readings and vibration samples through the real
telemetry flow (parse → validate → calibrate → features → score → Delta sink), end to end.

Messages are encoded up front (the wire format is part of what the flow pays for: JSON batches of
``--batch`` readings, binary frames of 12,000 samples) and fed by the replay source as fast as
possible, which stamps each message's arrival time; wall time runs from the first message to
the last commit. Latency is the ``latency_ms`` the
scorer stamps (ingest → score) in the vibration run, which is not paced: a figure at a fixed
100,000 readings/s load is not measured yet.
"""

from __future__ import annotations

import tempfile

import numpy as np
from bytewax.testing import run_main

from bench.common import Timer, parser, report
from bytewax_flows.payloads import encode_frame, encode_scalars
from bytewax_flows.replay import ReplaySource
from bytewax_flows.telemetry import get_flow
from lake import Lake
from physics.simulator import default_fleet

T0 = 1_767_225_600_000_000


def scalar_messages(n_messages: int, batch: int) -> list[tuple[int, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_messages):
        ts = T0 + (i * batch + np.arange(batch)) * 1_000  # 1 kHz of event time per sensor
        out.append(
            (
                int(ts[-1]),
                encode_scalars("pump-01", "motor_current", ts, 20 + rng.normal(0, 1, batch)),
            )
        )
    return out


def frame_messages(n_frames: int) -> list[tuple[int, bytes]]:
    sim = default_fleet(1)
    return [
        (
            T0 + k * 1_000_000,
            encode_frame(
                "pump-01",
                "vib_de",
                T0 + k * 1_000_000,
                12_000.0,
                sim.chunk("pump-01", k).frames[0][3],
            ),
        )
        for k in range(n_frames)
    ]


def run(timeline: list[tuple[int, bytes]]) -> tuple[float, Lake]:
    lake = Lake(tempfile.mkdtemp(prefix="bench-stream-"))
    with Timer() as t:
        run_main(get_flow(ReplaySource({"pump-01": timeline}, batch=64), lake.uri))
    return t.seconds, lake


def main(argv: list[str] | None = None) -> dict:
    p = parser("stream", __doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000, help="readings per JSON message")
    args = p.parse_args(argv)
    n_msgs = 20 if args.quick else 2000
    n_frames = 20 if args.quick else 600
    scalar_seconds, lake = run(scalar_messages(n_msgs, args.batch))
    readings = lake.count("readings")
    frame_seconds, vlake = run(frame_messages(n_frames))
    latency = vlake.read("scores", columns=["latency_ms"])["latency_ms"]
    metrics = {
        "readings_per_s": readings / scalar_seconds,
        "vibration_samples_per_s": n_frames * 12_000 / frame_seconds,
        "readings_committed": float(readings),
        "frames_scored": float(len(latency)),
        "ingest_to_score_p50_ms_unpaced": float(latency.quantile(0.5)),
        "ingest_to_score_p99_ms_unpaced": float(latency.quantile(0.99)),
    }
    return report(
        "stream",
        metrics,
        {"readings_per_s": ">= 1000000", "vibration_samples_per_s": ">= 5000000"},
        quick=args.quick,
        out=args.out,
        extra={"workers": 1, "readings_per_message": args.batch, "frame_samples": 12_000},
    )


if __name__ == "__main__":
    main()
