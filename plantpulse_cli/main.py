"""Entry point of the ``plantpulse`` command."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Any

# Only the standard library at import time: `plantpulse --help` must not pay for MLflow, SciPy,
# Bytewax or Dagster (seconds each).  Each command imports what it needs when it runs.

BENCHES = (
    "cwru",
    "cwru_stream",
    "rul",
    "features",
    "validation",
    "stream",
    "skab",
    "nab",
    "detectors",
    "retrain_loop",
    "plant_model",
    "plant",
    "reliability",
    "storage",
    "adapters",
    "outbound",
)
LABEL_KINDS = ("failure", "repair", "inspection", "normal_operation", "operating_change")
EXIT_USER_ERROR, EXIT_REFUSED, EXIT_UNHEALTHY = 2, 3, 4

USER_ERRORS = (
    ("lake.store", "LakeError"),
    ("physics.datasets", "DatasetError"),
    ("bytewax_flows.replay", "UnknownDatasetError"),
    ("models.registry", "ModelNotFoundError"),
    ("plantpulse_cli.broker", "BrokerError"),
    ("plantpulse_cli.checks", "UsageError"),
    ("plant.errors", "PlantError"),
)
"""Errors the user can fix (printed as one line, exit 2), by module and class name: a module
that was never imported cannot have raised its error, so none is imported just to catch it."""


def _user_error(exc: BaseException) -> bool:
    classes = [getattr(sys.modules[mod], name) for mod, name in USER_ERRORS if mod in sys.modules]
    return isinstance(exc, tuple(classes))


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
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
    up.add_argument(
        "--adapters",
        default=None,
        metavar="PLANT.yaml",
        help="run the protocol adapters this plant file declares beside the stream (implies "
        "--mqtt; the stream checks that plant's contracts)",
    )
    up.add_argument(
        "--mqtt-tls",
        default=None,
        metavar="[HOST:]PORT",
        type=_listen_address,
        help="the broker also listens with TLS on PORT (all interfaces, or HOST), for clients on "
        "other machines; certificates generated under the state directory (mosquitto/tls/)",
    )
    up.add_argument(
        "--no-technician",
        action="store_true",
        help="no simulated technician confirming alerts on faulted machines (simulator only)",
    )
    sql = sub.add_parser("sql", help="run one read-only SQL query over the lake's tables (DuckDB)")
    sql.add_argument("query", help='one SELECT, e.g. "select * from alerts"')
    sql.add_argument(
        "--limit",
        type=_positive_int,
        default=1000,
        help="print at most N rows (default 1000; says so when rows were cut)",
    )
    sql.add_argument("--all", action="store_true", help="no row limit")
    replay = sub.add_parser(
        "replay", help="replay a reference data set through the stream into the lake"
    )
    replay.add_argument("dataset", nargs="?", help="cmapss, cwru, nab or skab (or --plant)")
    replay.add_argument(
        "--plant",
        default=None,
        help="a plant file whose replay: section says "
        "what to read; the stream checks its contracts",
    )
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
    pr.add_argument(
        "--max-latency-ratio",
        type=float,
        default=1.5,
        help="candidate / champion prediction time, measured together (default 1.5)",
    )
    pr.add_argument("--json", action="store_true")
    rb = sub.add_parser("rollback", help="move champion back to the version it replaced")
    rb.add_argument("model", help="fault, rul or a registered model name")
    rb.add_argument("--reason", required=True, help="why (recorded in model_decisions)")
    rb.add_argument("--json", action="store_true")
    lb = sub.add_parser(
        "label",
        help="record a technician's finding (failure, repair, inspection) or a new normal "
        "(normal_operation, operating_change: the stream re-baselines) in maintenance_events",
    )
    lb.add_argument("target", help="an alert_id (the label confirms that alert) or an asset_id")
    lb.add_argument("--kind", required=True, choices=LABEL_KINDS)
    lb.add_argument(
        "--component",
        default=None,
        help="outer_race, inner_race, ball (bearing_ prefix optional) or <sensor_id>_sensor "
        "(not needed for normal_operation and operating_change)",
    )
    lb.add_argument(
        "--ts",
        default=None,
        help="when the condition held (ISO 8601, UTC if no zone); default: the alert's opening "
        "time, or now for an asset",
    )
    lb.add_argument("--detail", default=None, help="free text, e.g. the work order")
    lb.add_argument("--json", action="store_true")
    be = sub.add_parser("bench", help=f"run a benchmark: {', '.join(BENCHES)}")
    be.add_argument("name", help=", ".join(BENCHES))
    be.add_argument("args", nargs=argparse.REMAINDER, help="passed on (e.g. --quick)")
    from plantpulse_cli import plant as plant_cli  # argparse only; the model loads when run

    plant_cli.add_parser(sub)
    from plantpulse_cli import sensors as sensors_cli

    sensors_cli.add_parser(sub)
    from plantpulse_cli import adapters as adapters_cli

    adapters_cli.add_parser(sub)
    return p


def _table(rows: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

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
        from rich.console import Console

        render(Console(width=200), data)


def _render_status(con: Any, s: dict[str, Any]) -> None:
    con.print(_table(s["tables"], f"lake: {s['lake']}"))
    con.print(_table(s["models"], "models (MLflow alias 'champion')"))
    stream = s["stream"]
    ago = stream["last_commit_s_ago"]
    con.print(
        f"open alerts: {s['open_alerts']}    stream: "
        + ("no data yet" if ago is None else f"last commit {ago:.0f} s ago")
        + (" (healthy)" if stream["healthy"] else " (not running?)")
    )


def _render_decision(con: Any, d: dict[str, Any]) -> None:
    con.print(f"[bold]{d['decision']}[/bold] {d['model']}")
    for r in d["reasons"]:
        con.print(f"  {r}")


def _ops(args: argparse.Namespace) -> int:
    from lake import Settings
    from plantpulse_cli import ops
    from plantpulse_cli.checks import check_readable_lake

    settings = Settings.from_env()
    if args.command in ("status", "alerts"):
        check_readable_lake(settings.lake_uri)
    if args.command == "status":
        s = ops.status(settings)
        _show(args, s, _render_status)
        return 0
    if args.command == "alerts":
        rows = ops.alerts(settings, days=args.days, only_open=args.open)
        _show(args, rows, lambda con, r: con.print(_table(r, "alerts")))
        return 0
    if args.command == "promote":
        from models.gate import GatePolicy

        policy = GatePolicy(args.min_improvement, args.slice_tolerance, args.max_latency_ratio)
        d = ops.promote(settings, args.model, args.version, policy)
        _show(args, d, _render_decision)
        return 0 if d["decision"] == "promote" else EXIT_REFUSED
    d = ops.roll_back(settings, args.model, args.reason)
    _show(args, d, _render_decision)
    return 0


def _format_rows(names: list[str], rows: list[tuple]) -> str:
    """A plain, aligned text table (header line, then one line per row; NULL for nulls)."""
    cells = [["NULL" if v is None else str(v) for v in r] for r in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _sql(args: argparse.Namespace) -> int:
    from lake import Lake, Settings
    from lake.sql import run
    from plantpulse_cli.checks import check_readable_lake

    settings = Settings.from_env()
    check_readable_lake(settings.lake_uri)
    result = run(Lake(settings.lake_uri), args.query, limit=None if args.all else args.limit)
    table = result.table
    names = table.column_names
    rows = list(zip(*(table.column(n).to_pylist() for n in names), strict=True)) if names else []
    print(_format_rows(names, rows) if names else "(no columns)")
    n = table.num_rows
    if result.truncated:
        print(
            f"({n} rows shown; the query returned more: cut at --limit {result.limit},"
            " raise it or use --all)",
            file=sys.stderr,
        )
    elif n == 0:
        print("(0 rows)", file=sys.stderr)
    return 0


def _label(args: argparse.Namespace) -> int:
    from lake import Settings
    from plantpulse_cli.label import record_label

    row = record_label(
        Settings.from_env(),
        args.target,
        kind=args.kind,
        component=args.component,
        ts=args.ts,
        detail=args.detail,
    )
    if args.json:
        print(json.dumps(row, default=str))
    else:
        print(
            f"recorded {row['kind']} of {row['component']} on {row['asset_id']} at "
            f"{row['ts']} in maintenance_events"
        )
    return 0


def _bench(name: str, rest: list[str]) -> int:
    if name not in BENCHES:
        print(
            f"error: unknown benchmark {name!r}; choose from {', '.join(BENCHES)}", file=sys.stderr
        )
        return EXIT_USER_ERROR
    importlib.import_module(f"bench.{name}").main(rest)
    return 0


def _listen_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` as ``(host, port)``; all interfaces when there is no host."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not [HOST:]PORT") from None
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"port {number} is not between 1 and 65535")
    return host or "0.0.0.0", number


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "up":
            from plantpulse_cli.up import up

            mqtt = args.mqtt if args.mqtt is not None or not args.adapters else 1883
            return up(
                args.host,
                args.port,
                ui=not args.no_ui,
                duration_s=args.duration,
                mqtt_port=mqtt,
                technician=not args.no_technician,
                adapters=args.adapters,
                mqtt_tls=args.mqtt_tls,
            )
        if args.command == "adapters":
            from plantpulse_cli.adapters import run as run_adapters

            return run_adapters(args)
        if args.command == "replay":
            from plantpulse_cli.replay import replay

            return replay(
                args.dataset,
                speed=None if args.asap else args.speed,
                data_dir=args.data,
                plant_file=args.plant,
            )
        if args.command in ("status", "alerts", "promote", "rollback"):
            return _ops(args)
        if args.command == "bench":
            return _bench(args.name, args.args)
        if args.command == "plant":
            from plantpulse_cli.plant import run

            return run(args)
        if args.command == "sensors":
            from plantpulse_cli.sensors import run as run_sensors

            return run_sensors(args)
        if args.command == "sql":
            return _sql(args)
        if args.command == "label":
            return _label(args)
    except Exception as exc:
        if not _user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 1


if __name__ == "__main__":
    sys.exit(main())
