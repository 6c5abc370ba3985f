"""Process features, sensor-model estimators, dataset readers and simulator v2."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from physics import sensor_models as sm
from physics.datasets import (
    DatasetError,
    cmapss_readings,
    cwru_frames,
    cwru_recordings,
    read_cmapss,
    read_cwru,
    read_nab,
    read_skab,
    skab_readings,
)
from physics.process import (
    ProcessFeatureBuilder,
    RegimeNormaliser,
    RollingFeatures,
    rolling_window_stats,
)
from physics.simulator import Fault, FleetSimulator, MachineSpec, default_fleet
from tests.conftest import REPO

DATA = Path(os.environ.get("PLANTPULSE_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"reference data not at {DATA}")


@pytest.mark.parametrize("seed", range(5))
def test_rolling_features_in_random_pieces_equal_one_batch(seed: int):
    rng = np.random.default_rng(seed)
    series = np.cumsum(rng.normal(size=500))
    series[rng.random(500) < 0.02] = np.nan  # gaps must not break the equality
    batch = rolling_window_stats(np.empty(0), series, 30)
    rf = RollingFeatures(window=30)
    cuts = np.sort(rng.choice(np.arange(1, 500), size=12, replace=False))
    pieces = [rf.update("s", part) for part in np.split(series, cuts)]
    for key in ("level", "slope", "std"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), batch[key])


def test_rolling_slope_of_a_line_is_its_slope():
    s = rolling_window_stats(np.empty(0), 3.0 + 0.5 * np.arange(100), 20)
    np.testing.assert_allclose(s["slope"][1:], 0.5)
    np.testing.assert_allclose(s["level"][-1], 3.0 + 0.5 * np.arange(80, 100).mean())


def test_regime_normaliser_uses_training_statistics_and_counts_unseen_regimes():
    settings = pd.DataFrame(
        {
            "setting1": [0.0] * 4 + [42.0] * 4,
            "setting2": [0.0] * 4 + [0.84] * 4,
            "setting3": [100.0] * 8,
        }
    )
    sensors = pd.DataFrame({"s": [1.0, 2.0, 3.0, 4.0, 101.0, 102.0, 103.0, 104.0]})
    norm = RegimeNormaliser().fit(settings, sensors)
    z = norm.transform(settings, sensors)["s"].to_numpy()
    np.testing.assert_allclose(z[:4], z[4:])  # each regime centred on its own statistics
    unseen = pd.DataFrame({"setting1": [20.0], "setting2": [0.7], "setting3": [100.0]})
    norm.transform(unseen, pd.DataFrame({"s": [50.0]}))
    assert norm.unseen == 1


@needs_data
def test_process_features_are_fitted_on_training_engines_only():
    df = read_cmapss(DATA)
    train, test = df[df.unit <= 80], df[df.unit > 80]
    builder = ProcessFeatureBuilder().fit(train, train["rul"].to_numpy())
    x = builder.transform(test)
    assert len(x) == len(test) and x.index.isin(test.index).all()
    # the health indicator rises towards failure on engines the builder never saw
    last = x.groupby(test.loc[x.index, "unit"]).tail(1)["level_hi"].mean()
    first = x.groupby(test.loc[x.index, "unit"]).head(30)["level_hi"].mean()
    assert last > first + 1.0
    refit = ProcessFeatureBuilder().fit(
        df, df["rul"].to_numpy()
    )  # a leak would change the test rows
    assert not np.allclose(refit.transform(test)["z_s2"], x["z_s2"])


def test_sensor_estimators_recover_what_the_models_inject():
    rng = np.random.default_rng(0)
    t = np.arange(0.0, 86_400.0, 60.0)
    ref = 50.0 + 5.0 * np.sin(t / 3000.0)
    offset, gain = sm.estimate_offset_gain(sm.offset_gain(ref, 2.0, 1.05), ref)
    assert (offset, gain) == (pytest.approx(2.0), pytest.approx(1.05))
    assert sm.estimate_gain_drift(sm.gain_drift(ref, t, 0.0, 0.05), ref, t) == pytest.approx(
        0.05, rel=1e-6
    )
    stuck = sm.stuck(ref, t, 43_200.0)
    assert (
        sm.stuck_runs(stuck, 10)[t >= 43_200.0].all()
        and not sm.stuck_runs(stuck, 10)[t < 43_000.0].any()
    )
    assert sm.dropout_fraction(sm.dropout(ref, 0.1, rng)) == pytest.approx(0.1, abs=0.02)
    spiky = sm.spikes(ref + rng.normal(0, 0.05, t.size), 0.01, 5.0, rng)
    found = sm.spike_mask(spiky)
    truth = np.abs(spiky - ref) > 2.0
    assert found[truth].mean() > 0.95 and found[~truth].mean() < 0.005
    ts = (t * 1e6).astype(np.int64)
    ppm, _ = sm.estimate_clock_skew(sm.clock_skew(ts, 120.0), ts)
    assert ppm == pytest.approx(120.0, abs=0.01)
    with pytest.raises(ValueError, match="two distinct"):
        sm.estimate_offset_gain(np.ones(5), np.ones(5))


def test_variable_speed_drive_steps_its_setpoint():
    sim = default_fleet()
    t = np.array([100.0, 1900.0, 3700.0])
    speed = sim.shaft_rpm("pump-03", t) / sim.shaft_rpm("pump-03", np.array([100.0, 100.0, 100.0]))
    assert speed[1] == pytest.approx(0.8, abs=0.02) and speed[2] == pytest.approx(0.9, abs=0.02)
    assert np.ptp(sim.shaft_rpm("pump-01", t)) < 30  # fixed speed: only slip changes


def test_simulated_sensor_faults_and_labels():
    sim = FleetSimulator(
        [MachineSpec("m")],
        [
            Fault("m", "sensor_dropout", 0, sensor_id="motor_current", magnitude=0.3),
            Fault("m", "sensor_spikes", 0, sensor_id="discharge_pressure", magnitude=0.2),
            Fault("m", "sensor_clock_skew", 0, sensor_id="shaft_speed", magnitude=500.0),
            Fault("m", "outer_race", 100, time_to_failure_s=1000),
        ],
        seed=2,
    )
    kept = sum(sim.chunk("m", k).scalars["motor_current"][1].size for k in range(50))
    assert 300 < kept < 400  # ~30 % of 500 readings lost
    pressure = np.concatenate(
        [sim.chunk("m", k).scalars["discharge_pressure"][1] for k in range(50)]
    )
    assert 0.1 < sm.spike_mask(pressure).mean() < 0.3
    ts, _ = sim.chunk("m", 1000).scalars["shaft_speed"]
    assert ts[0] - (sim.start_us + 1000 * 1_000_000) == 500_000  # 500 ppm of 1000 s
    labels = sim.labels("m", np.array([50.0, 600.0]))
    assert labels["condition"].tolist() == ["normal", "outer_race"]
    assert labels["rul_s"].tolist() == [1050.0, 500.0] and 0 < labels["severity"][1] < 1


@needs_data
def test_dataset_readers_emit_project_shapes_and_labels():
    names = cwru_recordings(DATA)
    assert "normal_0" in names and len(names) == 19
    rec = read_cwru(DATA, "IR014_1")
    assert (rec.location, rec.label, rec.load_hp, rec.rpm) == (
        "inner",
        "inner_014",
        1,
        1774.0,
    )  # the file's own RPM
    frames = cwru_frames(rec, 4096)
    assert len(frames) == len(rec.signal) // 4096 and frames["samples"].iloc[0].dtype == np.float32
    assert (
        frames["ts_start"]
        .diff()
        .dropna()
        .dt.total_seconds()
        .round(4)
        .eq(round(4096 / 12_000, 4))
        .all()
    )
    cm = read_cmapss(DATA)
    assert (
        cm["unit"].nunique() == 100
        and cm["rul"].max() == 125
        and cm.groupby("unit")["rul_true"].min().eq(0).all()
    )
    readings = cmapss_readings(cm[cm.unit == 1])
    assert set(readings.columns) == {"asset_id", "sensor_id", "ts", "value"}
    assert len(readings) == (cm.unit == 1).sum() * 24
    skab = read_skab(DATA, "valve1/0")
    assert {"anomaly", "changepoint", "current"} <= set(skab.columns) and str(
        skab.index.tz
    ) == "UTC"
    assert len(skab_readings(skab, "skab-0")) == len(skab) * 8
    nab = read_nab(DATA)
    assert nab["in_window"].sum() > 0
    # as published, the series steps back once (2014-01-07 02:55 -> 02:00); the reader keeps it
    assert (nab["ts"].diff() <= pd.Timedelta(0)).sum() == 1


def test_missing_data_names_the_path_and_the_variable(tmp_path: Path):
    with pytest.raises(DatasetError, match="PLANTPULSE_DATA"):
        read_cmapss(tmp_path)
    with pytest.raises(DatasetError, match="not a CWRU recording name"):
        read_cwru(tmp_path, "../../etc/passwd")


@needs_data
def test_every_reference_reading_is_declared_and_passes_its_contract():
    """Replaying the real data sets must not dead-letter valid readings as unknown or out of range."""
    from expectations.checks import scalar_reasons
    from expectations.contracts import SENSORS
    from physics.datasets import SKAB_SENSORS

    frames = [cmapss_readings(read_cmapss(DATA))]
    frames += [
        skab_readings(read_skab(DATA, e), e) for e in ("anomaly-free", "valve1/0", "valve1/7")
    ]
    nab = read_nab(DATA)
    frames.append(pd.DataFrame({"sensor_id": "nab_machine_temperature", "value": nab["value"]}))
    readings = pd.concat(frames, ignore_index=True)
    assert set(readings["sensor_id"]) <= set(SENSORS)
    assert {f"skab_{s}" for s in SKAB_SENSORS.values()} <= set(SENSORS)
    for sensor_id, group in readings.groupby("sensor_id"):
        reasons = scalar_reasons(SENSORS[sensor_id], group["value"].to_numpy())
        assert (reasons == "ok").all(), (sensor_id, set(reasons))
