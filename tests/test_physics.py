"""Physics leaf: bearing kinematics against CWRU's published multiples, the simulator."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import hilbert

from lake import Lake
from physics.bearing import SKF_6205, BearingGeometry, defect_frequencies, defect_orders
from physics.features import time_domain
from physics.simulator import SCALAR_RATES_HZ, Fault, FleetSimulator, MachineSpec, default_fleet


def test_defect_orders_match_cwru_published_multiples():
    o = defect_orders(SKF_6205)
    # CWRU: BPFI 5.4152, BPFO 3.5848, FTF 0.39828, BSF 2.3568 (times shaft speed)
    assert o.bpfi == pytest.approx(5.4152, abs=5e-4)
    assert o.bpfo == pytest.approx(3.5848, abs=5e-4)
    assert o.ftf == pytest.approx(0.39828, abs=5e-5)
    assert o.bsf == pytest.approx(2.3568, abs=5e-4)
    assert defect_frequencies(SKF_6205, 1797).bpfi == pytest.approx(5.4152 * 1797 / 60, rel=1e-4)


@pytest.mark.parametrize("rpm", [0.0, -5.0, float("nan"), float("inf")])
def test_missing_or_zero_speed_is_an_error(rpm: float):
    with pytest.raises(ValueError, match="shaft speed"):
        defect_frequencies(SKF_6205, rpm)


def test_impossible_geometry_is_rejected():
    with pytest.raises(ValueError, match="ball_diameter < pitch_diameter"):
        BearingGeometry(9, 2.0, 1.0)


def test_simulator_is_deterministic_and_chunks_are_independent():
    a, b = default_fleet(seed=3), default_fleet(seed=3)
    c1, c2 = a.chunk("pump-02", 40), b.chunk("pump-02", 40)
    assert np.array_equal(c1.frames[0][3], c2.frames[0][3])
    assert all(np.array_equal(c1.scalars[s][1], c2.scalars[s][1]) for s in SCALAR_RATES_HZ)
    assert not np.array_equal(
        default_fleet(seed=4).chunk("pump-02", 40).frames[0][3], c1.frames[0][3]
    )
    ts, _ = c1.scalars["motor_current"]
    assert ts[0] == a.start_us + 40_000_000 and np.all(np.diff(ts) == 100_000)


def test_bearing_fault_makes_vibration_impulsive_and_grows_to_failure():
    sim = FleetSimulator(
        [MachineSpec("m")], [Fault("m", "outer_race", start_s=100, time_to_failure_s=1000)]
    )
    feats = [time_domain(sim.chunk("m", k).frames[0][3]) for k in (50, 600, 1050)]
    kurt = [f["vib_kurtosis"][0] for f in feats]
    rms = [f["vib_rms"][0] for f in feats]
    assert abs(kurt[0]) < 0.5  # healthy: noise plus shaft harmonics, not impulsive
    assert kurt[2] > kurt[1] > 1.0 and rms[2] > rms[1] > rms[0]
    assert sim.rul_s("m", 400) == 700


def test_outer_race_impulses_repeat_at_bpfo():
    sim = FleetSimulator([MachineSpec("m", noise_g=0.01)], [Fault("m", "outer_race", 0, 1000)])
    x = sim.chunk("m", 900).frames[0][3].astype(np.float64)
    envelope = np.abs(hilbert(x))
    spec = np.abs(np.fft.rfft(envelope - envelope.mean()))
    freqs = np.fft.rfftfreq(x.size, 1 / 12_000)
    rpm = 1797 * (1 - 0.015 * (float(sim.load(0, np.array([900.5]))[0]) - 0.4))
    bpfo = defect_frequencies(SKF_6205, rpm).bpfo
    at_bpfo = spec[np.abs(freqs - bpfo) < 1.5].max()
    background = np.median(spec[(freqs > 20) & (freqs < 500)])
    assert at_bpfo > 20 * background
    fake = defect_frequencies(SKF_6205, rpm).bpfi  # a defect that is not there
    assert spec[np.abs(freqs - fake) < 1.5].max() < at_bpfo / 5


def test_sensor_faults_change_only_their_sensor():
    clean = FleetSimulator([MachineSpec("m")], seed=1)
    faulty = FleetSimulator(
        [MachineSpec("m")],
        [Fault("m", "sensor_offset", 10, sensor_id="bearing_temp", magnitude=3.0)],
        seed=1,
    )
    before, after = faulty.chunk("m", 5), faulty.chunk("m", 20)
    assert np.array_equal(
        before.scalars["bearing_temp"][1], clean.chunk("m", 5).scalars["bearing_temp"][1]
    )
    assert after.scalars["bearing_temp"][1] - clean.chunk("m", 20).scalars["bearing_temp"][
        1
    ] == pytest.approx(3.0)
    assert np.array_equal(
        after.scalars["motor_current"][1], clean.chunk("m", 20).scalars["motor_current"][1]
    )


def test_ground_truth_rows_fit_maintenance_events(lake: Lake):
    rows = default_fleet().ground_truth()
    lake.append("maintenance_events", {k: [r[k] for r in rows] for k in rows[0]})
    df = lake.read("maintenance_events")
    assert set(df["kind"]) == {"fault_injected", "failure"}
    failure = df[(df.asset_id == "pump-02") & (df.kind == "failure")]["ts"].iloc[0]
    onset = df[(df.asset_id == "pump-02") & (df.kind == "fault_injected")]["ts"].iloc[0]
    assert (failure - onset).total_seconds() == 7200


def test_constant_frame_has_undefined_shape_statistics_not_zero():
    f = time_domain(np.full((1, 1000), 2.0))
    assert (
        f["vib_rms"][0] == 2.0 and np.isnan(f["vib_kurtosis"][0]) and np.isnan(f["vib_skewness"][0])
    )
    with pytest.raises(ValueError, match="with samples"):
        time_domain(np.zeros((1, 0)))
