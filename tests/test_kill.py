"""kill -9 of a real streaming worker process, restart: zero lost, zero duplicated rows.

The worker snapshots every 5 s while its sink commits every second, so the kill lands after
commits that the last snapshot does not know about: the restart replays them, and only the
sink's offset-keyed commits keep them from landing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from bytewax.recovery import init_db_dir
from bytewax.testing import run_main

from bytewax_flows.telemetry import simulated_flow
from lake import Lake
from tests.conftest import REPO

CHUNKS = 120


def worker(lake: Path, recovery: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bytewax.run",
            f"bytewax_flows.telemetry:simulated_flow({CHUNKS}, 12.0)",
            "-r",
            str(recovery),
            "-s",
            "1",
            "-b",
            "0",
        ],
        cwd=REPO,
        env={**os.environ, "PLANTPULSE_LAKE": str(lake)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_sigkill_and_restart_neither_loses_nor_duplicates(tmp_path: Path):
    reference = Lake(tmp_path / "reference")
    run_main(simulated_flow(CHUNKS, None, reference.uri))

    lake, recovery = Lake(tmp_path / "lake"), tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    proc = worker(Path(lake.uri), recovery)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        lake.exists("readings") and lake.count("readings") > 1000
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = lake.count("readings")
    assert 0 < partial < reference.count("readings"), "the kill must land mid-run"

    again = worker(Path(lake.uri), recovery)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()[-2000:]

    for table, key in (
        ("readings", ["asset_id", "sensor_id", "ts"]),
        ("features", ["asset_id", "sensor_id", "window_end"]),
        ("scores", ["asset_id", "window_end"]),
    ):
        cols = [*key, "value"] if table == "readings" else key
        a = reference.read(table, columns=cols).sort_values(key).reset_index(drop=True)
        b = lake.read(table, columns=cols).sort_values(key).reset_index(drop=True)
        assert not b.duplicated(key).any(), f"duplicated rows in {table}"
        pd.testing.assert_frame_equal(a, b, obj=table)
