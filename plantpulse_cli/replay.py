"""``plantpulse replay <dataset>``: a reference data set through the stream into the lake."""

from __future__ import annotations

import logging

from bytewax.testing import run_main
from rich.console import Console
from rich.table import Table

from bytewax_flows.replay import ReplaySource, dataset_messages
from bytewax_flows.telemetry import get_flow
from lake import Lake, Settings

TABLES = ("readings", "features", "scores", "alerts", "drift_events", "frames", "dead_letter")


def replay(dataset: str, speed: float | None = None, data_dir: str | None = None) -> int:
    settings = Settings.from_env()
    console = Console(stderr=True)
    with console.status(f"reading {dataset} from {data_dir or settings.data_dir} ..."):
        timelines = dataset_messages(dataset, data_dir or settings.data_dir)
    lake = Lake(settings.lake_uri)
    lake.create_tables()
    before = {t: lake.count(t) for t in TABLES}
    messages = sum(len(t) for t in timelines.values())
    pace = "as fast as possible" if speed is None else f"at {speed:g}x real time"
    with console.status(f"replaying {messages:,} messages of {len(timelines)} assets {pace} ..."):
        logging.getLogger("bytewax").setLevel(logging.WARNING)
        run_main(get_flow(ReplaySource(timelines, speed=speed), settings.lake_uri))
    table = Table(title=f"replay {dataset} → {settings.lake_uri}")
    table.add_column("table")
    table.add_column("new rows", justify="right")
    for t in TABLES:
        table.add_row(t, f"{lake.count(t) - before[t]:,}")
    Console().print(table)
    return 0
