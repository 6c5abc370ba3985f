"""Entry point of the ``plantpulse`` command."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from bytewax_flows.replay import UnknownDatasetError
from lake import LakeError
from models.registry import ModelNotFoundError
from physics.datasets import DatasetError
from plant.errors import PlantError
from plantpulse_cli.broker import BrokerError

BENCHES = (
    "cwru", "cwru_stream", "rul", "features", "validation", "stream", "skab", "nab", "retrain_loop",
    "plant_model",
)
EXIT_USER_ERROR, EXIT_REFUSED, EXIT_UNHEALTHY = 2, 3, 4


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plantpulse", description="PlantPulse predictive-maintenance pipeline"
    )
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up", help="run the Dagster UI + daemon and a streaming worker (what `make run` does)"
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=3000)
    up.add_argument("--no-ui", action="store_true", help="only the streaming worker")
    up.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    up.add_argument(
        "--mqtt",
        nargs="?",
        type=int,
        const=1883,
        default=None,
        metavar="PORT",
        help="run a Mosquitto broker (installed if missing) on PORT (1883) and stream from it",
    )
    sql = sub.add_parser("sql", help="run a read-only SQL query over the lake's tables")
    sql.add_argument("query")
    replay = sub.add_parser(
        "replay", help="replay a reference data set through the stream into the lake"
    )
    replay.add_argument("dataset", nargs="?", help="cmapss, cwru, nab or skab (or --plant)")
    replay.add_argument("--plant", default=None, help="a plant file whose replay: section says "
                        "what to read; the stream checks its contracts")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=_positive, default=None, help="N times real time (1 = real time)"
    )
    pace.add_argument("--asap", action="store_true", help="as fast as possible (the default)")
    replay.add_argument("--data", default=None, help="data directory (default: PLANTPULSE_DATA)")
    st = sub.add_parser(
        "status", help="tables (rows, freshness, last commit), champions, open alerts, stream"
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    al = sub.add_parser("alerts", help="open and recent alerts with their top features")
    al.add_argument("--days", type=_positive, default=7.0, help="recent = opened in N days")
    al.add_argument("--open", action="store_true", help="only open alerts")
    al.add_argument("--json", action="store_true")
    pr = sub.add_parser("promote", help="put a model version through the promotion gate")
    pr.add_argument("model", help="fault, rul or a registered model name")
    pr.add_argument("version", help="the registered version to consider")
    pr.add_argument("--min-improvement", type=float, default=0.01)
    pr.add_argument("--slice-tolerance", type=float, default=0.10)
    pr.add_argument("--latency-budget-ms", type=float, default=100.0)
    pr.add_argument("--json", action="store_true")
    rb = sub.add_parser("rollback", help="move champion back to the version it replaced")
    rb.add_argument("model", help="fault, rul or a registered model name")
    rb.add_argument("--reason", required=True, help="why (recorded in model_decisions)")
    rb.add_argument("--json", action="store_true")
    be = sub.add_parser("bench", help=f"run a benchmark: {', '.join(BENCHES)}")
    be.add_argument("name", help=", ".join(BENCHES))
    be.add_argument("args", nargs=argparse.REMAINDER, help="passed on (e.g. --quick)")
    from plantpulse_cli import plant as plant_cli  # argparse only; the model loads when run

    plant_cli.add_parser(sub)
    return p


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in rows[0] if rows else ["(none)"]:
        t.add_column(col)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r.values()])
    return t


def _show(args: argparse.Namespace, data: Any, render) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        render(Console(width=200), data)


def _render_status(con: Console, s: dict[str, Any]) -> None:
    con.print(_table(s["tables"], f"lake: {s['lake']}"))
    con.print(_table(s["models"], "models (MLflow alias 'champion')"))
    stream = s["stream"]
    ago = stream["last_commit_s_ago"]
    con.print(
        f"open alerts: {s['open_alerts']}    stream: "
        + ("no data yet" if ago is None else f"last commit {ago:.0f} s ago")
        + (" (healthy)" if stream["healthy"] else " (not running?)")
    )


def _render_decision(con: Console, d: dict[str, Any]) -> None:
    con.print(f"[bold]{d['decision']}[/bold] {d['model']}")
    for r in d["reasons"]:
        con.print(f"  {r}")


def _ops(args: argparse.Namespace) -> int:
    from lake import Settings
    from models.gate import GatePolicy
    from plantpulse_cli import ops

    settings = Settings.from_env()
    if args.command == "status":
        s = ops.status(settings)
        _show(args, s, _render_status)
        return 0
    if args.command == "alerts":
        rows = ops.alerts(settings, days=args.days, only_open=args.open)
        _show(args, rows, lambda con, r: con.print(_table(r, "alerts")))
        return 0
    if args.command == "promote":
        policy = GatePolicy(args.min_improvement, args.slice_tolerance, args.latency_budget_ms)
        d = ops.promote(settings, args.model, args.version, policy)
        _show(args, d, _render_decision)
        return 0 if d["decision"] == "promote" else EXIT_REFUSED
    d = ops.roll_back(settings, args.model, args.reason)
    _show(args, d, _render_decision)
    return 0


def _bench(name: str, rest: list[str]) -> int:
    if name not in BENCHES:
        print(f"error: unknown benchmark {name!r}; choose from {', '.join(BENCHES)}",
              file=sys.stderr)
        return EXIT_USER_ERROR
    importlib.import_module(f"bench.{name}").main(rest)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "up":
            from plantpulse_cli.up import up

            return up(args.host, args.port, ui=not args.no_ui, duration_s=args.duration,
                      mqtt_port=args.mqtt)
        if args.command == "replay":
            from plantpulse_cli.replay import replay

            return replay(args.dataset, speed=None if args.asap else args.speed, data_dir=args.data,
                          plant_file=args.plant)
        if args.command in ("status", "alerts", "promote", "rollback"):
            return _ops(args)
        if args.command == "bench":
            return _bench(args.name, args.args)
        if args.command == "plant":
            from plantpulse_cli.plant import run

            return run(args)
        if args.command == "sql":
            from lake import Lake
            from lake.sql import query

            print(query(Lake.from_env(), args.query).to_pandas().to_string(index=False))
            return 0
    except (LakeError, DatasetError, UnknownDatasetError, ModelNotFoundError, BrokerError,
            PlantError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 1


if __name__ == "__main__":
    sys.exit(main())
