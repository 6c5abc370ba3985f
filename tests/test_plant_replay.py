"""Replaying what a plant file names: any SKAB folder, a NAB series of a declared kind, the
C-MAPSS split the file names - through the real flow into a real lake, no Python edited."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from bytewax.testing import run_main

from bytewax_flows.replay import plant_messages
from expectations import contracts
from lake import Lake
from physics.datasets import DatasetError
from plant import PLANTS_DIR, PlantError, load_plant
from tests.test_process_and_data import DATA, needs_data


@pytest.fixture
def restore_default_plant():
    # os.environ directly: a monkeypatch.delenv at teardown is itself undone afterwards, which
    # put the test's plant back as every later test's default plant
    before = os.environ.pop("PLANTPULSE_PLANT", None)
    yield
    os.environ.pop("PLANTPULSE_PLANT", None)
    if before is not None:
        os.environ["PLANTPULSE_PLANT"] = before
    contracts.SENSORS.clear()
    contracts.SENSORS.update(load_plant(PLANTS_DIR / "demo.yaml").contracts_by_sensor())


def skab_plant(tmp_path: Path, **replace: str) -> Path:
    """The bundled SKAB plant with its own sensor ids (no code knows them) and edits."""
    text = (PLANTS_DIR / "skab.yaml").read_text().replace("id: skab_", "id: mill_")
    text = text.replace("plant: skab", "plant: mill")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "mill.yaml"
    path.write_text(text)
    return path


@needs_data
def test_a_plant_file_alone_replays_its_folder_end_to_end(
    lake: Lake, tmp_path: Path, restore_default_plant
):
    path = skab_plant(
        tmp_path,
        **{
            'files: "*.csv"': 'files: "1[01].csv"',
            "  batch_s: 10.0": '  batch_s: 1.0\n  asset_id: "mill-{stem}"',
            'match: "skab-*"': 'match: "mill-*"',
        },
    )
    plant = contracts.use_plant(path)
    assert "mill_current" in contracts.SENSORS and "skab_current" not in contracts.SENSORS
    timelines = plant_messages(plant, DATA)
    assert sorted(timelines) == ["mill-10", "mill-11"]
    from bytewax_flows.replay import ReplaySource
    from bytewax_flows.telemetry import get_flow

    run_main(get_flow(ReplaySource(timelines), lake.uri))
    readings = lake.read("readings", columns=["asset_id", "sensor_id"])
    rows = sum(len(pd.read_csv(DATA / "skab" / "valve1" / f"{n}.csv", sep=";")) for n in (10, 11))
    assert len(readings) == rows * 8 and not lake.exists("dead_letter")
    assert set(readings["sensor_id"]) == {
        f"mill_{s}"
        for s in (
            "accelerometer1_rms",
            "accelerometer2_rms",
            "current",
            "pressure",
            "temperature",
            "thermocouple",
            "voltage",
            "volume_flow_rate_rms",
        )
    }
    assert lake.count("features") > 0 and lake.count("scores") > 0


@needs_data
def test_any_skab_folder_by_the_file(tmp_path: Path):
    path = skab_plant(
        tmp_path, **{"folder: valve1": 'folder: ""', 'files: "*.csv"': 'files: "anomaly-free.csv"'}
    )
    timelines = plant_messages(load_plant(path), DATA)
    assert list(timelines) == ["skab-skab-anomaly-free"]
    missing = skab_plant(tmp_path, **{"folder: valve1": "folder: valve9"})
    with pytest.raises(DatasetError, match="no SKAB experiments"):
        plant_messages(load_plant(missing), DATA)


def test_replayed_assets_must_fall_under_the_declared_asset(tmp_path: Path):
    path = skab_plant(tmp_path, **{"  batch_s: 10.0": '  batch_s: 10.0\n  asset_id: "x-{stem}"'})
    (tmp_path / "skab" / "valve1").mkdir(parents=True)
    columns = [
        "datetime",
        "Accelerometer1RMS",
        "Accelerometer2RMS",
        "Current",
        "Pressure",
        "Temperature",
        "Thermocouple",
        "Voltage",
        "Volume Flow RateRMS",
    ]
    pd.DataFrame([["2020-01-01 00:00:00", *[1.0] * 8]], columns=columns).to_csv(
        tmp_path / "skab" / "valve1" / "0.csv", sep=";", index=False
    )
    with pytest.raises(
        PlantError,
        match=r"replayed asset 'x-0' does not fall under asset "
        r"'skab-testbed' \(match: 'skab-\*'\)",
    ):
        plant_messages(load_plant(path), tmp_path)


def write_nab_series(data: Path) -> None:
    (data / "nab").mkdir(parents=True)
    pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=50, freq="1min"),
            "value": [5.0 + 0.01 * i for i in range(50)],
        }
    ).to_csv(data / "nab" / "boiler_pressure.csv", index=False)


NAB_PLANT = """\
plant: boiler-house
sites:
  - id: boilers
    assets:
      - id: boiler-1
        sensors:
          - {id: drum_pressure, kind: pressure, unit: bar, range: [0.0, 60.0], rate_hz: 0.0166667,
             max_gap_s: 600.0, stuck_after_s: null}
replay: {adapter: nab, asset: boiler-1, sensor: drum_pressure, series: boiler_pressure}
"""


def test_a_nab_series_of_a_declared_kind(tmp_path: Path):
    write_nab_series(tmp_path)
    path = tmp_path / "boiler.yaml"
    path.write_text(NAB_PLANT)
    timelines = plant_messages(load_plant(path), tmp_path)
    assert list(timelines) == ["boiler-1"] and len(timelines["boiler-1"]) == 50
    assert b"drum_pressure" in timelines["boiler-1"][0][1]
    bad = tmp_path / "bad.yaml"
    bad.write_text(NAB_PLANT.replace("sensor: drum_pressure", "sensor: drum_level"))
    with pytest.raises(
        PlantError,
        match=r"bad.yaml:9: replay.sensor: 'drum_level' is not a "
        r"sensor of asset 'boiler-1'",
    ):
        load_plant(bad)


def test_the_cmapss_split_named_in_the_file(tmp_path: Path):
    folder = tmp_path / "cmapss"
    folder.mkdir()
    rows = [[u, c, 0.0, 0.0, 100.0, *[500.0] * 21] for u in (1, 2) for c in (1, 2, 3)]
    (folder / "test_FD001.txt").write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    (folder / "RUL_FD001.txt").write_text("40\n7\n")
    text = (PLANTS_DIR / "cmapss.yaml").read_text().replace("split: train", "split: test")
    path = tmp_path / "cmapss-test.yaml"
    path.write_text(text)
    timelines = plant_messages(load_plant(path), tmp_path)
    assert sorted(timelines) == ["engine-001", "engine-002"]
    from physics.datasets import read_cmapss

    df = read_cmapss(tmp_path, "FD001", rul_cap=None, split="test")
    assert df.groupby("unit")["rul"].min().tolist() == [40.0, 7.0]  # RUL at the last cycle
    with pytest.raises(DatasetError, match="C-MAPSS train_FD001.txt not found"):
        plant_messages(load_plant(PLANTS_DIR / "cmapss.yaml"), tmp_path)


def test_replay_command_takes_a_plant_file_and_a_data_path(tmp_path: Path):
    from tests.test_cli import cli

    write_nab_series(tmp_path / "data")
    path = tmp_path / "boiler.yaml"
    path.write_text(NAB_PLANT)
    out = cli(
        "replay", "--plant", str(path), "--data", str(tmp_path / "data"), home=tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stderr
    readings = Lake(tmp_path / "lake").read("readings")
    assert len(readings) == 50 and set(readings["sensor_id"]) == {"drum_pressure"}
    out = cli("replay", "--plant", str(tmp_path / "nope.yaml"), home=tmp_path, timeout=300)
    assert (
        out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    )
