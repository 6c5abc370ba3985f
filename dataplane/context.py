"""What a worker hands the stream's stateful step besides its state: the plant, and the small
protocols through which the engine's shell injects calibration and the champion models.

The core imports neither MLflow nor Delta Lake: ``bytewax_flows`` (or any other shell) passes
objects that have the few methods below - ``models.registry.ChampionWatcher`` for the champions,
``bytewax_flows.calibration.CalibrationCache`` for calibration, ``plant.watch.PlantWatcher`` for
the plant - and the tests pass small stand-ins of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from dataplane.scoring import AlertPolicy
from expectations.contracts import SensorContract
from physics.bearing import BearingGeometry
from plant import default_plant
from plant.watch import PlantWatcher

if TYPE_CHECKING:  # the type of a served model only; the registry is the shell's business
    from models.registry import LoadedModel

__all__ = ["Plant", "ModelSource", "CalibrationSource", "CalibrationArrays", "Context"]

MAX_SERIES = int(os.environ.get("PLANTPULSE_MAX_SERIES", "200000"))
"""Series (asset, sensor) one shard tracks; readings of further ones are dead-lettered
(``capacity``), never silently dropped, so invented ids cannot grow the state without bound."""


class Plant(Protocol):
    """What the stream needs to know of the plant (``plant.PlantModel`` is one): each (asset,
    sensor)'s contract, and the bearing a vibration sensor is mounted on."""

    def contract(self, asset_id: str, sensor_id: str) -> SensorContract | None: ...

    def bearing(self, asset_id: str, sensor_id: str | None = None) -> BearingGeometry | None: ...


class ModelSource(Protocol):
    """A champion model followed by alias (``models.registry.ChampionWatcher``): ``get`` is
    called per micro-batch, so it must be cheap between the moments it looks again."""

    def get(self) -> LoadedModel | None: ...


CalibrationArrays = tuple[
    NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]
]
"""``(gain, offset, valid_from_us, version)`` per series."""


class CalibrationSource(Protocol):
    """The newest calibration of every series (``bytewax_flows.calibration.CalibrationCache``):
    ``arrays`` is called per micro-batch with the shard's series names (the same list, grown),
    and returns None while no sensor has a calibration."""

    def arrays(self, names: list[tuple[str, str]]) -> CalibrationArrays | None: ...


def _watched_default_plant() -> Plant:
    return PlantWatcher.following(default_plant())


@dataclass
class Context:
    """Per worker, not state: the plant, calibration, the champion model and the alert policy.
    The plant (a ``plant.watch.PlantWatcher`` by default), the calibration and the champion
    follow their file, table and alias by themselves: edits take effect without a restart."""

    plant: Plant = field(default_factory=_watched_default_plant)
    calibration: CalibrationSource | None = None
    champion: ModelSource | None = None
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    max_series: int = MAX_SERIES
    rul_champion: ModelSource | None = None  # the RUL model (dataplane.prognostics)

    def fault_model(self) -> LoadedModel | None:
        return self.champion.get() if self.champion is not None else None

    def rul_model(self) -> LoadedModel | None:
        return self.rul_champion.get() if self.rul_champion is not None else None
