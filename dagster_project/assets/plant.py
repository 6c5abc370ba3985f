"""The plant model as a Dagster asset: its assets, sensors and contracts, and topology, shown
as markdown tables in the UI, from the same plant file both planes read."""

import dagster as dg

from plant import Plant, PlantError, default_plant, load_plant
from plant.tables import plant_tables as tables_of

__all__ = ["plant_model", "PlantConfig", "plant_tables"]


class PlantConfig(dg.Config):
    """``path``: a plant file to show instead of the default plant (``PLANTPULSE_PLANT``, else
    the bundled demo plant)."""

    path: str = ""


def _md(header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plant_tables(plant: Plant) -> dict[str, str]:
    """The plant as three markdown tables: ``assets``, ``sensors`` (with contracts),
    ``topology``."""
    return {name: _md(*table) for name, table in tables_of(plant).items()}


@dg.asset(
    group_name="plant",
    kinds={"yaml"},
    owners=["team:reliability"],
)
def plant_model(config: PlantConfig) -> dg.MaterializeResult:
    """The plant model both planes read: sites, assets (kind, bearings, nominal speed), every
    sensor's contract per asset, the sensor relationships calibration uses, and the topology
    (which asset feeds or drives which).  Materialise it after editing the plant file: a bad
    file fails with one line naming the file, the line and the field."""
    try:
        plant = load_plant(config.path) if config.path else default_plant()
    except PlantError as exc:
        raise dg.Failure(description=str(exc)) from None
    tables = plant_tables(plant)
    n_sensors = sum(1 for _ in plant.iter_sensors())
    return dg.MaterializeResult(
        metadata={
            "plant": plant.name,
            "path": dg.MetadataValue.path(plant.path),
            "sites": len(plant.sites),
            "assets": len(plant.assets),
            "sensor_count": n_sensors,
            "topology_edges": len(plant.topology),
            "asset_table": dg.MetadataValue.md(tables["assets"]),
            "sensor_contracts": dg.MetadataValue.md(tables["sensors"]),
            "topology": dg.MetadataValue.md(tables["topology"]),
        }
    )
