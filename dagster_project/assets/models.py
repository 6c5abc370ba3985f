"""Training sets, candidate models and the promotion gate, as assets.

fault classifier:  features + maintenance_events → fault_training_set → fault_candidate →
                   fault_promotion (gate; moves the `champion` alias the stream follows)
RUL regressor:     C-MAPSS trajectories → rul_training_set → rul_candidate → rul_promotion
"""

import json

import dagster as dg
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import GroupShuffleSplit

from dagster_project.assets.validation import (
    features,
    validate_features_day,
    validate_readings_day,
    validated_dates,
)
from dagster_project.plots import png_markdown
from dagster_project.resources import DatasetsResource, LakeResource, MLflowResource
from expectations.checks import OK, scalar_reasons
from expectations.contracts import SENSORS
from models.gate import Decision, GatePolicy, run_gate
from models.registry import FAULT_MODEL, RUL_MODEL, log_candidate
from models.training import (
    FAULT_FEATURES,
    RUL_CAP,
    fit_fault_classifier,
    fit_rul_regressor,
    holdout_split,
    label_faults,
    rul_frame,
)
from physics.datasets import DatasetError, read_cmapss
from physics.process import ProcessFeatureBuilder

__all__ = [
    "maintenance_events",
    "fault_training_set",
    "fault_candidate",
    "fault_promotion",
    "rul_training_set",
    "rul_candidate",
    "rul_promotion",
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
    """The promotion policy (see ``models.gate.GatePolicy``)."""

    min_improvement: float = 0.01
    slice_tolerance: float = 0.10
    latency_budget_ms: float = 100.0
    require_validated_training: bool = True

    def policy(self) -> GatePolicy:
        return GatePolicy(**self.model_dump())


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
    if not store.exists("features"):
        raise dg.Failure("no features table yet: run the stream (`plantpulse up`) first")
    days = sorted(str(p["date"]) for p in store.table("features").partitions())
    run_id = context.run.run_id
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
    frame_sensors = sorted(s for s, c in SENSORS.items() if c.frames)
    feats = store.read(  # vibration windows only: process windows have no vibration features
        "features",
        filters=[
            ("date", "in", [pd.Timestamp(d).date() for d in good]),
            ("sensor_id", "in", frame_sensors),
        ],
    )
    events = (
        store.read("maintenance_events") if store.exists("maintenance_events") else pd.DataFrame(
            columns=["asset_id", "ts", "kind", "component"]
        )
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


@dg.asset(
    group_name="models",
    kinds={"xgboost", "mlflow"},
    owners=["team:ml"],
    automation_condition=FOLLOW_UPSTREAM,
)
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
        mlflow.tracking_uri,
        mlflow.experiment_id(EXPERIMENT),
        FAULT_MODEL,
        model,
        task="classifier",
        x_example=train[used].astype(np.float64),
        holdout=holdout[keep].reset_index(drop=True),
        params={"n_estimators": config.n_estimators, "features": len(used),
                "shuffled_labels": config.shuffle_labels},
        metrics={"train_rows": len(train), "holdout_rows": len(holdout),
                 "holdout_accuracy": float((predicted == holdout["condition"]).mean())},
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
    return dg.Output(
        str(mv.version),
        metadata={
            "model": FAULT_MODEL,
            "version": str(mv.version),
            "mlflow_run_id": mv.run_id,
            "classes": dg.MetadataValue.json(classes),
            "confusion_matrix": dg.MetadataValue.md(
                png_markdown(figures["confusion_matrix.png"], "confusion matrix")
            ),
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
    return _decision_result(run_gate(mlflow.tracking_uri, lake.lake(), name, version,
                                     config.policy()))


@dg.asset(
    group_name="models",
    kinds={"mlflow", "delta"},
    owners=["team:ml"],
    automation_condition=FOLLOW_UPSTREAM,
)
def fault_promotion(
    config: GateConfig, fault_candidate: str, lake: LakeResource, mlflow: MLflowResource
) -> dg.MaterializeResult:
    """The gate: candidate and champion on the candidate's holdout machines, overall and per
    machine and condition; `champion` moves only if every rule passes. The decision and its
    evidence land in `model_decisions` and as MLflow tags."""
    return _gate(FAULT_MODEL, fault_candidate, config, lake, mlflow)


# -- RUL regressor ----------------------------------------------------------------------------
@dg.asset(group_name="models", kinds={"pandas"}, owners=["team:ml"])
def rul_training_set(datasets: DatasetsResource) -> dg.Output[pd.DataFrame]:
    """C-MAPSS FD001 run-to-failure trajectories (RUL capped at 125) checked against the
    C-MAPSS sensor contracts, with process features fitted on the training engines only; 20 %
    of engines held out."""
    try:
        raw = read_cmapss(datasets.path, "FD001", rul_cap=RUL_CAP)
    except DatasetError as exc:  # data missing or malformed: say where, not a traceback
        raise dg.Failure(f"{exc} (set PLANTPULSE_DATA to the reference data sets)") from None
    bad = {
        c: int((scalar_reasons(SENSORS[f"cmapss_{c}"], raw[c].to_numpy(float)) != OK).sum())
        for c in raw.columns
        if f"cmapss_{c}" in SENSORS
    }
    bad = {c: n for c, n in bad.items() if n}
    split = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    train_idx, test_idx = next(split.split(raw, groups=raw["unit"]))
    train = raw.iloc[train_idx]
    builder = ProcessFeatureBuilder().fit(train, train["rul"].to_numpy())
    df = pd.concat(
        [
            rul_frame(train, builder).assign(holdout=False),
            rul_frame(raw.iloc[test_idx], builder).assign(holdout=True),
        ]
    )
    df["rul_band"] = np.where(df["rul"] <= 50, "last_50_cycles", "earlier")
    df["contracts_ok"] = not bad
    return dg.Output(
        df,
        metadata={
            "rows": dg.MetadataValue.int(len(df)),
            "engines_train": dg.MetadataValue.int(int(df.loc[~df["holdout"], "unit"].nunique())),
            "engines_holdout": dg.MetadataValue.int(int(df.loc[df["holdout"], "unit"].nunique())),
            "values_outside_contracts": dg.MetadataValue.json(bad),
        },
    )


@dg.asset(
    group_name="models",
    kinds={"xgboost", "mlflow"},
    owners=["team:ml"],
    automation_condition=FOLLOW_UPSTREAM,
)
def rul_candidate(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    rul_training_set: pd.DataFrame,
    mlflow: MLflowResource,
) -> dg.Output[str]:
    """An XGBoost RUL regressor, logged with a predicted-vs-true plot and feature importance."""
    df = rul_training_set
    meta = ["unit", "rul", "holdout", "rul_band", "contracts_ok"]
    used = [c for c in df.columns if c not in meta and c not in config.drop_features]
    train = _prepare(df[~df["holdout"]], config, "rul")
    holdout = df[df["holdout"]]
    model = fit_rul_regressor(train[used], train["rul"].to_numpy(), config.n_estimators)
    predicted = np.clip(model.predict(holdout[used]), 0, RUL_CAP)
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.scatter(holdout["rul"], predicted, s=3, alpha=0.3)
    ax.plot([0, RUL_CAP], [0, RUL_CAP], color="red", lw=1)
    ax.set_xlabel("true RUL (cycles, capped)")
    ax.set_ylabel("predicted RUL")
    ax.set_title("RUL on holdout engines", fontsize=10)
    figures = {
        "predicted_vs_true.png": fig,
        "feature_importance.png": _importance_figure(model, "RUL regressor: top features"),
    }
    mv = log_candidate(
        mlflow.tracking_uri,
        mlflow.experiment_id(EXPERIMENT),
        RUL_MODEL,
        model,
        task="regressor",
        x_example=train[used],
        holdout=holdout[["unit", "rul", "rul_band", *used]].reset_index(drop=True),
        params={"n_estimators": config.n_estimators, "features": len(used),
                "shuffled_labels": config.shuffle_labels, "rul_cap": RUL_CAP},
        metrics={"train_rows": len(train), "holdout_rows": len(holdout),
                 "holdout_rmse": float(np.sqrt(np.mean((predicted - holdout["rul"]) ** 2)))},
        tags={
            "slice_by": json.dumps(["rul_band"]),
            "training_validated": "true" if df["contracts_ok"].all() else "false",
            "dagster_run_id": context.run.run_id,
        },
        figures=figures,
    )
    return dg.Output(
        str(mv.version),
        metadata={
            "model": RUL_MODEL,
            "version": str(mv.version),
            "mlflow_run_id": mv.run_id,
            "predicted_vs_true": dg.MetadataValue.md(png_markdown(fig, "predicted vs true RUL")),
        },
    )


@dg.asset(
    group_name="models",
    kinds={"mlflow", "delta"},
    owners=["team:ml"],
    automation_condition=FOLLOW_UPSTREAM,
)
def rul_promotion(
    config: GateConfig, rul_candidate: str, lake: LakeResource, mlflow: MLflowResource
) -> dg.MaterializeResult:
    """The gate for the RUL model: RMSE on the holdout engines overall and per RUL band."""
    return _gate(RUL_MODEL, rul_candidate, config, lake, mlflow)
