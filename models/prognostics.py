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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from xgboost import XGBRegressor

from models.training import RUL_CAP, fit_rul_regressor
from physics.prognostics import ConformalBands, SimilarityPrior

__all__ = ["HI_COLUMN", "hi_history", "HybridRUL", "fit_hybrid"]

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
