"""The hybrid RUL model: a similarity-based degradation prior corrected by XGBoost, with a
split-conformal interval.

``fit_hybrid`` takes process features of run-to-failure histories (``ProcessFeatureBuilder``
output: one row per step, sorted by asset and step, with the health indicator ``z_hi``):

1. the **prior** (``physics.prognostics.SimilarityPrior``): each training asset's HI curve,
   smoothed by an exponential degradation fit, is a library entry; a running asset's remaining
   life is that of the library assets its recent HI matches best;
2. the **correction**: an XGBoost regressor learns ``rul - prior`` from the features and the
   prior itself.  For the training rows the prior leaves the row's own asset out of the library,
   so the regressor learns the prior's real, out-of-sample errors;
3. the **interval** (``physics.prognostics.ConformalBands``): quantiles of out-of-sample
   residuals from calibration folds (``calibrate``), per band of predicted RUL.

The **served** model (``fit_served_rul``) is the same idea in the form the stream can run one
window at a time, for any asset kind with a health indicator declared in the plant: the prior
is each asset's own exponential degradation fit crossing a failure level
(``physics.prognostics.DegradationTracker``), the XGBoost regressor learns the prior's
residual from the tracker's state, and the conformal interval comes from out-of-fold
residuals.  Its training rows come from the lake (``lake_rul_rows``): the health indicator's
windows in ``features`` up to each failure in ``maintenance_events``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.model_selection import GroupKFold
from xgboost import XGBRegressor

from models.training import RUL_CAP, fit_rul_regressor
from physics.prognostics import (
    TRACKER_FEATURES,
    ConformalBands,
    DegradationState,
    DegradationTracker,
    SimilarityPrior,
)

__all__ = [
    "HI_COLUMN",
    "hi_history",
    "HybridRUL",
    "fit_hybrid",
    "END_OF_LIFE",
    "lake_rul_rows",
    "failure_level",
    "served_inputs",
    "ServedRUL",
    "fit_served_rul",
    "rul_bands",
]

HI_COLUMN = "z_hi"
"""The health indicator column of ``ProcessFeatureBuilder`` output."""


def hi_history(hi: np.ndarray, assets: np.ndarray, window: int) -> np.ndarray:
    """For each row, the last ``window`` HI values of its asset up to and including that row
    (rows grouped by asset in step order; the first values are padded with the asset's first).

    >>> hi_history(np.array([1.0, 2.0, 3.0, 7.0, 8.0]), np.array([1, 1, 1, 2, 2]), 2).tolist()
    [[1.0, 1.0], [1.0, 2.0], [2.0, 3.0], [7.0, 7.0], [7.0, 8.0]]
    """
    hi, assets = np.asarray(hi, dtype=np.float64), np.asarray(assets)
    out = np.empty((hi.size, window))
    starts = np.flatnonzero(np.r_[True, assets[1:] != assets[:-1]])
    for lo, hi_end in zip(starts, np.r_[starts[1:], hi.size], strict=True):
        h = hi[lo:hi_end]
        padded = np.concatenate([np.full(window - 1, h[0]), h])
        out[lo:hi_end] = sliding_window_view(padded, window)
    return out


@dataclass
class HybridRUL:
    """Prior + correction; ``bands`` once calibrated."""

    prior: SimilarityPrior
    corrector: XGBRegressor
    features: list[str]
    library_assets: list
    bands: ConformalBands | None = None

    def prior_rul(self, x: pd.DataFrame, assets: np.ndarray) -> np.ndarray:
        """The prior alone for each row of ``x`` (no library asset left out)."""
        windows = hi_history(x[HI_COLUMN].to_numpy(), np.asarray(assets), self.prior.window)
        return self.prior.predict_many(windows)

    def predict(self, x: pd.DataFrame, assets: np.ndarray) -> np.ndarray:
        """RUL for each row of ``x`` (rows of ``assets``, grouped by asset in step order)."""
        prior = self.prior_rul(x, assets)
        inputs = x[self.features].assign(prior_rul=prior)
        return np.clip(prior + self.corrector.predict(inputs), 0.0, RUL_CAP)

    def calibrate(self, predicted: np.ndarray, truth: np.ndarray, coverage: float = 0.8) -> None:
        """Fit the interval from out-of-sample predictions of calibration folds."""
        self.bands = ConformalBands(coverage=coverage, cap=RUL_CAP).fit(predicted, truth)

    def interval(self, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.bands is None:
            raise RuntimeError("HybridRUL.interval before calibrate")
        return self.bands.interval(predicted)


def fit_hybrid(
    x: pd.DataFrame,
    rul: np.ndarray,
    assets: np.ndarray,
    *,
    n_estimators: int = 600,
    params: dict[str, float | int] | None = None,
    stride: int = 2,
    window: int = 30,
    k: int = 10,
    n_jobs: int = 2,
) -> HybridRUL:
    """The hybrid model from run-to-failure rows ``x`` (grouped by asset in step order, each
    asset's last row at failure), their capped ``rul`` and ``assets``.  The correction trains on
    every ``stride``-th row (the prior is the costly part)."""
    assets = np.asarray(assets)
    rul = np.asarray(rul, dtype=np.float64)
    hi = x[HI_COLUMN].to_numpy()
    library_assets = list(pd.unique(assets))
    histories = [hi[assets == a] for a in library_assets]
    prior = SimilarityPrior(window=window, k=k, cap=RUL_CAP).fit(histories)
    features = list(x.columns)
    model = HybridRUL(prior, XGBRegressor(), features, library_assets)
    rows = np.arange(len(x))[::stride]
    own = np.array([library_assets.index(a) for a in assets[rows]])  # left out of its prior
    p = prior.predict_many(hi_history(hi, assets, window)[rows], exclude=own)
    inputs = x.iloc[rows].assign(prior_rul=p)
    model.corrector = fit_rul_regressor(inputs, rul[rows] - p, n_estimators, params, n_jobs)
    return model


# -- the served hybrid, trained from the lake -------------------------------------------------
END_OF_LIFE = ("failure",)
"""``maintenance_events`` kinds that end a run-to-failure history (its RUL is 0 there).  A
technician's confirmation of an alert (``detail`` starting ``confirms alert``, as
``plantpulse_cli.technician`` writes) says the fault was present when the alert opened, not
that the asset's life ended then: it labels the fault classifier, never an RUL target."""
RENEWAL = ("failure", "repair", "replacement")
"""Kinds after which an asset starts a new life (the next run begins after them)."""
_STATE = ["t_s", "hi_z", "a", "b", "c", "rmse", "age_s"]


def _seconds(ts: pd.Series) -> np.ndarray:
    """UTC timestamps as seconds since the epoch, as the stream computes them (us / 1e6)."""
    us = pd.to_datetime(ts, utc=True).dt.as_unit("us").astype("int64").to_numpy()
    return us / 1e6


def _state_row(s: DegradationState) -> list[float]:
    return [s.t_s, s.hi_z, s.a, s.b, s.c, s.rmse, s.age_s]


def lake_rul_rows(features: pd.DataFrame, events: pd.DataFrame, plant: Any) -> pd.DataFrame:
    """Run-to-failure training rows from the lake, for every asset kind.

    ``features`` are rows of the ``features`` table; ``plant`` says each asset's health
    indicator (``Plant.health_indicator``).  For every asset with one and a ``failure`` in
    ``events`` (``maintenance_events``), each life - its windows after the previous failure or
    repair, up to the failure - is replayed through a fresh ``DegradationTracker`` exactly as
    the stream does, and each window becomes a row: the tracker's state, ``rul`` (seconds to
    the failure, capped at the plant's ``rul_cap_s``), ``rul_true`` (uncapped), ``rul_cap``,
    ``run`` and ``z_at_failure`` (the run's last fit extrapolated to the failure time: where
    the indicator stands when the asset fails).  Windows after an asset's last failure, and
    assets that never failed, say nothing about when they fail (censored) and are left out."""
    cols = [
        "asset_id",
        "run",
        "window_end",
        "health_indicator",
        *_STATE,
        "rul",
        "rul_true",
        "rul_cap",
        "z_at_failure",
    ]
    if features.empty or events.empty:
        return pd.DataFrame(columns=cols)
    confirmation = (
        events.get("detail", pd.Series("", index=events.index))
        .fillna("")
        .astype(str)
        .str.startswith("confirms alert")
    )
    ev = events[events["kind"].isin(RENEWAL) & ~confirmation].copy()
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True)
    out: list[list[Any]] = []
    for asset, ev_a in ev.groupby("asset_id"):
        hi = plant.health_indicator(str(asset))
        fails = sorted(ev_a.loc[ev_a["kind"].isin(END_OF_LIFE), "ts"])
        if hi is None or not fails or hi.feature not in features:
            continue
        rows = features[(features["asset_id"] == asset) & (features["sensor_id"] == hi.sensor_id)]
        rows = rows.sort_values("window_end").drop_duplicates("window_end")
        if rows.empty:
            continue
        t_all = _seconds(rows["window_end"])
        v_all = rows[hi.feature].to_numpy(np.float64)
        renewals = sorted(ev_a["ts"])
        for fail in fails:
            before = [r for r in renewals if r < fail]
            start = _seconds(pd.Series([before[-1]]))[0] if before else -np.inf
            t_fail = float(_seconds(pd.Series([fail]))[0])
            sel = (t_all > start) & (t_all <= t_fail)
            tracker = DegradationTracker(sign=hi.sign, baseline_windows=hi.baseline_windows)
            run_rows, last = [], None
            for t, v in zip(t_all[sel], v_all[sel], strict=True):
                st = tracker.update(float(t), float(v))
                if st is None:
                    continue
                last = st
                run_rows.append(
                    [
                        asset,
                        f"{asset}@{fail.isoformat()}",
                        t,
                        v,
                        *_state_row(st),
                        min(t_fail - t, hi.rul_cap_s),
                        t_fail - t,
                        hi.rul_cap_s,
                    ]
                )
            if last is None:
                continue
            z_end = last.extrapolate(t_fail)
            out += [r + [z_end] for r in run_rows]
    df = pd.DataFrame(out, columns=cols)
    df["window_end"] = pd.to_datetime(df["window_end"] * 1e6, unit="us", utc=True)
    return df


def failure_level(rows: pd.DataFrame) -> float:
    """Where the health indicator stands at failure: the median over runs of each run's fit
    at its failure time (baseline spreads)."""
    per_run = rows.groupby("run")["z_at_failure"].first().to_numpy(np.float64)
    per_run = per_run[np.isfinite(per_run)]
    if not per_run.size:
        raise ValueError("no run-to-failure history to learn the failure level from")
    return float(np.median(per_run))


def _state(r: Any) -> DegradationState:
    return DegradationState(r.t_s, r.hi_z, r.a, r.b, r.c, r.rmse, r.age_s)


def served_inputs(rows: pd.DataFrame, z_fail: float) -> pd.DataFrame:
    """The regressor's inputs (``TRACKER_FEATURES``) of tracker-state rows, for ``z_fail``:
    ``DegradationState.features`` over whole columns (the doctest checks they agree)."""
    a, b, c = (rows[k].to_numpy(np.float64) for k in ("a", "b", "c"))
    cap = rows["rul_cap"].to_numpy(np.float64)
    now = a + b
    rising = (b > 0) & (c > 0) & (now < z_fail)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(
            rising, np.log((z_fail - a) / np.where(rising, b, 1.0)) / np.where(rising, c, 1.0), 0.0
        )
    prior = np.where(now >= z_fail, 0.0, np.where(rising, np.clip(tau, 0.0, cap), cap))
    return pd.DataFrame(
        {
            "prior_rul": prior,
            "hi_z": rows["hi_z"].to_numpy(),
            "hi_fit": now,
            "hi_fit_slope": b * c,
            "fit_rate": c,
            "fit_rmse": rows["rmse"].to_numpy(),
        },
        index=rows.index,
    )[TRACKER_FEATURES]


def rul_bands(cap_s: float) -> tuple[float, float]:
    """Mondrian bands of the interval: the thirds of the RUL horizon."""
    return (cap_s / 3.0, 2.0 * cap_s / 3.0)


@dataclass
class ServedRUL:
    """What the stream needs to serve an RUL: the residual regressor, the failure level of
    the prior and the conformal bands (the last two travel as MLflow version tags)."""

    model: XGBRegressor
    z_fail: float
    bands: ConformalBands
    calibration: str

    def tags(self) -> dict[str, str]:
        return {
            "residual_of": "prior_rul",
            "prior": "exponential-degradation-crossing",
            "z_fail": repr(self.z_fail),
            "conformal": json.dumps(
                {
                    "edges": list(self.bands.edges),
                    "coverage": self.bands.coverage,
                    "quantiles": self.bands.quantiles,
                }
            ),
            "conformal_calibration": self.calibration,
        }

    @staticmethod
    def bands_from_tags(tags: dict[str, str]) -> tuple[float, ConformalBands] | None:
        """(failure level, bands) of a registered served-RUL version; None when its tags are
        not those of one (an older, direct regressor)."""
        if "z_fail" not in tags or "conformal" not in tags:
            return None
        c = json.loads(tags["conformal"])
        bands = ConformalBands(
            edges=tuple(c["edges"]),
            coverage=float(c["coverage"]),
            quantiles=[tuple(q) for q in c["quantiles"]],
        )
        return float(tags["z_fail"]), bands

    def predict(self, x: pd.DataFrame, cap: np.ndarray | float) -> np.ndarray:
        return np.clip(
            x["prior_rul"].to_numpy() + self.model.predict(x[TRACKER_FEATURES]), 0.0, cap
        )


def _fit_residual(rows: pd.DataFrame, n_estimators: int, n_jobs: int) -> tuple[XGBRegressor, float]:
    z_fail = failure_level(rows)
    x = served_inputs(rows, z_fail)
    target = rows["rul"].to_numpy() - x["prior_rul"].to_numpy()
    params = {"max_depth": 3, "min_child_weight": 10}
    return fit_rul_regressor(x, target, n_estimators, params, n_jobs), z_fail


def fit_served_rul(
    rows: pd.DataFrame, n_estimators: int = 200, coverage: float = 0.8, n_jobs: int = 2
) -> ServedRUL:
    """The served hybrid from ``lake_rul_rows`` output: failure level and residual regressor
    from every run; the interval from out-of-fold residuals (GroupKFold by run, the failure
    level and regressor refitted without the fold's runs), in bands of the RUL horizon."""
    runs = rows["run"].to_numpy()
    n_runs = len(set(runs))
    if n_runs == 0:
        raise ValueError(
            "no run-to-failure history (a failure in maintenance_events of an "
            "asset with a health indicator and features before it)"
        )
    cap = float(rows["rul_cap"].max())
    if n_runs >= 2:
        predicted, truth = [], []
        for tr, te in GroupKFold(n_splits=min(5, n_runs)).split(rows, groups=runs):
            m, z = _fit_residual(rows.iloc[tr], n_estimators, n_jobs)
            part = rows.iloc[te]
            x = served_inputs(part, z)
            predicted.append(
                np.clip(x["prior_rul"].to_numpy() + m.predict(x), 0.0, part["rul_cap"].to_numpy())
            )
            truth.append(part["rul"].to_numpy())
        calibration = f"out-of-fold residuals, GroupKFold({min(5, n_runs)}) by run"
    model, z_fail = _fit_residual(rows, n_estimators, n_jobs)
    if n_runs < 2:  # a single life: in-sample residuals (said so in the tag)
        x = served_inputs(rows, z_fail)
        predicted = [np.clip(x["prior_rul"].to_numpy() + model.predict(x), 0.0, cap)]
        truth = [rows["rul"].to_numpy()]
        calibration = "in-sample residuals (one run only: the interval is optimistic)"
    bands = ConformalBands(edges=rul_bands(cap), coverage=coverage, cap=cap).fit(
        np.concatenate(predicted), np.concatenate(truth)
    )
    return ServedRUL(model, z_fail, bands, calibration)
