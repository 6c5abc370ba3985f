"""The resolved plant as tables of text: its assets, its sensors with their contracts, and its
topology.  What ``plantpulse plant show`` prints and the Dagster ``plant_model`` asset shows, from
one place."""

from __future__ import annotations

import fnmatch

from plant.resolved import Plant

__all__ = ["Table", "plant_tables", "SENSOR_COLUMNS"]

Table = tuple[list[str], list[list[str]]]
"""A table's header and rows, every cell text ("" for nothing)."""

SENSOR_COLUMNS = [
    "asset",
    "sensor",
    "tag",
    "kind",
    "unit",
    "range",
    "rate Hz",
    "frames",
    "resolution",
    "lateness s",
    "max gap s",
    "stuck after s",
    "watched as",
    "why",
]


def _g(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def plant_tables(plant: Plant, assets: str | None = None) -> dict[str, Table]:
    """``assets``, ``sensors`` (with contracts) and ``topology`` of ``plant``; with ``assets``
    (a glob of asset ids), only those assets and their sensors.

    >>> from plant import bundled_plant, load_plant
    >>> tables = plant_tables(load_plant(bundled_plant("demo")), assets="pump-02")
    >>> header, rows = tables["sensors"]
    >>> dict(zip(header, rows[0]))["range"], len(rows)
    ('-40 .. 200', 5)
    """
    chosen = [
        a
        for a in plant.assets.values()
        if assets is None or fnmatch.fnmatchcase(a.asset_id, assets)
    ]
    asset_rows = [
        [
            a.asset_id,
            a.site,
            a.kind or "",
            a.match or "",
            _g(a.nominal_speed_rpm),
            ", ".join(
                f"{c.component_id}: {c.bearing_name}" for c in a.components if c.bearing_name
            ),
            str(len(a.sensors)),
            "; ".join(f"{r.target} ~ {' + '.join(r.inputs)}" for r in a.relationships),
        ]
        for a in chosen
    ]
    sensor_rows = [
        [
            a.asset_id,
            s.sensor_id,
            s.tag or "",
            c.kind,
            c.unit,
            f"{c.low:g} .. {c.high:g}",
            f"{c.sample_rate_hz:.4g}",
            "yes" if c.frames else "",
            _g(c.resolution or None),
            _g(c.allowed_lateness_s),
            _g(c.max_gap_s),
            _g(c.stuck_after_s),
            c.watched_as,
            s.watched_as_reason or "",
        ]
        for a in chosen
        for s in a.sensors.values()
        for c in (s.contract,)
    ]
    return {
        "assets": (
            [
                "asset",
                "site",
                "kind",
                "matches",
                "nominal rpm",
                "bearings",
                "sensors",
                "relationships",
            ],
            asset_rows,
        ),
        "sensors": (SENSOR_COLUMNS, sensor_rows),
        "topology": (
            ["from", "to", "kind", "description"],
            [[e.source, e.target, e.kind, e.description] for e in plant.topology],
        ),
    }
