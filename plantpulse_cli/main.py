"""Entry point of the ``plantpulse`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from bytewax_flows.replay import UnknownDatasetError
from lake import LakeError
from physics.datasets import DatasetError


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
    sql = sub.add_parser("sql", help="run a read-only SQL query over the lake's tables")
    sql.add_argument("query")
    replay = sub.add_parser(
        "replay", help="replay a reference data set through the stream into the lake"
    )
    replay.add_argument("dataset", help="cmapss, cwru, nab or skab")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=_positive, default=None, help="N times real time (1 = real time)"
    )
    pace.add_argument("--asap", action="store_true", help="as fast as possible (the default)")
    replay.add_argument("--data", default=None, help="data directory (default: PLANTPULSE_DATA)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "up":
            from plantpulse_cli.up import up

            return up(args.host, args.port, ui=not args.no_ui, duration_s=args.duration)
        if args.command == "replay":
            from plantpulse_cli.replay import replay

            return replay(args.dataset, speed=None if args.asap else args.speed, data_dir=args.data)
        if args.command == "sql":
            from lake import Lake
            from lake.sql import query

            print(query(Lake.from_env(), args.query).to_pandas().to_string(index=False))
            return 0
    except (LakeError, DatasetError, UnknownDatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
