"""What a detector watches of each sensor of an asset, decided from the asset's own warm-up, and
the finest change each watched value can show (its variance floor, from the sensor's declared
quantum).  ``dataplane.detectors.Ensemble`` calls ``choose_views`` at the end of its warm-up."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from physics.detectors import robust_scale

__all__ = ["METADATA", "choose_views"]

METADATA = frozenset({"resolution", "window_s", "rate_hz", "overlap"})
"""Entries of a process vector that describe the sensor rather than measure it."""


def choose_views(
    rows: list[dict[str, float]],
) -> tuple[dict[str, str], list[str], NDArray[np.float64], int]:
    """Which view of each sensor to watch (sensor -> view), the watched keys in order, the
    variance floor of each, and how many consecutive windows share readings (the purge).

    A sensor offered as ``<sensor>:level``, ``:slope`` and ``:std`` (its window's level,
    slope and within-window scatter) is a *slow state*, watched by its slope, when its level
    wanders over the warm-up by more than its readings scatter within a window (averaging a
    window shrinks a stationary channel's scatter, so a level that still moves more than one
    reading's scatter follows something slow, like a housing following its cooling);
    otherwise by its level.  A sensor offered with one view only (declared in the plant) keeps
    it; bare names (vibration features) are watched as they are.

    >>> rows = [{"t:level": 20.0 + i, "t:slope": 1.0, "t:std": 0.1, "p:level": 5.0 + (i % 2),
    ...          "p:slope": 0.0, "p:std": 1.0, "p:resolution": 0.5} for i in range(10)]
    >>> views, keys, floor, purge = choose_views(rows)
    >>> views, keys, floor.round(3).tolist(), purge
    ({'p': 'level', 't': 'slope'}, ['p:level', 't:slope'], [0.144, 0.0], 1)
    """
    offered: dict[str, set[str]] = {}
    for r in rows:
        for k in r:
            sensor, _, view = k.rpartition(":") if ":" in k else (k, "", "")
            offered.setdefault(sensor, set()).add(view)
    views: dict[str, str] = {}
    for sensor, kinds in sorted(offered.items()):
        if {"level", "slope"} <= kinds:
            level = np.array([r.get(f"{sensor}:level", math.nan) for r in rows])
            within = np.array([r.get(f"{sensor}:std", math.nan) for r in rows])
            level, within = level[np.isfinite(level)], within[np.isfinite(within)]
            wanders = (
                level.size > 3
                and within.size > 0
                and float(robust_scale(level[:, None])[0]) > np.median(within)
            )
            views[sensor] = "slope" if wanders else "level"
        else:
            views[sensor] = next(iter(sorted(kinds - {"std"} - METADATA)), "")
    keys = sorted(f"{s}:{v}" if v else s for s, v in views.items() if s)
    last = rows[-1]
    floors = []
    for key in keys:
        # the quantisation noise of a window's level (readings' rounding error, q / sqrt(12)
        # each, averaged over the window's readings) and of its least-squares slope: no
        # warm-up, however still, makes the detector believe in finer changes
        sensor, _, view = key.rpartition(":")
        window_s = max(last.get(f"{sensor}:window_s", 1.0), 1e-9)
        n = max(window_s * last.get(f"{sensor}:rate_hz", 1.0), 1.0)
        noise = last.get(f"{sensor}:resolution", 0.0) / math.sqrt(12.0 * n)
        floors.append(noise * math.sqrt(12.0) / window_s if view == "slope" else noise)
    purge = max((int(last.get(f"{s}:overlap", 1)) for s in views), default=1)
    return views, keys, np.array(floors), purge
