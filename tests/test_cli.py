"""The ``plantpulse`` command: errors are one line and a non-zero exit; ``up`` runs everything."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from lake import Lake
from models.registry import FAULT_MODEL, champion_version, client
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
    Lake(tmp_path / "lake").create_tables()
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


# -- operator commands against a trained plant -----------------------------------------------
def _ops_env(mlops: dict) -> dict[str, str]:
    return {"PLANTPULSE_LAKE": mlops["lake"].uri, "MLFLOW_TRACKING_URI": mlops["tracking"]}


def test_status_reports_tables_champion_and_stream(mlops: dict, tmp_path: Path):
    from tests.conftest import retrain

    version = retrain(mlops, n_estimators=60)["fault_candidate"]["version"]
    out = cli("status", "--json", home=tmp_path, **_ops_env(mlops))
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    tables = {t["table"]: t for t in s["tables"]}
    assert tables["features"]["rows"] == mlops["lake"].count("features") > 0
    assert tables["features"]["newest"].startswith("2026-01-0")
    assert tables["scores"]["last_commit"] is not None and tables["frames"]["version"] >= 0
    fault = next(m for m in s["models"] if m["model"].endswith("fault-classifier"))
    assert fault["champion"] is not None and fault["metric"] == "macro_f1"
    assert int(fault["champion"]) <= int(version)
    human = cli("status", home=tmp_path, **_ops_env(mlops))
    assert human.returncode == 0 and "champion" in human.stdout and "readings" in human.stdout


def test_alerts_show_the_current_state_of_each_alert(tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    t = pd.Timestamp.now(tz="UTC").floor("s")
    top = [
        {"feature": "env_bpfo_1", "contribution": 2.5},
        {"feature": "kurtosis", "contribution": 0.5},
    ]
    rows = pd.DataFrame(
        {
            "alert_id": ["a1", "a1", "a2"],
            "asset_id": ["pump-02", "pump-02", "pump-03"],
            "opened_ts": [t, t, t],
            "closed_ts": [None, t + pd.Timedelta(minutes=5), None],
            "updated_ts": [t, t + pd.Timedelta(minutes=5), t],
            "severity": ["warning", "warning", "critical"],
            "status": ["open", "closed", "open"],
            "summary": ["outer_race suspected", "outer_race suspected", "inner_race suspected"],
            "top_features": [top, top, top],
            "suspected_cause": [None, None, None],
            "downstream_effects": [None, None, None],
        }
    )
    rows["closed_ts"] = pd.to_datetime(rows["closed_ts"], utc=True)
    lake.append("alerts", rows)
    out = cli("alerts", "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr
    state = {a["alert_id"]: a for a in json.loads(out.stdout)}
    assert state["a1"]["status"] == "closed" and state["a2"]["status"] == "open"
    assert state["a2"]["top_features"].startswith("env_bpfo_1 (+2.50)")
    only_open = json.loads(cli("alerts", "--open", "--json", home=tmp_path).stdout)
    assert [a["alert_id"] for a in only_open] == ["a2"]


def test_promote_goes_through_the_gate_and_refusal_exits_3(mlops: dict, tmp_path: Path):
    from tests.conftest import retrain

    if champion_version(client(mlops["tracking"]), FAULT_MODEL) is None:
        retrain(mlops, n_estimators=60)
    bad = retrain(mlops, n_estimators=30, shuffle_labels=True)["fault_candidate"]["version"]
    before = len(mlops["lake"].read("model_decisions"))
    out = cli("promote", "fault", bad, "--json", home=tmp_path, **_ops_env(mlops))
    assert out.returncode == 3, out.stderr
    d = json.loads(out.stdout)
    assert d["decision"] == "refuse" and any(r.startswith("FAIL: macro_f1") for r in d["reasons"])
    assert len(mlops["lake"].read("model_decisions")) == before + 1


@pytest.mark.parametrize(
    "args, message",
    [
        (("promote", "fault", "999"), "has no version 999"),
        (("promote", "turbine", "1"), "unknown model 'turbine'"),
        (("rollback", "rul", "--reason", "x"), "has no champion"),
        (("bench", "nope"), "unknown benchmark 'nope'"),
    ],
)
def test_operator_mistakes_are_one_line_and_exit_2(
    mlops: dict, tmp_path: Path, args: tuple, message: str
):
    out = cli(*args, home=tmp_path, **_ops_env(mlops))
    assert out.returncode == 2, out.stdout + out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in out.stderr


# -- sql: read-only, one statement, bounded ----------------------------------------------------
def _sql(*args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PLANTPULSE, "sql", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PLANTPULSE_HOME": str(home)},
    )


def test_sql_cannot_write_or_read_any_file_not_even_duckdbs_temp_dir(tmp_path: Path):
    Lake(tmp_path / "lake").append("readings", readings_rows(3))
    spill = tmp_path / ".tmp"  # DuckDB allows its spill directory even with external access off
    spill.mkdir()
    (spill / "secret.txt").write_text("secret")
    for bad in (
        f"copy readings to '{spill}/out.csv'",
        "copy readings to '.tmp/out.csv'",
        "attach '.tmp/other.db'",
        "select * from read_text('.tmp/secret.txt')",
        "select * from read_csv('.tmp/secret.txt')",
        "create table t as select 1 as x",
        "insert into readings select * from readings",
        "set enable_external_access = true",
    ):
        out = _sql(bad, home=tmp_path, cwd=tmp_path)
        assert out.returncode == 2, (bad, out.stdout, out.stderr)
        assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1, bad
        assert "secret" not in out.stdout
    assert sorted(p.name for p in spill.iterdir()) == ["secret.txt"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("select 1; select 2", "2 statements given"),
        ("", "empty query"),
        ("   ", "empty query"),
        ("-- only a comment", "empty query"),
    ],
)
def test_sql_needs_exactly_one_statement(tmp_path: Path, text: str, message: str):
    Lake(tmp_path / "lake").append("readings", readings_rows(1))
    out = _sql(text, home=tmp_path)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""


def test_sql_limits_rows_and_says_so(tmp_path: Path):
    Lake(tmp_path / "lake").append("readings", readings_rows(30))
    out = _sql("select value from readings order by value", "--limit", "5", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["value", "40.0", "41.0", "42.0", "43.0", "44.0"]
    assert "5 rows shown" in out.stderr and "--limit" in out.stderr
    exact = _sql("select value from readings", "--limit", "30", home=tmp_path)
    assert len(exact.stdout.split()) == 31 and "shown" not in exact.stderr
    default = _sql("select * from range(5000)", home=tmp_path)
    assert (
        len(default.stdout.strip().splitlines()) == 1 + 1000 and "1000 rows shown" in default.stderr
    )
    every = _sql("select * from range(5000)", "--all", home=tmp_path)
    assert len(every.stdout.strip().splitlines()) == 1 + 5000


def test_sql_empty_result_is_a_table_with_its_columns(tmp_path: Path):
    Lake(tmp_path / "lake").append("readings", readings_rows(2))
    out = _sql("select asset_id, sensor_id, value from readings where value < 0", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["asset_id", "sensor_id", "value"]
    assert "(0 rows)" in out.stderr


# -- a mistyped or unusable lake is an error for the read commands ---------------------------
@pytest.mark.parametrize("command", [("status",), ("alerts",), ("sql", "select 1")])
@pytest.mark.parametrize("where", ["missing_parent", "file", "empty_dir", "missing"])
def test_read_commands_refuse_a_lake_that_is_not_there(tmp_path: Path, command, where):
    target = {
        "missing_parent": tmp_path / "no" / "such" / "lake",
        "missing": tmp_path / "lak",  # a typo of .../lake
        "file": tmp_path / "a_file",
        "empty_dir": tmp_path / "empty",
    }[where]
    if where == "file":
        target.write_text("x")
    if where == "empty_dir":
        target.mkdir()
    Lake(tmp_path / "lake").append("readings", readings_rows(1))  # the real one is elsewhere
    out = cli(*command, home=tmp_path, PLANTPULSE_LAKE=str(target))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("error: PLANTPULSE_LAKE=") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (target.exists() and target.is_dir() and any(target.iterdir()))  # nothing created


def test_unwritable_lake_with_tables_is_still_readable(tmp_path: Path):
    lake = tmp_path / "lake"
    Lake(lake).append("readings", readings_rows(2))
    lake.chmod(0o555)
    try:
        out = cli("sql", "select count(*) as n from readings", home=tmp_path)
    finally:
        lake.chmod(0o755)
    assert out.returncode == 0 and out.stdout.split() == ["n", "2"], out.stderr


def test_missing_model_names_a_job_that_exists(mlops: dict, tmp_path: Path):
    from dagster_project.definitions import defs

    out = cli("promote", "rul", "999", home=tmp_path, **_ops_env(mlops))
    assert out.returncode == 2 and "has no version 999" in out.stderr, out.stderr
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert "retrain_rul" in out.stderr and "retrain_rul" in jobs
    assert "retrain_models" not in out.stderr


# -- startup: the CLI imports what a command needs, when it runs -------------------------------
HEAVY = ("mlflow", "bytewax", "scipy", "dagster", "xgboost", "sklearn", "great_expectations")


@pytest.mark.parametrize("argv", [["--help"], ["sql", "--help"], ["sql", "select 1 as x"]])
def test_cli_does_not_import_heavy_packages_it_does_not_need(tmp_path: Path, argv: list[str]):
    Lake(tmp_path / "lake").append("readings", readings_rows(1))
    probe = (
        "import sys\n"
        "from plantpulse_cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PLANTPULSE_HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LOADED []"


def _group_members(pgid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.slow
def test_a_second_up_is_refused_and_the_first_keeps_running_then_leaves_nothing(tmp_path: Path):
    import re

    port = _free_port()
    log = tmp_path / "first.log"
    with open(log, "w") as sink:
        first = subprocess.Popen(
            [PLANTPULSE, "up", "--port", str(port), "--duration", "400"],
            cwd=REPO,
            env={**os.environ, "PLANTPULSE_HOME": str(tmp_path)},
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 240
        ui_ok = False
        while time.monotonic() < deadline and not ui_ok:
            time.sleep(2)
            assert first.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                ui_ok = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
        assert ui_ok, log.read_text()
        # the same state directory, another port: the lock refuses it
        same_home = cli("up", "--port", str(_free_port()), "--duration", "5", home=tmp_path)
        assert same_home.returncode == 2, same_home.stdout + same_home.stderr
        assert "already running" in same_home.stderr and "PlantPulse is up" not in same_home.stdout
        # another state directory, the same port: the port check refuses it
        other = tmp_path / "other"
        same_port = cli("up", "--port", str(port), "--duration", "5", home=other)
        assert same_port.returncode == 2, same_port.stdout + same_port.stderr
        assert "already in use" in same_port.stderr and not (other / "lake").exists()
        # the first is untouched: still running, still streaming
        lake = Lake(tmp_path / "lake")
        before = lake.count("readings")
        time.sleep(8)
        assert first.poll() is None, log.read_text()
        assert lake.count("readings") > before
        pgids = [int(p) for p in re.findall(r"started \S+ \(pid (\d+)\)", log.read_text())]
        assert len(pgids) >= 4, log.read_text()
        # the webserver and the daemon each run a code server of their own (dagster api grpc)
        assert any(len(_group_members(g)) > 1 for g in pgids)
    finally:
        first.send_signal(2)  # Ctrl-C
        first.wait(timeout=120)
    assert first.returncode == 0 and "stopping" in log.read_text(), log.read_text()
    survivors = {g: _group_members(g) for g in pgids}
    assert not any(survivors.values()), survivors
