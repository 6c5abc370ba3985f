"""Vibration features over frames, vectorised: one row of features per frame.

The stream and training both call these functions; nothing else computes features.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["time_domain"]


def time_domain(frames: NDArray[np.floating]) -> dict[str, NDArray[np.float64]]:
    """RMS, peak, crest factor, excess kurtosis and skewness of each frame (rows of ``frames``).

    A constant frame has RMS/peak but undefined shape statistics: those come back as NaN
    rather than as a misleading number.

    >>> rng = np.random.default_rng(0)
    >>> f = time_domain(rng.normal(0, 1, (2, 20000)))
    >>> np.round(f["vib_rms"], 1).tolist(), bool(np.all(np.abs(f["vib_kurtosis"]) < 0.2))
    ([1.0, 1.0], True)
    >>> time_domain(np.ones((1, 100)))["vib_kurtosis"].tolist()
    [nan]
    """
    x = np.atleast_2d(np.asarray(frames, dtype=np.float64))
    if x.shape[1] == 0:
        raise ValueError("frames have no samples")
    rms = np.sqrt(np.mean(x * x, axis=1))
    peak = np.max(np.abs(x), axis=1)
    centred = x - x.mean(axis=1, keepdims=True)
    var = np.mean(centred**2, axis=1)
    flat = var <= 1e-24 * np.maximum(rms**2, 1e-300)
    safe_var = np.where(flat, np.nan, var)
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = np.mean(centred**3, axis=1) / safe_var**1.5
        kurt = np.mean(centred**4, axis=1) / safe_var**2 - 3.0
        crest = np.where(rms > 0, peak / rms, np.nan)
    return {
        "vib_rms": rms,
        "vib_peak": peak,
        "vib_crest": crest,
        "vib_kurtosis": kurt,
        "vib_skewness": skew,
    }
