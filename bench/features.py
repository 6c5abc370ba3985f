"""Feature throughput: vibration samples per second per core through the full feature set.

Real CWRU drive-end frames (inner-race fault and normal), batches of frames at once as the
stream and training call it, one thread (BLAS/OpenMP pinned to 1) so the figure is per core.
Also the process features (rolling level/slope/std) in readings per second.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402

from bench.common import Timer, data_dir, parser, report  # noqa: E402
from physics.bearing import SKF_6205  # noqa: E402
from physics.datasets import frame_signal, read_cwru  # noqa: E402
from physics.features import vibration_features  # noqa: E402
from physics.process import rolling_window_stats  # noqa: E402


def samples_per_s(
    signal: np.ndarray, frame_len: int, fs: float, rpm: float, seconds: float
) -> float:
    frames = frame_signal(signal, frame_len)
    vibration_features(frames[:2], fs, rpm, SKF_6205)  # warm-up
    done, elapsed = 0, 0.0
    while elapsed < seconds:
        with Timer() as t:
            vibration_features(frames, fs, rpm, SKF_6205)
        done += frames.size
        elapsed += t.seconds
    return done / elapsed


def main(argv: list[str] | None = None) -> dict:
    args = parser("features", __doc__.splitlines()[0]).parse_args(argv)
    data = data_dir(args.data)
    seconds = 0.2 if args.quick else 3.0
    inner, normal = read_cwru(data, "IR014_0"), read_cwru(data, "normal_0")
    signal = np.concatenate([inner.signal, normal.signal])
    metrics: dict[str, float] = {}
    for frame_len in (2048, 4096, 12_000):
        metrics[f"samples_per_s_frame{frame_len}"] = samples_per_s(
            signal, frame_len, 12_000.0, 1797.0, seconds
        )
    metrics["samples_per_s"] = metrics["samples_per_s_frame4096"]
    series = np.random.default_rng(0).normal(size=200_000)
    with Timer() as t:
        rolling_window_stats(np.empty(0), series, 30)
    metrics["process_readings_per_s_window30"] = series.size / t.seconds
    return report(
        "features",
        metrics,
        {"samples_per_s": ">= 5000000"},
        quick=args.quick,
        out=args.out,
        extra={"threads": 1, "data": "CWRU IR014_0 + normal_0 drive-end, 12 kHz"},
    )


if __name__ == "__main__":
    main()
