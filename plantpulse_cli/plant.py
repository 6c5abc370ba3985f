"""``plantpulse plant validate FILE`` and ``plantpulse plant show [FILE] [--json]``.

A bad plant file is one line on stderr (file:line: field: problem) and exit 2.  Imports of the
plant model happen when the command runs, not when the CLI starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_USER_ERROR = 2


def add_parser(sub: Any) -> None:
    """Register ``plant validate|show`` on the CLI's subparsers."""
    p = sub.add_parser("plant", help="validate or show a plant file (assets, sensors, topology)")
    cmd = p.add_subparsers(dest="plant_command", required=True)
    v = cmd.add_parser("validate", help="check a plant file; one line per problem, exit 2")
    v.add_argument("file")
    s = cmd.add_parser("show", help="assets, sensors and contracts, topology as tables")
    s.add_argument(
        "file",
        nargs="?",
        default=None,
        help="plant file (default: PLANTPULSE_PLANT or the bundled demo plant)",
    )
    s.add_argument("--asset", default=None, help="only assets whose id matches this glob")
    s.add_argument("--json", action="store_true", help="the resolved plant as JSON")


def run(args: argparse.Namespace) -> int:
    from plant.errors import PlantError

    try:
        return _validate(args.file) if args.plant_command == "validate" else _show(args)
    except PlantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def _load(path: str | None):
    import os

    from plant import bundled_plant, load_plant

    return load_plant(path or os.environ.get("PLANTPULSE_PLANT") or bundled_plant("demo"))


def _validate(path: str) -> int:
    plant = _load(path)
    n_sensors = sum(1 for _ in plant.iter_sensors())
    print(
        f"ok: {path}: plant {plant.name!r}, {len(plant.sites)} sites, {len(plant.assets)} "
        f"assets, {n_sensors} sensors, {len(plant.topology)} topology edges"
    )
    return 0


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def _show(args: argparse.Namespace) -> int:
    import fnmatch

    from rich.console import Console
    from rich.table import Table

    plant = _load(args.file)
    data = plant.to_dict()
    if args.asset:
        data["assets"] = [
            a for a in data["assets"] if fnmatch.fnmatchcase(a["asset_id"], args.asset)
        ]
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    con = Console(width=200)
    con.print(f"[bold]plant {plant.name}[/bold] ({plant.path}): {plant.description}")
    assets = Table(title="assets", title_justify="left")
    for col in (
        "asset",
        "site",
        "kind",
        "matches",
        "nominal rpm",
        "bearings",
        "sensors",
        "relationships",
    ):
        assets.add_column(col)
    for a in data["assets"]:
        assets.add_row(
            a["asset_id"],
            a["site"],
            a["kind"] or "",
            a["match"] or "",
            _fmt(a["nominal_speed_rpm"]),
            ", ".join(
                f"{c['component_id']}: {c['bearing_name']}"
                for c in a["components"]
                if c["bearing_name"]
            ),
            str(len(a["sensors"])),
            "; ".join(f"{r['target']} ~ {' + '.join(r['inputs'])}" for r in a["relationships"]),
        )
    con.print(assets)
    sensors = Table(title="sensors and contracts", title_justify="left")
    for col in (
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
    ):
        sensors.add_column(col)
    for a in data["assets"]:
        for s in a["sensors"]:
            sensors.add_row(
                a["asset_id"],
                s["sensor_id"],
                s["tag"] or "",
                s["kind"],
                s["unit"],
                f"{s['low']:g} .. {s['high']:g}",
                f"{s['sample_rate_hz']:.4g}",
                "yes" if s["frames"] else "",
                _fmt(s["resolution"] or None),
                _fmt(s["allowed_lateness_s"]),
                _fmt(s["max_gap_s"]),
                _fmt(s["stuck_after_s"]),
                s["watched_as"],
            )
    con.print(sensors)
    for a in data["assets"]:
        for s in a["sensors"]:
            if s["watched_as_reason"]:
                con.print(
                    f"{a['asset_id']}/{s['sensor_id']} watched as {s['watched_as']}: "
                    f"{s['watched_as_reason']}"
                )
    topology = Table(title="topology", title_justify="left")
    for col in ("from", "to", "kind", "description"):
        topology.add_column(col)
    for e in data["topology"]:
        topology.add_row(e["source"], e["target"], e["kind"], e["description"])
    con.print(topology)
    return 0
