"""Onboarding a sensor the plant does not declare: its readings land in ``unknown_readings``
(schema on read), ``sensor_proposals`` profiles it and proposes a contract, ``plantpulse
sensors accept`` declares it in the plant file and replays its backlog into ``readings``
exactly once, and a running stream picks the plant change up without a restart."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from bytewax.testing import TestingSource, run_main

from bytewax_flows.payloads import Message
from bytewax_flows.telemetry import get_flow
from dagster_project.assets.onboarding import new_landed_pairs, sensor_proposals
from dagster_project.resources import LakeResource
from dataplane.step import Context, run_batch
from dataplane.wire import Batch
from lake import Lake
from plant import PLANTS_DIR, load_plant
from plant.edit import add_sensor
from plant.watch import PlantWatcher
from plantpulse_cli.main import main
from tests.conftest import T0_US


@pytest.fixture
def plant_file(tmp_path: Path) -> Path:
    """The demo plant (with its included files) in a temporary directory, to be edited."""
    for f in PLANTS_DIR.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / "demo.yaml"


def oil_temp(i0: int, n: int, asset: str = "pump-01", step_us: int = 1_000_000) -> Message:
    """``n`` 1 Hz readings of the undeclared sensor ``oil_temp`` (0.1 degC resolution)."""
    ts = [T0_US + (i0 + i) * step_us for i in range(n)]
    values = [round(45.0 + 2.0 * np.sin((i0 + i) / 30.0), 1) for i in range(n)]
    body = {"asset_id": asset, "sensor_id": "oil_temp", "ts": ts, "value": values}
    return Message("test", i0, T0_US, json.dumps(body).encode())


def known(i0: int) -> Message:
    body = {
        "asset_id": "pump-01",
        "sensor_id": "bearing_temp",
        "ts": T0_US + i0 * 1_000_000,
        "value": 40.0,
    }
    return Message("test", 10_000 + i0, T0_US, json.dumps(body).encode())


def _sensor_rows(lake: Lake, table: str, sensor: str = "oil_temp"):
    if not lake.exists(table):
        return []
    return lake.read(table, filters=[("sensor_id", "=", sensor)]).to_dict("records")


def test_unknown_sensor_lands_gets_a_proposal_and_is_accepted_exactly_once(
    lake: Lake, plant_file: Path, monkeypatch, capsys
):
    monkeypatch.setenv("PLANTPULSE_LAKE", lake.uri)
    monkeypatch.setenv("PLANTPULSE_PLANT", str(plant_file))
    backlog = [
        oil_temp(0, 120),
        oil_temp(120, 60),
        known(0),
        # a repeated timestamp and a value the accepted contract will refuse
        Message(
            "test",
            500,
            T0_US,
            json.dumps(
                {
                    "asset_id": "pump-01",
                    "sensor_id": "oil_temp",
                    "ts": [T0_US + 10_000_000, T0_US + 200_000_000],
                    "value": [45.3, 900.0],
                }
            ).encode(),
        ),
    ]
    run_main(get_flow(TestingSource(backlog), lake.uri, plant=load_plant(plant_file)))

    # kept, apart from readings, with its raw input
    landed = _sensor_rows(lake, "unknown_readings")
    assert len(landed) == 182 and not _sensor_rows(lake, "readings")
    assert {json.loads(r["raw"])["sensor_id"] for r in landed} == {"oil_temp"}
    assert len(_sensor_rows(lake, "readings", "bearing_temp")) == 1
    assert not lake.exists("dead_letter")

    # the Dagster asset profiles it and proposes a contract, shown as metadata
    result = dg.materialize(
        [sensor_proposals],
        resources={"lake": LakeResource(uri=lake.uri)},
        run_config={"ops": {"sensor_proposals": {"config": {"plant": str(plant_file)}}}},
    )
    meta = result.asset_materializations_for_node("sensor_proposals")[0].metadata
    assert meta["unknown_sensors"].value == 1
    assert "plantpulse sensors accept pump-01 oil_temp" in meta["proposed_entries"].value
    proposal = meta["proposals"].value["pump-01/oil_temp"]
    assert proposal["kind"] == "temperature" and proposal["unit"] == "degC"
    assert proposal["rate_hz"] == 1.0 and proposal["resolution"] == 0.1
    stored = lake.read("sensor_proposals").iloc[0]
    assert stored["n_readings"] == 182 and stored["gaps"] == 1  # 180 s -> 200 s

    assert main(["sensors", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["sensor_id"], r["status"], r["proposed_kind"]) for r in listed] == [
        ("oil_temp", "unknown", "temperature")
    ]
    assert main(["sensors", "show", "pump-01", "oil_temp"]) == 0
    assert "kind: temperature" in capsys.readouterr().out

    # accept: declared in the plant file (still valid, the rest untouched), backlog replayed
    before = plant_file.read_text()
    argv = [
        "sensors",
        "accept",
        "pump-01",
        "oil_temp",
        "--plant",
        str(plant_file),
        "--settle",
        "0",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replayed_readings"] == 180 and out["replayed_dead_letters"] == 2
    assert main(["plant", "validate", str(plant_file)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    after = plant_file.read_text()
    assert after.startswith(before[: before.index('description: "intake pump, healthy"')])
    assert after.count("\n") == before.count("\n") + 1 and "id: oil_temp" in after
    contract = load_plant(plant_file).contract("pump-01", "oil_temp")
    assert contract is not None and contract.kind == "temperature"

    readings = _sensor_rows(lake, "readings")
    assert len(readings) == 180 and len({r["ts"] for r in readings}) == 180
    dead = _sensor_rows(lake, "dead_letter")
    assert sorted(r["reason"] for r in dead) == ["duplicate", "out_of_range"]

    # accepting again (or re-running the replay) adds nothing
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["plant_file"] is None and again["replayed_readings"] == 0
    assert again["replayed_before"] == 182
    assert (
        len(_sensor_rows(lake, "readings")) == 180 and len(_sensor_rows(lake, "dead_letter")) == 2
    )
    # the declared sensor is no longer proposed
    dg.materialize(
        [sensor_proposals],
        resources={"lake": LakeResource(uri=lake.uri)},
        run_config={"ops": {"sensor_proposals": {"config": {"plant": str(plant_file)}}}},
    )
    assert lake.count("sensor_proposals") == 0


def test_accept_errors_are_one_line(lake: Lake, plant_file: Path, monkeypatch, capsys):
    monkeypatch.setenv("PLANTPULSE_LAKE", lake.uri)
    assert (
        main(
            [
                "sensors",
                "accept",
                "pump-01",
                "oil_temp",
                "--plant",
                str(plant_file),
                "--settle",
                "0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown_readings" in err[0]
    lake.append(
        "unknown_readings",
        {
            "asset_id": ["tank-9"],
            "sensor_id": ["oil_temp"],
            "ts": [T0_US],
            "value": [1.0],
            "raw": [b"{}"],
            "source": ["test"],
            "ingest_ts": [T0_US],
        },
    )
    assert (
        main(
            ["sensors", "accept", "tank-9", "oil_temp", "--plant", str(plant_file), "--settle", "0"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'tank-9' is not declared" in err[0]
    # the bundled example plants are part of the installation, never edited by accept
    from plant import bundled_plant

    demo = bundled_plant("demo")
    before = {p.name: p.read_bytes() for p in demo.parent.glob("*.yaml")}
    lake.append(
        "unknown_readings",
        {
            "asset_id": ["pump-01"],
            "sensor_id": ["oil_temp"],
            "ts": [T0_US],
            "value": [1.0],
            "raw": [b"{}"],
            "source": ["test"],
            "ingest_ts": [T0_US],
        },
    )
    assert (
        main(["sensors", "accept", "pump-01", "oil_temp", "--plant", str(demo), "--settle", "0"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bundled example plant" in err[0]
    assert {p.name: p.read_bytes() for p in demo.parent.glob("*.yaml")} == before


def test_the_stream_follows_the_plant_file_without_restart(plant_file: Path, tmp_path: Path):
    """The same shard state (no restart): a sensor unknown at first is landed; once the file
    declares it, its next readings are accepted; a narrowed range takes effect too."""
    ctx = Context(plant=PlantWatcher(plant_file, refresh_s=0.0))
    state, rows = run_batch(None, Batch([oil_temp(0, 3), known(0)]), ctx)
    tables = {r.table: r.rows.num_rows for r in rows if r.table != "features"}
    assert tables == {"unknown_readings": 3, "readings": 1}
    add_sensor(plant_file, "pump-01", {"id": "oil_temp", "kind": "temperature"})
    text = plant_file.read_text().replace(
        "temperature: {unit: degC, range: [-40.0, 200.0]",
        "temperature: {unit: degC, range: [-40.0, 48.0]",
    )
    plant_file.write_text(text)
    state, rows = run_batch(state, Batch([oil_temp(3, 3), known(1)]), ctx)
    tables = {r.table: r.rows.to_pydict() for r in rows}
    assert "unknown_readings" not in tables
    assert tables["readings"]["sensor_id"].count("oil_temp") == 3
    # bearing_temp's series was registered under the old range; 40 < 48 still accepted, a
    # 50 degC reading is now out of range
    body = {
        "asset_id": "pump-01",
        "sensor_id": "bearing_temp",
        "ts": T0_US + 9_000_000,
        "value": 50.0,
    }
    _, rows = run_batch(state, Batch([Message("test", 99, T0_US, json.dumps(body).encode())]), ctx)
    assert {r.table: r.rows.to_pydict()["reason"] for r in rows if r.table == "dead_letter"} == {
        "dead_letter": ["out_of_range"]
    }


def test_a_running_flow_picks_up_an_accepted_sensor(lake: Lake, plant_file: Path):
    """The real Bytewax flow, running: its input edits the plant file mid-stream and waits a
    little over the watcher's 2 s; the sensor's later readings land in ``readings``."""

    def source():
        yield oil_temp(0, 5)
        add_sensor(plant_file, "pump-01", {"id": "oil_temp", "kind": "temperature"})
        time.sleep(2.3)
        yield oil_temp(5, 5)

    run_main(get_flow(TestingSource(source()), lake.uri, plant=load_plant(plant_file)))
    assert len(_sensor_rows(lake, "unknown_readings")) == 5
    assert sorted(r["ts"].value // 1000 for r in _sensor_rows(lake, "readings")) == [
        T0_US + i * 1_000_000 for i in range(5, 10)
    ]


def test_the_onboarding_sensor_requests_a_run_once_per_new_sensor():
    new, cursor = new_landed_pairs(["pump-01/oil_temp"], {})
    assert new == ["pump-01/oil_temp"]
    assert new_landed_pairs(["pump-01/oil_temp"], cursor)[0] == []
    assert new_landed_pairs(["pump-01/oil_temp", "pump-02/x"], cursor)[0] == ["pump-02/x"]


def test_rows_landed_within_the_settle_margin_wait_for_the_next_replay(
    lake: Lake, plant_file: Path
):
    from lake.onboarding import replay_backlog

    now = T0_US + 100 * 1_000_000
    lake.append(
        "unknown_readings",
        {
            "asset_id": ["pump-01"] * 3,
            "sensor_id": ["oil_temp"] * 3,
            "ts": [T0_US, T0_US + 1_000_000, T0_US + 2_000_000],
            "value": [40.0, 41.0, 42.0],
            "raw": [b"{}"] * 3,
            "source": ["test"] * 3,
            # the last one landed 2 s ago: a running stream may still hold rows stamped before it
            "ingest_ts": [now - 60_000_000, now - 30_000_000, now - 2_000_000],
        },
    )
    add_sensor(plant_file, "pump-01", {"id": "oil_temp", "kind": "temperature"})
    plant = load_plant(plant_file)
    first = replay_backlog(lake, plant, "pump-01", "oil_temp", now, settle_s=5.0)
    assert (first.readings, first.pending) == (2, 1)
    later = replay_backlog(lake, plant, "pump-01", "oil_temp", now + 10_000_000, settle_s=5.0)
    assert (later.readings, later.already, later.pending) == (1, 2, 0)
    assert len(_sensor_rows(lake, "readings")) == 3
