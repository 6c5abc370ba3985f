"""The ``plantpulse`` command: errors are one line and a non-zero exit; ``up`` runs everything."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lake import Lake
from tests.conftest import REPO, readings_rows

PLANTPULSE = str(Path(sys.executable).parent / "plantpulse")


def cli(
    *args: str, home: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PLANTPULSE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PLANTPULSE_HOME": str(home), **env},
    )


def test_sql_prints_results(tmp_path: Path):
    Lake(tmp_path / "lake").append("readings", readings_rows(4))
    for _ in range(4):  # repeated: exiting after a Delta scan once aborted now and then
        out = cli("sql", "select count(*) as n from readings", home=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["n", "4"]


@pytest.mark.parametrize(
    "bad", ["selec 1", "select * from no_such_table", "copy readings to '/tmp/x.csv'"]
)
def test_bad_sql_is_one_line_and_exit_2(tmp_path: Path, bad: str):
    out = cli("sql", bad, home=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: query failed:") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_up_with_unusable_lake_says_what_to_fix(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = cli(
        "up", "--no-ui", "--duration", "1", home=tmp_path, PLANTPULSE_LAKE=str(blocker / "lake")
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "PLANTPULSE_LAKE" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_up_serves_the_ui_grows_readings_and_stops_cleanly(tmp_path: Path):
    port = _free_port()
    proc = subprocess.Popen(
        [PLANTPULSE, "up", "--port", str(port), "--duration", "60"],
        cwd=REPO,
        env={**os.environ, "PLANTPULSE_HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lake = Lake(tmp_path / "lake")
    ui_ok, counts = False, []
    deadline = time.monotonic() + 55
    while time.monotonic() < deadline and not (
        ui_ok and len(counts) >= 2 and counts[-1] > counts[0] > 0
    ):
        time.sleep(2)
        with contextlib.suppress(OSError):
            ui_ok = (
                ui_ok
                or urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
            )
        n = lake.count("readings") if lake.exists("readings") else 0
        if n:
            counts.append(n)
    proc.send_signal(2)  # Ctrl-C
    output, _ = proc.communicate(timeout=60)
    assert ui_ok, output
    assert len(counts) >= 2 and counts[-1] > counts[0] > 0, (counts, output)
    assert proc.returncode == 0, output
    assert "stopping" in output
    leftovers = subprocess.run(["pgrep", "-f", f"-p {port}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
