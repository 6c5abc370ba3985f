"""Calibration of the scalar path: each series' newest correction (``gain * raw + offset``)
from its ``valid_from`` on, from whatever ``CalibrationSource`` the shell injected (the
``calibration`` table, followed by ``bytewax_flows.calibration.CalibrationCache``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from dataplane.context import CalibrationSource

__all__ = ["calibrate"]


def calibrate(
    source: CalibrationSource | None,
    names: list[tuple[str, str]],
    sid: NDArray[np.int64],
    ts: NDArray[np.int64],
    raw: NDArray[np.float64],
) -> tuple[NDArray[np.float64], pa.Array]:
    """The calibrated values of readings ``(sid, ts, raw)`` (``sid`` numbers series of
    ``names``), and their quality column (``good`` or ``calibrated:v<version>``)."""
    n = sid.size
    arrays = source.arrays(names) if source is not None else None
    if arrays is None:
        return raw, pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array(["good"])
        ).cast(pa.string())
    gain, offset, valid_from, version = arrays
    applied = ts >= valid_from[sid]
    values = np.where(applied, gain[sid] * raw + offset[sid], raw)
    v = np.where(applied, version[sid], 0)
    uniq, inverse = np.unique(v, return_inverse=True)
    labels = ["good" if x == 0 else f"calibrated:v{x}" for x in uniq.tolist()]
    quality = pa.DictionaryArray.from_arrays(
        pa.array(inverse.astype(np.int32)), pa.array(labels)
    ).cast(pa.string())
    return values, quality
