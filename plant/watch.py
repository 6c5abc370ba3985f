"""A plant model that follows its file: the running stream picks up an edited plant file (a
sensor accepted by ``plantpulse sensors accept``, a changed range, a new topology edge) within
``refresh_s`` seconds, without a restart, as it does for calibration.

``PlantWatcher`` looks like a ``Plant`` to its readers (``contract``, ``bearing``, ``upstream``,
...).  At most every ``refresh_s`` a look-up also compares the modification time and size of
the plant file and of every file it includes with what was loaded; when one changed, the plant
is loaded again.  A file that no longer validates is logged and the last good plant kept: a
half-finished edit never stops the stream.  ``version`` counts the loads, so a reader holding
state derived from the plant (the stream's registered series) knows when to refresh it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from plant.errors import PlantError
from plant.model import Plant, load_plant

__all__ = ["PlantWatcher", "REFRESH_S"]

log = logging.getLogger(__name__)

REFRESH_S = float(os.environ.get("PLANTPULSE_PLANT_REFRESH_S", "2.0"))
"""How often (at most) the plant files' modification times are checked."""


def _stamp(files: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((-1, -1))
    return tuple(out)


class PlantWatcher:
    """The plant of ``path``, reloaded when one of its files changes (checked at most every
    ``refresh_s`` seconds, on a look-up)."""

    def __init__(self, path: str | Path, refresh_s: float = REFRESH_S, plant: Plant | None = None):
        self.path, self.refresh_s = str(path), refresh_s
        self.plant = plant if plant is not None else load_plant(self.path)
        self._stamp = _stamp(self.plant.files)
        self._checked = time.monotonic()
        self.version = 0

    @classmethod
    def following(cls, plant: Plant, refresh_s: float = REFRESH_S) -> PlantWatcher:
        """A watcher over an already loaded plant (its file is not read again now)."""
        return cls(plant.path, refresh_s, plant)

    def __getstate__(self) -> dict[str, Any]:  # state snapshots never carry it, but be safe
        return dict(self.__dict__)

    def poll(self) -> bool:
        """Reload the plant if a file changed since the last load (at most every ``refresh_s``);
        True when a new plant was loaded."""
        now = time.monotonic()
        if now - self._checked < self.refresh_s:
            return False
        self._checked = now
        stamp = _stamp(self.plant.files)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            plant = load_plant(self.path)
        except PlantError as exc:
            log.warning(
                "plant file changed but does not validate; keeping the last good plant"
                " (version %d): %s",
                self.version,
                exc,
            )
            return False
        self.plant = plant
        self._stamp = _stamp(plant.files)  # includes may have changed too
        self.version += 1
        log.info(
            "plant %s reloaded (version %d): %d assets", plant.name, self.version, len(plant.assets)
        )
        return True

    # -- the Plant look-ups the planes use ---------------------------------------------------
    def contract(self, asset_id: str, sensor_id: str):  # noqa: ANN201 - SensorContract | None
        self.poll()
        return self.plant.contract(asset_id, sensor_id)

    def bearing(self, asset_id: str, sensor_id: str | None = None):  # noqa: ANN201
        self.poll()
        return self.plant.bearing(asset_id, sensor_id)

    def __getattr__(self, name: str) -> Any:
        # everything else (upstream, downstream, topology, asset, ...) from the current plant
        if name == "plant":
            raise AttributeError(name)
        return getattr(self.plant, name)
