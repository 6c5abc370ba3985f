"""Sensor imperfections as vectorised functions: each corrupts clean data the way real sensors do.

Used by the simulator and tests to inject faults with known ground truth; the matching
estimators (which recover offset and gain) live beside them so calibration can be checked
against what was injected.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "offset_gain",
    "gain_drift",
    "stuck",
    "dropout",
    "spikes",
    "clock_skew",
    "estimate_offset_gain",
    "estimate_gain_drift",
    "stuck_runs",
    "dropout_fraction",
    "spike_mask",
    "estimate_clock_skew",
]

F64 = NDArray[np.float64]


def offset_gain(values: F64, offset: float = 0.0, gain: float = 1.0) -> F64:
    """A miscalibrated sensor: ``gain * true + offset``.

    >>> offset_gain(np.array([1.0, 2.0]), offset=0.5, gain=2.0).tolist()
    [2.5, 4.5]
    """
    return gain * np.asarray(values, dtype=np.float64) + offset


def gain_drift(values: F64, t_s: F64, start_s: float, rate_per_day: float) -> F64:
    """Gain that drifts linearly from 1 after ``start_s``, e.g. +0.02 per day for +2 %/day.

    >>> gain_drift(np.ones(3), np.array([0.0, 86400.0, 172800.0]), 0.0, 0.02).round(3).tolist()
    [1.0, 1.02, 1.04]
    """
    t = np.asarray(t_s, dtype=np.float64)
    gain = 1.0 + rate_per_day * np.clip(t - start_s, 0.0, None) / 86400.0
    return np.asarray(values, dtype=np.float64) * gain


def stuck(values: F64, t_s: F64, start_s: float) -> F64:
    """The sensor freezes at the last value before ``start_s`` (or its first value).

    >>> stuck(np.array([1.0, 2.0, 3.0, 4.0]), np.arange(4.0), 2.0).tolist()
    [1.0, 2.0, 2.0, 2.0]
    """
    out = np.array(values, dtype=np.float64, copy=True)
    t = np.asarray(t_s, dtype=np.float64)
    frozen = t >= start_s
    if frozen.any():
        first = int(np.argmax(frozen))
        out[frozen] = out[first - 1] if first > 0 else out[0]
    return out


def dropout(values: F64, fraction: float, rng: np.random.Generator) -> F64:
    """Replace a random ``fraction`` of the readings with NaN (lost samples)."""
    out = np.array(values, dtype=np.float64, copy=True)
    out[rng.random(out.shape) < fraction] = np.nan
    return out


def spikes(values: F64, fraction: float, height: float, rng: np.random.Generator) -> F64:
    """Add isolated spikes of ``±height`` to a random ``fraction`` of the readings."""
    out = np.array(values, dtype=np.float64, copy=True)
    hit = rng.random(out.shape) < fraction
    out[hit] += height * rng.choice([-1.0, 1.0], size=int(hit.sum()))
    return out


def clock_skew(ts_us: NDArray[np.int64], skew_ppm: float, offset_us: int = 0) -> NDArray[np.int64]:
    """A clock that runs fast by ``skew_ppm`` parts per million and is off by ``offset_us``.

    >>> clock_skew(np.array([0, 1_000_000], dtype=np.int64), skew_ppm=100).tolist()
    [0, 1000100]
    """
    ts = np.asarray(ts_us, dtype=np.int64)
    elapsed = ts - ts[0] if ts.size else ts
    return ts + offset_us + np.round(elapsed * skew_ppm * 1e-6).astype(np.int64)


def estimate_offset_gain(measured: F64, reference: F64) -> tuple[float, float]:
    """Least-squares ``(offset, gain)`` with ``measured ≈ gain * reference + offset``.

    Invert with ``(measured - offset) / gain``.  NaNs are ignored.

    >>> ref = np.linspace(0, 10, 50)
    >>> o, g = estimate_offset_gain(offset_gain(ref, 1.5, 1.02), ref)
    >>> round(o, 6), round(g, 6)
    (1.5, 1.02)
    """
    m, r = np.asarray(measured, np.float64), np.asarray(reference, np.float64)
    ok = np.isfinite(m) & np.isfinite(r)
    if ok.sum() < 2 or np.ptp(r[ok]) == 0:
        raise ValueError(
            "need at least two distinct finite reference values to fit offset and gain"
        )
    gain, offset = np.polyfit(r[ok], m[ok], 1)
    return float(offset), float(gain)


def estimate_gain_drift(measured: F64, reference: F64, t_s: F64) -> float:
    """Gain drift per day: the slope of ``measured / reference`` over time (ratio 1 = healthy).

    >>> t = np.linspace(0, 86400, 200); ref = 50 + np.sin(t / 5000)
    >>> round(estimate_gain_drift(gain_drift(ref, t, 0.0, 0.02), ref, t), 4)
    0.02
    """
    m, r, t = (np.asarray(a, np.float64) for a in (measured, reference, t_s))
    ok = np.isfinite(m) & np.isfinite(r) & np.isfinite(t) & (np.abs(r) > 1e-12)
    if ok.sum() < 2 or np.ptp(t[ok]) == 0:
        raise ValueError("need at least two readings at different times to estimate a drift")
    slope, _ = np.polyfit(t[ok] / 86400.0, m[ok] / r[ok], 1)
    return float(slope)


def stuck_runs(values: F64, min_run: int) -> NDArray[np.bool_]:
    """True for readings inside a run of at least ``min_run`` identical consecutive values.

    >>> stuck_runs(np.array([1.0, 2.0, 2.0, 2.0, 3.0]), 3).tolist()
    [False, True, True, True, False]
    """
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return np.zeros(0, dtype=bool)
    change = np.r_[True, v[1:] != v[:-1]]
    run_id = np.cumsum(change)
    lengths = np.bincount(run_id)
    return lengths[run_id] >= min_run


def dropout_fraction(values: F64, expected: int | None = None) -> float:
    """Share of readings lost: NaN values, plus readings missing against ``expected``.

    >>> dropout_fraction(np.array([1.0, np.nan, 3.0, 4.0]), expected=5)
    0.4
    """
    v = np.asarray(values, np.float64)
    total = max(expected or v.size, v.size)
    return float((np.isnan(v).sum() + (total - v.size)) / total) if total else 0.0


def spike_mask(values: F64, n_sigmas: float = 8.0, resolution: float = 0.0) -> NDArray[np.bool_]:
    """True for isolated spikes: a reading that departs from both neighbours, in the same
    direction, by more than ``n_sigmas`` robust standard deviations of the first differences
    (1.4826 * MAD of the non-zero differences, floored at the sensor's ``resolution`` so
    quantised or partly flat signals do not trip it).

    Steps, trends and heavy-tailed but continuous noise do not count; a one-sample excursion
    that comes straight back does.

    >>> x = np.sin(np.arange(50) / 3) * 0.1; x[20] += 10.0
    >>> np.flatnonzero(spike_mask(x)).tolist()
    [20]
    >>> spike_mask(np.r_[np.zeros(20), np.ones(20)]).any()  # a step is not a spike
    np.False_
    """
    v = np.asarray(values, np.float64)
    out = np.zeros(v.size, dtype=bool)
    if v.size < 3:
        return out
    diffs = np.diff(v)
    finite = diffs[np.isfinite(diffs) & (diffs != 0)]  # repeats (stuck, quantised) carry no noise
    mad = np.median(np.abs(finite - np.median(finite))) if finite.size else 0.0
    scale = max(1.4826 * mad, resolution, 1e-12)
    back, fwd = v[1:-1] - v[:-2], v[1:-1] - v[2:]
    with np.errstate(invalid="ignore"):
        out[1:-1] = (np.sign(back) == np.sign(fwd)) & (
            np.minimum(np.abs(back), np.abs(fwd)) > n_sigmas * scale
        )
    return out


def estimate_clock_skew(
    ts_us: NDArray[np.int64], reference_us: NDArray[np.int64]
) -> tuple[float, float]:
    """``(skew_ppm, offset_us)`` of a sensor clock against reference times of the same events.

    >>> ref = np.arange(0, 3_600_000_000, 1_000_000, dtype=np.int64)
    >>> ppm, off = estimate_clock_skew(clock_skew(ref, 50.0, 2_000), ref)
    >>> round(ppm, 3), round(off)
    (50.0, 2000)
    """
    ts, ref = np.asarray(ts_us, np.float64), np.asarray(reference_us, np.float64)
    if ts.size < 2 or np.ptp(ref) == 0:
        raise ValueError(
            "need at least two events at different reference times to estimate clock skew"
        )
    slope, intercept = np.polyfit(ref - ref[0], ts - ref[0], 1)
    return float((slope - 1.0) * 1e6), float(intercept)
