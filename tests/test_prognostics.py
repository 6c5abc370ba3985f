"""Remaining useful life served in the stream (issue 15.4): the RUL model trains from the lake's
run-to-failure histories, is gated and promoted, and the stream writes ``prognostics`` rows
whose interval holds the simulator's true RUL; plus the late-label retrain loop in short."""

from __future__ import annotations

import base64
import re

import dagster as dg
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from bytewax.testing import run_main

from bytewax_flows.sources import SimulatorSource
from bytewax_flows.telemetry import get_flow
from dagster_project.assets.operations import operations_overview, with_rul_truth
from dagster_project.definitions import defs
from dagster_project.resources import LakeResource
from lake import Lake
from models.prognostics import lake_rul_rows
from models.registry import CHAMPION, RUL_MODEL, client
from models.training import label_faults
from physics.prognostics import DegradationTracker
from physics.simulator import default_fleet
from plant import default_plant
from plantpulse_cli.technician import confirmations, faults_of
from tests.conftest import T0_US


def test_lake_rows_end_at_failures_and_ignore_confirmations_and_censored_assets():
    """Rows run from the baseline to each failure; RUL is seconds to it, capped; a healthy
    asset and a technician's confirmation of an alert give no RUL target."""
    t = pd.date_range("2026-01-01", periods=200, freq="s", tz="UTC")
    hi = 0.05 + 0.1 * np.exp((np.arange(200) - 199) / 30.0)
    feats = pd.concat(
        [
            pd.DataFrame({"asset_id": a, "sensor_id": "vib_de", "window_end": t, "vib_rms": hi})
            for a in ("pump-01", "pump-02")
        ]
    )
    fail = t[-1] + pd.Timedelta(seconds=10)
    events = pd.DataFrame(
        {
            "asset_id": ["pump-02", "pump-01"],
            "ts": [fail, t[100]],
            "kind": ["failure", "failure"],
            "component": ["bearing_outer_race"] * 2,
            "detail": ["spall", "confirms alert pump-01-1; found on inspection"],
        }
    )
    rows = lake_rul_rows(feats, events, default_plant())
    assert set(rows["asset_id"]) == {"pump-02"}
    assert len(rows) == 200 - 30 + 1  # the first 29 windows learn the healthy baseline
    assert rows["rul"].iloc[-1] == pytest.approx(10.0)
    assert rows["rul"].iloc[0] == pytest.approx(10.0 + 200 - 30)
    assert rows["hi_z"].iloc[-1] > 50  # wear in baseline spreads, rising


def test_tracker_ignores_repeats_and_nan_and_keeps_bounded_memory():
    tr = DegradationTracker(baseline_windows=5, max_points=64)
    states = [tr.update(float(i), 1.0 + 0.01 * (i % 3)) for i in range(1000)]
    assert states[3] is None and states[-1] is not None
    assert tr.update(999.0, 5.0) is None and tr.update(1000.0, float("nan")) is None
    assert len(tr._t) <= 64


@pytest.fixture(scope="module")
def rul_served(mlops: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The RUL model trained from the session plant's lake and promoted, and a new fleet
    streamed while it serves."""
    result = defs.resolve_job_def("retrain_rul").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources=mlops["resources"],
        run_config={
            "ops": {
                "rul_candidate": {"config": {"n_estimators": 150}},
                # latency is measured by the benches, not here (a busy machine)
                "rul_promotion": {"config": {"max_latency_ratio": 1000.0}},
            }
        },
    )
    assert result.success
    meta = {
        e.materialization.asset_key.to_user_string(): {
            k: v.value for k, v in e.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }
    lake = Lake(tmp_path_factory.mktemp("rul-served"))
    start = T0_US + 2 * 86_400_000_000
    fleet = default_fleet(
        3, seed=21, start_us=start, outer_race_at_s=60, inner_race_at_s=120, time_to_failure_s=400
    )
    run_main(get_flow(SimulatorSource(fleet, n_chunks=200), lake.uri, mlops["tracking"]))
    return {"meta": meta, "lake": lake, "fleet": fleet, "tracking": mlops["tracking"]}


def test_rul_model_trains_from_the_lake_and_is_gated(rul_served: dict):
    meta = rul_served["meta"]
    ts = meta["rul_training_set"]
    # the session plant: pumps 2, 3, 5 and 6 fail (maintenance_events); 1 and 4 never do
    assert sorted(ts["assets"]) == ["pump-02", "pump-03", "pump-05", "pump-06"]
    assert ts["runs_holdout"] == 1 and ts["training_validated"] is True
    decision = meta["rul_promotion"]
    assert decision["decision"] == "promote", decision["rules"]
    c = client(rul_served["tracking"])
    mv = c.get_model_version_by_alias(RUL_MODEL, CHAMPION)
    assert mv.tags["residual_of"] == "prior_rul" and float(mv.tags["z_fail"]) > 0


def test_stream_serves_rul_whose_interval_holds_the_truth(rul_served: dict):
    lake, fleet = rul_served["lake"], rul_served["fleet"]
    prog = lake.read("prognostics")
    version = rul_served["meta"]["rul_candidate"]["version"]
    assert set(prog["asset_id"]) == {"pump-01", "pump-02", "pump-03"}
    assert (prog["model_version"] == version).all() and (prog["sensor_id"] == "vib_de").all()
    assert (prog["rul_low"] <= prog["rul_high"]).all()
    assert ((prog["rul_low"] >= 0) & (prog["rul_high"] <= 7200.0)).all()  # the plant's cap
    t = (prog["ts"] - pd.Timestamp(fleet.start_us, unit="us", tz="UTC")).dt.total_seconds()
    prog["truth"] = [fleet.rul_s(a, x) for a, x in zip(prog["asset_id"], t, strict=True)]
    failing = prog[prog["asset_id"] != "pump-01"]
    inside = (failing["truth"] >= failing["rul_low"]) & (failing["truth"] <= failing["rul_high"])
    assert inside.mean() >= 0.6, inside.groupby(failing["asset_id"]).mean()
    # the healthy pump is not about to fail, and the estimates get closer as failure nears
    assert prog.loc[prog["asset_id"] == "pump-01", "rul"].median() > failing["rul"].median()
    err = (failing["rul"] - failing["truth"]).abs()
    assert np.median(err) < 150
    # the operations picture reads its truth from maintenance_events failures
    with_truth = with_rul_truth(prog.drop(columns="truth"), pd.DataFrame(fleet.ground_truth()))
    both = (
        prog[["asset_id", "ts", "truth"]]
        .astype({"truth": float})
        .merge(
            with_truth[["asset_id", "ts", "truth"]], on=["asset_id", "ts"], suffixes=("", "_lake")
        )
    )
    assert len(both) == len(prog)
    assert np.allclose(both["truth"].fillna(-1), both["truth_lake"].fillna(-1))


def test_late_labels_only_after_alerts_and_some_never(plant: dict):
    """The technician labels an alert only after it opened, on a really faulted machine; a
    share is never labelled; the fault classifier's training set uses only those labels."""
    lake = plant["lake"]
    fleet = default_fleet(
        6, seed=3, start_us=T0_US, outer_race_at_s=60, inner_race_at_s=120, time_to_failure_s=400
    )
    faults = faults_of(fleet.ground_truth())
    t0 = pd.Timestamp(T0_US, unit="us", tz="UTC")
    alerts = pd.DataFrame(
        {  # as lake.current_alerts gives them: the stream's alert ids
            "asset_id": ["pump-01", "pump-02", "pump-03", "pump-05", "pump-06", "pump-02"],
            "opened_s": [100, 150, 200, 160, 210, 30],  # pump-02's first: before its fault began
        }
    )
    alerts["opened_ts"] = t0 + pd.to_timedelta(alerts["opened_s"], unit="s")
    alerts["alert_id"] = [
        f"{a}-{int(t.value // 1000)}"
        for a, t in zip(alerts["asset_id"], alerts["opened_ts"], strict=True)
    ]
    opened = alerts["opened_ts"].min()
    assert confirmations(alerts, faults, set(), opened, 30.0) == []  # not before the delay
    now = alerts["opened_ts"].max() + pd.Timedelta(seconds=30)
    every = confirmations(alerts, faults, set(), now, 30.0)
    # healthy pump-01 and pump-02's alert before its fault get nothing to confirm
    assert sorted(r["asset_id"] for r in every) == ["pump-02", "pump-03", "pump-05", "pump-06"]
    some = confirmations(alerts, faults, set(), now, 30.0, never_share=0.5)
    assert len(some) < len(every)
    again = confirmations(
        alerts, faults, {r["detail"].split(";")[0].split()[-1] for r in some}, now, 30.0
    )
    assert len(again) == len(every) - len(some)  # what is labelled is not labelled twice
    for r in every:
        alert = alerts[alerts["alert_id"] == r["detail"].split(";")[0].split()[-1]].iloc[0]
        assert r["ts"] == alert["opened_ts"] and r["kind"] == "failure"
    feats = lake.read("features", filters=[("sensor_id", "=", "vib_de")])
    labelled = label_faults(feats, pd.DataFrame(some))
    faulted = labelled[labelled["condition"] != "normal"]
    assert set(faulted["asset_id"]) == {r["asset_id"] for r in some}
    first = {r["asset_id"]: r["ts"] for r in some}
    assert (faulted["window_end"] >= faulted["asset_id"].map(first)).all()
    # the labels are confirmations: they label the classifier, never an RUL target
    assert lake_rul_rows(feats, pd.DataFrame(every), default_plant()).empty


def test_operations_overview_draws_rul_against_the_truth(rul_served: dict, tmp_path):
    lake, fleet = rul_served["lake"], rul_served["fleet"]
    lake.append("maintenance_events", pd.DataFrame(fleet.ground_truth()))
    result = dg.materialize([operations_overview], resources={"lake": LakeResource(uri=lake.uri)})
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    md = meta["remaining_useful_life"].value
    png = base64.b64decode(re.search(r"base64,([^)]+)\)", md).group(1))
    (tmp_path / "rul.png").write_bytes(png)
    image = mpimg.imread(tmp_path / "rul.png")
    assert image.shape[0] > 300 and image.shape[1] > 400
    assert "pump-02" in meta["rul_now"].value
