"""Sensor contracts, declared once: what every known sensor measures and what is plausible.

The declarations live in the plant file (``plant/plants/demo.yaml`` by default, or the file
named by ``PLANTPULSE_PLANT``), per asset: ``default_plant().contract(asset_id, sensor_id)``.
This module keeps the world-wide view by sensor id that callers used before plant files
(``SENSORS``, ``contract_for``, ``RELATIONSHIPS``), derived from that same plant.

The stream's vectorised checks (``expectations.checks``) and the batch validation suites are
both derived from these declarations, so the two planes cannot disagree about what is valid.
"""

from __future__ import annotations

from pathlib import Path

from plant import Plant, Relationship, SensorContract, default_plant, set_default_plant

__all__ = [
    "SensorContract",
    "SENSORS",
    "contract_for",
    "contract_at",
    "use_plant",
    "UnknownSensorError",
    "Relationship",
    "RELATIONSHIPS",
]


class UnknownSensorError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


SENSORS: dict[str, SensorContract] = default_plant().contracts_by_sensor()
"""Every sensor id of the default plant and its contract (the first declaration of the id)."""

RELATIONSHIPS: tuple[Relationship, ...] = default_plant().all_relationships()
"""Every distinct sensor relationship of the default plant."""


def contract_for(sensor_id: str) -> SensorContract:
    """The contract of ``sensor_id``; ``UnknownSensorError`` if none is declared."""
    try:
        return SENSORS[sensor_id]
    except KeyError:
        raise UnknownSensorError(f"unknown sensor {sensor_id!r}") from None


def contract_at(asset_id: str, sensor_id: str, plant: Plant | None = None) -> SensorContract:
    """The contract of ``sensor_id`` on ``asset_id`` in ``plant`` (default: the default plant);
    ``UnknownSensorError`` if that asset does not declare it."""
    contract = (plant or default_plant()).contract(asset_id, sensor_id)
    if contract is None:
        raise UnknownSensorError(f"unknown sensor {sensor_id!r} on asset {asset_id!r}")
    return contract


def use_plant(path: str | Path) -> Plant:
    """Make the plant file at ``path`` the default plant of this process, and ``SENSORS`` its
    contracts (updated in place, so modules that imported it see the change)."""
    plant = set_default_plant(path)
    SENSORS.clear()
    SENSORS.update(plant.contracts_by_sensor())
    return plant
