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

The **served** model (``fit_served_rul``) is the same hybrid in the form the stream runs one
window at a time, for any asset kind whose plant declaration names a health indicator and the
sensors that may feed it (``physics.prognostics.HealthModel``): the indicator is learnt from
those sensors (each a z-score against the training fleet, signed and weighted by how it
follows remaining life), the prior is the similarity of its recent curve to the training
runs', and the XGBoost regressor learns the prior's residual from the indicator's and each
sensor's rolling level and slope (and the asset's age where the plant says its life began in
view).  Out-of-fold residuals (GroupKFold by run inside the training set, never the runs it is
scored on) give the least-cost shift where the plant declares an asymmetric cost, and the
conformal interval.  Its training rows come from the lake (``lake_rul_rows``): the sensors'
windows in ``features`` up to each failure in ``maintenance_events``, aligned and kept by
exactly the objects the stream keeps per asset (``AlignedWindows``, ``HealthHistory``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.model_selection import GroupKFold
from xgboost import XGBRegressor

from models.training import RUL_CAP, fit_rul_regressor
from physics.prognostics import (
    HEALTH_WINDOW,
    AlignedWindows,
    ConformalBands,
    HealthHistory,
    HealthModel,
    HealthSnapshot,
    SimilarityPrior,
    least_cost_shift,
)

__all__ = [
    "HI_COLUMN",
    "hi_history",
    "HybridRUL",
    "fit_hybrid",
    "END_OF_LIFE",
    "RENEWAL",
    "align_windows",
    "lake_rul_rows",
    "indicator_sensors",
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
"""Kinds after which an asset starts a new life (the next run begins after them); a life that
ends in a repair without a failure says only that the asset had not failed yet (censored): it
is no RUL target."""


def _seconds(ts: Any) -> np.ndarray:
    """UTC timestamps as seconds since the epoch, as the stream computes them (us / 1e6)."""
    us = pd.to_datetime(pd.Series(ts), utc=True).dt.as_unit("us").astype("int64").to_numpy()
    return us / 1e6


def align_windows(
    t: np.ndarray, sensor: np.ndarray, value: np.ndarray, n_sensors: int
) -> list[tuple[float, np.ndarray]]:
    """The aligned rows of one asset's windows (end ``t`` in s, ``sensor`` index into its
    indicator's sensors, primary first, and ``value``), through the ``AlignedWindows`` the
    stream keeps, in time order."""
    aw = AlignedWindows(n_sensors)
    out: list[tuple[float, np.ndarray]] = []
    order = np.lexsort((sensor, t))
    for k in order.tolist():
        out += aw.push(int(sensor[k]), float(t[k]), float(value[k]))
    return out


def indicator_sensors(rows: pd.DataFrame) -> list[str]:
    """The sensors of the health indicator of ``lake_rul_rows`` output (its ``base_*``
    columns, in the indicator's order)."""
    return [c.removeprefix("base_") for c in rows.columns if c.startswith("base_")]


def lake_rul_rows(features: pd.DataFrame, events: pd.DataFrame, plant: Any) -> pd.DataFrame:
    """Run-to-failure training rows from the lake, for the health indicators of the plant.

    ``features`` are rows of the ``features`` table; ``plant`` says each asset's indicator
    (``Plant.health_indicator``: its feature and the sensors feeding it).  For every asset
    with one and a ``failure`` in ``events`` (``maintenance_events``), each life - its windows
    after the previous failure or repair, up to the failure - goes through the stream's
    ``AlignedWindows`` and a fresh ``HealthHistory``, and each aligned window becomes a row:
    ``asset_id``, ``run``, ``window_end``, ``indicator`` (feature and sensors: one model serves
    one indicator), the history's snapshot (``HealthSnapshot.columns``), ``rul`` (seconds to
    the failure, capped at the plant's ``rul_cap_s``), ``rul_true`` (uncapped) and
    ``rul_cap``.  Windows after an asset's last failure, and assets that never failed, say
    nothing about when they fail (censored) and are left out.  Assets of several indicators
    give rows of each (their own sensors' columns; the others' are NaN)."""
    meta = ["asset_id", "run", "window_end", "indicator", "rul", "rul_true", "rul_cap"]
    if features.empty or events.empty:
        return pd.DataFrame(columns=meta)
    detail = events["detail"] if "detail" in events else pd.Series("", index=events.index)
    confirmation = detail.fillna("").astype(str).str.startswith("confirms alert")
    ev = events[events["kind"].isin(RENEWAL) & ~confirmation].copy()
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True)
    parts: list[pd.DataFrame] = []
    for asset, ev_a in ev.groupby("asset_id"):
        hi = plant.health_indicator(str(asset))
        fails = sorted(ev_a.loc[ev_a["kind"].isin(END_OF_LIFE), "ts"])
        if hi is None or not fails or hi.feature not in features:
            continue
        sensors = list(hi.inputs)
        mine = features[(features["asset_id"] == asset) & features["sensor_id"].isin(sensors)]
        mine = mine.dropna(subset=[hi.feature])
        if mine.empty:
            continue
        t_all = _seconds(mine["window_end"])
        s_all = mine["sensor_id"].map({s: j for j, s in enumerate(sensors)}).to_numpy(np.int64)
        v_all = mine[hi.feature].to_numpy(np.float64)
        renewals = sorted(ev_a["ts"])
        for fail in fails:
            before = [r for r in renewals if r < fail]
            start = float(_seconds([before[-1]])[0]) if before else -np.inf
            t_fail = float(_seconds([fail])[0])
            sel = (t_all > start) & (t_all <= t_fail)
            history = HealthHistory(len(sensors), baseline_windows=hi.baseline_windows)
            snaps, ends = [], []
            for t, x in align_windows(t_all[sel], s_all[sel], v_all[sel], len(sensors)):
                if history.update(t, x):
                    snaps.append(history.snapshot())
                    ends.append(t)
            if not snaps:
                continue
            end = np.asarray(ends)
            part = pd.DataFrame(HealthSnapshot.stack(snaps).columns(sensors))
            part.insert(0, "asset_id", asset)
            part.insert(1, "run", f"{asset}@{fail.isoformat()}")
            part.insert(2, "window_end", pd.to_datetime(np.round(end * 1e6), unit="us", utc=True))
            part.insert(3, "indicator", f"{hi.feature}:{','.join(sensors)}")
            part["rul"] = np.minimum(t_fail - end, hi.rul_cap_s)
            part["rul_true"] = t_fail - end
            part["rul_cap"] = hi.rul_cap_s
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=meta)
    return pd.concat(parts, ignore_index=True)


def rul_bands(cap_s: float) -> tuple[float, float]:
    """Mondrian bands of the interval: the thirds of the RUL horizon."""
    return (cap_s / 3.0, 2.0 * cap_s / 3.0)


@dataclass
class ServedRUL:
    """What the stream serves: the health model's numbers (``physics.prognostics.HealthModel``,
    registered beside the regressor as ``served/health.json``) and the residual regressor."""

    health: HealthModel
    model: XGBRegressor
    calibration: str

    def tags(self) -> dict[str, str]:
        return {
            "residual_of": "prior_rul",
            "prior": "similarity of the multi-sensor health indicator",
            "indicator_sensors": ",".join(self.health.sensors),
            "conformal_calibration": self.calibration,
        }

    def artifacts(self) -> dict[str, dict[str, Any]]:
        return {"health.json": self.health.to_dict()}

    def predict(self, snap: HealthSnapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RUL, low and high end of the interval (seconds) of each row of ``snap``."""
        rul = self.health.estimate(self.health.inputs(snap), self.model)
        low, high = self.health.interval(rul)
        return rul, low, high

    def snapshot(self, rows: pd.DataFrame) -> HealthSnapshot:
        return HealthSnapshot.from_columns(rows, self.health.sensors, self.health.window)

    def input_frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The residual regressor's inputs for ``rows``, in its column order (a signature's
        example)."""
        inputs = self.health.inputs(self.snapshot(rows))
        return pd.DataFrame({name: inputs[name] for name in self.health.input_names})

    def columns(self) -> list[str]:
        """The training-set columns ``snapshot`` reads."""
        return HealthSnapshot.column_names(self.health.sensors, self.health.window)

    @staticmethod
    def of(model: Any) -> ServedRUL | None:
        """The served RUL model of a registered version (``models.registry.LoadedModel``),
        or None when it carries no health model (a classifier, an older direct regressor)."""
        doc = getattr(model, "extras", {}).get("health")
        if not doc:
            return None
        calibration = getattr(model, "tags", {}).get("conformal_calibration", "")
        return ServedRUL(HealthModel.from_dict(doc), model.model, calibration)


def _fit_once(
    rows: pd.DataFrame,
    sensors: list[str],
    *,
    use_age: bool,
    n_estimators: int,
    params: dict[str, float | int] | None,
    n_jobs: int,
    stride: int = 2,
) -> tuple[HealthModel, XGBRegressor]:
    """The indicator's weights, the similarity prior and the residual regressor from ``rows``
    (complete runs: each run's rows in time order, its last at or near its failure)."""
    cap = float(rows["rul_cap"].max())
    newest = rows[[f"h{HEALTH_WINDOW - 1}_{s}" for s in sensors]].to_numpy(np.float64)
    centre = np.nanmean(newest, axis=0)
    spread = np.nanstd(newest, axis=0)
    scale = np.where(spread > 1e-12, spread, 1.0)
    z = (newest - centre) / scale
    rul = rows["rul"].to_numpy(np.float64)
    weights = np.zeros(len(sensors))
    for j in range(len(sensors)):
        ok = np.isfinite(z[:, j])
        if spread[j] > 1e-12 and ok.sum() > 2:
            r = np.corrcoef(z[ok, j], rul[ok])[0, 1]
            if np.isfinite(r) and abs(r) > 0.1:  # a sensor that follows remaining life
                weights[j] = -np.sign(r)
    if not weights.any():
        raise ValueError(
            f"none of the indicator's sensors {sensors} follows remaining life in the "
            "run-to-failure histories (|correlation| <= 0.1); cannot build a health indicator"
        )
    health = HealthModel(sensors, centre, scale, weights, cap, use_age)
    runs = rows["run"].to_numpy()
    library = list(pd.unique(runs))
    curves = [health.indicator(newest[runs == r]) for r in library]
    ruls = [rows.loc[runs == r, "rul_true"].to_numpy(np.float64) for r in library]
    if max(len(c) for c in curves) >= HEALTH_WINDOW:
        health.prior = SimilarityPrior(window=HEALTH_WINDOW, k=10, cap=cap)
        health.prior.fit([np.nan_to_num(c, nan=0.0) for c in curves], ruls)
    # the regressor learns from every other window (neighbours say nearly the same; the prior
    # is the costly part), with the prior of a row's own run left out of the library, so it
    # learns the prior's real, out-of-sample errors
    use = rows.iloc[::stride]
    snap = HealthSnapshot.from_columns(use, sensors)
    own = np.array([library.index(r) for r in use["run"]])
    inputs = health.inputs(snap, prior=health.prior_rul(health.indicator(snap.ring_x), own))
    x = pd.DataFrame({name: inputs[name] for name in health.input_names})
    target = use["rul"].to_numpy(np.float64) - inputs["prior_rul"]
    return health, fit_rul_regressor(x, target, n_estimators, params, n_jobs)


def fit_served_rul(
    rows: pd.DataFrame,
    n_estimators: int = 600,
    coverage: float = 0.8,
    n_jobs: int = 2,
    *,
    use_age: bool = False,
    early_cost_s: float | None = None,
    late_cost_s: float | None = None,
    params: dict[str, float | int] | None = None,
) -> ServedRUL:
    """The served hybrid from ``lake_rul_rows`` output of one indicator (``use_age`` and the
    costs as the plant declares them for it).  Out-of-fold predictions (GroupKFold by run,
    every choice refitted without the fold's runs) give the least-cost shift per band of the
    RUL horizon (when both costs are set) and the conformal interval of the shifted estimate;
    the served regressor and prior are then fitted on every run."""
    if "indicator" in rows and rows["indicator"].nunique() > 1:
        raise ValueError(
            f"rows of several health indicators {sorted(rows['indicator'].unique())}: "
            "one model serves one indicator"
        )
    runs = rows["run"].to_numpy()
    n_runs = len(set(runs))
    if n_runs == 0:
        raise ValueError(
            "no run-to-failure history (a failure in maintenance_events of an "
            "asset with a health indicator and features before it)"
        )
    sensors = indicator_sensors(rows)
    cap = float(rows["rul_cap"].max())
    fit = partial(
        _fit_once, use_age=use_age, n_estimators=n_estimators, params=params, n_jobs=n_jobs
    )
    raw, truth = [], []
    if n_runs >= 2:
        for tr, te in GroupKFold(n_splits=min(5, n_runs)).split(rows, groups=runs):
            health, model = fit(rows.iloc[tr], sensors)
            part = rows.iloc[te]
            raw.append(
                health.estimate(health.inputs(HealthSnapshot.from_columns(part, sensors)), model)
            )
            truth.append(part["rul"].to_numpy())
        calibration = f"out-of-fold residuals, GroupKFold({min(5, n_runs)}) by run"
    health, model = fit(rows, sensors)
    if n_runs < 2:  # a single life: in-sample residuals (said so in the tag)
        raw = [health.estimate(health.inputs(HealthSnapshot.from_columns(rows, sensors)), model)]
        truth = [rows["rul"].to_numpy()]
        calibration = "in-sample residuals (one run only: the interval is optimistic)"
    predicted, actual = np.concatenate(raw), np.concatenate(truth)
    edges = rul_bands(cap)
    band = np.searchsorted(np.asarray(edges), predicted, side="right")
    if early_cost_s is not None and late_cost_s is not None:
        health.shift = [
            least_cost_shift(predicted[band == b], actual[band == b], early_cost_s, late_cost_s)
            for b in range(len(edges) + 1)
        ]
        predicted = np.clip(predicted - np.asarray(health.shift)[band], 0.0, cap)
        calibration += f"; least-cost shift per band {[round(v) for v in health.shift]} s"
    health.bands = ConformalBands(edges=edges, coverage=coverage, cap=cap).fit(predicted, actual)
    return ServedRUL(health, model, calibration)
