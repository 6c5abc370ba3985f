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


def _show(args: argparse.Namespace) -> int:
    import fnmatch

    from rich.console import Console
    from rich.table import Table

    from plant.tables import plant_tables

    plant = _load(args.file)
    if args.json:
        data = plant.to_dict()
        if args.asset:
            data["assets"] = [
                a for a in data["assets"] if fnmatch.fnmatchcase(a["asset_id"], args.asset)
            ]
        print(json.dumps(data, indent=2, default=str))
        return 0
    tables = plant_tables(plant, args.asset or None)
    con = Console(width=200)
    con.print(f"[bold]plant {plant.name}[/bold] ({plant.path}): {plant.description}")
    titles = {"assets": "assets", "sensors": "sensors and contracts", "topology": "topology"}
    for name, (header, rows) in tables.items():
        # a sensor's reason for its declared view is a sentence: printed below its table
        shown = header[:-1] if name == "sensors" else header
        table = Table(title=titles[name], title_justify="left")
        for col in shown:
            table.add_column(col)
        for row in rows:
            table.add_row(*row[: len(shown)])
        con.print(table)
        if name == "sensors":
            for row in rows:
                if row[-1]:
                    con.print(f"{row[0]}/{row[1]} watched as {row[-2]}: {row[-1]}")
    return 0
