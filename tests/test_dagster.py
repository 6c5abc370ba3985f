"""The control plane: Definitions load, assets materialise against a temporary lake, real MLflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from dagster_project.assets.readings import sensor_daily_stats
from dagster_project.definitions import defs
from dagster_project.resources import RESOURCES, LakeResource, MLflowResource, resources_for
from lake import Lake
from tests.conftest import REPO, T0_US, readings_rows


def test_definitions_load_with_assets_checks_and_schedule():
    dg.Definitions.validate_loadable(defs)
    keys = {spec.key.to_user_string() for spec in defs.resolve_all_asset_specs()}
    assert {"readings", "sensor_daily_stats"} <= keys
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert {"readings_within_contract", "every_asset_reports"} <= checks
    assert defs.resolve_schedule_def("daily_sensor_profile_schedule") is not None


def test_dagster_cli_validates_the_definitions(tmp_path: Path):
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-m",
            "dagster_project.definitions",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={
            "PATH": str(Path(sys.executable).parent),
            "HOME": str(tmp_path),
            "PLANTPULSE_HOME": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def _materialize(lake: Lake, day: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [sensor_daily_stats],
        partition_key=day,
        resources={"lake": LakeResource(uri=lake.uri)},
        raise_on_error=False,
    )


def test_daily_stats_materialise_and_pass_checks(lake: Lake):
    lake.append("readings", readings_rows(5, sensor_id="bearing_temp"))
    lake.append("readings", readings_rows(3, sensor_id="motor_current", asset_id="pump-02"))
    lake.append(
        "readings", readings_rows(4, t0_us=T0_US + 86_400_000_000)
    )  # next day: not included
    result = _materialize(lake, "2026-01-01")
    assert result.success
    stats = lake.read("sensor_daily_stats").sort_values("asset_id")
    assert stats["n_readings"].tolist() == [5, 3]
    assert stats["max"].tolist() == [44.0, 42.0]
    evals = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evals == {"readings_within_contract": True, "every_asset_reports": True}
    meta = result.asset_materializations_for_node("sensor_daily_stats")[0].metadata
    assert meta["readings"].value == 8

    assert _materialize(lake, "2026-01-01").success  # a rerun replaces, never duplicates
    assert len(lake.read("sensor_daily_stats")) == 2


def test_contract_check_fails_on_out_of_range_and_unknown_sensors(lake: Lake):
    lake.append("readings", readings_rows(3, sensor_id="bearing_temp", value=500.0))  # > 200 degC
    lake.append("readings", readings_rows(2, sensor_id="mystery"))
    result = _materialize(lake, "2026-01-01")
    check = {e.check_name: e for e in result.get_asset_check_evaluations()}[
        "readings_within_contract"
    ]
    assert check.passed is False
    assert check.metadata["violations"].value == 2


def test_empty_day_warns_that_no_asset_reports(lake: Lake):
    result = _materialize(lake, "2026-01-02")
    evals = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evals["every_asset_reports"] is False
    assert lake.read("sensor_daily_stats").empty


def test_mlflow_resource_uses_a_real_local_store(tmp_path: Path):
    res = MLflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "art")
    )
    exp = res.experiment_id("plantpulse-test")
    assert res.experiment_id("plantpulse-test") == exp
    client = res.client()
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "rmse", 12.5)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert client.get_run(run.info.run_id).data.metrics == {"rmse": 12.5}
    assert (tmp_path / "art" / "plantpulse-test").is_dir()
    assert list((tmp_path / "art").rglob("note.txt"))
    assert pd.notna(exp)


# -- resources per deployment ------------------------------------------------------------------


def test_local_resources_need_no_configuration_and_follow_the_state_directory(
    tmp_path: Path, monkeypatch
):
    local = resources_for(None)
    assert local is RESOURCES["local"] and defs.resources == local  # nothing filled at import
    monkeypatch.setenv("PLANTPULSE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PLANTPULSE_LAKE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "home" / "mlflow").mkdir(parents=True)
    lake = Lake(tmp_path / "home" / "lake")
    lake.append("readings", readings_rows(4))
    # resolved where the run executes, from the same variables the stream reads
    result = dg.materialize([sensor_daily_stats], partition_key="2026-01-01", resources=local)
    assert result.success and len(lake.read("sensor_daily_stats")) == 1
    exp = local["mlflow"].experiment_id("plantpulse-local")
    assert (tmp_path / "home" / "mlflow" / "mlflow.db").is_file()
    assert (tmp_path / "home" / "mlflow" / "artifacts" / "plantpulse-local").is_dir() and exp


def test_container_resources_bind_env_vars_and_fail_at_launch_without_them(
    tmp_path: Path, monkeypatch
):
    container = resources_for("container")
    monkeypatch.delenv("PLANTPULSE_LAKE", raising=False)
    with pytest.raises(Exception, match="PLANTPULSE_LAKE"):
        dg.materialize([sensor_daily_stats], partition_key="2026-01-01", resources=container)
    lake = Lake(tmp_path / "deployed")
    lake.append("readings", readings_rows(3))
    monkeypatch.setenv("PLANTPULSE_LAKE", lake.uri)
    result = dg.materialize([sensor_daily_stats], partition_key="2026-01-01", resources=container)
    assert result.success and lake.read("sensor_daily_stats")["n_readings"].tolist() == [3]
    with pytest.raises(ValueError, match="known: local, container"):
        resources_for("prod")
