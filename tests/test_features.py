"""Vibration features: one implementation for stream and training, physically meaningful."""

from __future__ import annotations

import numpy as np
import pytest
from bytewax.testing import run_main

from bytewax_flows.sources import SimulatorSource
from bytewax_flows.telemetry import get_flow
from lake import Lake, table_spec
from physics.bearing import SKF_6205
from physics.features import demodulation_band, vibration_features
from physics.registry import (
    FEATURE_VERSION,
    FeatureVersionError,
    check_compatible,
    feature_names,
    feature_spec,
)
from physics.simulator import Fault, FleetSimulator, MachineSpec, default_fleet


def frames_of(sim: FleetSimulator, asset: str, chunks: range) -> np.ndarray:
    return np.stack([sim.chunk(asset, k).frames[0][3] for k in chunks])


def test_registry_names_exactly_what_the_function_computes_and_the_table_stores():
    f = vibration_features(
        np.random.default_rng(0).normal(size=(1, 4096)), 12_000.0, 1797.0, SKF_6205
    )
    assert list(f) == feature_names("vibration")
    assert set(feature_names()) <= set(table_spec("features").columns)


def test_kurtogram_finds_the_simulated_structural_resonance():
    sim = FleetSimulator(
        [MachineSpec("m", resonance_hz=3200.0)], [Fault("m", "outer_race", 0, 1000)]
    )
    low, high, sk = demodulation_band(frames_of(sim, "m", range(700, 703)).astype(float), 12_000.0)
    assert np.all(np.abs((low + high) / 2 - 3200.0) <= 400.0)
    assert np.all(sk > 1.0)


@pytest.mark.parametrize("rpm", [1200.0, 1797.0, 2400.0])
def test_defect_lines_are_found_at_any_speed(rpm: float):
    outer = FleetSimulator([MachineSpec("m", rpm=rpm)], [Fault("m", "outer_race", 0, 1000)])
    inner = FleetSimulator([MachineSpec("m", rpm=rpm)], [Fault("m", "inner_race", 0, 1000)])
    shaft = rpm * (1 - 0.015 * (outer.load(0, np.array([800.5]))[0] - 0.4))
    fo = vibration_features(frames_of(outer, "m", range(800, 803)), 12_000.0, shaft, SKF_6205)
    fi = vibration_features(frames_of(inner, "m", range(800, 803)), 12_000.0, shaft, SKF_6205)
    assert np.all(fo["env_bpfo_1"] > 3 * fo["env_bpfi_1"])
    assert np.all(fi["env_bpfi_1"] > 3 * fi["env_bpfo_1"])


@pytest.mark.parametrize("rpm", [1200.0, 2400.0])
def test_fixed_bands_read_the_defect_in_shaft_orders_at_any_speed(rpm: float):
    """The fixed bands read the same orders whatever the speed: an inner-race defect's BPFI
    line stands out in the band holding the resonance it rings, its BPFO line does not."""
    inner = FleetSimulator(
        [MachineSpec("m", rpm=rpm, resonance_hz=3200.0)], [Fault("m", "inner_race", 0, 1000)]
    )
    shaft = rpm * (1 - 0.015 * (inner.load(0, np.array([800.5]))[0] - 0.4))
    f = vibration_features(frames_of(inner, "m", range(800, 803)), 12_000.0, shaft, SKF_6205)
    resonant = 1  # 2.2-3.8 kHz at 12 kHz: the 3.2 kHz resonance
    assert np.all(f[f"band{resonant}_env_bpfi_1"] > f[f"band{resonant}_env_bpfo_1"] + 1.0)
    assert np.all(f[f"band{resonant}_share"] > f["band0_share"])  # its energy is there
    assert all(feature_spec(n).role == "diagnosis" for n in f if n.startswith("band"))


def test_a_frames_features_do_not_depend_on_the_frames_batched_with_it():
    """The stream featurises frames of several machines, at several speeds, in one call; a
    frame's numbers must be those it has alone (its own envelope level, its own speed)."""
    sim = FleetSimulator(
        [MachineSpec("a", rpm=1200.0), MachineSpec("b", rpm=2400.0)],
        [Fault("a", "outer_race", 0, 1000)],
    )
    a, b = frames_of(sim, "a", range(800, 802)), frames_of(sim, "b", range(800, 802))
    alone = vibration_features(a, 12_000.0, 1200.0, SKF_6205)
    mixed = vibration_features(
        np.vstack([a, b]), 12_000.0, [1200.0, 1200.0, 2400.0, 2400.0], SKF_6205
    )
    for name, values in alone.items():
        np.testing.assert_allclose(mixed[name][:2], values, rtol=1e-12, err_msg=name)


def test_healthy_machine_has_no_dominant_defect_line():
    sim = FleetSimulator([MachineSpec("m")])
    f = vibration_features(frames_of(sim, "m", range(10, 15)), 12_000.0, 1797.0, SKF_6205)
    for name in ("env_bpfo_1", "env_bpfi_1", "env_bsf2_1"):
        assert np.all(f[name] < 6.0), name


@pytest.mark.parametrize("rpm", [0.0, float("nan"), -100.0])
def test_missing_speed_flags_the_row_instead_of_guessing(rpm: float):
    f = vibration_features(np.random.default_rng(2).normal(size=(1, 4096)), 12_000.0, rpm, SKF_6205)
    assert f["vib_speed_ok"][0] == 0.0
    assert all(np.isnan(f[n][0]) for n in feature_names("vibration") if n.startswith("env_"))
    assert np.isfinite(f["vib_rms"][0])


@pytest.mark.parametrize(
    ("frames", "fs", "match"),
    [
        (np.full((1, 4096), np.nan), 12_000.0, "NaN or inf"),
        (np.zeros((1, 0)), 12_000.0, "with samples"),
        (np.zeros((1, 100)), 12_000.0, "too short"),
        (np.zeros((1, 4096)), 0.0, "sample rate"),
    ],
)
def test_bad_frames_are_clear_errors(frames: np.ndarray, fs: float, match: str):
    with pytest.raises(ValueError, match=match):
        vibration_features(frames, fs, 1797.0, SKF_6205)


def test_constant_frame_gives_nan_shape_features_not_numbers():
    f = vibration_features(np.full((1, 4096), 0.5), 12_000.0, 1797.0, SKF_6205)
    assert f["vib_rms"][0] == pytest.approx(0.5)
    assert np.isnan(f["vib_kurtosis"][0]) and np.isnan(f["vib_band_0"][0])


def test_stream_features_equal_batch_features_on_the_same_frames(lake: Lake):
    """No train/serve skew: the features table written by the stream equals a direct call."""
    sim = default_fleet()
    run_main(get_flow(SimulatorSource(sim, n_chunks=3), lake.uri))
    stream = lake.read(
        "features", filters=[("asset_id", "=", "pump-02"), ("sensor_id", "=", "vib_de")]
    ).sort_values("window_start")
    assert len(stream) == 3 and (stream["feature_version"] == FEATURE_VERSION).all()
    frames = frames_of(sim, "pump-02", range(3))
    # the stream uses the newest shaft_speed reading seen before each frame (same chunk)
    rpm = np.array([sim.chunk("pump-02", k).scalars["shaft_speed"][1][-1] for k in range(3)])
    batch = vibration_features(frames, 12_000.0, rpm, SKF_6205)
    for name in feature_names("vibration"):
        np.testing.assert_allclose(stream[name].to_numpy(), batch[name], rtol=1e-12, err_msg=name)


def test_model_and_data_feature_versions_must_match():
    check_compatible(FEATURE_VERSION)
    with pytest.raises(
        FeatureVersionError, match="feature_version 1 but the data has feature_version 2"
    ):
        check_compatible(1, 2)
