"""Training sets and candidate models, shared by the Dagster assets, the CLI and the benches.

Two supervised models:

* the **fault classifier** (XGBoost, multi-class) reads vibration ``features`` windows and says
  which bearing component is damaged (``normal``, ``outer_race``, ``inner_race``, ``ball``); its
  labels come from ``maintenance_events`` by a point-in-time join, and the stream scores with it;
* the **RUL regressor** (XGBoost) predicts remaining useful life from process features of
  run-to-failure trajectories (C-MAPSS), capped at 125 cycles.

Splits are by machine, never by row: a machine's windows are either all in training or all in
the holdout, so the holdout measures how the model does on a machine it has never seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, log_loss
from xgboost import XGBClassifier, XGBRegressor

from physics.process import ProcessFeatureBuilder
from physics.registry import feature_names

__all__ = [
    "FAULT_CLASSES",
    "FAULT_FEATURES",
    "RUL_CAP",
    "RUL_PARAMS",
    "Evaluation",
    "label_faults",
    "split_by_machine",
    "holdout_split",
    "fit_fault_classifier",
    "CLASSIFIER_GRID",
    "classifier",
    "choose_classifier",
    "fit_rul_regressor",
    "rul_frame",
    "evaluate_classifier",
    "evaluate_regressor",
    "score_rul",
    "latency_ms_per_1000",
    "phm08",
    "rmse",
]

FAULT_CLASSES = ("normal", "outer_race", "inner_race", "ball")
FAULT_FEATURES = [n for n in feature_names("vibration") if n != "demod_centre_hz"]
"""Classifier inputs: every vibration feature but where the demodulation band happened to sit."""
RUL_CAP = 125.0


def phm08(predicted: np.ndarray, true: np.ndarray) -> float:
    """PHM08 challenge score: ``exp(-d/13)-1`` for early, ``exp(d/10)-1`` for late predictions."""
    d = np.asarray(predicted, float) - np.asarray(true, float)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))


def rmse(predicted: np.ndarray, true: np.ndarray) -> float:
    d = np.asarray(predicted, float) - np.asarray(true, float)
    return float(np.sqrt(np.mean(d**2))) if d.size else float("nan")


# -- labels -----------------------------------------------------------------------------------
def _condition(component: str, kind: str) -> str:
    if kind in ("repair", "replacement"):
        return "normal"
    name = component.removeprefix("bearing_")
    return name if name in FAULT_CLASSES else ""


def label_faults(
    features: pd.DataFrame, events: pd.DataFrame, as_of: pd.Timestamp | None = None
) -> pd.DataFrame:
    """``features`` windows with a ``condition`` column from ``maintenance_events``.

    Point in time: a window's label uses only events at or before its end; with ``as_of``, only
    events and windows at or before it are used (to rebuild the training set of a past date); and a window's condition is that of the newest bearing event
    at or before its end (``failure``/``fault_injected`` of a bearing component, or ``repair``
    back to ``normal``).  Windows before any event are ``normal``.
    """
    feats, ev = features, events.copy()
    if as_of is not None:
        feats, ev = feats[feats["window_end"] <= as_of], ev[ev["ts"] <= as_of]
    feats = feats.sort_values("window_end")
    ev["condition"] = [_condition(c, k) for c, k in zip(ev["component"], ev["kind"], strict=True)]
    ev = ev[ev["condition"] != ""].sort_values("ts")[["asset_id", "ts", "condition"]]
    if ev.empty:
        return feats.assign(condition="normal")
    ev["ts"] = ev["ts"].astype(feats["window_end"].dtype)
    out = pd.merge_asof(
        feats, ev, left_on="window_end", right_on="ts", by="asset_id", direction="backward"
    )
    out["condition"] = out["condition"].fillna("normal")
    return out.drop(columns=["ts"]).set_index(feats.index)


def split_by_machine(df: pd.DataFrame, label: str, asset: str = "asset_id") -> pd.Series:
    """True for holdout rows.  Machines are grouped by the set of labels they show; from each
    group of two or more, the last machine (by name) goes to the holdout, so every kind of
    history is both trained on and tested, and no machine is in both."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for machine, labels in df.groupby(asset)[label]:
        groups.setdefault(tuple(sorted(set(labels))), []).append(str(machine))
    holdout = [sorted(machines)[-1] for machines in groups.values() if len(machines) >= 2]
    return df[asset].isin(holdout)


def holdout_split(
    df: pd.DataFrame, label: str, time_column: str = "window_end", asset: str = "asset_id"
) -> tuple[pd.Series, str]:
    """The holdout mask and how it was chosen: by machine (``split_by_machine``) when some
    history is shared by two machines; otherwise (a small fleet, e.g. the three demo pumps) by
    time, stratified: the last quarter of each label's windows on each machine.  Stratifying
    keeps every label in training even when it has begun late on one machine and has few
    windows yet (a plain last-quarter-of-time split would put all of them in the holdout, and
    the model could not name that fault).  Every reader of the decision should know the time
    split is a weaker test.

    >>> t = pd.date_range("2026-01-01", periods=8, freq="min", tz="UTC")
    >>> df = pd.DataFrame({"asset_id": "pump-03", "window_end": t,
    ...                    "condition": ["normal"] * 6 + ["inner_race"] * 2})
    >>> mask, how = holdout_split(df, "condition")
    >>> sorted(set(df.loc[~mask, "condition"])), int(mask.sum()), how.split(" (")[0]
    (['inner_race', 'normal'], 3, 'by time')
    """
    by_machine = split_by_machine(df, label, asset)
    if by_machine.any():
        return by_machine, "by machine"
    order = df.groupby([asset, label])[time_column].rank(method="first")
    size = df.groupby([asset, label])[time_column].transform("size")
    # the first 75 % of each (machine, label) segment trains, at least one window of each
    keep = np.maximum(np.floor(0.75 * size), 1)
    return order > keep, (
        "by time (last 25 % of each condition's windows on each machine; no two machines "
        "share a history)"
    )


# -- models -----------------------------------------------------------------------------------
def fit_fault_classifier(
    train: pd.DataFrame, n_estimators: int = 200, features: list[str] | None = None
) -> tuple[XGBClassifier, list[str]]:
    """An XGBoost classifier of ``condition`` from the feature columns; returns it and its
    class names (index = the model's class number)."""
    features = features or FAULT_FEATURES
    classes = [c for c in FAULT_CLASSES if c in set(train["condition"])]
    if len(classes) < 2:
        raise ValueError(
            f"the training set has only {classes or 'no'} windows; a classifier needs at least "
            "two conditions (record a fault in maintenance_events)"
        )
    y = train["condition"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    model = XGBClassifier(
        n_estimators=n_estimators,
        max_depth=4,
        learning_rate=0.1,
        subsample=0.9,
        colsample_bytree=0.8,
        n_jobs=2,
        random_state=0,
        objective="multi:softprob" if len(classes) > 2 else "binary:logistic",
    )
    model.fit(train[features].astype(np.float64), y)
    return model, classes


CLASSIFIER_GRID: dict[str, dict[str, float | int]] = {
    "depth2_node0.3": {"max_depth": 2, "colsample_bynode": 0.3},
    "depth4_node0.3": {"max_depth": 4, "colsample_bynode": 0.3},
    "depth2_node0.8": {"max_depth": 2, "colsample_bynode": 0.8},
    "depth4_node0.8": {"max_depth": 4, "colsample_bynode": 0.8},
}
"""Classifier settings ``choose_classifier`` picks among: tree depth, and how many features
each split may choose from (few: every class is told apart by many features, not by the one
that happens to separate the training machine best, which may be the one a change of load
moves)."""


def classifier(params: dict[str, float | int], n_estimators: int, n_jobs: int = 1) -> XGBClassifier:
    """An XGBoost classifier with ``params`` over fixed learning settings."""
    return XGBClassifier(
        n_estimators=n_estimators,
        learning_rate=0.05,
        subsample=0.8,
        n_jobs=n_jobs,
        random_state=0,
        **params,
    )


def choose_classifier(
    x: pd.DataFrame,
    y: np.ndarray,
    groups: np.ndarray,
    n_estimators: int,
    grid: dict[str, dict[str, float | int]] | None = None,
) -> tuple[str, dict[str, float]]:
    """The setting of ``grid`` (default ``CLASSIFIER_GRID``) with the lowest mean log loss
    over leave-one-group-out folds of the training data (``groups``: contiguous stretches of
    each recording or machine, so a fold tests on windows its training never overlapped), and
    every setting's score.  Log loss, not accuracy: a training load's own recordings are told
    apart almost perfectly by any setting; how confidently is what separates them."""
    grid = grid or CLASSIFIER_GRID
    classes = np.unique(y)
    scores: dict[str, float] = {}
    for name, params in grid.items():
        losses = []
        for g in np.unique(groups):
            held = groups == g
            if len(np.unique(y[~held])) < len(classes):
                continue  # a fold without every class in training says nothing
            m = classifier(params, n_estimators).fit(x[~held], y[~held])
            losses.append(log_loss(y[held], m.predict_proba(x[held]), labels=classes))
        scores[name] = float(np.mean(losses)) if losses else float("inf")
    return min(scores, key=scores.__getitem__), scores


def rul_frame(trajectories: pd.DataFrame, builder: ProcessFeatureBuilder) -> pd.DataFrame:
    """Process features of run-to-failure ``trajectories`` with ``unit`` and ``rul`` kept."""
    x = builder.transform(trajectories)
    return pd.concat([trajectories.loc[x.index, ["unit", "rul"]], x], axis=1)


RUL_PARAMS: dict[str, float | int] = {
    "max_depth": 4,
    "learning_rate": 0.03,
    "subsample": 0.8,
    "colsample_bytree": 0.7,
    "min_child_weight": 5,
}
"""The RUL regressor's default settings (``bench.rul`` chooses among alternatives by nested
cross-validation and reports which it chose)."""


def fit_rul_regressor(
    x: pd.DataFrame,
    rul: np.ndarray,
    n_estimators: int = 600,
    params: dict[str, float | int] | None = None,
    n_jobs: int = 2,
) -> XGBRegressor:
    """The RUL regressor: XGBoost with ``RUL_PARAMS`` updated by ``params``.  ``n_jobs=1`` when
    several fits share a busy machine (OpenMP threads competing for cores slow a fit ~10x)."""
    model = XGBRegressor(
        n_estimators=n_estimators,
        **{**RUL_PARAMS, **(params or {})},
        n_jobs=n_jobs,
        random_state=0,
    )
    model.fit(x, rul)
    return model


# -- evaluation -------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """A model's score on a holdout: ``overall`` is the gate's metric (higher or lower is better
    as ``higher_is_better`` says), ``slices`` the same metric per slice, plus latency."""

    metric: str
    higher_is_better: bool
    overall: float
    slices: dict[str, float]
    latency_ms_per_1000: float
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "overall": self.overall,
            "slices": self.slices,
            "latency_ms_per_1000": self.latency_ms_per_1000,
            **self.extra,
        }


def latency_ms_per_1000(predict: Callable[[pd.DataFrame], object], x: pd.DataFrame) -> float:
    """Median of 5 timings of ``predict`` on 1,000 rows of ``x`` (sampled with replacement);
    one model alone: the gate compares two with ``models.gate.paired_latency``."""
    batch = x.sample(n=1000, replace=True, random_state=0) if len(x) else x
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        predict(batch)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def _slice_metric(df: pd.DataFrame, by: list[str], metric) -> dict[str, float]:
    out: dict[str, float] = {}
    for col in by:
        for value, part in df.groupby(col):
            out[f"{col}={value}"] = metric(part)
    return out


def evaluate_classifier(
    model: XGBClassifier, classes: list[str], holdout: pd.DataFrame, slice_by: list[str]
) -> Evaluation:
    """Macro F1 over the holdout's conditions (a condition the model cannot name scores 0), per
    slice, and the accuracy."""
    features = list(model.get_booster().feature_names or FAULT_FEATURES)
    x = holdout[features].astype(np.float64)
    predicted = np.asarray(classes, dtype=object)[model.predict(x).astype(int)]
    scored = holdout.assign(predicted=predicted)

    def f1(part: pd.DataFrame) -> float:
        """Macro F1 over the conditions truly present in ``part``."""
        labels = sorted(set(part["condition"]))
        return float(
            f1_score(
                part["condition"],
                part["predicted"],
                labels=labels,
                average="macro",
                zero_division=0,
            )
        )

    return Evaluation(
        metric="macro_f1",
        higher_is_better=True,
        overall=f1(scored),
        slices=_slice_metric(scored, slice_by, f1),
        latency_ms_per_1000=latency_ms_per_1000(model.predict, x),
        extra={
            "accuracy": float((scored["predicted"] == scored["condition"]).mean()),
            "holdout_rows": float(len(scored)),
        },
    )


def evaluate_regressor(
    model: XGBRegressor,
    holdout: pd.DataFrame,
    slice_by: list[str],
    residual_of: str | None = None,
) -> Evaluation:
    """RMSE of capped RUL over the holdout (lower is better), per slice, with the PHM08 score.
    ``residual_of``: the model predicts the residual of that holdout column (a prior), so the
    RUL is the two summed; the cap is the holdout's ``rul_cap`` column when it has one."""
    features = list(model.get_booster().feature_names or [])
    x = holdout[features]
    predicted = model.predict(x) + (holdout[residual_of].to_numpy() if residual_of else 0.0)
    cap = holdout["rul_cap"].to_numpy() if "rul_cap" in holdout else RUL_CAP
    return score_rul(
        np.clip(predicted, 0.0, cap), holdout, slice_by, latency_ms_per_1000(model.predict, x)
    )


def score_rul(
    predicted: np.ndarray,
    holdout: pd.DataFrame,
    slice_by: list[str],
    latency_ms_per_1000: float,
    extra: dict[str, float] | None = None,
) -> Evaluation:
    """The gate's evaluation of RUL estimates ``predicted`` for the rows of ``holdout`` (its
    ``rul`` the truth): RMSE overall and per slice, the PHM08 score and the holdout's size."""
    scored = holdout.assign(predicted=predicted)

    def err(part: pd.DataFrame) -> float:
        return rmse(part["predicted"].to_numpy(), part["rul"].to_numpy())

    return Evaluation(
        metric="rmse",
        higher_is_better=False,
        overall=err(scored),
        slices=_slice_metric(scored, slice_by, err),
        latency_ms_per_1000=latency_ms_per_1000,
        extra={
            "phm08": phm08(scored["predicted"].to_numpy(), scored["rul"].to_numpy()),
            "holdout_rows": float(len(scored)),
            **(extra or {}),
        },
    )
