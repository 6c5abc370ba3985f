"""Training, registry and the promotion gate, on features the real stream wrote from a simulated
fleet, with a real MLflow store and real Dagster runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from bytewax.testing import run_main

from bytewax_flows.sources import SimulatorSource
from bytewax_flows.telemetry import get_flow
from dagster_project.assets.models import fault_training_set
from dagster_project.definitions import defs
from dagster_project.resources import DatasetsResource, LakeResource, MLflowResource
from dagster_project.sensors import DRIFT_DEBOUNCE_S, drift_requests
from lake import Lake
from models.gate import (
    GatePolicy,
    PairedLatency,
    champion_holdout,
    decide,
    paired_latency,
    plant_latency_ceiling_ms,
    rollback,
)
from models.registry import (
    FAULT_MODEL,
    ModelNotFoundError,
    champion_version,
    client,
)
from models.training import Evaluation, holdout_split, label_faults, split_by_machine
from physics.registry import FEATURE_VERSION
from physics.simulator import default_fleet
from plant import default_plant
from tests.conftest import ENVELOPE, T0_US, retrain

FV = FEATURE_VERSION


def test_labels_are_point_in_time_and_repairs_reset_them():
    t = pd.Timestamp("2026-01-01", tz="UTC")
    feats = pd.DataFrame(
        {"asset_id": ["a"] * 4, "window_end": [t + pd.Timedelta(minutes=m) for m in (1, 3, 5, 7)]}
    )
    events = pd.DataFrame(
        {
            "asset_id": ["a", "a", "b"],
            "ts": [t + pd.Timedelta(minutes=2), t + pd.Timedelta(minutes=6), t],
            "kind": ["failure", "repair", "failure"],
            "component": ["bearing_outer_race", "bearing_outer_race", "bearing_inner_race"],
        }
    )
    labelled = label_faults(feats, events, as_of=t + pd.Timedelta(minutes=10))
    assert labelled["condition"].tolist() == ["normal", "outer_race", "outer_race", "normal"]
    # an event recorded after the as-of time is not known yet, nor are later windows
    early = label_faults(feats, events, as_of=t + pd.Timedelta(minutes=5))
    assert early["condition"].tolist() == ["normal", "outer_race", "outer_race"]


def test_split_is_by_machine_and_every_history_is_on_both_sides():
    df = pd.DataFrame(
        {
            "asset_id": ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p5"],
            "condition": [
                "normal",
                "outer_race",
                "normal",
                "outer_race",
                "normal",
                "normal",
                "normal",
                "normal",
            ],
        }
    )
    holdout = split_by_machine(df, "condition")
    assert set(df.loc[holdout, "asset_id"]) == {"p2", "p5"}
    assert not set(df.loc[holdout, "asset_id"]) & set(df.loc[~holdout, "asset_id"])


def _evaluation(overall: float, slices: dict[str, float], latency: float = 1.0) -> Evaluation:
    return Evaluation("macro_f1", True, overall, slices, latency)


def test_gate_rules_each_can_refuse():
    policy = GatePolicy(min_improvement=0.01, slice_tolerance=0.05, max_latency_ratio=1.5)
    champ = _evaluation(0.80, {"asset=a": 0.8, "asset=b": 0.8})
    ok_sig = (True, "signature ok")
    good = _evaluation(0.90, {"asset=a": 0.9, "asset=b": 0.79})
    passed, reasons = decide(
        good,
        champ,
        policy=policy,
        training_validated=True,
        feature_version=FEATURE_VERSION,
        signature_ok=ok_sig,
    )
    assert passed and all(r.startswith("PASS") for r in reasons)
    cases = {
        "slice": (_evaluation(0.90, {"asset=a": 0.99, "asset=b": 0.70}), True, FV, ok_sig),
        "improvement": (_evaluation(0.805, {"asset=a": 0.8, "asset=b": 0.8}), True, FV, ok_sig),
        "latency": (_evaluation(0.9, {}, latency=1.6), True, FV, ok_sig),  # x1.6 the champion
        "validated": (good, False, FV, ok_sig),
        "feature_version": (good, True, FV - 1, ok_sig),
        "signature": (good, True, FV, (False, "signature inputs missing")),
    }
    for name, (cand, validated, fv, sig) in cases.items():
        passed, reasons = decide(
            cand,
            champ,
            policy=policy,
            training_validated=validated,
            feature_version=fv,
            signature_ok=sig,
        )
        assert not passed, name
        assert sum(r.startswith("FAIL") for r in reasons) == 1, (name, reasons)


def test_latency_is_judged_against_the_champion_measured_together_and_the_plants_ceiling():
    """A busy machine slows candidate and champion alike: the ratio of their paired timings
    decides, and an absolute limit applies only where the plant declares one."""
    import time as _time

    def slow(ms: float):
        return lambda: _time.sleep(ms / 1000.0)

    paired = paired_latency(slow(6.0), slow(2.0), rounds=5)
    assert paired.candidate_ms >= 6.0 and paired.champion_ms >= 2.0
    assert 1.5 < paired.ratio < 4.0 and paired.rounds == 5
    champ = _evaluation(0.80, {})
    good = _evaluation(0.90, {})
    common = dict(training_validated=True, feature_version=FV, signature_ok=(True, "ok"))
    passed, reasons = decide(good, champ, policy=GatePolicy(), latency=paired, **common)
    assert not passed
    (line,) = [r for r in reasons if r.startswith("FAIL")]
    assert "measured together" in line and "at most x1.5" in line
    # the same two at 50 times the load (each 50 times slower) are still x3: still refused
    loaded = PairedLatency(paired.candidate_ms * 50, paired.champion_ms * 50, 5, 9.9)
    assert loaded.ratio == pytest.approx(paired.ratio)
    # as fast as the champion: promoted, however slow both are, unless the plant has a ceiling
    even = PairedLatency(300.0, 290.0, 5, 9.9)
    assert decide(good, champ, policy=GatePolicy(), latency=even, **common)[0]
    ceiling = GatePolicy(latency_ceiling_ms=100.0)
    passed, reasons = decide(good, champ, policy=ceiling, latency=even, **common)
    assert not passed and any("FAIL" in r and "ceiling 100 ms" in r for r in reasons)
    assert plant_latency_ceiling_ms(default_plant()) is None  # the demo plant declares none
    # a classifier that names a third condition grows three trees a round where a binary
    # champion grew one: that much of the ratio is allowed for
    wider = PairedLatency(3.3, 1.0, 5, None, outputs=(3, 1))
    passed, reasons = decide(good, champ, policy=GatePolicy(), latency=wider, **common)
    assert passed and any("x 3/1 outputs = x4.50" in r for r in reasons)


def test_first_candidate_is_registered_in_xgboost_format_and_promoted(mlops: dict):
    lake = mlops["lake"]
    # a day whose features fail validation (an old feature version) must not be trained on
    bad = lake.read("features").head(50).copy()
    bad["window_end"] += pd.Timedelta(days=1)
    bad["window_start"] += pd.Timedelta(days=1)
    bad["feature_version"] = 1
    lake.append("features", bad.drop(columns=["date"]))

    meta = retrain(mlops, n_estimators=40, drop_features=ENVELOPE)  # a weak first champion
    ts = meta["fault_training_set"]
    assert ts["days_used"] == ["2026-01-01"]
    assert ts["days_skipped_failed_validation"] == ["2026-01-02"]
    assert ts["holdout_machines"] == ["pump-04", "pump-05", "pump-06"]
    assert ts["rows"] == 6 * 300  # one vibration window per frame, no process windows
    decision = meta["fault_promotion"]
    assert decision["decision"] == "promote" and decision["champion_before"] == "none"
    c = client(mlops["tracking"])
    mv = champion_version(c, FAULT_MODEL)
    assert mv is not None and str(mv.version) == "1"
    assert mv.tags["gate.decision"] == "promote" and mv.tags["feature_version"] == str(FV)
    files = {p.name for p in Path(mlops["root"], "artifacts").rglob("*") if p.is_file()}
    assert "model.ubj" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)
    assert {"confusion_matrix.png", "feature_importance.png", "holdout.parquet"} <= files
    row = lake.read("model_decisions").sort_values("ts").iloc[-1]
    assert row["decision"] == "promote" and row["candidate_version"] == "1"
    assert json.loads(row["metrics"])["candidate"]["metric"] == "macro_f1"


def test_gate_refuses_worse_promotes_better_and_rollback_restores(mlops: dict):
    if champion_version(client(mlops["tracking"]), FAULT_MODEL) is None:
        retrain(mlops, n_estimators=40, drop_features=ENVELOPE)
    c = client(mlops["tracking"])
    first = str(champion_version(c, FAULT_MODEL).version)

    worse = retrain(mlops, n_estimators=40, shuffle_labels=True)["fault_promotion"]
    assert worse["decision"] == "refuse"
    assert "FAIL: macro_f1" in worse["rules"]
    assert str(champion_version(c, FAULT_MODEL).version) == first

    # as many trees as the champion (a model four times its size would be refused as slower:
    # the gate compares latency with the champion's), but every feature
    better = retrain(mlops, n_estimators=40)["fault_promotion"]
    assert better["decision"] == "promote", better["rules"]
    assert better["candidate_overall"] > better["champion_overall"]
    new = str(champion_version(c, FAULT_MODEL).version)
    assert new == better["candidate_version"] != first

    d = rollback(mlops["tracking"], mlops["lake"], FAULT_MODEL, "operators saw false alarms")
    assert d.decision == "rollback" and str(champion_version(c, FAULT_MODEL).version) == first
    decisions = mlops["lake"].read("model_decisions").sort_values("ts")
    assert decisions["decision"].tolist()[-3:] == ["refuse", "promote", "rollback"]
    assert "operators saw false alarms" in decisions.iloc[-1]["reasons"][0]
    assert c.get_model_version(FAULT_MODEL, new).tags["gate.decision"] == "rollback"
    with pytest.raises(ModelNotFoundError, match="nothing to roll back"):
        rollback(mlops["tracking"], mlops["lake"], FAULT_MODEL, "again")


def test_drift_debounce_gives_one_run_per_burst():
    now = 1_000_000.0
    due, cursor = drift_requests(5, 100, {}, now)
    assert due and cursor["pending"] == 0
    due, cursor = drift_requests(3, 200, cursor, now + 10)
    assert not due and cursor["pending"] == 3 and cursor["seen_ts_us"] == 200
    due, cursor = drift_requests(0, 200, cursor, now + DRIFT_DEBOUNCE_S + 1)
    assert due and cursor["pending"] == 0


def test_drift_sensor_requests_the_retrain_job_once_for_a_burst(tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    sensor = defs.resolve_sensor_def("drift_retrain_sensor")
    resources = {
        "lake": LakeResource(uri=lake.uri),
        "mlflow": MLflowResource(
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", artifact_root=str(tmp_path / "a")
        ),
    }
    with dg.build_sensor_context(resources=resources) as ctx:
        assert isinstance(sensor(ctx), dg.SkipReason)
    t = pd.Timestamp("2026-01-01", tz="UTC")
    lake.append(
        "drift_events",
        pd.DataFrame(
            {
                "ts": [t + pd.Timedelta(seconds=s) for s in range(4)],
                "asset_id": ["pump-02"] * 4,
                "subject_kind": ["residual"] * 4,
                "subject": ["anomaly_score"] * 4,
                "detector": ["ADWIN"] * 4,
                "statistic": np.arange(4.0),
                "detail": ["x"] * 4,
            }
        ),
    )
    # drift before any fault label (a fresh plant): nothing a classifier could learn yet
    with dg.build_sensor_context(resources=resources) as ctx:
        early = sensor(ctx)
    assert isinstance(early, dg.SkipReason) and "labels no fault" in str(early.skip_message)
    lake.append(
        "maintenance_events",
        pd.DataFrame(
            {
                "asset_id": ["pump-01"],
                "ts": [t],
                "kind": ["failure"],
                "component": ["seal"],  # not a condition the classifier knows
                "detail": [None],
                "source": ["test"],
            }
        ),
    )
    with dg.build_sensor_context(resources=resources) as ctx:
        assert isinstance(sensor(ctx), dg.SkipReason)
    lake.append(
        "maintenance_events",
        pd.DataFrame(
            {
                "asset_id": ["pump-02"],
                "ts": [t],
                "kind": ["failure"],
                "component": ["bearing_outer_race"],
                "detail": [None],
                "source": ["test"],
            }
        ),
    )
    with dg.build_sensor_context(resources=resources) as ctx:
        result = sensor(ctx)
        assert len(result.run_requests) == 1
        assert result.run_requests[0].tags["plantpulse/assets"] == "pump-02"
        cursor = result.cursor
    lake.append(
        "drift_events",
        lake.read("drift_events")
        .drop(columns=["date"])
        .assign(ts=lambda d: d["ts"] + pd.Timedelta(minutes=1)),
    )
    with dg.build_sensor_context(resources=resources, cursor=cursor) as ctx:
        again = sensor(ctx)
    assert isinstance(again, dg.SkipReason) and "4 drift event(s) pending" in str(
        again.skip_message
    )


def test_declarative_automation_follows_a_new_training_set(mlops: dict):
    """Materialize only the training set: the automation conditions request the candidate."""
    instance = dg.DagsterInstance.ephemeral()
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # nothing upstream has changed yet
    dg.materialize([fault_training_set], resources=mlops["resources"], instance=instance)
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert result.get_num_requested(dg.AssetKey("fault_candidate")) == 1
    assert result.get_num_requested(dg.AssetKey("rul_candidate")) == 0


def test_the_three_pump_demo_fleet_trains_with_a_time_split(tmp_path: Path):
    """No two demo pumps share a history, so the holdout falls back to each pump's last
    quarter (and says so) instead of failing on an empty holdout."""
    lake = Lake(tmp_path / "lake")
    fleet = default_fleet(
        3, seed=5, start_us=T0_US, outer_race_at_s=60, inner_race_at_s=90, time_to_failure_s=300
    )
    run_main(
        get_flow(
            SimulatorSource(fleet, n_chunks=240), lake.uri, f"sqlite:///{tmp_path / 'stream.db'}"
        )
    )
    lake.append("maintenance_events", pd.DataFrame(fleet.ground_truth()))
    resources = {
        "lake": LakeResource(uri=lake.uri),
        "mlflow": MLflowResource(
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", artifact_root=str(tmp_path / "a")
        ),
        "datasets": DatasetsResource(path=str(tmp_path)),
    }
    meta = retrain({"resources": resources}, n_estimators=60)
    assert meta["fault_training_set"]["split"].startswith("by time")
    assert meta["fault_promotion"]["decision"] == "promote"


# -- the gate never promotes without comparing; training_validated is earned (issue 15.3) ----
def _fresh_registry(lake: Lake, tmp_path: Path) -> dict:
    """``lake`` with an MLflow store of its own (no champion yet)."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resources = {
        "lake": LakeResource(uri=lake.uri),
        "mlflow": MLflowResource(tracking_uri=tracking, artifact_root=str(tmp_path / "art")),
        "datasets": DatasetsResource(path=str(tmp_path)),
    }
    return {"lake": lake, "tracking": tracking, "resources": resources}


def _retrain(ops: dict, **training) -> dict:
    """``retrain`` with a latency budget no busy test machine misses (latency is not tested
    here; a 1,000-row prediction can take over 100 ms while other jobs hold the cores)."""
    result = defs.resolve_job_def("retrain_fault_classifier").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources=ops["resources"],
        run_config={
            "ops": {
                "fault_candidate": {"config": training},
                "fault_promotion": {"config": {"max_latency_ratio": 1000.0}},
            }
        },
    )
    assert result.success
    return {
        e.materialization.asset_key.to_user_string(): {
            k: v.value for k, v in e.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }


def _copy_lake(plant: dict, tmp_path: Path) -> Lake:
    """A private copy of the trained plant's lake (Delta tables are relocatable directories)."""
    shutil.copytree(Path(plant["lake"].uri), tmp_path / "lake")
    return Lake(tmp_path / "lake")


def _shifted(lake: Lake, table: str, days: int, columns: tuple[str, ...]) -> pd.DataFrame:
    first = lake.read(table, filters=[("date", "=", pd.Timestamp("2026-01-01").date())])
    return first.drop(columns=["date"]).assign(
        **{c: first[c] + pd.Timedelta(days=days) for c in columns}
    )


def test_a_champion_trained_on_other_inputs_is_compared_on_features_read_from_the_lake(
    plant: dict, tmp_path: Path
):
    """The champion uses envelope features the candidate was trained without, so they are not
    in the candidate's holdout: the gate reads them from the lake for the same rows and
    compares (the weaker candidate is refused), instead of reporting "no champion yet"."""
    ops = _fresh_registry(plant["lake"], tmp_path)
    first = _retrain(ops, n_estimators=80)["fault_promotion"]
    assert first["decision"] == "promote"
    weaker = _retrain(ops, n_estimators=30, drop_features=ENVELOPE)["fault_promotion"]
    assert weaker["decision"] == "refuse", weaker["rules"]
    assert "no champion yet" not in weaker["rules"]
    assert (
        "NOTE: champion inputs" in weaker["rules"]
        and "from lake table 'features'" in weaker["rules"]
    )
    assert np.isfinite(weaker["champion_overall"])
    assert "FAIL: macro_f1" in weaker["rules"]
    row = plant["lake"].read("model_decisions").sort_values("ts").iloc[-1]
    evidence = json.loads(row["metrics"])
    assert row["candidate_version"] == "2" and evidence["champion"]["metric"] == "macro_f1"


def test_champion_inputs_the_lake_cannot_supply_refuse_the_candidate(plant: dict):
    lake = plant["lake"]
    holdout = lake.read("features", filters=[("sensor_id", "=", "vib_de")]).head(20)
    holdout = holdout[["asset_id", "sensor_id", "window_end", "vib_rms"]]
    source = {"table": "features", "keys": ["asset_id", "sensor_id", "window_end"]}
    done, account = champion_holdout(lake, holdout, ["env_bpfo_1"], source)
    assert done is not None and "for all 20 holdout rows" in account
    assert (
        done["env_bpfo_1"].to_numpy()
        == lake.read("features", filters=[("sensor_id", "=", "vib_de")])
        .head(20)["env_bpfo_1"]
        .to_numpy()
    ).all()
    # rows the lake has never seen (a year later), no source, and an input no table has
    later = holdout.assign(window_end=holdout["window_end"] + pd.Timedelta(days=365))
    assert champion_holdout(lake, later, ["env_bpfo_1"], source) == (
        None,
        "the champion needs ['env_bpfo_1']; 20 of 20 holdout rows have no row in lake "
        "table 'features'",
    )
    none, why = champion_holdout(lake, holdout, ["env_bpfo_1"], None)
    assert none is None and "names no lake table" in why
    none, why = champion_holdout(lake, holdout, ["no_such_feature"], source)
    assert none is None and "no_such_feature" in why
    # and the gate turns an unavailable champion into a failed rule, not "no champion yet"
    passed, reasons = decide(
        _evaluation(0.9, {}),
        None,
        policy=GatePolicy(),
        training_validated=True,
        feature_version=FV,
        signature_ok=(True, "ok"),
        champion_unavailable=why,
    )
    assert not passed
    assert [r for r in reasons if r.startswith("FAIL")] == [
        f"FAIL: not compared with the champion: {why}"
    ]


def test_training_set_leaves_out_days_whose_readings_fail_and_flags_days_never_validated(
    plant: dict, tmp_path: Path
):
    lake = _copy_lake(plant, tmp_path)
    # 2026-01-03: features fine, but a bearing temperature far outside its contract
    bad = _shifted(lake, "readings", 2, ("ts", "ingest_ts"))
    hot = bad["sensor_id"] == "bearing_temp"
    bad.loc[hot, "value"] = bad.loc[hot, "raw_value"] = 5_000.0
    lake.append("readings", bad)
    lake.append("features", _shifted(lake, "features", 2, ("window_start", "window_end")))
    meta = _retrain(_fresh_registry(lake, tmp_path), n_estimators=40)
    ts = meta["fault_training_set"]
    assert ts["days_used"] == ["2026-01-01"]
    assert ts["days_skipped_readings_failed_validation"] == ["2026-01-03"]
    assert ts["days_readings_not_validated"] == [] and ts["training_validated"] is True
    assert meta["fault_promotion"]["decision"] == "promote"
    # 2026-01-04: features but no readings at all, so nothing shows that day's sensors were sound
    lake.append("features", _shifted(lake, "features", 3, ("window_start", "window_end")))
    meta = _retrain(_fresh_registry(lake, tmp_path / "again"), n_estimators=40)
    ts = meta["fault_training_set"]
    assert ts["days_used"] == ["2026-01-01", "2026-01-04"]
    assert ts["days_readings_not_validated"] == ["2026-01-04"]
    assert ts["training_validated"] is False
    decision = meta["fault_promotion"]
    assert decision["decision"] == "refuse"
    assert "FAIL: training data not validated" in decision["rules"]


# -- every labelled class is trained on (issue 13.10) ----------------------------------------
def test_time_split_keeps_a_fault_with_few_windows_in_training():
    """Three pumps, no shared history: pump-03's inner-race fault began late and has few
    windows; a last-quarter-of-time split would put them all in the holdout."""
    t = pd.date_range("2026-01-01", periods=100, freq="10s", tz="UTC")
    conditions = {
        "pump-01": ["normal"] * 100,
        "pump-02": ["normal"] * 40 + ["outer_race"] * 60,
        "pump-03": ["normal"] * 92 + ["inner_race"] * 8,
    }
    df = pd.concat(
        (
            pd.DataFrame({"asset_id": a, "window_end": t, "condition": c})
            for a, c in conditions.items()
        ),
        ignore_index=True,
    )
    holdout, how = holdout_split(df, "condition")
    assert how.startswith("by time")
    train, test = df[~holdout], df[holdout]
    assert set(train["condition"]) == set(df["condition"]) == set(test["condition"])
    inner = df[df["condition"] == "inner_race"]
    assert (~holdout[inner.index]).sum() == 6 and holdout[inner.index].sum() == 2
    # within each machine and condition, the holdout is the latest windows
    for (_, _), part in df.assign(h=holdout).groupby(["asset_id", "condition"]):
        assert part.loc[part["h"], "window_end"].min() > part.loc[~part["h"], "window_end"].max()


# -- the hybrid RUL model and its interval (issue 15.4) ---------------------------------------
def _fleet_to_failure(n: int, seed: int) -> pd.DataFrame:
    """Run-to-failure histories whose health indicator grows exponentially to failure, with a
    second, uninformative sensor; ``rul`` capped at 125 as in C-MAPSS."""
    rng = np.random.default_rng(seed)
    parts = []
    for unit in range(n):
        life = int(rng.integers(150, 300))
        t = np.arange(1, life + 1, dtype=float)
        rate = rng.uniform(0.015, 0.03)
        hi = 0.2 * rng.normal() + np.exp(rate * (t - life)) * 3.0 + rng.normal(0, 0.08, life)
        parts.append(
            pd.DataFrame(
                {
                    "unit": unit,
                    "cycle": t,
                    "z_hi": hi,
                    "noise": rng.normal(size=life),
                    "rul": np.minimum(life - t, 125.0),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_hybrid_rul_beats_its_prior_and_its_interval_covers_held_out_assets():
    from models.prognostics import fit_hybrid
    from models.training import rmse

    train, calib, test = (
        _fleet_to_failure(40, 1),
        _fleet_to_failure(15, 2),
        _fleet_to_failure(20, 3),
    )
    cols = ["z_hi", "noise", "cycle"]
    model = fit_hybrid(
        train[cols],
        train["rul"].to_numpy(),
        train["unit"].to_numpy(),
        n_estimators=80,
        params={"learning_rate": 0.1},
        n_jobs=1,
    )
    model.calibrate(model.predict(calib[cols], calib["unit"].to_numpy()), calib["rul"].to_numpy())
    predicted = model.predict(test[cols], test["unit"].to_numpy())
    prior = model.prior_rul(test[cols], test["unit"].to_numpy())
    truth = test["rul"].to_numpy()
    late = test["cycle"].to_numpy() >= 31  # once the window has history, as the bench scores
    assert (
        rmse(predicted[late], truth[late])
        < rmse(np.full(late.sum(), truth[late].mean()), truth[late]) / 2
    )
    assert rmse(predicted[late], truth[late]) <= rmse(prior[late], truth[late]) * 1.05
    low, high = model.interval(predicted)
    inside = (truth >= low) & (truth <= high)
    assert 0.72 <= inside[late].mean() <= 0.92
    assert (low <= predicted).all() and (predicted <= high).all()


def test_rul_truncation_points_are_inside_each_engine_life():
    from bench.rul import MIN_CYCLES, truncation_points

    df = pd.DataFrame(
        {"unit": [1] * 200 + [2] * 40, "cycle": list(range(1, 201)) + list(range(1, 41))}
    )
    cuts = truncation_points(df, draws=50, seed=3)
    last = cuts["unit"].map({1: 200, 2: 40})
    assert len(cuts) == 100 and (cuts["cycle"] >= MIN_CYCLES).all() and (cuts["cycle"] < last).all()
    assert cuts.loc[cuts["unit"] == 1, "cycle"].nunique() > 20  # random, not one fixed point
