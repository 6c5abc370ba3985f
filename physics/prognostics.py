"""Degradation priors for remaining useful life, and split-conformal intervals: pure numerics.

A health indicator (HI) that rises as an asset degrades is modelled per asset as an exponential
degradation ``hi(t) = a + b * exp(c * (t - t_ref))`` (Gebraeel's exponential model, the usual
prior for bearings and turbofans).  Every run-to-failure history in the library is smoothed by
its own fit; the remaining life of a running asset is then estimated by similarity (Wang et al.,
"A similarity-based prognostics approach", PHM 2008): its recent HI is slid along each library
curve, the best-matching position of each library asset gives that asset's remaining life from
there, and the ``k`` closest library assets vote (median).  A regressor can then learn the
residual of this prior from richer features (see ``models.prognostics``).

The interval is split-conformal: residuals (true - predicted) of out-of-sample predictions
from calibration folds give, per band of predicted RUL (Mondrian conformal), the quantiles that
make a nominal ``coverage`` interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

__all__ = [
    "ExponentialFit",
    "fit_exponential",
    "SimilarityPrior",
    "ConformalBands",
]

F64 = NDArray[np.float64]

_RATES = np.geomspace(1e-3, 0.2, 48)
"""Degradation rates (per step) tried by ``fit_exponential``: e-folding times of 5 to 1,000."""


@dataclass(frozen=True)
class ExponentialFit:
    """``hi(t) = a + b * exp(c * (t - t_ref))``, fitted by least squares."""

    a: float
    b: float
    c: float
    t_ref: float
    rmse: float

    def __call__(self, t: F64) -> F64:
        return self.a + self.b * np.exp(self.c * (np.asarray(t, dtype=np.float64) - self.t_ref))


def fit_exponential(t: F64, hi: F64, rates: F64 | None = None) -> ExponentialFit:
    """Least-squares exponential degradation of ``hi`` over steps ``t``.

    For each rate ``c`` on a grid, ``a`` and ``b`` are linear least squares; the rate with the
    smallest error wins (no initial guess to go wrong, no divergence).  ``t_ref`` is the last
    step, so ``b`` is the rise above baseline at the end of the history.

    >>> t = np.arange(100.0)
    >>> rng = np.random.default_rng(0)
    >>> fit = fit_exponential(t, 0.5 + 2.0 * np.exp(0.05 * (t - 99)) + rng.normal(0, 0.01, 100))
    >>> round(fit.a, 1), round(fit.b, 1), round(fit.c, 2)
    (0.5, 2.0, 0.05)
    """
    t, hi = np.asarray(t, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(hi)
    t, hi = t[ok], hi[ok]
    if t.size < 3:
        raise ValueError(f"an exponential fit needs at least 3 finite points, got {t.size}")
    rates = _RATES if rates is None else np.asarray(rates, dtype=np.float64)
    t_ref = float(t.max())
    basis = np.exp(np.outer(rates, t - t_ref))  # (rates, points)
    # closed-form simple regression of hi on each basis row
    bm = basis.mean(axis=1, keepdims=True)
    hm = hi.mean()
    db, dh = basis - bm, hi - hm
    sxx = (db * db).sum(axis=1)
    b = np.where(sxx > 0, (db * dh).sum(axis=1) / np.where(sxx > 0, sxx, 1.0), 0.0)
    a = hm - b * bm[:, 0]
    sse = ((hi[None, :] - a[:, None] - b[:, None] * basis) ** 2).sum(axis=1)
    best = int(np.argmin(sse))
    return ExponentialFit(float(a[best]), float(b[best]), float(rates[best]), t_ref,
                          float(np.sqrt(sse[best] / t.size)))


@dataclass
class SimilarityPrior:
    """Remaining life by similarity to a library of run-to-failure HI curves.

    ``fit`` smooths each library history (one array per asset, ending at its failure) with its
    exponential fit; ``predict_many`` compares the last ``window`` HI values of running assets
    with every position of every library curve (mean squared difference), takes each library
    asset's best position, and returns the median remaining life of the ``k`` closest assets,
    capped at ``cap``.  A library asset can be left out per query (``exclude``, its index), so
    a training asset's own curve never predicts it.

    >>> t = np.arange(200.0)
    >>> curves = [0.1 * np.exp(0.03 * (t[:n] - n + 1)) for n in (150, 180, 200)]
    >>> prior = SimilarityPrior(window=20, k=2).fit(curves)
    >>> query = 0.1 * np.exp(0.03 * (np.arange(120.0) - 159))  # 40 steps before its failure
    >>> round(prior.predict(query))
    40
    >>> prior.predict_many(np.stack([query[-20:], query[-40:-20]]), exclude=np.array([1, -1])).round()
    array([40., 60.])
    """

    window: int = 30
    k: int = 10
    cap: float = 125.0
    curves: list[F64] = field(default_factory=list)
    _windows: F64 = field(default_factory=lambda: np.empty((0, 0)), repr=False)
    _sq: F64 = field(default_factory=lambda: np.empty(0), repr=False)
    _rul: F64 = field(default_factory=lambda: np.empty(0), repr=False)
    _bounds: list[tuple[int, int]] = field(default_factory=list, repr=False)

    def fit(self, histories: Sequence[F64]) -> SimilarityPrior:
        self.curves = []
        for hi in histories:
            hi = np.asarray(hi, dtype=np.float64)
            t = np.arange(hi.size, dtype=np.float64)
            self.curves.append(fit_exponential(t, hi)(t))
        usable = [c for c in self.curves if c.size >= self.window]
        if not usable:
            raise ValueError(
                f"a similarity prior needs a run-to-failure history of >= {self.window} steps"
            )
        windows, rul, self._bounds, start = [], [], [], 0
        for curve in self.curves:
            if curve.size < self.window:
                self._bounds.append((start, start))
                continue
            w = sliding_window_view(curve, self.window)
            windows.append(w)
            rul.append(curve.size - self.window - np.arange(len(w), dtype=np.float64))
            self._bounds.append((start, start + len(w)))
            start += len(w)
        self._windows = np.concatenate(windows)
        self._sq = (self._windows**2).sum(axis=1)
        self._rul = np.concatenate(rul)
        return self

    def predict_many(self, recent: F64, exclude: NDArray[np.int64] | None = None) -> F64:
        """Remaining life after each row of ``recent`` (queries x ``window``, the HI's last
        ``window`` values); ``exclude[i]`` is the library index left out for query i (-1: none)."""
        q = np.asarray(recent, dtype=np.float64)
        if q.ndim != 2 or q.shape[1] != self.window:
            raise ValueError(f"queries must be (n, {self.window}), got {q.shape}")
        if not self._bounds:
            raise RuntimeError("SimilarityPrior.predict_many before fit")
        out = np.empty(len(q))
        for lo in range(0, len(q), 256):  # bounded memory: positions x 256 distances at a time
            block = q[lo : lo + 256]
            d = self._sq[:, None] - 2.0 * self._windows @ block.T + (block**2).sum(axis=1)
            best_d = np.full((len(self._bounds), len(block)), np.inf)
            best_rul = np.zeros_like(best_d)
            for i, (s, e) in enumerate(self._bounds):
                if e > s:
                    j = d[s:e].argmin(axis=0)
                    best_d[i] = d[s:e][j, np.arange(len(block))]
                    best_rul[i] = self._rul[s:e][j]
            if exclude is not None:
                ex = np.asarray(exclude)[lo : lo + 256]
                rows = np.flatnonzero(ex >= 0)
                best_d[ex[rows], rows] = np.inf
            k = min(self.k, len(self._bounds))
            nearest = np.argsort(best_d, axis=0)[:k]
            votes = np.take_along_axis(best_rul, nearest, axis=0)
            finite = np.isfinite(np.take_along_axis(best_d, nearest, axis=0))
            out[lo : lo + 256] = np.nanmedian(np.where(finite, votes, np.nan), axis=0)
        return np.minimum(np.nan_to_num(out, nan=self.cap), self.cap)

    def predict(self, recent: F64, exclude: int | None = None) -> float:
        """Remaining life after the last value of ``recent`` (an asset's HI so far; shorter
        histories than ``window`` are padded with their first value)."""
        q = np.asarray(recent, dtype=np.float64)
        q = q[np.isfinite(q)][-self.window :]
        if q.size == 0:
            return self.cap
        q = np.concatenate([np.full(self.window - q.size, q[0]), q])
        return float(self.predict_many(q[None, :], np.array([-1 if exclude is None else exclude]))[0])


@dataclass
class ConformalBands:
    """Split-conformal interval with Mondrian bands of the predicted value.

    ``fit`` takes out-of-sample predictions and truths from calibration folds; each band of
    predicted value (edges ``edges``) keeps the residual quantiles that give ``coverage``
    (finite-sample corrected); ``interval`` returns (low, high) for new predictions, clipped to
    ``[floor, cap]``.

    >>> rng = np.random.default_rng(1)
    >>> pred = rng.uniform(0, 120, 4000)
    >>> truth = pred + rng.normal(0, 1 + pred / 20)   # wider errors far from failure
    >>> bands = ConformalBands(edges=(40.0, 80.0), coverage=0.8).fit(pred, truth)
    >>> new = rng.uniform(0, 120, 4000)
    >>> lo, hi = bands.interval(new)
    >>> y = new + rng.normal(0, 1 + new / 20)
    >>> bool(0.77 < np.mean((y >= lo) & (y <= hi)) < 0.83), bool(hi[new < 40].mean() - new[new < 40].mean() < 5)
    (True, True)
    """

    edges: tuple[float, ...] = (40.0, 80.0)
    coverage: float = 0.8
    floor: float = 0.0
    cap: float = float("inf")
    quantiles: list[tuple[float, float]] = field(default_factory=list)

    def _band(self, predicted: F64) -> NDArray[np.int64]:
        return np.searchsorted(np.asarray(self.edges), predicted, side="right")

    def fit(self, predicted: F64, truth: F64) -> ConformalBands:
        predicted = np.asarray(predicted, dtype=np.float64)
        residual = np.asarray(truth, dtype=np.float64) - predicted
        band = self._band(predicted)
        alpha = 1.0 - self.coverage
        self.quantiles = []
        for b in range(len(self.edges) + 1):
            r = residual[band == b]
            if r.size == 0:  # an empty band borrows every residual
                r = residual
            n = r.size
            lo_q = max(0.0, np.floor((alpha / 2) * (n + 1)) / n)
            hi_q = min(1.0, np.ceil((1 - alpha / 2) * (n + 1)) / n)
            self.quantiles.append((float(np.quantile(r, lo_q)), float(np.quantile(r, hi_q))))
        return self

    def interval(self, predicted: F64) -> tuple[F64, F64]:
        if not self.quantiles:
            raise RuntimeError("ConformalBands.interval before fit")
        predicted = np.asarray(predicted, dtype=np.float64)
        q = np.asarray(self.quantiles)[self._band(predicted)]
        low = np.clip(predicted + q[:, 0], self.floor, self.cap)
        high = np.clip(predicted + q[:, 1], self.floor, self.cap)
        return low, high
