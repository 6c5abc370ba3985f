"""Operations: the instance's run queue, bounded sensors, the automation sensor, labels from a
technician (``plantpulse label`` and the demo's simulated one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from dagster_project.definitions import QUEUE_TAG, defs
from dagster_project.resources import LakeResource
from dagster_project.sensors import MAX_DAYS_PER_TICK, new_readings_requests
from lake import Lake
from plantpulse_cli.technician import GroundTruthFault, confirmations, faults_of
from plantpulse_cli.up import write_dagster_yaml
from tests.conftest import REPO, readings_rows

PLANTPULSE = str(Path(sys.executable).parent / "plantpulse")
DAY_US = 86_400_000_000


# -- run queue limits --------------------------------------------------------------------------
def test_the_instance_the_setup_writes_queues_runs_with_limits(tmp_path: Path):
    write_dagster_yaml(str(tmp_path))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert instance.run_monitoring_start_timeout_seconds == 600
    assert queue is not None and queue.max_concurrent_runs == 2
    limits = {(t["key"], t["value"]): t["limit"] for t in queue.tag_concurrency_limits}
    assert limits[(QUEUE_TAG, "validate_day")] == 1 and limits[(QUEUE_TAG, "retrain")] == 1
    # the jobs carry the tag the limits count by
    assert defs.resolve_job_def("validate_day").run_tags[QUEUE_TAG] == "validate_day"
    for job in ("retrain_fault_classifier", "retrain_rul"):
        assert defs.resolve_job_def(job).run_tags[QUEUE_TAG] == "retrain"


def test_an_old_launcher_yaml_is_upgraded_and_a_users_own_is_kept(tmp_path: Path):
    yaml = tmp_path / "dagster.yaml"
    yaml.write_text("# written by `plantpulse up`: local instance\ntelemetry:\n  enabled: false\n")
    write_dagster_yaml(str(tmp_path))
    assert "max_concurrent_runs" in yaml.read_text()
    yaml.write_text("telemetry:\n  enabled: false\n")  # the user's own
    write_dagster_yaml(str(tmp_path))
    assert yaml.read_text() == "telemetry:\n  enabled: false\n"


# -- the new-data sensor is bounded per tick ---------------------------------------------------
def test_many_new_days_are_requested_a_few_per_tick_newest_first():
    days = [f"2025-{m:02d}-{d:02d}" for m in range(1, 3) for d in range(1, 21)]  # 40 days
    files = [{"modification_time": 1000 + i, "date": d} for i, d in enumerate(days)]
    due, cursor = new_readings_requests(files, {}, now_s=10_000.0, valid_keys=set(days))
    assert len(due) == MAX_DAYS_PER_TICK <= 3
    assert due == sorted(days)[-MAX_DAYS_PER_TICK:]
    requested = list(due)
    for tick in range(1, 40):
        due, cursor = new_readings_requests(
            [], cursor, now_s=10_000.0 + 60 * tick, valid_keys=set(days)
        )
        assert len(due) <= MAX_DAYS_PER_TICK
        requested += due
    assert sorted(requested) == sorted(days)  # every day once, none twice


def test_the_sensor_on_a_replayed_history_yields_a_bounded_number_of_runs(tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    t0 = 1_735_689_600_000_000  # 2025-01-01
    for day in range(12):
        lake.append("readings", readings_rows(2, t0_us=t0 + day * DAY_US))
    sensor = defs.resolve_sensor_def("new_readings_sensor")
    resources = {"lake": LakeResource(uri=lake.uri)}
    with dg.build_sensor_context(resources=resources) as ctx:
        result = sensor(ctx)
    assert 0 < len(result.run_requests) <= MAX_DAYS_PER_TICK
    assert {r.partition_key for r in result.run_requests} == {
        "2025-01-12",
        "2025-01-11",
        "2025-01-10",
    }
    assert len(json.loads(result.cursor)["pending"]) == 12 - MAX_DAYS_PER_TICK


# -- the automation-condition sensor is on -----------------------------------------------------
def test_the_automation_condition_sensor_runs_by_default():
    sensors = [s for s in defs.sensors if isinstance(s, dg.AutomationConditionSensorDefinition)]
    assert len(sensors) == 1
    assert sensors[0].default_status == dg.DefaultSensorStatus.RUNNING
    conditioned = [
        k
        for a in defs.assets
        if isinstance(a, dg.AssetsDefinition)
        for k, c in a.automation_conditions_by_key.items()
        if c is not None
    ]
    assert conditioned
    selected = sensors[0].asset_selection.resolve(defs.resolve_asset_graph())
    assert set(conditioned) <= selected


# -- labels ------------------------------------------------------------------------------------
def _alert(alert_id: str, asset: str, opened: pd.Timestamp) -> dict:
    return dict(
        alert_id=alert_id,
        asset_id=asset,
        opened_ts=opened,
        closed_ts=pd.NaT,
        updated_ts=opened,
        severity="warning",
        status="open",
        summary="anomaly",
        top_features=[{"feature": "vib_kurtosis", "contribution": 1.0}],
        suspected_cause=None,
        downstream_effects=None,
    )


def test_the_technician_confirms_only_alerts_on_faulted_machines_after_a_delay():
    t = pd.Timestamp("2026-12-01T12:00", tz="UTC")
    faults = [GroundTruthFault("pump-02", t, "bearing_outer_race")]
    alerts = pd.DataFrame(
        [
            _alert("early", "pump-02", t - pd.Timedelta(minutes=5)),  # before the fault began
            _alert("real", "pump-02", t + pd.Timedelta(minutes=1)),
            _alert("false", "pump-01", t + pd.Timedelta(minutes=1)),  # a healthy machine
        ]
    )
    soon = t + pd.Timedelta(minutes=2)
    assert confirmations(alerts, faults, set(), soon, delay_s=120) == []  # 60 s: not yet
    later = t + pd.Timedelta(minutes=4)
    rows = confirmations(alerts, faults, set(), later, delay_s=120)
    assert [(r["asset_id"], r["component"], r["kind"]) for r in rows] == [
        ("pump-02", "bearing_outer_race", "failure")
    ]
    assert rows[0]["ts"] == t + pd.Timedelta(minutes=1) and "real" in rows[0]["detail"]
    assert confirmations(alerts, faults, {"real"}, later, delay_s=120) == []  # once only
    assert confirmations(alerts, faults, set(), later, delay_s=120, never_share=1.0) == []


def test_the_technician_reads_the_simulators_ground_truth():
    from physics.simulator import default_fleet

    fleet = default_fleet(3, start_us=1_767_225_600_000_000)
    faults = faults_of(fleet.ground_truth())
    assert {(f.asset_id, f.component) for f in faults} == {
        ("pump-02", "bearing_outer_race"),
        ("pump-03", "bearing_inner_race"),
    }
    assert min(f.onset for f in faults) == pd.Timestamp("2026-01-01T00:10", tz="UTC")


def test_bearing_components_are_the_classifiers_fault_classes():
    from models.training import FAULT_CLASSES
    from plantpulse_cli.label import BEARING_COMPONENTS

    assert set(BEARING_COMPONENTS) == set(FAULT_CLASSES) - {"normal"}


def _label(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PLANTPULSE, "label", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PLANTPULSE_HOME": str(home)},
    )


def test_label_confirms_an_alert_or_an_asset(tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    opened = pd.Timestamp("2026-01-01T00:00:30", tz="UTC")
    lake.append("readings", readings_rows(3, asset_id="pump-02"))
    lake.append("alerts", pd.DataFrame([_alert("pump-02-1", "pump-02", opened)]))
    out = _label(
        "pump-02-1", "--kind", "failure", "--component", "outer_race", "--json", home=tmp_path
    )
    assert out.returncode == 0, out.stderr
    ev = lake.read("maintenance_events")
    assert len(ev) == 1
    row = ev.iloc[0]
    assert (row.asset_id, row.kind, row.component) == ("pump-02", "failure", "bearing_outer_race")
    assert row.ts == opened and row.source == "cli" and "pump-02-1" in row.detail
    out = _label(
        "pump-02",
        "--kind",
        "repair",
        "--component",
        "bearing_outer_race",
        "--ts",
        "2026-01-01T01:00",
        home=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    ev = lake.read("maintenance_events").sort_values("ts")
    assert list(ev["kind"]) == ["failure", "repair"]
    assert ev["ts"].iloc[1] == pd.Timestamp("2026-01-01T01:00", tz="UTC")


@pytest.mark.parametrize(
    "args, message",
    [
        (("pump-99", "--kind", "failure", "--component", "outer_race"), "unknown alert or asset"),
        (("pump-02", "--kind", "failure", "--component", "impeller"), "unknown component"),
        (
            ("pump-02", "--kind", "failure", "--component", "outer_race", "--ts", "yesterday-ish"),
            "is not a time",
        ),
        (
            ("pump-02", "--kind", "failure", "--component", "outer_race", "--ts", "2999-01-01"),
            "in the future",
        ),
    ],
)
def test_label_refuses_what_it_cannot_vouch_for(tmp_path: Path, args: tuple, message: str):
    lake = Lake(tmp_path / "lake")
    lake.append("readings", readings_rows(3, asset_id="pump-02"))
    out = _label(*args, home=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not lake.exists("maintenance_events") or lake.count("maintenance_events") == 0


def test_a_new_label_requests_a_retrain(tmp_path: Path):
    from dagster_project.resources import MLflowResource

    lake = Lake(tmp_path / "lake")
    t = pd.Timestamp("2026-01-01T00:10", tz="UTC")
    old = dict(
        asset_id="pump-02",
        ts=t,
        kind="fault_injected",
        component="bearing_outer_race",
        detail=None,
        source="simulator",
    )
    lake.append("maintenance_events", pd.DataFrame([old]))
    sensor = defs.resolve_sensor_def("new_labels_sensor")
    instance = dg.DagsterInstance.ephemeral()
    resources = {
        "lake": LakeResource(uri=lake.uri),
        "mlflow": MLflowResource(
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", artifact_root=str(tmp_path / "a")
        ),
    }
    with dg.build_sensor_context(resources=resources, instance=instance) as ctx:
        first = sensor(ctx)  # no champion has been trained on any label yet
    assert len(first.run_requests) == 1
    with dg.build_sensor_context(
        resources=resources, instance=instance, cursor=first.cursor
    ) as ctx:
        assert isinstance(sensor(ctx), dg.SkipReason)
    lake.append(
        "maintenance_events",
        pd.DataFrame(
            [
                dict(
                    old,
                    asset_id="pump-03",
                    component="bearing_inner_race",
                    kind="failure",
                    source="technician",
                )
            ]
        ),
    )
    with dg.build_sensor_context(
        resources=resources, instance=instance, cursor=first.cursor
    ) as ctx:
        result = sensor(ctx)
    # a failure on pump-03 (a health indicator's asset) also ends its history: the RUL retrain
    jobs = {r.job_name: r for r in result.run_requests}
    assert set(jobs) == {"retrain_fault_classifier", "retrain_rul"}
    assert jobs["retrain_fault_classifier"].tags["plantpulse/assets"] == "pump-03"
    assert jobs["retrain_fault_classifier"].run_key != first.run_requests[0].run_key
    inspection = dict(old, ts=t + pd.Timedelta(hours=1), kind="inspection")
    lake.append("maintenance_events", pd.DataFrame([inspection]))  # changes no window's label
    with dg.build_sensor_context(
        resources=resources, instance=instance, cursor=result.cursor
    ) as ctx:
        assert isinstance(sensor(ctx), dg.SkipReason)


# -- status: every table with rows says how new its data is ------------------------------------
def _one_row(schema, t: pd.Timestamp) -> dict:
    import pyarrow as pa

    def value(f):
        ty = f.type
        if pa.types.is_timestamp(ty):
            return t
        if pa.types.is_date(ty):
            return t.date()
        if pa.types.is_boolean(ty):
            return True
        if pa.types.is_integer(ty):
            return 1
        if pa.types.is_floating(ty):
            return 1.0
        if pa.types.is_binary(ty):
            return b"x"
        if pa.types.is_list(ty):
            item = ty.value_type
            if pa.types.is_struct(item):
                return [{"feature": "vib_rms", "contribution": 1.0}]
            return ["x"] if pa.types.is_string(item) else [1.0]
        return "x"

    return {f.name: pa.array([value(f)], f.type) for f in schema}


def test_status_gives_newest_for_every_table_with_rows(tmp_path: Path):
    from lake import TABLES

    lake = Lake(tmp_path / "lake")
    t = pd.Timestamp("2026-01-02T03:04:05", tz="UTC")
    for name, spec in TABLES.items():
        lake.append(name, _one_row(spec.input_schema, t))
    out = subprocess.run(
        [PLANTPULSE, "status", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "PLANTPULSE_HOME": str(tmp_path),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
        },
    )
    assert out.returncode == 0, out.stderr
    tables = {r["table"]: r for r in json.loads(out.stdout)["tables"]}
    assert set(tables) == set(TABLES)
    blank = [n for n, r in tables.items() if r["rows"] and not r["newest"]]
    assert blank == []
    assert all(r["newest"].startswith("2026-01-02T03:04:05") for r in tables.values()), tables


def test_labels_wait_for_a_retrain_that_has_not_started(tmp_path: Path):
    from dagster_project.resources import MLflowResource

    lake = Lake(tmp_path / "lake")
    row = dict(
        asset_id="pump-03",
        ts=pd.Timestamp("2026-01-01", tz="UTC"),
        kind="failure",
        component="bearing_inner_race",
        detail=None,
        source="technician",
    )
    lake.append("maintenance_events", pd.DataFrame([row]))
    sensor = defs.resolve_sensor_def("new_labels_sensor")
    resources = {
        "lake": LakeResource(uri=lake.uri),
        "mlflow": MLflowResource(
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", artifact_root=str(tmp_path / "a")
        ),
    }
    with dg.instance_for_test() as instance:
        for name in ("retrain_fault_classifier", "retrain_rul"):  # the failure concerns both
            job = defs.resolve_job_def(name)
            instance.create_run_for_job(job, status=dg.DagsterRunStatus.NOT_STARTED)
        with dg.build_sensor_context(resources=resources, instance=instance) as ctx:
            result = sensor(ctx)
        assert isinstance(result, dg.SkipReason) and "has not started" in str(result.skip_message)
