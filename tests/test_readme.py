"""The README's examples run as written: every Python block, and every `plantpulse` command of
its shell blocks (except the long-running `up`), in a directory whose `.plantpulse/` state the
real stream has filled."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bytewax.testing import run_main

from bytewax_flows.sources import SimulatorSource
from bytewax_flows.telemetry import get_flow
from dataplane.scoring import VIBRATION_WARMUP
from lake import Lake
from physics.simulator import default_fleet
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
COMMANDS = [
    line.strip()
    for block in re.findall(r"```bash\n(.*?)```", README, re.S)
    for line in block.splitlines()
    if line.strip().startswith(".venv/bin/plantpulse") and " up" not in line
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout-like directory: `.venv` (this interpreter's) and `.plantpulse/` state with an
    hour-old simulated fleet whose pumps develop faults (so there are alerts)."""
    root = tmp_path_factory.mktemp("readme")
    (root / ".venv").symlink_to(Path(sys.executable).parents[1])
    lake = Lake(root / ".plantpulse" / "lake")
    lake.create_tables()
    start = (time.time_ns() // 1000 - 3_600_000_000) // 1_000_000 * 1_000_000
    # no classifier is trained here: the alerts come from the vibration detectors, which score
    # once their warm-up of VIBRATION_WARMUP frames (one a second) is over
    onset = VIBRATION_WARMUP + 30
    fleet = default_fleet(
        3, start_us=start, outer_race_at_s=onset, inner_race_at_s=onset + 30, time_to_failure_s=200
    )
    tracking = f"sqlite:///{root / '.plantpulse' / 'mlflow' / 'mlflow.db'}"
    (root / ".plantpulse" / "mlflow").mkdir(parents=True)
    run_main(get_flow(SimulatorSource(fleet, n_chunks=onset + 210), lake.uri, tracking))
    assert lake.count("alerts") > 0
    return root


def _env() -> dict[str, str]:
    drop = {
        "PLANTPULSE_HOME",
        "PLANTPULSE_LAKE",
        "MLFLOW_TRACKING_URI",
        "PLANTPULSE_ARTIFACTS",
        "DAGSTER_HOME",
        "PLANTPULSE_RECOVERY",
    }
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_the_readme_has_examples():
    assert len(PYTHON_BLOCKS) >= 1 and len(COMMANDS) >= 4


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_python_block_runs(workdir: Path, block: str):
    out = subprocess.run(
        [sys.executable, "-c", block],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pump-02" in out.stdout  # the queries print real rows


@pytest.mark.parametrize("command", COMMANDS)
def test_command_runs(workdir: Path, command: str):
    out = subprocess.run(
        command, shell=True, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip(), "printed nothing"
