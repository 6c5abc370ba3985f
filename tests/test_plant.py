"""The plant model: plant files load, resolve per (asset, sensor), and fail with one clear line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from expectations import contracts
from expectations.suites import plant_expectations, run_suite
from physics.bearing import BearingGeometry
from plant import PLANTS_DIR, PlantError, default_plant, load_plant
from tests.legacy_contracts import LEGACY_RELATIONSHIPS, LEGACY_SENSORS

# A small plant written only as a file: two sites, a templated asset kind, a fleet pattern, its
# own bearing, per-asset overrides, a relationship and a topology.
NEW_PLANT = """\
plant: paper-mill
description: a plant no code knows about
bearings:
  SKF_6310: {n_balls: 8, ball_diameter: 22.225, pitch_diameter: 80.0, unit: mm}
  FAG_22220: {n_balls: 17, ball_diameter: 24.0, pitch_diameter: 145.0, contact_angle_deg: 10.0}
sensor_kinds:
  temperature: {unit: degC, range: [-20.0, 150.0], rate_hz: 1.0}
  vibration: {unit: g, range: [-100.0, 100.0], rate_hz: 25600.0, frames: true,
              min_frame_samples: 2048}
  flow: {unit: m3/h, range: [0.0, 900.0], rate_hz: 2.0, resolution: 0.5}
asset_kinds:
  fan:
    nominal_speed_rpm: 1480.0
    components:
      - {id: nde, kind: bearing, bearing: SKF_6310}
      - {id: de, kind: bearing, bearing: FAG_22220}
    sensors:
      - {id: bearing_temp, kind: temperature, component: de, tag: "{asset_id}-TT1"}
      - {id: vib_de, kind: vibration, component: de}
      - {id: vib_nde, kind: vibration, component: nde}
sites:
  - id: hall-1
    assets:
      - id: fan-101
        kind: fan
        sensors:
          - {id: bearing_temp, range: [-20.0, 95.0], lateness_s: 5.0}   # a hotter limit here
      - id: fan-102
        kind: fan
        nominal_speed_rpm: 990.0
  - id: hall-2
    assets:
      - id: pump-201
        nominal_speed_rpm: 2950.0
        components: [{id: de, kind: bearing, bearing: SKF_6310}]
        sensors:
          - {id: flow, kind: flow, description: discharge flow}
          - {id: bearing_temp, kind: temperature, component: de, watched_as: slope,
             watched_as_reason: the housing follows the ambient}
        relationships:
          - {target: bearing_temp, inputs: [flow], description: load heating}
      - {id: conveyor, match: "conv-*", kind: fan}
topology:
  - {from: pump-201, to: fan-101, kind: feeds}
  - {from: fan-101, to: fan-102, kind: drives}
"""


def write(tmp_path: Path, text: str, name: str = "plant.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_new_plant_described_only_by_a_file_resolves_contracts_and_bearings(tmp_path: Path):
    plant = load_plant(write(tmp_path, NEW_PLANT))
    # contracts per (asset, sensor): the same sensor id differs between assets
    assert plant.contract("fan-101", "bearing_temp").high == 95.0
    assert plant.contract("fan-101", "bearing_temp").allowed_lateness_s == 5.0
    assert plant.contract("fan-102", "bearing_temp").high == 150.0  # the kind's default
    assert plant.contract("pump-201", "bearing_temp").watched_as == "slope"
    assert plant.contract("pump-201", "flow").resolution == 0.5
    assert plant.contract("fan-101", "vib_de").min_frame_samples == 2048
    assert plant.contract("pump-201", "vib_de") is None  # not a sensor of that asset
    assert plant.contract("fan-999", "vib_de") is None  # not an asset of the plant
    # a pattern stands for a fleet
    assert plant.contract("conv-7", "vib_nde").sample_rate_hz == 25600.0
    assert plant.asset("conv-7").asset_id == "conveyor"
    # each asset's and each sensor's own bearing, and the nominal speed
    assert plant.bearing("fan-101", "vib_de") == BearingGeometry(17, 24.0, 145.0, 10.0)
    assert plant.bearing("fan-101", "vib_nde") == BearingGeometry(8, 22.225, 80.0)
    assert plant.bearing("pump-201") == BearingGeometry(8, 22.225, 80.0)
    assert plant.nominal_speed_rpm("fan-101") == 1480.0
    assert plant.nominal_speed_rpm("fan-102") == 990.0
    assert plant.nominal_speed_rpm("pump-201") == 2950.0
    # tags, relationships and topology
    assert plant.asset("fan-102").sensors["bearing_temp"].tag == "fan-102-TT1"
    assert [r.inputs for r in plant.relationships("pump-201")] == [("flow",)]
    assert [e.source for e in plant.upstream("fan-101")] == ["pump-201"]
    assert [(e.target, e.kind) for e in plant.downstream("fan-101")] == [("fan-102", "drives")]


def test_default_plant_reproduces_the_contracts_declared_in_python_before():
    plant = load_plant(PLANTS_DIR / "demo.yaml")
    assert plant.contracts_by_sensor() == LEGACY_SENSORS
    assert list(plant.contracts_by_sensor()) == list(LEGACY_SENSORS)
    assert plant.all_relationships() == LEGACY_RELATIONSHIPS
    assert contracts.SENSORS == LEGACY_SENSORS and contracts.RELATIONSHIPS == LEGACY_RELATIONSHIPS
    # and per asset, every data set's machine resolves to its declared sensors
    assert plant.contract("engine-042", "cmapss_s7") == LEGACY_SENSORS["cmapss_s7"]
    assert plant.contract("skab-valve2-3", "skab_temperature").watched_as == "auto"
    assert plant.contract("cwru-IR014_1", "vib_de") == LEGACY_SENSORS["vib_de"]
    assert plant.contract("pump-02", "motor_current") == LEGACY_SENSORS["motor_current"]
    assert plant.contract("nab-machine", "bearing_temp") is None


def test_skab_declares_no_label_tuned_view_and_a_declared_view_needs_its_reason(tmp_path: Path):
    """SKAB's temperatures are no longer declared slow states (that choice came from valve1's
    false alarms): the detector decides per run from its warm-up.  A view that is declared
    must say why (a physical reason), else the plant file is refused."""
    plant = load_plant(PLANTS_DIR / "skab.yaml")
    sensor = plant.asset("skab-valve1-1").sensors["skab_temperature"]
    assert sensor.contract.watched_as == "auto" and sensor.watched_as_reason is None
    unexplained = NEW_PLANT.replace(
        ",\n             watched_as_reason: the housing follows the ambient}", "}"
    )
    assert unexplained != NEW_PLANT
    with pytest.raises(PlantError, match="watched_as_reason"):
        load_plant(write(tmp_path, unexplained))


def test_default_plant_follows_the_environment(tmp_path: Path, monkeypatch):
    path = write(tmp_path, NEW_PLANT)
    monkeypatch.setenv("PLANTPULSE_PLANT", str(path))
    assert default_plant().name == "paper-mill" and default_plant() is default_plant()
    monkeypatch.delenv("PLANTPULSE_PLANT")
    assert default_plant().name == "demo"


BAD = {
    "unknown_key": (
        NEW_PLANT.replace("lateness_s: 5.0}", "lateness: 5.0}"),
        "sites[0].assets[0].sensors[0]: unknown key 'lateness'",
        "lateness: 5.0",
    ),
    "low_not_below_high": (
        NEW_PLANT.replace("range: [-20.0, 95.0]", "range: [95.0, 95.0]"),
        "sites[0].assets[0].sensors[0].range: low 95 must be below high 95",
        "range: [95.0, 95.0]",
    ),
    "unknown_bearing": (
        NEW_PLANT.replace("bearing: SKF_6310}]", "bearing: SKF_6311}]"),
        "sites[1].assets[0].components[0].bearing: unknown bearing 'SKF_6311'",
        "SKF_6311",
    ),
    "duplicate_id": (
        NEW_PLANT.replace("      - id: fan-102\n", "      - id: fan-101\n"),
        "sites[0].assets[1].id: duplicate asset id 'fan-101' (first at line",
        "      - id: fan-101",
    ),
    "topology_cycle": (
        NEW_PLANT + "  - {from: fan-102, to: pump-201, kind: feeds}\n",
        "topology[2]: topology cycle pump-201 -> fan-101 -> fan-102 -> pump-201",
        "{from: fan-102, to: pump-201",
    ),
    "yaml_syntax": (
        NEW_PLANT.replace("sensor_kinds:\n", "sensor_kinds:\n  temperature: {unit: degC\n"),
        "YAML syntax:",
        "temperature: {unit: degC",
    ),
    "wrong_type": (
        NEW_PLANT.replace("nominal_speed_rpm: 990.0", "nominal_speed_rpm: fast"),
        "sites[0].assets[1].nominal_speed_rpm: Input should be a valid number",
        "nominal_speed_rpm: fast",
    ),
    "unknown_topology_asset": (
        NEW_PLANT.replace("{from: fan-101, to: fan-102", "{from: fan-101, to: fan-103"),
        "topology[1].to: unknown asset 'fan-103'",
        "to: fan-103",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_plant_file_is_one_error_naming_file_line_and_field(tmp_path: Path, case: str):
    text, message, marker = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(PlantError) as info:
        load_plant(path)
    error = str(info.value)
    assert "\n" not in error
    assert error.startswith(f"{path}:") and message in error
    # the line named is the line of the offending text (the last line holding the marker)
    lines = text.splitlines()
    expected = max(i for i, line in enumerate(lines, 1) if marker in line)
    if case == "yaml_syntax":  # libyaml reports where it noticed: the line after the bad one
        assert info.value.line in (expected, expected + 1)
    else:
        assert info.value.line == expected, error


def test_missing_file_and_non_mapping_are_clear(tmp_path: Path):
    with pytest.raises(PlantError, match="cannot read the plant file"):
        load_plant(tmp_path / "nope.yaml")
    with pytest.raises(PlantError, match="a plant file is a YAML mapping"):
        load_plant(write(tmp_path, "- just a list\n"))


def test_gx_suite_checks_each_asset_against_its_own_contract(tmp_path: Path):
    plant = load_plant(write(tmp_path, NEW_PLANT))
    ts = pd.Timestamp("2026-01-01", tz="UTC")
    df = pd.DataFrame(
        {
            "asset_id": ["fan-101", "fan-101", "fan-102", "fan-102"],
            "sensor_id": "bearing_temp",
            "ts": [ts + pd.Timedelta(seconds=i) for i in range(4)],
            "value": [80.0, 120.0, 80.0, 120.0],  # 120 is above fan-101's limit, not fan-102's
            "raw_value": [80.0, 120.0, 80.0, 120.0],
            "quality": 0,
            "ingest_ts": ts,
            "date": ts.date(),
        }
    )
    pairs = [("fan-101", "bearing_temp"), ("fan-102", "bearing_temp")]
    results = run_suite(df, plant_expectations(plant, pairs))
    ranges = [r for r in results if r.expectation == "expect_column_values_to_be_between"]
    assert [(r.success, r.observed["unexpected_count"]) for r in ranges] == [(False, 1), (True, 0)]


def test_bench_plant_model_quick_writes_its_json(tmp_path: Path):
    from bench import plant_model

    out = tmp_path / "plant_model.json"
    result = plant_model.main(["--quick", "--out", str(out)])
    assert result["metrics"]["sensors_resolved"] == 10_000.0
    assert set(result["targets"]) <= set(result["metrics"]) and out.exists()


def plant_command(*args: str) -> int:
    """``plantpulse plant ...`` in-process (the command's own parser and runner)."""
    import argparse

    from plantpulse_cli.plant import add_parser, run

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return run(parser.parse_args(["plant", *args]))


def test_plant_validate_command_prints_one_line_and_exits_2(tmp_path: Path):
    from tests.test_cli import cli

    path = write(tmp_path, BAD["topology_cycle"][0])
    out = cli("plant", "validate", str(path), home=tmp_path, timeout=180)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(f"error: {path}:") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "topology cycle" in out.stderr


@pytest.mark.parametrize("case", list(BAD))
def test_plant_validate_in_process_exit_2_one_line(tmp_path: Path, case: str, capsys):
    path = write(tmp_path, BAD[case][0])
    assert plant_command("validate", str(path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:") and len(err.strip().splitlines()) == 1


def test_plant_validate_and_show_a_good_file(tmp_path: Path, capsys, monkeypatch):
    path = write(tmp_path, NEW_PLANT)
    assert plant_command("validate", str(path)) == 0
    assert "2 sites, 4 assets, 11 sensors, 2 topology edges" in capsys.readouterr().out
    assert plant_command("show", str(path), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    fan = next(a for a in shown["assets"] if a["asset_id"] == "fan-101")
    temp = next(s for s in fan["sensors"] if s["sensor_id"] == "bearing_temp")
    assert (temp["high"], temp["tag"]) == (95.0, "fan-101-TT1")
    assert {(e["source"], e["target"]) for e in shown["topology"]} == {
        ("pump-201", "fan-101"),
        ("fan-101", "fan-102"),
    }
    monkeypatch.setenv("PLANTPULSE_PLANT", str(path))
    assert plant_command("show") == 0
    table = capsys.readouterr().out
    assert "fan-102-TT1" in table and "pump-201" in table and "drives" in table
    assert "watched as slope: the housing follows the ambient" in table


def test_dagster_asset_shows_the_plant_as_markdown_tables(tmp_path: Path):
    import dagster as dg

    from dagster_project.assets.plant import plant_model
    from dagster_project.definitions import defs

    assert defs.resolve_assets_def("plant_model") is not None
    path = write(tmp_path, NEW_PLANT)
    result = dg.materialize(
        [plant_model], run_config={"ops": {"plant_model": {"config": {"path": str(path)}}}}
    )
    meta = result.asset_materializations_for_node("plant_model")[0].metadata
    assert meta["assets"].value == 4 and meta["sensor_count"].value == 11
    sensors = meta["sensor_contracts"].value
    assert "| fan-101 | bearing_temp | fan-101-TT1 | temperature | degC | -20 .. 95 |" in sensors
    assert "| pump-201 | fan-101 | feeds |" in meta["topology"].value
    assert "| fan-101 | hall-1 | fan |  | 1480 | nde: SKF_6310, de: FAG_22220 | 3 |" in (
        meta["asset_table"].value
    )
    bad = write(tmp_path, BAD["unknown_bearing"][0], "bad.yaml")
    failed = dg.materialize(
        [plant_model],
        raise_on_error=False,
        run_config={"ops": {"plant_model": {"config": {"path": str(bad)}}}},
    )
    assert not failed.success


def test_yaml_tags_a_safe_loader_refuses_and_duplicate_keys_are_errors(tmp_path: Path):
    unsafe = write(tmp_path, "plant: x\ndescription: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(PlantError, match=r"plant.yaml:2: .*could not determine a constructor"):
        load_plant(unsafe)
    twice = write(tmp_path, "plant: x\nsites: []\nplant: y\n", "twice.yaml")
    with pytest.raises(
        PlantError, match=r"twice.yaml:3: duplicate key 'plant' \(first at line 1\)"
    ):
        load_plant(twice)
