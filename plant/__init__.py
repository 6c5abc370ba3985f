"""The plant model: sites, assets, their parts (bearings, shafts), sensors and contracts,
sensor relationships and topology, declared in a YAML plant file; a leaf package (it uses
``physics`` only) read by both planes.

>>> plant = default_plant()
>>> plant.contract("pump-01", "vib_de").sample_rate_hz
12000.0
>>> plant.bearing("cwru-IR014_1").n_balls
9
"""

from plant.contract import Relationship, SensorContract
from plant.model import (
    PLANTS_DIR,
    Asset,
    Component,
    Edge,
    Plant,
    PlantError,
    Sensor,
    bundled_plant,
    default_plant,
    load_plant,
)

__all__ = [
    "SensorContract",
    "Relationship",
    "Plant",
    "PlantError",
    "Asset",
    "Component",
    "Edge",
    "Sensor",
    "PLANTS_DIR",
    "bundled_plant",
    "default_plant",
    "load_plant",
]
