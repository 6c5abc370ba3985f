"""Continuous validation and calibration: the checks, GX agreement, Dagster assets, the sensor."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from bytewax.testing import TestingSource, run_main

from bench.validation import FAULTS, sim_frames
from bytewax_flows.payloads import Message, encode_scalars
from bytewax_flows.telemetry import get_flow
from dagster_project.assets.validation import (
    day_period,
    readings_validation,
    sensor_calibration,
    validate_readings_day,
    validated_dates,
)
from dagster_project.definitions import defs
from dagster_project.resources import LakeResource
from dagster_project.sensors import DEBOUNCE_S, new_readings_requests
from expectations.checks import scalar_reasons
from expectations.contracts import SENSORS
from expectations.suites import readings_expectations, run_suite
from expectations.validation import Period, validate_readings
from lake import Lake
from physics.simulator import Fault, FleetSimulator, MachineSpec

HOUR = 3600.0
MACHINE = [MachineSpec("pump-01")]


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return sim_frames(FleetSimulator(MACHINE, seed=7), 0.0, 2 * HOUR)[0]


def window(faults: list[Fault], hours: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    return sim_frames(FleetSimulator(MACHINE, faults, seed=7), 2 * HOUR, hours * HOUR)


def test_gx_suite_and_stream_checks_agree_on_the_same_readings():
    rng = np.random.default_rng(3)
    sensors = ["bearing_temp", "motor_current", "discharge_pressure"]
    n = 3000
    df = pd.DataFrame(
        {
            "asset_id": "a",
            "sensor_id": rng.choice(sensors, n),
            "ts": pd.Timestamp("2026-01-01", tz="UTC"),
            "value": rng.normal(20, 300, n),
        }
    )
    df.loc[rng.choice(n, 20, replace=False), "value"] = np.inf
    df.loc[rng.choice(n, 20, replace=False), "value"] = np.nan
    df = df.assign(raw_value=df["value"], quality="good", ingest_ts=df["ts"], date=df["ts"].dt.date)
    results = {
        (r.expectation, r.sensor_id): r for r in run_suite(df, readings_expectations(sensors))
    }
    for sensor in sensors:
        values = df.loc[df["sensor_id"] == sensor, "value"].to_numpy()
        reasons = scalar_reasons(SENSORS[sensor], values)
        nan = int(np.isnan(values).sum())
        stream_range = int((reasons == "out_of_range").sum()) + int(np.isinf(values).sum())
        assert (
            results[("expect_column_values_to_be_between", sensor)].observed["unexpected_count"]
            == stream_range
        )
        assert (
            results[("expect_column_values_to_not_be_null", sensor)].observed["unexpected_count"]
            == nan
        )
        assert int((reasons == "non_finite").sum()) == nan + int(np.isinf(values).sum())
        assert stream_range > 0  # the data really exercises the range check


def test_clean_data_passes_every_check(reference: pd.DataFrame):
    readings, dead = window([], hours=2)
    report = validate_readings(readings, dead_letter=dead, reference=reference)
    # two-hour windows see different load levels, so a PSI warning is truthful; no error may fire
    assert report.passed, [o.describe() for o in report.failed]
    assert {o.check for o in report.failed} <= {"distribution_shift"}
    assert {o.check for o in report.outcomes} >= {
        "completeness",
        "max_gap",
        "null_rate",
        "stuck",
        "spikes",
        "clock_rate",
        "calibration",
        "distribution_shift",
    }


@pytest.mark.parametrize(
    "fault", [f for f in FAULTS if f[2] != "sensor_gain_drift"], ids=lambda f: f[0]
)
def test_each_fault_is_caught_by_the_check_named_for_it(reference: pd.DataFrame, fault: tuple):
    name, sensor, kind, magnitude, expected = fault
    readings, dead = window(
        [Fault("pump-01", kind, 2 * HOUR, sensor_id=sensor, magnitude=magnitude)]
    )
    report = validate_readings(readings, dead_letter=dead, reference=reference)
    hits = [o for o in report.failed if o.check == expected and o.sensor_id == sensor]
    assert hits and hits[0].severity == "error", [o.describe() for o in report.failed]
    assert not report.passed


def test_gain_drift_is_caught_and_calibrated_within_half_a_percent(reference: pd.DataFrame):
    readings, dead = window(
        [Fault("pump-01", "sensor_gain_drift", 2 * HOUR, sensor_id="bearing_temp", magnitude=0.05)],
        hours=8,
    )
    report = validate_readings(readings, dead_letter=dead, reference=reference, run_gx=False)
    failed = {(o.sensor_id, o.check) for o in report.failed}
    assert ("bearing_temp", "calibration") in failed
    est = next(c for c in report.calibrations if c.sensor_id == "bearing_temp")
    true_gain = 1 + 0.05 * 8 / 24
    assert est.identifiable and abs(est.gain - true_gain) / true_gain < 0.005
    assert est.drift_per_day == pytest.approx(0.05, abs=0.005)


def test_failing_check_tells_the_operator_where_since_how_bad_and_what_to_do(
    reference: pd.DataFrame,
):
    readings, dead = window(
        [Fault("pump-01", "sensor_stuck", 2 * HOUR + 600, sensor_id="motor_current")]
    )
    stuck = next(
        o
        for o in validate_readings(readings, dead_letter=dead, reference=reference).failed
        if o.check == "stuck"
    )
    text = stuck.describe()
    assert text.startswith("pump-01 motor_current: unchanged at")
    # the frozen value is the last good reading, so the flat run starts one sample before 02:10
    assert "since 2026-01-01 02:09:59Z" in text and "reset or replace" in text
    assert stuck.observed["stuck_readings"] >= 50 * 60 * 10 - 10
    spikes = next(
        o
        for o in validate_readings(readings, dead_letter=dead, reference=reference).outcomes
        if o.check == "spikes" and o.sensor_id == "motor_current"
    )
    assert spikes.success  # a flat line must not make the noise before it look spiky


def test_a_faulty_input_is_blamed_rather_than_the_sensor_that_depends_on_it(
    reference: pd.DataFrame,
):
    readings, dead = window(
        [Fault("pump-01", "sensor_offset", 2 * HOUR, sensor_id="motor_current", magnitude=3.0)]
    )
    report = validate_readings(readings, dead_letter=dead, reference=reference, run_gx=False)
    by_sensor = {o.sensor_id: o for o in report.failed if o.check == "calibration"}
    assert by_sensor["motor_current"].severity == "error"
    assert by_sensor["bearing_temp"].severity == "warning"
    assert "probably caused by motor_current" in by_sensor["bearing_temp"].message


# -- the span a period is judged on -----------------------------------------------------------

DAY0 = pd.Timestamp("2026-01-01", tz="UTC")


def _outcomes(report, check: str) -> dict[str, object]:
    return {o.sensor_id: o for o in report.outcomes if o.check == check}


def test_a_day_in_progress_is_judged_on_its_elapsed_part():
    """The first minute of a fresh stream: a 1 Hz sensor beside 10 Hz ones is complete when
    every second so far has its reading (the failure a fresh `plantpulse up` showed: 29 of an
    expected 30.9, because the expected count ran to the 10 Hz sensors' newest reading)."""
    readings, dead = sim_frames(FleetSimulator(MACHINE, seed=7), 0.0, 25.0)
    period = Period(DAY0, DAY0 + pd.Timedelta(days=1))
    report = validate_readings(readings, dead_letter=dead, period=period, run_gx=False)
    completeness = _outcomes(report, "completeness")
    assert completeness["bearing_temp"].observed["expected"] == 25  # not 25.9
    assert all(o.success for o in completeness.values()), [o.describe() for o in report.failed]
    assert all(o.success for o in _outcomes(report, "max_gap").values())
    # one reading lost in those 25 s is 4 % of them: still caught on the elapsed part
    temp = readings[readings["sensor_id"] == "bearing_temp"]
    lossy = readings.drop(temp.index[10])
    lost = _outcomes(validate_readings(lossy, period=period, run_gx=False), "completeness")
    assert not lost["bearing_temp"].success and lost["bearing_temp"].observed["received"] == 24


def test_a_series_that_reported_before_the_period_is_judged_from_its_start():
    readings, _ = sim_frames(FleetSimulator(MACHINE, seed=7), 86_400.0, 1800.0)  # 00:00-00:30
    late = readings[
        (readings["sensor_id"] != "bearing_temp")
        | (readings["ts"] >= DAY0 + pd.Timedelta(days=1, minutes=10))
    ]
    day = DAY0 + pd.Timedelta(days=1)
    alone = Period(day, day + pd.Timedelta(days=1))
    assert validate_readings(late, period=alone, run_gx=False).passed  # it began at 00:10
    seen = Period(
        day,
        day + pd.Timedelta(days=1),
        first_seen={("pump-01", "bearing_temp"): DAY0 + pd.Timedelta(hours=23)},
    )
    report = validate_readings(late, period=seen, run_gx=False)
    gap = _outcomes(report, "max_gap")["bearing_temp"]
    assert not gap.success and gap.since == day and gap.observed["max_gap_s"] == pytest.approx(600)
    assert "since 2026-01-02 00:00:00Z" in gap.describe()
    assert not _outcomes(report, "completeness")["bearing_temp"].success
    # a series seen the day before with no reading at all today, on an asset that reports
    gone = late[late["sensor_id"] != "bearing_temp"]
    silent = _outcomes(validate_readings(gone, period=seen, run_gx=False), "max_gap")
    assert not silent["bearing_temp"].success and silent["bearing_temp"].since == day


def test_a_past_day_whose_asset_reports_the_next_day_is_judged_to_its_end():
    """The asset went quiet at 23:50 and is back the next day: its last ten minutes are lost."""
    readings, _ = sim_frames(FleetSimulator(MACHINE, seed=7), 86_400.0 - 1800.0, 1800.0)
    early = readings[readings["ts"] < DAY0 + pd.Timedelta(hours=23, minutes=50)]
    day = Period(DAY0, DAY0 + pd.Timedelta(days=1))
    assert validate_readings(early, period=day, run_gx=False).passed  # to its newest reading
    later = Period(day.start, day.end, newest={"pump-01": day.end + pd.Timedelta(hours=1)})
    gaps = _outcomes(validate_readings(early, period=later, run_gx=False), "max_gap")
    assert len(gaps) == 4 and not any(o.success for o in gaps.values())
    assert all(o.observed["max_gap_s"] == pytest.approx(600, abs=1) for o in gaps.values())
    # the asset reported to its last second: nothing lost
    assert validate_readings(readings, period=later, run_gx=False).passed


def test_day_period_reads_the_series_around_a_day_from_the_lake(lake: Lake):
    sim = FleetSimulator(MACHINE, seed=7)
    cols = ["asset_id", "sensor_id", "ts", "value", "raw_value", "quality", "ingest_ts"]
    for start_s in (86_400.0 - 60, 86_400.0 + 3600, 2 * 86_400.0 + 60):  # three days
        lake.append("readings", sim_frames(sim, start_s, 30.0)[0][cols])
    period = day_period(lake, "2026-01-02")
    assert period.start == DAY0 + pd.Timedelta(days=1) and period.end == DAY0 + pd.Timedelta(days=2)
    assert set(period.first_seen) == {
        ("pump-01", s)
        for s in ("bearing_temp", "motor_current", "discharge_pressure", "shaft_speed")
    }
    assert period.first_seen[("pump-01", "bearing_temp")] == DAY0 + pd.Timedelta(
        hours=23, minutes=59
    )
    assert period.newest["pump-01"] > period.end
    assert day_period(lake, "2026-01-01").first_seen == {}  # nothing before the first day
    # the day has 30 s of readings from 01:00 and its asset reports the next day: the whole
    # day is judged, so the stream missed all but those 30 s
    _, report = validate_readings_day(lake, "2026-01-02", "run-1")
    temp = _outcomes(report, "completeness")["bearing_temp"].observed
    assert (temp["received"], temp["expected"]) == (30, 86_400)
    assert temp["judged_from"].startswith("2026-01-02T00:00:00")
    assert temp["judged_to"].startswith("2026-01-02T23:59:59")
    assert not report.passed


# -- Dagster ----------------------------------------------------------------------------------


def _load_day(lake: Lake, faults: list[Fault]) -> str:
    sim = FleetSimulator(MACHINE, faults, seed=7)
    readings, dead = sim_frames(sim, 0.0, 4 * HOUR)
    cols = ["asset_id", "sensor_id", "ts", "value", "raw_value", "quality", "ingest_ts"]
    lake.append("readings", readings[cols])
    if len(dead):
        lake.append(
            "dead_letter",
            pd.DataFrame(
                {
                    "received_ts": dead["ts"],
                    "source": "test",
                    "raw": b"{}",
                    "reason": dead["reason"],
                    "detail": "",
                    "asset_id": dead["asset_id"],
                    "sensor_id": dead["sensor_id"],
                }
            ),
        )
    return "2026-01-01"


def _run(assets: list, lake: Lake, day: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets,
        partition_key=day,
        resources={"lake": LakeResource(uri=lake.uri)},
        raise_on_error=False,
    )


def test_validation_asset_passes_clean_day_and_records_results(lake: Lake):
    day = _load_day(lake, [])
    result = _run([readings_validation], lake, day)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["readings_pass_contracts"].passed, checks["readings_pass_contracts"].description
    rows = lake.read("validation_results")
    assert len(rows) > 20 and set(rows["partition"]) == {day}
    failed = rows[~rows["success"]]
    assert set(failed["expectation"]) <= {"distribution_shift"}  # warnings at most
    assert all(json.loads(o)["severity"] == "warning" for o in failed["observed"])
    assert validated_dates(lake) == {day}


def test_validation_asset_fails_a_bad_day_blocks_it_and_explains(lake: Lake):
    day = _load_day(
        lake, [Fault("pump-01", "sensor_stuck", 3 * HOUR, sensor_id="discharge_pressure")]
    )
    result = _run([readings_validation], lake, day)
    check = {e.check_name: e for e in result.get_asset_check_evaluations()}[
        "readings_pass_contracts"
    ]
    assert (
        not check.passed
        and "discharge_pressure" in check.description
        and "reset or replace" in check.description
    )
    meta = result.asset_materializations_for_node("readings_validation")[0].metadata
    assert "data:image/png;base64," in meta["worst_sensor"].value
    assert "stuck" in meta["failures"].value
    failed = lake.read("validation_results").query("not success")
    assert any("discharge_pressure" in o for o in failed["observed"])
    assert validated_dates(lake) == set()


def test_calibration_asset_versions_and_the_stream_applies_the_newest(lake: Lake):
    day = _load_day(
        lake, [Fault("pump-01", "sensor_offset", 2 * HOUR, sensor_id="bearing_temp", magnitude=3.0)]
    )
    config = {"ops": {"sensor_calibration": {"config": {"reference_hours": 2.0}}}}
    for expected_version in (1, 2):
        result = dg.materialize(
            [sensor_calibration],
            partition_key=day,
            run_config=config,
            resources={"lake": LakeResource(uri=lake.uri)},
        )
        assert result.success
        cal = lake.read("calibration")
        assert cal["version"].max() == expected_version
    newest = cal.sort_values("version").iloc[-1]
    assert newest["sensor_id"] == "bearing_temp" and newest["gain"] == pytest.approx(1.0, abs=0.01)
    # the sensor reads 3 degC high since 02:00, so a raw 50 degC means a true 47 degC
    assert newest["gain"] * 50.0 + newest["offset"] == pytest.approx(47.0, abs=0.3)

    ts = int(newest["valid_from"].value // 1000) + 1_000_000
    run_main(
        get_flow(
            TestingSource(
                [Message("t", 0, ts, encode_scalars("pump-01", "bearing_temp", [ts], [53.0]))]
            ),
            lake.uri,
        )
    )
    got = lake.read("readings").sort_values("ingest_ts").iloc[-1]
    assert got["raw_value"] == 53.0 and got["quality"] == f"calibrated:v{int(newest['version'])}"
    assert got["value"] == pytest.approx(newest["gain"] * 53.0 + newest["offset"])


def test_sensor_debounces_and_remembers_pending_days():
    files = [
        {"modification_time": 1000, "date": "2026-01-01"},
        {"modification_time": 2000, "date": "2026-01-02"},
    ]
    due, cursor = new_readings_requests(files, {}, now_s=10_000.0)
    assert due == ["2026-01-01", "2026-01-02"] and cursor["seen_ms"] == 2000
    files.append({"modification_time": 3000, "date": "2026-01-02"})
    due, cursor = new_readings_requests(files, cursor, now_s=10_060.0)
    assert due == [] and cursor["pending"] == ["2026-01-02"]  # too soon: kept, not forgotten
    due, cursor = new_readings_requests(files, cursor, now_s=10_000.0 + DEBOUNCE_S)
    assert due == ["2026-01-02"] and cursor["pending"] == []
    due, _ = new_readings_requests(files, cursor, now_s=10_000.0 + 3 * DEBOUNCE_S)
    assert due == []  # nothing new


def test_sensor_requests_a_run_for_a_day_with_new_readings(lake: Lake):
    sensor = defs.resolve_sensor_def("new_readings_sensor")
    resources = {"lake": LakeResource(uri=lake.uri)}
    with dg.build_sensor_context(resources=resources) as ctx:
        assert isinstance(sensor(ctx), dg.SkipReason)  # no table yet
    _load_day(lake, [])
    with dg.build_sensor_context(resources=resources) as ctx:
        result = sensor(ctx)
    assert [r.partition_key for r in result.run_requests] == ["2026-01-01"]
    with dg.build_sensor_context(cursor=result.cursor, resources=resources) as ctx:
        assert isinstance(sensor(ctx), dg.SkipReason)
    assert json.loads(result.cursor)["seen_ms"] > 0
