"""The stream serves the MLflow champion: stamps each score with its version, follows the alias
without a restart, opens and closes alerts with SHAP top features, and keeps the frames around
an alert (the flight recorder)."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import dagster as dg
import matplotlib.image as mpimg
import pandas as pd
import pytest
from bytewax.testing import run_main

from bytewax_flows.sources import SimulatorSource
from bytewax_flows.telemetry import get_flow
from dagster_project.assets.operations import operations_overview
from dagster_project.resources import LakeResource
from dataplane.scoring import AlertPolicy, Channel, _update_alert
from dataplane.step import Context, run_batch
from dataplane.wire import Batch, Message, encode_frame, encode_scalars
from lake import Lake
from models.registry import CHAMPION, FAULT_MODEL, ChampionWatcher, client
from physics.simulator import default_fleet
from tests.conftest import T0_US, retrain

RENDERED = Path(os.environ["PLANTPULSE_HOME"]) / "rendered"


@pytest.fixture(scope="module")
def served(mlops: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A full-strength classifier as champion, and a new fleet streamed with it."""
    version = retrain(mlops, n_estimators=150)["fault_candidate"]["version"]
    client(mlops["tracking"]).set_registered_model_alias(FAULT_MODEL, CHAMPION, version)
    lake = Lake(tmp_path_factory.mktemp("served"))
    fleet = default_fleet(
        3,
        seed=11,
        start_us=T0_US + 86_400_000_000,
        outer_race_at_s=60,
        inner_race_at_s=120,
        time_to_failure_s=400,
    )
    run_main(get_flow(SimulatorSource(fleet, n_chunks=300), lake.uri, mlops["tracking"]))
    return {
        "lake": lake,
        "version": version,
        "start": pd.Timestamp(fleet.start_us, unit="us", tz="UTC"),
    }


def test_every_score_is_stamped_with_the_champion_and_predicts_the_faults(served: dict):
    s = served["lake"].read("scores")
    assert (s["model_name"] == FAULT_MODEL).all()
    assert (s["model_version"] == served["version"]).all()
    t = (s["window_end"] - served["start"]).dt.total_seconds()
    healthy = s[s["asset_id"] == "pump-01"]["prediction"]
    assert healthy.mean() < 0.2
    for asset, onset in (("pump-02", 60), ("pump-03", 120)):
        late = s[(s["asset_id"] == asset) & (t > onset + 100)]["prediction"]
        assert late.median() > 0.8, asset


def test_alerts_open_once_per_fault_with_shap_features_and_recorded_frames(served: dict):
    lake = served["lake"]
    alerts = lake.read("alerts")
    assert set(alerts["asset_id"]) == {"pump-02", "pump-03"}
    assert alerts.groupby("asset_id")["alert_id"].nunique().tolist() == [1, 1]  # de-duplicated
    # the newest row of an alert is its state: the diagnosis firms up as the fault grows
    first = alerts.sort_values("updated_ts").groupby("asset_id").last()
    assert "outer_race suspected" in first.loc["pump-02", "summary"]
    assert "inner_race suspected" in first.loc["pump-03", "summary"]
    assert (alerts["status"] == "open").all()  # the faults persist: nothing closes
    assert first["severity"].isin(["warning", "critical"]).all()
    model_features = set(lake.read("features").columns)
    for tops in first["top_features"]:
        assert len(tops) == 3 and all(t["feature"] in model_features for t in tops)
        assert tops[0]["contribution"] >= tops[-1]["contribution"] > 0
    frames = lake.read("frames", columns=["asset_id", "ts_start", "retained_because"])
    for asset, alert in first.iterrows():
        kept = frames[frames["retained_because"] == f"alert:{alert['alert_id']}"]
        policy = AlertPolicy()
        # a frame of that stretch already kept as a sample is kept once, as the sample
        span = frames[
            (frames["asset_id"] == asset)
            & frames["ts_start"].between(kept["ts_start"].min(), kept["ts_start"].max())
        ]
        assert set(span["retained_because"]) <= {f"alert:{alert['alert_id']}", "sampled"}
        assert len(span) == policy.recorder_frames + policy.after_frames
        before = (kept["ts_start"] < alert["opened_ts"]).sum()
        assert before >= policy.recorder_frames - 1, asset  # what led up to the alert
    assert (frames["retained_because"] == "sampled").sum() >= 3


def test_hysteresis_one_noisy_window_neither_opens_nor_closes():
    policy, state = AlertPolicy(), Channel()

    def step(i: int, anomaly: float) -> list[dict]:
        return _update_alert(
            state, policy, "a", T0_US + i, anomaly, None, None, None, None, {"rms": anomaly}
        )

    assert step(0, 50.0) == [] and step(1, 1.0) == []  # a single spike: nothing
    opened = [r for i in range(2, 5) for r in step(i, 12.0)]
    assert len(opened) == 1 and opened[0]["status"] == "open"
    assert opened[0]["severity"] == "warning"
    assert [r for i in range(5, 12) for r in step(i, 1.0)] == []  # calm, but not long enough
    assert step(12, 30.0) == []  # hot again while open: no second alert
    closed = [r for i in range(13, 23) for r in step(i, 1.0)]
    assert len(closed) == 1 and closed[0]["status"] == "closed"
    assert closed[0]["alert_id"] == opened[0]["alert_id"]


def test_the_stream_follows_the_alias_without_restart(mlops: dict, served: dict):
    c = client(mlops["tracking"])
    other = retrain(mlops, n_estimators=30)["fault_candidate"]["version"]
    c.set_registered_model_alias(FAULT_MODEL, CHAMPION, served["version"])
    ctx = Context(champion=ChampionWatcher(mlops["tracking"], FAULT_MODEL, refresh_s=0.0))
    sim = default_fleet(1, start_us=T0_US)

    def second(k: int) -> Batch:
        chunk = sim.chunk("pump-01", k)
        payloads = [encode_scalars("pump-01", s, ts, v) for s, (ts, v) in chunk.scalars.items()]
        payloads += [encode_frame("pump-01", s, t0, r, x) for s, t0, r, x in chunk.frames]
        return Batch([Message("test", 10 * k + j, T0_US, p) for j, p in enumerate(payloads)])

    def served_by(rows: list) -> list[str]:
        return next(r for r in rows if r.table == "scores").rows.column("model_version").to_pylist()

    state, rows = run_batch(None, second(0), ctx)
    assert served_by(rows) == [served["version"]]
    c.set_registered_model_alias(FAULT_MODEL, CHAMPION, other)
    try:
        state, rows = run_batch(state, second(1), ctx)
        assert served_by(rows) == [other]
    finally:
        c.set_registered_model_alias(FAULT_MODEL, CHAMPION, served["version"])


def test_operations_overview_pictures_render(served: dict, tmp_path: Path):
    """The operators' overview asset: every picture is a real PNG with something drawn."""
    result = dg.materialize(
        [operations_overview], resources={"lake": LakeResource(uri=served["lake"].uri)}
    )
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    pictures = {
        k: v.value for k, v in meta.items() if isinstance(v.value, str) and "base64," in v.value
    }
    assert {"scores_and_alerts", "newest_alert_envelope_spectrum", "drift_events"} <= set(pictures)
    for name, md in pictures.items():
        png = base64.b64decode(re.search(r"base64,([^)]+)\)", md).group(1))
        path = tmp_path / f"{name}.png"
        path.write_bytes(png)
        image = mpimg.imread(path)
        assert image.shape[0] > 150 and image.shape[1] > 400, name
        assert image[..., :3].std() > 0.05, f"{name} is blank"
    assert "outer_race suspected" in meta["alerts"].value
    RENDERED.mkdir(parents=True, exist_ok=True)  # kept for a human to look at
    for name in pictures:
        (RENDERED / f"{name}.png").write_bytes((tmp_path / f"{name}.png").read_bytes())
