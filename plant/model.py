"""The plant model's front door: load a plant file (``load_plant``), the bundled example plants
(``PLANTS_DIR``, ``bundled_plant``) and this process's default plant (``default_plant``: the file
named by ``PLANTPULSE_PLANT``, default the bundled demo plant, loaded once).

``load_plant(path)`` reads a plant file (YAML, see ``plant/plants/demo.yaml``), validates it and
applies the defaults (``plant.resolve``); the result is a ``Plant`` (``plant.resolved``) whose
look-ups are per (asset, sensor): ``plant.contract("pump-02", "bearing_temp")``.  The resolved
types are importable from here too (``from plant.model import Plant``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from plant.errors import PlantError
from plant.resolve import resolve_file
from plant.resolved import Asset, Component, HealthIndicator, Plant, Sensor
from plant.topology import Edge

__all__ = [
    "PlantError",
    "Component",
    "Sensor",
    "Asset",
    "HealthIndicator",
    "Edge",
    "Plant",
    "load_plant",
    "default_plant",
    "set_default_plant",
    "PLANTS_DIR",
    "bundled_plant",
]

PLANTS_DIR = Path(__file__).parent / "plants"
"""The bundled example plants: ``demo`` (the simulated fleet and every data set), and one per
reference data set (``cmapss``, ``cwru``, ``skab``, ``nab``)."""


def load_plant(path: str | Path) -> Plant:
    """Read, validate and resolve the plant file at ``path`` (``PlantError`` if it is bad).

    >>> p = load_plant(PLANTS_DIR / "demo.yaml")
    >>> p.contract("pump-02", "bearing_temp").high
    200.0
    >>> round(p.nominal_speed_rpm("pump-03"))
    1747
    """
    p = Path(path)
    return resolve_file(p, (p.resolve(),))


def bundled_plant(name: str) -> Path:
    """The path of a bundled example plant (``demo``, ``cmapss``, ``cwru``, ``skab``, ``nab``)."""
    return PLANTS_DIR / f"{name}.yaml"


@functools.cache
def _cached(path: str) -> Plant:
    return load_plant(path)


def set_default_plant(path: str | Path) -> Plant:
    """Make the plant file at ``path`` this process's default plant (validated first; sets
    ``PLANTPULSE_PLANT``, so child processes inherit it)."""
    plant = _cached(str(path))
    os.environ["PLANTPULSE_PLANT"] = str(path)
    return plant


def default_plant() -> Plant:
    """The plant named by ``PLANTPULSE_PLANT`` (default: the bundled demo plant), loaded once
    per path."""
    return _cached(os.environ.get("PLANTPULSE_PLANT") or str(bundled_plant("demo")))
