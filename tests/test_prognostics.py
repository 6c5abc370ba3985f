"""Remaining useful life served in the stream (issue 15.4): the RUL model trains from the lake's
run-to-failure histories, is gated and promoted, and the stream writes ``prognostics`` rows
whose interval holds the simulator's true RUL; plus the late-label retrain loop in short."""

from __future__ import annotations

import base64
import json
import re

import dagster as dg
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from bytewax.testing import run_main

from bytewax_flows.sources import SimulatorSource
from bytewax_flows.telemetry import get_flow
from dagster_project.assets.models import remaining_useful_life
from dagster_project.assets.operations import operations_overview, with_rul_truth
from dagster_project.definitions import defs
from dagster_project.resources import LakeResource
from lake import Lake
from models.prognostics import ServedRUL, align_windows, lake_rul_rows
from models.registry import CHAMPION, RUL_MODEL, client, load_version
from models.training import label_faults
from physics.prognostics import (
    HEALTH_WINDOW,
    AlignedWindows,
    ConformalBands,
    HealthHistory,
    HealthModel,
    SimilarityPrior,
)
from physics.simulator import default_fleet
from plant import default_plant
from plantpulse_cli.technician import confirmations, faults_of
from tests.conftest import T0_US


def test_lake_rows_end_at_failures_and_ignore_confirmations_and_censored_assets():
    """Rows run from each life's first window to its failure; RUL is seconds to it, capped; a
    healthy asset and a technician's confirmation of an alert give no RUL target."""
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
    assert set(rows["asset_id"]) == {"pump-02"} and len(rows) == 200
    assert rows["rul"].iloc[-1] == pytest.approx(10.0)
    assert rows["rul"].iloc[0] == pytest.approx(10.0 + 199)
    # the last 30 windows of each row, and the healthy baseline once 30 windows are in
    assert rows["h29_vib_de"].tolist() == pytest.approx(hi.tolist())
    assert rows["h0_vib_de"].iloc[-1] == pytest.approx(hi[-30])
    assert rows["base_vib_de"].iloc[:29].isna().all()
    assert rows["base_vib_de"].iloc[29:].eq(np.median(hi[:30])).all()


def test_aligned_rows_do_not_depend_on_the_order_windows_arrive_in():
    """The stream meets a sensor's windows interleaved with the others' in any way (micro-batches,
    one sensor's message before another's), up to ``depth`` windows apart; the lake has them
    all at once: every such order gives the rows of the sorted one."""
    rng = np.random.default_rng(4)
    n, steps = 3, 60
    t = np.arange(steps, dtype=float) * 10.0
    # sensor 2 reports a little after the primary; sensor 1 misses every fifth window
    windows = [(0, ti, float(i)) for i, ti in enumerate(t)]
    windows += [(1, ti, 100.0 + i) for i, ti in enumerate(t) if i % 5]
    windows += [(2, ti + 3.0, 200.0 + i) for i, ti in enumerate(t)]
    t_w, s_w, v_w = (np.array([w[k] for w in windows]) for k in (1, 0, 2))
    expected = align_windows(t_w, s_w, v_w, n)
    assert len(expected) == steps
    # as of t: the newest window of each sensor ending at or before t (none yet: NaN)
    assert np.array_equal(expected[0][1], [0.0, np.nan, np.nan], equal_nan=True)
    assert expected[5][1].tolist() == [5.0, 104.0, 204.0]
    for _ in range(20):
        per_sensor = [[w for w in windows if w[0] == j] for j in range(n)]
        aw, got = AlignedWindows(n), []
        while any(per_sensor):  # a random interleaving, each sensor's windows in order
            # a sensor may run ahead of the slowest by a few windows, not by a whole history
            nxt = [p[0][1] if p else np.inf for p in per_sensor]
            j = rng.choice([k for k in range(n) if nxt[k] <= min(nxt) + 60.0])
            s, ti, v = per_sensor[j].pop(0)
            got += aw.push(s, ti, v)
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert all(
            np.array_equal(g[1], e[1], equal_nan=True) for g, e in zip(got, expected, strict=True)
        )


def test_history_ignores_repeats_and_keeps_its_window():
    h = HealthHistory(n_sensors=2, window=5, baseline_windows=3)
    for i in range(100):
        assert h.update(float(i), np.array([1.0 + 0.01 * (i % 3), float(i)]))
    assert not h.update(99.0, np.array([5.0, 5.0])) and not h.update(float("nan"), np.ones(2))
    snap = h.snapshot()
    assert snap.ring_x.shape == (1, 5, 2) and snap.ring_x[0, :, 1].tolist() == [95, 96, 97, 98, 99]
    assert snap.age.tolist() == [99.0] and snap.baseline[0, 1] == 1.0


def test_health_model_travels_as_json_and_predicts_the_same():
    rng = np.random.default_rng(0)
    curves = [np.exp(np.linspace(-3, 0, n)) for n in (80, 100, 120)]
    prior = SimilarityPrior(window=HEALTH_WINDOW, k=2, cap=500.0).fit(
        curves, [np.arange(c.size)[::-1] * 10.0 for c in curves]
    )
    model = HealthModel(
        ["a", "b"],
        np.array([1.0, 2.0]),
        np.array([0.5, 2.0]),
        np.array([1.0, -1.0]),
        500.0,
        use_age=True,
        prior=prior,
        shift=[5.0, 0.0, 0.0],
        bands=ConformalBands(edges=(100.0, 300.0), cap=500.0).fit(
            rng.uniform(0, 500, 300), rng.uniform(0, 500, 300)
        ),
    )
    again = HealthModel.from_dict(json.loads(json.dumps(model.to_dict())))
    h = HealthHistory(2, baseline_windows=5)
    for i in range(40):
        h.update(float(i), np.array([1.0 + i / 40, 2.0 - i / 40]))
    snap = h.snapshot()
    a, b = model.inputs(snap), again.inputs(snap)
    assert set(a) == set(model.input_names) and all(np.allclose(a[k], b[k]) for k in a)
    assert again.interval(np.array([50.0]))[0] == pytest.approx(model.interval(np.array([50.0]))[0])


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
    assert mv.tags["residual_of"] == "prior_rul" and mv.tags["indicator_sensors"] == "vib_de"
    served = load_version(rul_served["tracking"], RUL_MODEL).extras["health"]
    assert served["sensors"] == ["vib_de"] and served["weights"] == [1.0]  # rises with wear
    assert len(served["prior"]["curves"]) == 3  # the training runs: the library of the prior
    assert "latency" in decision["rules"] and "measured together" not in decision["rules"]


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


def test_the_stream_serves_what_the_training_set_computes(rul_served: dict):
    """No train/serve skew: the champion's estimates from the lake's windows (the training
    set's construction) are the stream's ``prognostics`` rows, window for window."""
    lake, fleet = rul_served["lake"], rul_served["fleet"]
    champion = load_version(rul_served["tracking"], RUL_MODEL)
    served = ServedRUL.of(champion)
    assert served is not None
    feats = lake.read("features", filters=[("sensor_id", "=", "vib_de")])
    events = pd.DataFrame(fleet.ground_truth())
    events["ts"] = pd.to_datetime(events["ts"], unit="us", utc=True)
    rows = lake_rul_rows(feats, events, default_plant())
    assert set(rows["asset_id"]) == {"pump-02", "pump-03"}  # the two that will fail
    rul, low, high = served.predict(served.snapshot(rows))
    offline = rows[["asset_id", "window_end"]].assign(rul=rul, rul_low=low, rul_high=high)
    prog = lake.read("prognostics").rename(columns={"ts": "window_end"})
    both = offline.merge(prog, on=["asset_id", "window_end"], suffixes=("", "_stream"))
    assert len(both) == len(offline) == (prog["asset_id"] != "pump-01").sum()
    for col in ("rul", "rul_low", "rul_high"):
        assert np.allclose(both[col], both[f"{col}_stream"], rtol=1e-9, atol=1e-6), col


def test_remaining_useful_life_shows_each_asset_with_its_interval_and_trend(
    rul_served: dict, tmp_path
):
    result = dg.materialize(
        [remaining_useful_life], resources={"lake": LakeResource(uri=rul_served["lake"].uri)}
    )
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["assets"].value == 3
    table = meta["rul_now"].value
    assert all(a in table for a in ("pump-01", "pump-02", "pump-03")) and "interval" in table
    png = base64.b64decode(re.search(r"base64,([^)]+)\)", meta["rul_and_health"].value).group(1))
    (tmp_path / "rul.png").write_bytes(png)
    image = mpimg.imread(tmp_path / "rul.png")
    assert image.shape[0] > 400 and image.shape[1] > 600  # three rows of two panels
    assert image[..., :3].std() > 0.05  # drawn, not blank


def test_a_failure_or_repair_on_a_health_indicator_asset_requests_the_rul_retrain(tmp_path):
    from dagster_project.resources import MLflowResource

    lake = Lake(tmp_path / "lake")
    t = pd.Timestamp("2026-01-01T00:10", tz="UTC")
    base = dict(asset_id="pump-02", ts=t, component="bearing_outer_race", source="technician")
    # a confirmation says the fault was there: it labels the classifier, never an RUL target
    confirm = dict(base, kind="failure", detail="confirms alert pump-02-1; found on inspection")
    lake.append("maintenance_events", pd.DataFrame([confirm]))
    sensor = defs.resolve_sensor_def("new_labels_sensor")
    resources = {
        "lake": LakeResource(uri=lake.uri),
        "mlflow": MLflowResource(
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", artifact_root=str(tmp_path / "a")
        ),
    }
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(resources=resources, instance=instance) as ctx:
        first = sensor(ctx)
    assert [r.job_name for r in first.run_requests] == ["retrain_fault_classifier"]
    for kind in ("failure", "repair"):  # each ends pump-02's history
        t += pd.Timedelta(hours=1)
        lake.append("maintenance_events", pd.DataFrame([dict(base, ts=t, kind=kind, detail="")]))
        with dg.build_sensor_context(
            resources=resources, instance=instance, cursor=first.cursor
        ) as ctx:
            first = sensor(ctx)
        jobs = {r.job_name: r for r in first.run_requests}
        assert set(jobs) == {"retrain_fault_classifier", "retrain_rul"}, kind
        assert jobs["retrain_rul"].tags["plantpulse/assets"] == "pump-02"
    # an asset without a health indicator (a NAB series) retrains the classifier only
    other = dict(base, asset_id="nab-machine", kind="failure")
    lake.append("maintenance_events", pd.DataFrame([dict(other, ts=t, detail="")]))
    with dg.build_sensor_context(
        resources=resources, instance=instance, cursor=first.cursor
    ) as ctx:
        result = sensor(ctx)
    assert [r.job_name for r in result.run_requests] == ["retrain_fault_classifier"]


def test_outbound_state_carries_the_newest_rul_with_its_interval(rul_served: dict):
    from outbound.state import StateBook

    prog = rul_served["lake"].read("prognostics")
    book = StateBook()
    changed = book.fold_prognostics(prog.sort_values("ts", ascending=False).to_dict("records"))
    assert changed == {"pump-01", "pump-02", "pump-03"}
    newest = prog.sort_values("ts").groupby("asset_id").last()
    for asset, state in book.assets.items():
        doc = state.to_json()
        assert doc["rul"] == pytest.approx(newest.loc[asset, "rul"])  # older rows changed nothing
        assert doc["rul_interval"] == pytest.approx(
            [newest.loc[asset, "rul_low"], newest.loc[asset, "rul_high"]]
        )
        assert doc["health_indicator"] == pytest.approx(newest.loc[asset, "health_indicator"])
    assert book.fold_prognostics(prog.to_dict("records")) == set()  # folding again: no change
