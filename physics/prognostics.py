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

import math
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
    "DegradationTracker",
    "DegradationState",
    "TRACKER_FEATURES",
    "crossing_time",
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
    return ExponentialFit(
        float(a[best]),
        float(b[best]),
        float(rates[best]),
        t_ref,
        float(np.sqrt(sse[best] / t.size)),
    )


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
        return float(
            self.predict_many(q[None, :], np.array([-1 if exclude is None else exclude]))[0]
        )


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


# -- online degradation prior (one asset, one health-indicator window at a time) -------------
TRACKER_FEATURES = ["prior_rul", "hi_z", "hi_fit", "hi_fit_slope", "fit_rate", "fit_rmse"]
"""The inputs of the served RUL regressor: what ``DegradationTracker`` knows of an asset after
each window, plus the prior's own RUL (``crossing_time``).  Times in seconds, the indicator in
healthy-baseline spreads.  The asset's age is left out on purpose: where every training run
lasts as long (a simulator), age alone would predict the RUL and nothing about wear would be
learnt."""

_TRACKER_RATES = np.geomspace(0.05, 20.0, 32)
"""Degradation rates tried, per span of the asset's history: from nearly linear to a rise
concentrated in its last 5 %."""


@dataclass(frozen=True)
class DegradationState:
    """An asset's health after its newest window: the indicator as a robust z against its own
    healthy baseline (signed so wear is positive), and the exponential fit of its history
    (``a + b * exp(c * (t - t_now))``, t in seconds)."""

    t_s: float
    hi_z: float
    a: float
    b: float
    c: float
    rmse: float
    age_s: float

    @property
    def fit_now(self) -> float:
        return self.a + self.b

    @property
    def fit_slope(self) -> float:
        """d(fit)/dt now, baseline spreads per second."""
        return self.b * self.c

    def features(self, z_fail: float, cap_s: float) -> dict[str, float]:
        """The regressor's inputs (``TRACKER_FEATURES``) for a failure level ``z_fail``."""
        return {
            "prior_rul": crossing_time(self, z_fail, cap_s),
            "hi_z": self.hi_z,
            "hi_fit": self.fit_now,
            "hi_fit_slope": self.fit_slope,
            "fit_rate": self.c,
            "fit_rmse": self.rmse,
        }

    def extrapolate(self, t_s: float) -> float:
        """The fitted indicator at a later time ``t_s``."""
        return self.a + self.b * math.exp(min(self.c * (t_s - self.t_s), 50.0))


def crossing_time(state: DegradationState, z_fail: float, cap_s: float) -> float:
    """Seconds until the asset's fitted degradation reaches ``z_fail`` (0 if it already has,
    ``cap_s`` if it is not rising or would take longer): the physics prior of the RUL.

    >>> s = DegradationState(0.0, 1.0, a=0.0, b=1.0, c=0.01, rmse=0.0, age_s=100.0)
    >>> round(crossing_time(s, math.e, 1e4)), crossing_time(s, 0.5, 1e4), crossing_time(s, 1e9, 500.0)
    (100, 0.0, 500.0)
    """
    if state.fit_now >= z_fail:
        return 0.0
    if state.b <= 0 or state.c <= 0:
        return float(cap_s)
    tau = math.log((z_fail - state.a) / state.b) / state.c
    return float(min(max(tau, 0.0), cap_s))


@dataclass
class DegradationTracker:
    """The online prior of one asset: learns the asset's healthy level from its first
    ``baseline_windows`` values of the health indicator (median and MAD: robust to a fault
    already present in a few of them), then after every window fits an exponential
    degradation to the whole history since (``fit_exponential``, rates relative to the
    history's span), kept in at most ``max_points`` points (halved by taking every other one,
    newest kept, when full: old history thins, memory stays bounded).  The same object makes
    the stream's prognostics and the training rows, so the two cannot disagree.  The fit is
    redone every ``refit_every`` windows; in between, the last fit is carried to the new time
    (the same curve, its reference moved: ``b * exp(c * dt)``), which bounds the cost per
    window of a fast health indicator (one vibration frame a second) to a few microseconds
    most of the time.

    >>> tr = DegradationTracker(baseline_windows=10)
    >>> rng = np.random.default_rng(0)
    >>> states = [tr.update(float(t), 1.0 + 0.01 * rng.normal() + 0.5 * math.exp((t - 200) / 40))
    ...           for t in range(200)]
    >>> states[5] is None, abs(states[-1].fit_now / states[-1].hi_z - 1) < 0.15, states[-1].c > 0
    (True, True, True)
    """

    sign: float = 1.0
    baseline_windows: int = 30
    max_points: int = 256
    refit_every: int = 5
    centre: float = float("nan")
    scale: float = float("nan")
    t0: float = float("nan")
    _base: list[float] = field(default_factory=list)
    _t: list[float] = field(default_factory=list)
    _z: list[float] = field(default_factory=list)
    _fit: tuple[float, float, float, float, float] | None = None  # a, b, c, rmse, t_ref
    _since_fit: int = 0

    def update(self, t_s: float, hi: float) -> DegradationState | None:
        """Take the window ending at ``t_s`` (seconds); None while the baseline is learnt or for
        a non-finite value."""
        if not math.isfinite(hi) or not math.isfinite(t_s):
            return None
        if math.isnan(self.t0):
            self.t0 = t_s
        if math.isnan(self.centre):
            self._base.append(self.sign * hi)
            if len(self._base) < self.baseline_windows:
                return None
            b = np.asarray(self._base)
            self.centre = float(np.median(b))
            mad = 1.4826 * float(np.median(np.abs(b - self.centre)))
            self.scale = max(mad, float(b.std()) / 10.0, 1e-3 * abs(self.centre), 1e-12)
            self._base = []
        z = (self.sign * hi - self.centre) / self.scale
        if self._t and t_s <= self._t[-1]:
            return None  # windows arrive in event-time order; a repeat adds nothing
        self._t.append(t_s)
        self._z.append(z)
        if len(self._t) > self.max_points:
            keep = slice((len(self._t) - 1) % 2, None, 2)  # every other one, newest kept
            self._t, self._z = self._t[keep], self._z[keep]
        if len(self._t) < 3:
            return DegradationState(t_s, z, z, 0.0, 0.0, 0.0, t_s - self.t0)
        self._since_fit += 1
        if self._fit is not None and self._since_fit < self.refit_every:
            a, b, c, rmse, t_ref = self._fit
            b = b * math.exp(min(c * (t_s - t_ref), 50.0))
            return DegradationState(t_s, z, a, b, c, rmse, t_s - self.t0)
        t = np.asarray(self._t)
        span = max(t[-1] - t[0], 1e-9)
        fit = fit_exponential(t, np.asarray(self._z), _TRACKER_RATES / span)
        self._fit, self._since_fit = (fit.a, fit.b, fit.c, fit.rmse, t_s), 0
        return DegradationState(t_s, z, fit.a, fit.b, fit.c, fit.rmse, t_s - self.t0)
