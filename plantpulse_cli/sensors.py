"""``plantpulse sensors list|show|accept``: sensors the plant does not declare, whose readings the
stream kept in ``unknown_readings``.

``list`` shows every landed sensor (readings, time span, whether it is declared now, the
proposal's kind); ``show ASSET SENSOR`` its profile and the proposed plant-file entry;
``accept ASSET SENSOR`` writes that entry into the plant file (``--plant``, else
``PLANTPULSE_PLANT``, else the bundled demo plant), waits for a running stream to reload the
plant (it checks every 2 s) and to commit what it landed until then (``--settle`` seconds), and
replays the sensor's backlog into ``readings`` exactly once (accepting again, or re-running,
adds nothing twice; rows landed within the settle margin are taken by the next accept).  Errors are one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

EXIT_USER_ERROR = 2
SETTLE_S = 5.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sensors", help="sensors the plant does not declare: list, show, accept")
    cmd = p.add_subparsers(dest="sensors_command", required=True)
    ls = cmd.add_parser("list", help="every sensor with readings in unknown_readings")
    ls.add_argument("--json", action="store_true")
    for name, text in (
        ("show", "profile and proposed contract of one landed sensor"),
        (
            "accept",
            "declare the proposed sensor in the plant file and replay its backlog into readings",
        ),
    ):
        c = cmd.add_parser(name, help=text)
        c.add_argument("asset")
        c.add_argument("sensor")
        c.add_argument(
            "--plant",
            default=None,
            help="plant file (default: PLANTPULSE_PLANT or the bundled demo plant)",
        )
        c.add_argument("--json", action="store_true")
        if name == "accept":
            c.add_argument("--kind", default=None, help="override the guessed sensor kind")
            c.add_argument(
                "--settle",
                type=float,
                default=SETTLE_S,
                help=f"seconds a running stream may take to commit what it lands "
                f"(its snapshot interval and more; default {SETTLE_S:g}); rows landed "
                "more recently wait for the next accept.  0 when no stream runs",
            )


def _plant_path(arg: str | None) -> str:
    from plant import bundled_plant

    return arg or os.environ.get("PLANTPULSE_PLANT") or str(bundled_plant("demo"))


def _us(ts: Any) -> str:
    return "" if ts is None else str(ts)


def run(args: argparse.Namespace) -> int:
    from lake import Lake, Settings
    from plant import load_plant

    lake = Lake(Settings.from_env().lake_uri)
    if args.sensors_command == "list":
        return _list(lake, args)
    path = _plant_path(args.plant)
    plant = load_plant(path)
    if args.sensors_command == "show":
        return _show_one(lake, plant, args)
    return _accept(lake, path, plant, args)


def _list(lake: Any, args: argparse.Namespace) -> int:
    from lake.onboarding import landed_sensors
    from plant import load_plant

    plant = load_plant(_plant_path(None))
    t = landed_sensors(lake)
    kinds: dict[tuple[str, str], str] = {}
    if lake.exists("sensor_proposals"):
        p = lake.read_arrow("sensor_proposals", columns=["asset_id", "sensor_id", "kind"])
        kinds = {
            (a, s): k or ""
            for a, s, k in zip(*(p[c].to_pylist() for c in p.column_names), strict=True)
        }
    rows = [
        {
            "asset_id": r["asset_id"],
            "sensor_id": r["sensor_id"],
            "readings": r["n_readings"],
            "first_ts": _us(r["first_ts"]),
            "last_ts": _us(r["last_ts"]),
            "status": (
                "declared"
                if plant.contract(r["asset_id"], r["sensor_id"]) is not None
                else "unknown"
            ),
            "proposed_kind": kinds.get((r["asset_id"], r["sensor_id"]), ""),
        }
        for r in t.to_pylist()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sensors in unknown_readings", title_justify="left")
    for col in ("asset", "sensor", "readings", "first", "last", "status", "proposed kind"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    Console(width=200).print(table if rows else "no readings of undeclared sensors")
    return 0


def _proposal(lake: Any, plant: Any, asset: str, sensor: str) -> tuple[Any, dict[str, Any], bool]:
    """The profile, the entry to accept (the stored proposal the UI showed, else a fresh one),
    and whether it was the stored one."""
    from lake.onboarding import fresh_proposal, stored_proposal

    profile, entry = fresh_proposal(lake, plant, asset, sensor)
    stored = stored_proposal(lake, asset, sensor)
    return profile, stored or entry, stored is not None


def _show_one(lake: Any, plant: Any, args: argparse.Namespace) -> int:
    from plant.onboarding import proposal_yaml

    profile, entry, stored = _proposal(lake, plant, args.asset, args.sensor)
    declared = plant.contract(args.asset, args.sensor) is not None
    if args.json:
        print(
            json.dumps(
                {
                    "profile": profile.as_dict(),
                    "proposal": entry,
                    "stored": stored,
                    "declared": declared,
                },
                indent=2,
                default=str,
            )
        )
        return 0
    print(f"{args.asset}/{args.sensor}: {'declared in the plant' if declared else 'unknown'}")
    for k, v in profile.as_dict().items():
        if k not in ("asset_id", "sensor_id"):
            print(f"  {k}: {v}")
    print(
        f"proposed entry ({'from sensor_proposals' if stored else 'computed now'}), under "
        f"the asset's sensors:"
    )
    print(proposal_yaml(entry), end="")
    return 0


def _accept(lake: Any, path: str, plant: Any, args: argparse.Namespace) -> int:
    from lake.onboarding import replay_backlog
    from plant import load_plant
    from plant.edit import add_sensor

    changed = None
    if plant.contract(args.asset, args.sensor) is None:
        _, entry, _ = _proposal(lake, plant, args.asset, args.sensor)
        if args.kind:
            entry = dict(entry, kind=args.kind)
        changed = add_sensor(path, args.asset, entry)
        plant = load_plant(path)
        if args.settle > 0:  # the stream reloads within REFRESH_S, then commits what it landed
            from plant.watch import REFRESH_S

            time.sleep(args.settle + REFRESH_S)
    result = replay_backlog(
        lake, plant, args.asset, args.sensor, now_us=time.time_ns() // 1000, settle_s=args.settle
    )
    out = {
        "asset_id": args.asset,
        "sensor_id": args.sensor,
        "plant_file": str(changed) if changed else None,
        "replayed_readings": result.readings,
        "replayed_dead_letters": result.dead_letters,
        "replayed_before": result.already,
        "pending": result.pending,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            (
                f"declared {args.asset}/{args.sensor} in {changed}"
                if changed
                else f"{args.asset}/{args.sensor} was already declared"
            )
            + f"; replayed {result.readings} readings into readings, "
            f"{result.dead_letters} into dead_letter ({result.already} replayed before)"
            + (
                f"; {result.pending} landed in the last {args.settle:g} s: run accept again "
                "to replay them"
                if result.pending
                else ""
            )
        )
    return 0
