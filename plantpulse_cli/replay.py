"""``plantpulse replay [DATASET] [--plant FILE] [--data PATH]``: a data set through the stream.

A data set name replays that reference data set as its bundled plant file describes it
(``plant/plants/<name>.yaml``); ``--plant FILE`` replays what FILE's ``replay:`` section names
(any SKAB folder, a NAB series, a C-MAPSS split, CWRU recordings) and makes FILE the plant whose
contracts the stream checks.  ``--data`` is the data directory (default ``PLANTPULSE_DATA``).
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.table import Table

from lake import Lake, Settings

TABLES = ("readings", "features", "scores", "alerts", "drift_events", "frames", "dead_letter")


def replay(
    dataset: str | None,
    speed: float | None = None,
    data_dir: str | None = None,
    plant_file: str | None = None,
) -> int:
    from bytewax.testing import run_main

    from bytewax_flows.replay import ReplaySource, dataset_messages, plant_messages
    from expectations.contracts import use_plant

    if (dataset is None) == (plant_file is None):
        print(
            "error: give a data set name (cmapss, cwru, nab, skab) or --plant FILE, not both",
            file=sys.stderr,
        )
        return 2
    settings = Settings.from_env()
    data = data_dir or settings.data_dir
    console = Console(stderr=True)
    what = dataset or plant_file
    with console.status(f"reading {what} from {data} ..."):
        if dataset is None:
            timelines = plant_messages(use_plant(str(plant_file)), data)
        else:  # the stream keeps the default plant, which includes every data set's rig
            timelines = dataset_messages(dataset, data)
    from bytewax_flows.telemetry import get_flow  # after the plant is chosen

    lake = Lake(settings.lake_uri)
    lake.create_tables()
    before = {t: lake.count(t) for t in TABLES}
    messages = sum(len(t) for t in timelines.values())
    pace = "as fast as possible" if speed is None else f"at {speed:g}x real time"
    with console.status(f"replaying {messages:,} messages of {len(timelines)} assets {pace} ..."):
        logging.getLogger("bytewax").setLevel(logging.WARNING)
        run_main(get_flow(ReplaySource(timelines, speed=speed), settings.lake_uri))
    table = Table(title=f"replay {what} → {settings.lake_uri}")
    table.add_column("table")
    table.add_column("new rows", justify="right")
    for t in TABLES:
        table.add_row(t, f"{lake.count(t) - before[t]:,}")
    Console().print(table)
    return 0
