"""Training sets, candidate models and the promotion gate, as assets.

fault classifier:  features + maintenance_events → fault_training_set → fault_candidate →
                   fault_promotion (gate; moves the `champion` alias the stream follows)
RUL regressor:     features + maintenance_events (run-to-failure histories of every asset with
                   a health indicator) → rul_training_set → rul_candidate → rul_promotion
prognostics:       the stream's prognostics → remaining_useful_life (per asset: RUL, interval
                   and the health indicator's trend)
"""

import json
from collections.abc import Callable
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from dagster_project.assets.validation import (
    features,
    validate_features_day,
    validate_readings_day,
    validated_dates,
)
from dagster_project.plots import health_figure, png_markdown, rul_figure
from dagster_project.resources import LakeResource, MLflowResource
from expectations.contracts import SENSORS
from models.gate import Decision, GatePolicy, plant_latency_ceiling_ms, run_gate
from models.prognostics import fit_served_rul, lake_rul_rows
from models.registry import FAULT_MODEL, RUL_MODEL, log_candidate
from models.training import (
    FAULT_FEATURES,
    fit_fault_classifier,
    holdout_split,
    label_faults,
    rmse,
)
from physics.prognostics import HealthSnapshot
from plant import default_plant

__all__ = [
    "maintenance_events",
    "fault_training_set",
    "fault_candidate",
    "fault_promotion",
    "rul_training_set",
    "rul_candidate",
    "rul_promotion",
    "remaining_useful_life",
    "GateConfig",
    "TrainingConfig",
]

EXPERIMENT = "plantpulse-models"
FOLLOW_UPSTREAM = dg.AutomationCondition.eager()
"""Declarative automation: a new training set (from any run) is followed by a new candidate,
and a new candidate by the gate, without a job having to list them."""

maintenance_events = dg.AssetSpec(
    "maintenance_events",
    description="Failures, repairs and inspections (the labels), written by the CMMS "
    "integration or, in the demo, by the simulator's ground truth.",
    group_name="lake",
    kinds={"delta"},
    owners=["team:reliability"],
)


class TrainingConfig(dg.Config):
    """Model size (``n_estimators``) and, for tests and drills, features to leave out."""

    n_estimators: int = 200
    drop_features: list[str] = []
    shuffle_labels: bool = False


class GateConfig(dg.Config):
    """The promotion policy (see ``models.gate.GatePolicy``); the absolute latency ceiling is
    the plant's (``serving.latency_ceiling_ms`` of the plant file), not run config."""

    min_improvement: float = 0.01
    slice_tolerance: float = 0.10
    max_latency_ratio: float = 1.5
    require_validated_training: bool = True

    def policy(self) -> GatePolicy:
        return GatePolicy(
            **self.model_dump(), latency_ceiling_ms=plant_latency_ceiling_ms(default_plant())
        )


def _table_md(df: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(df.to_markdown())


# -- fault classifier -------------------------------------------------------------------------
@dg.asset(
    deps=[features, maintenance_events],
    group_name="models",
    kinds={"pandas", "delta"},
    owners=["team:ml"],
)
def fault_training_set(
    context: dg.AssetExecutionContext, lake: LakeResource
) -> dg.Output[pd.DataFrame]:
    """Feature windows labelled with the bearing condition at their end time (point in time,
    from ``maintenance_events``), from validated days only, split into train and holdout by
    machine. Days the features suite or the readings checks have not seen yet are validated
    first; days that fail either (error level) are left out and listed. A day that could not be
    validated (no readings to check) is kept but marks the set as not validated (column
    ``validated``; the candidate's ``training_validated`` tag), which the gate refuses."""
    store = lake.lake()
    days = _validated_days(store, context.run.run_id)
    good, skipped, readings_failed, unvalidated = days
    frame_sensors = sorted(s for s, c in SENSORS.items() if c.frames)
    feats = store.read(  # vibration windows only: process windows have no vibration features
        "features",
        filters=[
            ("date", "in", [pd.Timestamp(d).date() for d in good]),
            ("sensor_id", "in", frame_sensors),
        ],
    )
    events = (
        store.read("maintenance_events")
        if store.exists("maintenance_events")
        else pd.DataFrame(columns=["asset_id", "ts", "kind", "component"])
    )
    labelled = label_faults(feats, events)
    labelled["validated"] = ~labelled["date"].astype(str).isin(unvalidated)
    labelled["holdout"], split = holdout_split(labelled, "condition")
    counts = labelled.groupby(["condition", "holdout"]).size().unstack(fill_value=0)
    return dg.Output(
        labelled,
        metadata={
            "rows": dg.MetadataValue.int(len(labelled)),
            "split": split,
            "days_used": dg.MetadataValue.json(good),
            "days_skipped_failed_validation": dg.MetadataValue.json(skipped),
            "days_skipped_readings_failed_validation": dg.MetadataValue.json(readings_failed),
            "days_readings_not_validated": dg.MetadataValue.json(unvalidated),
            "training_validated": bool(labelled["validated"].all()),
            "holdout_machines": dg.MetadataValue.json(
                sorted(labelled.loc[labelled["holdout"], "asset_id"].unique().tolist())
            ),
            "windows_per_condition": _table_md(counts),
        },
    )


def _validated_days(store, run_id: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """The days of ``features`` a training set may use, validating the days the features
    suite or the readings checks have not seen yet: (good, failed the features suite, failed
    the readings checks, good but with no readings to validate).  Raises ``dg.Failure`` when
    there is no features table or no good day."""
    if not store.exists("features"):
        raise dg.Failure("no features table yet: run the stream (`plantpulse up`) first")
    days = sorted(str(p["date"]) for p in store.table("features").partitions())
    known_features = _checked_dates(store, "features")
    known_readings = _checked_dates(store, "readings")
    for day in days:
        if day not in known_features:
            validate_features_day(store, day, run_id)
        if day not in known_readings:
            validate_readings_day(store, day, run_id)
    features_ok = validated_dates(store, "features") & set(days)
    readings_ok = validated_dates(store, "readings") & set(days)
    readings_judged = _checked_dates(store, "readings")
    readings_failed = sorted((readings_judged - readings_ok) & set(days))
    good = sorted(features_ok - set(readings_failed))
    skipped = sorted(set(days) - features_ok)
    unvalidated = sorted(set(good) - readings_ok)  # no readings on that day to validate
    if not good:
        raise dg.Failure(
            f"no validated day of features (features failed validation: {skipped}; "
            f"readings failed validation: {readings_failed})"
        )
    return good, skipped, readings_failed, unvalidated


def _checked_dates(store, table: str) -> set[str]:
    """Days of ``table`` whose validation has already run, pass or fail."""
    if not store.exists("validation_results"):
        return set()
    res = store.read("validation_results", filters=[("table_name", "=", table)])
    return set(res["partition"])


def _importance_figure(model, title: str) -> Figure:
    imp = pd.Series(model.get_booster().get_score(importance_type="gain")).sort_values()[-15:]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.barh(imp.index, imp.values)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("gain")
    return fig


def _confusion_figure(true: pd.Series, predicted: np.ndarray, labels: list[str]) -> Figure:
    cm = confusion_matrix(true, predicted, labels=labels)
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (holdout machines)")
    return fig


def _prepare(train: pd.DataFrame, config: TrainingConfig, label: str) -> pd.DataFrame:
    if config.shuffle_labels:
        train = train.assign(**{label: train[label].sample(frac=1.0, random_state=0).to_numpy()})
    return train


def _model_asset(*kinds: str) -> Callable[..., Any]:
    """The decorator of a candidate or gate asset: the models group, its kinds, re-run after
    its upstream (``FOLLOW_UPSTREAM``)."""
    return dg.asset(
        group_name="models",
        kinds=set(kinds),
        owners=["team:ml"],
        automation_condition=FOLLOW_UPSTREAM,
    )


@_model_asset("xgboost", "mlflow")
def fault_candidate(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    fault_training_set: pd.DataFrame,
    mlflow: MLflowResource,
) -> dg.Output[str]:
    """An XGBoost fault classifier trained on the training machines, logged to MLflow (model in
    UBJSON, signature, input example, confusion matrix and feature importance) and registered
    as a new version of the fault model. The value is the version number."""
    df = fault_training_set
    train = _prepare(df[~df["holdout"]], config, "condition")
    holdout = df[df["holdout"]]
    used = [f for f in FAULT_FEATURES if f not in config.drop_features]
    try:
        model, classes = fit_fault_classifier(train, config.n_estimators, used)
    except ValueError as exc:  # e.g. no fault recorded yet: say so instead of a traceback
        raise dg.Failure(str(exc)) from None
    predicted = np.asarray(classes, dtype=object)[model.predict(holdout[used]).astype(int)]
    figures = {
        "confusion_matrix.png": _confusion_figure(
            holdout["condition"], predicted, sorted(set(classes) | set(holdout["condition"]))
        ),
        "feature_importance.png": _importance_figure(model, "fault classifier: top features"),
    }
    keep = ["asset_id", "sensor_id", "window_end", "condition", *used]
    mv = log_candidate(
        mlflow.uri(),
        mlflow.experiment_id(EXPERIMENT),
        FAULT_MODEL,
        model,
        task="classifier",
        x_example=train[used].astype(np.float64),
        holdout=holdout[keep].reset_index(drop=True),
        params={
            "n_estimators": config.n_estimators,
            "features": len(used),
            "shuffled_labels": config.shuffle_labels,
        },
        metrics={
            "train_rows": len(train),
            "holdout_rows": len(holdout),
            "holdout_accuracy": float((predicted == holdout["condition"]).mean()),
        },
        tags={
            "classes": json.dumps(classes),
            "slice_by": json.dumps(["asset_id", "condition"]),
            # every day of the set passed the readings checks and the features suite
            "training_validated": "true" if bool(df["validated"].all()) else "false",
            # where a champion trained on other features reads them for these holdout rows
            "holdout_source": json.dumps(
                {"table": "features", "keys": ["asset_id", "sensor_id", "window_end"]}
            ),
            "dagster_run_id": context.run.run_id,
        },
        figures=figures,
    )
    return _registered(
        mv,
        FAULT_MODEL,
        classes=dg.MetadataValue.json(classes),
        confusion_matrix=dg.MetadataValue.md(
            png_markdown(figures["confusion_matrix.png"], "confusion matrix")
        ),
    )


def _registered(mv, name: str, **metadata: Any) -> dg.Output[str]:
    """A candidate asset's value (the version number) and what the UI shows of it."""
    return dg.Output(
        str(mv.version),
        metadata={
            "model": name,
            "version": str(mv.version),
            "mlflow_run_id": mv.run_id,
            **metadata,
        },
    )


def _decision_result(d: Decision) -> dg.MaterializeResult:
    ev = d.evidence
    cand, champ = ev.get("candidate") or {}, ev.get("champion") or {}
    slices = pd.DataFrame(
        {"candidate": cand.get("slices", {}), "champion": champ.get("slices", {})}
    )
    return dg.MaterializeResult(
        metadata={
            "decision": d.decision,
            "candidate_version": d.candidate_version,
            "champion_before": d.champion_version or "none",
            "rules": dg.MetadataValue.md("\n".join(f"- {r}" for r in d.reasons)),
            "metric": str(cand.get("metric", "")),
            "candidate_overall": dg.MetadataValue.float(float(cand.get("overall", np.nan))),
            "champion_overall": dg.MetadataValue.float(float(champ.get("overall", np.nan))),
            "slices": _table_md(slices) if len(slices) else "none",
        }
    )


def _gate(name: str, version: str, config: GateConfig, lake, mlflow) -> dg.MaterializeResult:
    return _decision_result(run_gate(mlflow.uri(), lake.lake(), name, version, config.policy()))


@_model_asset("mlflow", "delta")
def fault_promotion(
    config: GateConfig, fault_candidate: str, lake: LakeResource, mlflow: MLflowResource
) -> dg.MaterializeResult:
    """The gate: candidate and champion on the candidate's holdout machines, overall and per
    machine and condition; `champion` moves only if every rule passes. The decision and its
    evidence land in `model_decisions` and as MLflow tags."""
    return _gate(FAULT_MODEL, fault_candidate, config, lake, mlflow)


# -- RUL regressor ----------------------------------------------------------------------------
@dg.asset(
    deps=[features, maintenance_events],
    group_name="models",
    kinds={"pandas", "delta"},
    owners=["team:ml"],
)
def rul_training_set(
    context: dg.AssetExecutionContext, lake: LakeResource
) -> dg.Output[pd.DataFrame]:
    """Run-to-failure histories from the lake, for the health indicators of the plant: the
    windows in ``features`` (validated days only, as for the fault classifier) of the sensors
    that feed each asset's indicator, up to each ``failure`` in ``maintenance_events``, aligned
    and kept by the objects the stream keeps per asset (``models.prognostics.lake_rul_rows``);
    one model serves one indicator, so the indicator with the most runs is trained (the others
    are listed); 20 % of the runs held out (by run: a life is all in training or all in the
    holdout)."""
    store = lake.lake()
    good, skipped, readings_failed, unvalidated = _validated_days(store, context.run.run_id)
    plant = default_plant()
    sensors = {
        s for a in plant.assets.values() if a.health_indicator for s in a.health_indicator.inputs
    }
    feats = store.read(
        "features",
        filters=[
            ("date", "in", [pd.Timestamp(d).date() for d in good]),
            ("sensor_id", "in", sorted(sensors)),
        ],
    )
    events = (
        store.read("maintenance_events")
        if store.exists("maintenance_events")
        else (pd.DataFrame(columns=["asset_id", "ts", "kind", "component"]))
    )
    df = lake_rul_rows(feats, events, plant)
    if df.empty:
        raise dg.Failure(
            "no run-to-failure history in the lake: an RUL model needs a `failure` in "
            "maintenance_events of an asset whose plant declaration names a health indicator, "
            "with its features before it"
        )
    runs_per = df.groupby("indicator")["run"].nunique().sort_values(ascending=False)
    indicator = str(runs_per.index[0])
    df = df[df["indicator"] == indicator].reset_index(drop=True)
    meta = ["asset_id", "run", "window_end", "indicator", "rul", "rul_true", "rul_cap"]
    own = HealthSnapshot.column_names(indicator.split(":", 1)[1].split(","))
    df = df[meta + own]  # without the columns of the other indicators' sensors
    runs = sorted(df["run"].unique())
    rng = np.random.default_rng(0)
    n_hold = int(round(0.2 * len(runs))) if len(runs) >= 3 else 0
    held = set(rng.choice(runs, size=n_hold, replace=False).tolist()) if n_hold else set()
    df["holdout"] = df["run"].isin(held)
    if not held:  # too few lives to hold one out: the holdout is the last 25 % of each run
        order = df.groupby("run")["window_end"].rank(pct=True)
        df["holdout"] = order > 0.75
    df["rul_band"] = np.where(df["rul"] <= df["rul_cap"] / 3, "last_third_of_horizon", "earlier")
    days = df["window_end"].dt.strftime("%Y-%m-%d")
    df["validated"] = ~days.isin(unvalidated)
    return dg.Output(
        df,
        metadata={
            "rows": dg.MetadataValue.int(len(df)),
            "indicator": indicator,
            "indicators_not_trained": dg.MetadataValue.json(
                {str(k): int(v) for k, v in runs_per.iloc[1:].items()}
            ),
            "runs_train": dg.MetadataValue.int(int(df.loc[~df["holdout"], "run"].nunique())),
            "runs_holdout": dg.MetadataValue.int(len(held)),
            "holdout": "by run" if held else "last 25 % of each run (fewer than 3 runs)",
            "assets": dg.MetadataValue.json(sorted(df["asset_id"].astype(str).unique())),
            "days_used": dg.MetadataValue.json(good),
            "days_skipped_failed_validation": dg.MetadataValue.json(skipped),
            "days_skipped_readings_failed_validation": dg.MetadataValue.json(readings_failed),
            "days_readings_not_validated": dg.MetadataValue.json(unvalidated),
            "training_validated": bool(df["validated"].all()),
        },
    )


@_model_asset("xgboost", "mlflow")
def rul_candidate(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    rul_training_set: pd.DataFrame,
    mlflow: MLflowResource,
) -> dg.Output[str]:
    """The served hybrid RUL model (``models.prognostics.fit_served_rul``: the multi-sensor
    health indicator, its similarity prior, an XGBoost regressor of the prior's residual, the
    least-cost shift and the conformal interval, with the plant's declarations for the
    indicator), logged with the RUL-over-time plot of the holdout runs and registered as a new
    version (the health model as ``served/health.json``)."""
    df = rul_training_set
    train = _prepare(df[~df["holdout"]], config, "rul")
    holdout = df[df["holdout"]]
    hi = default_plant().health_indicator(str(df["asset_id"].iloc[0]))
    try:
        served = fit_served_rul(
            train,
            config.n_estimators,
            use_age=bool(hi and hi.age_is_wear),
            early_cost_s=hi.early_cost_s if hi else None,
            late_cost_s=hi.late_cost_s if hi else None,
        )
    except ValueError as exc:
        raise dg.Failure(str(exc)) from None
    snap = served.snapshot(holdout)
    predicted, low, high = served.predict(snap)
    inputs = served.health.inputs(snap)
    truth = holdout["rul"].to_numpy()
    figures = {
        "rul_over_time.png": rul_figure(
            holdout.assign(
                ts=holdout["window_end"], rul=predicted, rul_low=low, rul_high=high, truth=truth
            ),
            "RUL of the holdout runs: predicted, interval and truth (capped)",
        ),
        "feature_importance.png": _importance_figure(served.model, "RUL residual: top inputs"),
    }
    keep = ["asset_id", "run", "window_end", "rul", "rul_true", "rul_cap", "rul_band"]
    mv = log_candidate(
        mlflow.uri(),
        mlflow.experiment_id(EXPERIMENT),
        RUL_MODEL,
        served.model,
        task="regressor",
        x_example=served.input_frame(train.head(50)),
        holdout=holdout[keep + served.columns()].reset_index(drop=True),
        params={
            "n_estimators": config.n_estimators,
            "inputs": len(served.health.input_names),
            "shuffled_labels": config.shuffle_labels,
            "indicator_sensors": len(served.health.sensors),
        },
        metrics={
            "train_rows": len(train),
            "holdout_rows": len(holdout),
            "holdout_rmse_s": rmse(predicted, truth),
            "holdout_interval_coverage": float(np.mean((truth >= low) & (truth <= high))),
            "holdout_prior_rmse_s": rmse(inputs["prior_rul"], truth),
        },
        tags={
            "slice_by": json.dumps(["rul_band"]),
            "training_validated": "true" if bool(df["validated"].all()) else "false",
            "dagster_run_id": context.run.run_id,
            **served.tags(),
        },
        figures=figures,
        served=served.artifacts(),
    )
    weights = dict(zip(served.health.sensors, served.health.weights.tolist(), strict=True))
    return _registered(
        mv,
        RUL_MODEL,
        indicator_weights=dg.MetadataValue.json(weights),
        shift_s=dg.MetadataValue.json(served.health.shift),
        conformal_calibration=served.calibration,
        rul_over_time=dg.MetadataValue.md(
            png_markdown(figures["rul_over_time.png"], "RUL over time, holdout runs")
        ),
    )


@_model_asset("mlflow", "delta")
def rul_promotion(
    config: GateConfig, rul_candidate: str, lake: LakeResource, mlflow: MLflowResource
) -> dg.MaterializeResult:
    """The gate for the RUL model: RMSE of the whole served estimate on the holdout runs,
    overall and per RUL band, and latency against the champion's measured together."""
    return _gate(RUL_MODEL, rul_candidate, config, lake, mlflow)


# -- what operators read: each asset's remaining life ----------------------------------------
RUL_HOURS = 24.0


@dg.asset(
    deps=[dg.AssetKey("prognostics")],
    group_name="models",
    kinds={"delta", "pandas"},
    owners=["team:reliability"],
    automation_condition=dg.AutomationCondition.on_cron("*/10 * * * *"),
)
def remaining_useful_life(lake: LakeResource) -> dg.MaterializeResult:
    """Each asset's remaining useful life as the stream serves it (``prognostics``, the last
    24 h of event time): the newest estimate with its interval and model version, and a
    picture per asset of the estimate with its interval over time beside the health
    indicator's trend (its value and rolling level, in training-fleet spreads)."""
    store = lake.lake()
    if not store.exists("prognostics"):
        return dg.MaterializeResult(metadata={"assets": 0, "note": "no prognostics yet"})
    newest = store.table("prognostics").to_pyarrow_dataset().to_table(columns=["ts"])
    if newest.num_rows == 0:
        return dg.MaterializeResult(metadata={"assets": 0, "note": "no prognostics yet"})
    end = pd.Timestamp(max(newest.column("ts").to_pylist()))
    prog = store.read("prognostics", filters=[("ts", ">=", end - pd.Timedelta(hours=RUL_HOURS))])
    now = prog.sort_values("ts").groupby("asset_id").last()
    table = pd.DataFrame(
        {
            "as of": now["ts"].dt.strftime("%Y-%m-%d %H:%M:%S"),
            "RUL (h)": (now["rul"] / 3600).round(2),
            f"interval ({now['coverage'].iloc[-1]:.0%}, h)": [
                f"{lo / 3600:.2f} - {hi / 3600:.2f}"
                for lo, hi in zip(now["rul_low"], now["rul_high"], strict=True)
            ],
            "health indicator": now["health_indicator"].round(3),
            "rise above own baseline": now["hi_z"].round(3),
            "model": now["model_name"] + " v" + now["model_version"],
        }
    )
    return dg.MaterializeResult(
        metadata={
            "assets": dg.MetadataValue.int(len(now)),
            "rul_now": dg.MetadataValue.md(table.to_markdown()),
            "rul_and_health": dg.MetadataValue.md(
                png_markdown(
                    health_figure(
                        prog, f"remaining life and health indicator, last {RUL_HOURS:g} h"
                    ),
                    "RUL and health indicator per asset",
                )
            ),
        }
    )
