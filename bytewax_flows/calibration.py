"""The calibration the stream applies: the newest ``calibration`` row per sensor, re-read when
the table changes (checked every ``refresh_s``), so a new version takes effect without a restart.
The stream reads it as arrays over its series (``arrays``, the ``dataplane.context.
CalibrationSource`` protocol the shell injects), rebuilt only when the table or the set of
series changes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dataplane.context import CalibrationArrays
from lake import Lake, LakeError

__all__ = ["Correction", "CalibrationCache"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Correction:
    """``calibrated = gain * raw + offset`` for readings at or after ``valid_from_us``."""

    gain: float
    offset: float
    version: int
    valid_from_us: int

    def apply(
        self, ts_us: NDArray[np.int64], raw: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        applies = ts_us >= self.valid_from_us
        return np.where(applies, self.gain * raw + self.offset, raw), applies


class CalibrationCache:
    def __init__(self, lake_uri: str, refresh_s: float = 5.0):
        self.lake, self.refresh_s = Lake(lake_uri), refresh_s
        self._checked = -float("inf")
        self._version: int | None = None
        self._corrections: dict[tuple[str, str], Correction] = {}
        # id(series names) -> (those names, table version, number of series, arrays)
        self._arrays: dict[int, tuple[list, int | None, int, CalibrationArrays]] = {}

    def get(self, asset_id: str, sensor_id: str) -> Correction | None:
        now = time.monotonic()
        if now - self._checked >= self.refresh_s:
            self._checked = now
            self._refresh()
        return self._corrections.get((asset_id, sensor_id))

    def arrays(self, names: list[tuple[str, str]]) -> CalibrationArrays | None:
        """``(gain, offset, valid_from_us, version)`` per series of ``names`` (asset, sensor);
        series without a calibration get gain 1, offset 0, version 0.  None when no sensor has
        a calibration."""
        now = time.monotonic()
        if now - self._checked >= self.refresh_s:
            self._checked = now
            self._refresh()
        if not self._corrections:
            return None
        cached = self._arrays.get(id(names))
        if (
            cached is not None
            and cached[0] is names
            and cached[1] == self._version
            and cached[2] == len(names)
        ):
            return cached[3]
        n = len(names)
        gain, offset = np.ones(n), np.zeros(n)
        valid_from, version = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for i, key in enumerate(names):
            c = self._corrections.get(key)
            if c is not None:
                gain[i], offset[i], valid_from[i], version[i] = (
                    c.gain,
                    c.offset,
                    c.valid_from_us,
                    c.version,
                )
        out = (gain, offset, valid_from, version)
        self._arrays[id(names)] = (names, self._version, n, out)
        return out

    def _refresh(self) -> None:
        try:
            if not self.lake.exists("calibration"):
                return
            version = self.lake.table("calibration").version()
            if version == self._version:
                return
            rows = (
                self.lake.read("calibration")
                .sort_values("version")
                .groupby(["asset_id", "sensor_id"])
                .tail(1)
            )
        except (LakeError, OSError) as exc:  # keep the last good calibration; never stop the stream
            log.warning("calibration table unreadable, keeping version %s: %s", self._version, exc)
            return
        self._corrections = {
            (r.asset_id, r.sensor_id): Correction(
                float(r.gain), float(r.offset), int(r.version), int(r.valid_from.value // 1000)
            )
            for r in rows.itertuples()
        }
        self._version = version
        log.info(
            "calibration table version %s: %d sensor corrections", version, len(self._corrections)
        )
