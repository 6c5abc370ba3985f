"""The self-setting detector's cost per asset tick: one window through ``score_window`` (the ensemble, the alert lifecycle, drift, the scores row) and the warm-up's fit, in CPU seconds of this process.

The stream calls ``dataplane.scoring.score_window`` once per asset per tick (a process window of
its scalar sensors, or a vibration frame's features): at plant shape, 500 assets at one tick a
second of event time, several event-seconds per wall second. Measured on synthetic windows of
3, 8 and 20 sensors (process) and the 25 vibration features, after each detector's warm-up; the
fit (robust normal, out-of-sample calibration, alarm levels) once per asset, at the warm-up's
end. CPU time of this process (``time.process_time``), not wall time, and the load average
beside it: figures taken while others work are upper bounds.
"""

from __future__ import annotations

import os
import time

import numpy as np

from bench.common import parser, report
from dataplane.detectors import Ensemble
from dataplane.rows import Out
from dataplane.scoring import (
    DETECTOR_NAME,
    PROCESS_DETECTOR_NAME,
    AlertPolicy,
    Channel,
    Emit,
    score_window,
)

WARMUP = 400


def _windows(p: int, n: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) / np.sqrt(p)
    keys = [f"s{i}:level" for i in range(p)]
    return [dict(zip(keys, row.tolist(), strict=True)) for row in base]


def measure(p: int, ticks: int, process: bool) -> dict[str, float]:
    """CPU microseconds per window after the warm-up, and milliseconds for the warm-up's fit."""
    windows = _windows(p, WARMUP + ticks, seed=p)
    ch = Channel(
        name="process" if process else "vibration",
        detector=Ensemble(WARMUP, WARMUP),  # no extension: the fit happens at window WARMUP
    )
    out, policy = Out([]), AlertPolicy()
    name = PROCESS_DETECTOR_NAME if process else DETECTOR_NAME
    for t, x in enumerate(windows[: WARMUP - 1]):
        score_window(ch, Emit(out, 0, 0), "a", t * 1_000_000, x, {}, None, policy, name)
    start = time.process_time()
    score_window(
        ch, Emit(out, 0, 0), "a", WARMUP * 1_000_000, windows[WARMUP - 1], {}, None, policy, name
    )
    fit_ms = (time.process_time() - start) * 1e3
    rest = windows[WARMUP:]
    start = time.process_time()
    for t, x in enumerate(rest, start=WARMUP + 1):
        score_window(ch, Emit(out, 0, 0), "a", t * 1_000_000, x, {}, None, policy, name)
    per_us = (time.process_time() - start) / len(rest) * 1e6
    return {"us_per_tick": per_us, "fit_ms": fit_ms}


def main(argv: list[str] | None = None) -> dict:
    args = parser("detectors", __doc__.splitlines()[0]).parse_args(argv)
    import scipy.stats  # noqa: F401 - imported by the first fit; not part of what is measured

    ticks = 500 if args.quick else 20_000
    load = os.getloadavg()
    metrics: dict[str, float] = {}
    for label, p, process in (
        ("process_3", 3, True),
        ("process_8", 8, True),
        ("process_20", 20, True),
        ("vibration_25", 25, False),
    ):
        m = measure(p, ticks, process)
        metrics[f"{label}_us_per_tick"] = m["us_per_tick"]
        metrics[f"{label}_fit_ms"] = m["fit_ms"]
    metrics["load_avg_1min"] = load[0]
    metrics["load_avg_after"] = os.getloadavg()[0]
    return report(
        "detectors",
        metrics,
        {f"{k}_us_per_tick": "<= 100" for k in ("process_20", "vibration_25")},
        quick=args.quick,
        out=args.out,
        extra={
            "what": "CPU time per asset tick of dataplane.scoring.score_window after the "
            "warm-up (ensemble of four member families, fusion, smoothing, alert lifecycle, "
            "drift, scores row), and of the warm-up's fit",
            "ticks": ticks,
        },
    )


if __name__ == "__main__":
    main()
