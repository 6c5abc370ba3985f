"""The plant model: sites, assets, their parts (bearings, shafts), sensors and contracts,
sensor relationships and topology, declared in a YAML plant file; a leaf package (it uses
``physics`` only) read by both planes.  Names load on first use, so importing ``PlantError``
(for a command's error handling) costs no pydantic import.

>>> plant = default_plant()
>>> plant.contract("pump-01", "vib_de").sample_rate_hz
12000.0
>>> plant.bearing("cwru-IR014_1").n_balls
9
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "SensorContract",
    "Relationship",
    "Plant",
    "PlantError",
    "Asset",
    "HealthIndicator",
    "Component",
    "Edge",
    "Sensor",
    "PLANTS_DIR",
    "bundled_plant",
    "default_plant",
    "set_default_plant",
    "load_plant",
]

_WHERE = {
    "SensorContract": "plant.contract",
    "Relationship": "plant.contract",
    "PlantError": "plant.errors",
    **{
        n: "plant.model"
        for n in __all__
        if n not in ("SensorContract", "Relationship", "PlantError")
    },
}

if TYPE_CHECKING:
    from plant.contract import Relationship, SensorContract
    from plant.errors import PlantError
    from plant.model import (
        PLANTS_DIR,
        Asset,
        Component,
        Edge,
        HealthIndicator,
        Plant,
        Sensor,
        bundled_plant,
        default_plant,
        load_plant,
        set_default_plant,
    )


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'plant' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
