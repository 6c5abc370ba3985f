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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

__all__ = [
    "ExponentialFit",
    "fit_exponential",
    "SimilarityPrior",
    "ConformalBands",
    "HEALTH_WINDOW",
    "AlignedWindows",
    "HealthHistory",
    "HealthSnapshot",
    "HealthModel",
    "Regressor",
    "window_stats",
    "asymmetric_cost",
    "least_cost_shift",
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
    ruls: list[F64] = field(default_factory=list)
    _windows: F64 = field(default_factory=lambda: np.empty((0, 0)), repr=False)
    _sq: F64 = field(default_factory=lambda: np.empty(0), repr=False)
    _rul: F64 = field(default_factory=lambda: np.empty(0), repr=False)
    _bounds: list[tuple[int, int]] = field(default_factory=list, repr=False)

    def fit(self, histories: Sequence[F64], ruls: Sequence[F64] | None = None) -> SimilarityPrior:
        """Smooth each history by its exponential fit and index it; ``ruls`` (one array per
        history, the remaining life at each step: seconds to its failure, say) default to the
        steps to the history's end."""
        curves = []
        for hi in histories:
            hi = np.asarray(hi, dtype=np.float64)
            t = np.arange(hi.size, dtype=np.float64)
            curves.append(fit_exponential(t, hi)(t))
        return self.index(curves, ruls)

    def index(self, curves: Sequence[F64], ruls: Sequence[F64] | None = None) -> SimilarityPrior:
        """Index already smoothed ``curves`` (what ``fit`` does after smoothing; a stored
        prior is rebuilt from its curves this way)."""
        self.curves = [np.asarray(c, dtype=np.float64) for c in curves]
        if ruls is None:
            ruls = [c.size - 1 - np.arange(c.size, dtype=np.float64) for c in self.curves]
        self.ruls = [np.asarray(r, dtype=np.float64) for r in ruls]
        usable = [c for c in self.curves if c.size >= self.window]
        if not usable:
            raise ValueError(
                f"a similarity prior needs a run-to-failure history of >= {self.window} steps"
            )
        windows, rul, self._bounds, start = [], [], [], 0
        for curve, life in zip(self.curves, self.ruls, strict=True):
            if curve.size < self.window:
                self._bounds.append((start, start))
                continue
            w = sliding_window_view(curve, self.window)
            windows.append(w)
            rul.append(life[self.window - 1 :])  # the remaining life after each window
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


# -- the served health model: several sensors, one asset at a time -----------------------------
HEALTH_WINDOW = 30
"""Aligned windows of an asset's recent history the served model reads (its rolling level and
slope, and the similarity prior's query)."""


@dataclass
class AlignedWindows:
    """One asset's windows of several sensors, aligned on its primary sensor's (sensor 0).

    The row of the primary's window ending at ``t`` is complete once every sensor has a window
    ending at or after ``t``; each sensor's value in it is then its newest window ending at or
    before ``t`` (NaN if it has none).  So the order the windows come in - one micro-batch or
    several, one sensor before another - changes no row: the stream and a training set built
    from the lake's ``features`` all at once get the same rows.  At most ``depth`` windows per
    sensor and ``depth`` waiting rows are kept: a sensor that stops reporting delays its
    asset's rows by ``depth`` primary windows, after which they go out without its news.

    >>> aw = AlignedWindows(2)
    >>> aw.push(0, 10.0, 1.0), aw.push(0, 20.0, 2.0)   # the second sensor has not reported
    ([], [])
    >>> [(t, x.tolist()) for t, x in aw.push(1, 20.0, 5.0)]
    [(10.0, [1.0, nan]), (20.0, [2.0, 5.0])]
    """

    n_sensors: int
    depth: int = 16
    _recent: list[list[tuple[float, float]]] = field(default_factory=list)
    _pending: list[float] = field(default_factory=list)

    def push(self, sensor: int, t: float, value: float) -> list[tuple[float, F64]]:
        """Take ``sensor``'s window ending at ``t``; returns the rows it completes, oldest
        first.  A window not newer than the sensor's newest is ignored (a repeat)."""
        if not self._recent:
            self._recent = [[] for _ in range(self.n_sensors)]
        recent = self._recent[sensor]
        if recent and t <= recent[-1][0]:
            return []
        recent.append((t, value))
        del recent[: -self.depth]
        if sensor == 0:
            self._pending.append(t)
        newest = min((r[-1][0] if r else -math.inf) for r in self._recent)
        done = [p for p in self._pending if p <= newest]
        if len(self._pending) - len(done) > self.depth:  # a silent sensor: give up waiting
            done = self._pending[: len(self._pending) - self.depth]
        if not done:
            return []
        self._pending = self._pending[len(done) :]
        return [(p, self._as_of(p)) for p in done]

    def _as_of(self, t: float) -> F64:
        out = np.full(self.n_sensors, np.nan)
        for j, recent in enumerate(self._recent):
            for tj, v in reversed(recent):
                if tj <= t:
                    out[j] = v
                    break
        return out


@dataclass
class HealthSnapshot:
    """What the served model reads of assets (one row each): the newest window's time and the
    asset's age (seconds since its first window), its last ``HEALTH_WINDOW`` aligned windows
    (times and values, oldest first, NaN before its history began) and its healthy baseline
    (per sensor, NaN until learnt)."""

    t: F64  # (m,)
    age: F64  # (m,)
    ring_t: F64  # (m, W)
    ring_x: F64  # (m, W, n)
    baseline: F64  # (m, n)

    @staticmethod
    def stack(snaps: Sequence[HealthSnapshot]) -> HealthSnapshot:
        return HealthSnapshot(
            *(np.concatenate([getattr(s, f) for s in snaps]) for f in HealthSnapshot._FIELDS)
        )

    _FIELDS = ("t", "age", "ring_t", "ring_x", "baseline")

    @staticmethod
    def column_names(sensors: Sequence[str], window: int = HEALTH_WINDOW) -> list[str]:
        """The names of ``columns``, in order."""
        ring = [f"h{k}_{name}" for k in range(window) for name in ("t", *sensors)]
        return ["t_s", "age_s", *ring, *(f"base_{s}" for s in sensors)]

    def columns(self, sensors: Sequence[str]) -> dict[str, F64]:
        """Flat columns (a training set's), ``from_columns`` reads them back."""
        out = {"t_s": self.t, "age_s": self.age}
        for k in range(self.ring_t.shape[1]):
            out[f"h{k}_t"] = self.ring_t[:, k]
            for j, s in enumerate(sensors):
                out[f"h{k}_{s}"] = self.ring_x[:, k, j]
        for j, s in enumerate(sensors):
            out[f"base_{s}"] = self.baseline[:, j]
        return out

    @staticmethod
    def from_columns(
        cols: Any, sensors: Sequence[str], window: int = HEALTH_WINDOW
    ) -> HealthSnapshot:
        """The snapshot of a table with ``columns``' columns (a DataFrame or a dict of arrays)."""

        def col(name: str) -> F64:
            return np.asarray(cols[name], dtype=np.float64)

        ring_t = np.stack([col(f"h{k}_t") for k in range(window)], axis=1)
        ring_x = np.stack(
            [np.stack([col(f"h{k}_{s}") for s in sensors], axis=1) for k in range(window)],
            axis=1,
        )
        baseline = np.stack([col(f"base_{s}") for s in sensors], axis=1)
        return HealthSnapshot(col("t_s"), col("age_s"), ring_t, ring_x, baseline)


@dataclass
class HealthHistory:
    """One asset's aligned windows as the served model reads them: the last ``window``, the
    asset's first window time (its age) and its healthy baseline (the per-sensor median of its
    first ``baseline_windows``).  Independent of any model, so a champion promoted later reads
    every asset's history as it is; the stream keeps one per asset in its shard state, and a
    training set is built by the same ``update`` over each life in the lake.

    >>> h = HealthHistory(n_sensors=1, window=3, baseline_windows=2)
    >>> [h.update(float(t), np.array([v])) for t, v in ((1, 1.0), (2, 3.0), (2, 9.0), (3, 4.0))]
    [True, True, False, True]
    >>> snap = h.snapshot()
    >>> snap.ring_x[0, :, 0].tolist(), snap.baseline.tolist(), snap.age.tolist()
    ([1.0, 3.0, 4.0], [[2.0]], [2.0])
    """

    n_sensors: int
    window: int = HEALTH_WINDOW
    baseline_windows: int = 30
    t0: float = float("nan")
    _t: list[float] = field(default_factory=list)
    _x: list[F64] = field(default_factory=list)
    _base: list[F64] = field(default_factory=list)
    baseline: F64 | None = None

    def update(self, t: float, x: F64) -> bool:
        """Take the aligned window ending at ``t`` (seconds); False for one not newer than the
        newest (a repeat) or a non-finite time."""
        if not math.isfinite(t) or (self._t and t <= self._t[-1]):
            return False
        x = np.asarray(x, dtype=np.float64)
        if math.isnan(self.t0):
            self.t0 = t
        self._t.append(t)
        self._x.append(x)
        del self._t[: -self.window], self._x[: -self.window]
        if self.baseline is None:
            self._base.append(x)
            if len(self._base) >= self.baseline_windows:
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a sensor with no value
                    self.baseline = np.nanmedian(np.stack(self._base), axis=0)
                self._base = []
        return True

    def snapshot(self) -> HealthSnapshot:
        """The history now, as one row (``HealthSnapshot.stack`` joins several assets')."""
        n, k = self.n_sensors, len(self._t)
        ring_t = np.full((1, self.window), np.nan)
        ring_x = np.full((1, self.window, n), np.nan)
        if k:
            ring_t[0, -k:] = self._t
            ring_x[0, -k:] = np.stack(self._x)
        base = self.baseline if self.baseline is not None else np.full(n, np.nan)
        t = self._t[-1] if k else np.nan
        return HealthSnapshot(
            np.array([t]), np.array([t - self.t0]), ring_t, ring_x, np.asarray(base)[None, :]
        )


def window_stats(t: F64, y: F64) -> tuple[F64, F64, F64]:
    """Mean, least-squares slope (per unit of ``t``) and sample std of each row of ``y`` over
    its finite values (rows of ``t`` their times); NaN slope and std below two values.

    >>> level, slope, std = window_stats(np.array([[0.0, 1.0, 2.0]]), np.array([[1.0, np.nan, 3.0]]))
    >>> level.tolist(), slope.tolist(), std.round(3).tolist()
    ([2.0], [1.0], [1.414])
    """
    ok = np.isfinite(y) & np.isfinite(t)
    n = ok.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ym = np.where(ok, y, 0.0).sum(axis=-1) / n
        tm = np.where(ok, t, 0.0).sum(axis=-1) / n
        dt = np.where(ok, t - tm[..., None], 0.0)
        dy = np.where(ok, y - ym[..., None], 0.0)
        sxx = (dt * dt).sum(axis=-1)
        slope = np.where((n >= 2) & (sxx > 0), (dt * dy).sum(axis=-1) / sxx, np.nan)
        std = np.where(n >= 2, np.sqrt((dy * dy).sum(axis=-1) / np.maximum(n - 1, 1)), np.nan)
    return ym, slope, std


def asymmetric_cost(d: F64, early_s: float, late_s: float) -> F64:
    """The cost of estimating a remaining life ``d`` too high (late, d > 0) or too low (early):
    ``exp(d / late_s) - 1`` and ``exp(-d / early_s) - 1`` (the PHM08 score's shape).

    >>> asymmetric_cost(np.array([-13.0, 0.0, 10.0]), 13.0, 10.0).round(3).tolist()
    [1.718, 0.0, 1.718]
    """
    d = np.asarray(d, dtype=np.float64)
    return np.where(d < 0, np.expm1(-d / early_s), np.expm1(np.minimum(d / late_s, 50.0)))


def least_cost_shift(
    predicted: F64, truth: F64, early_s: float, late_s: float, steps: int = 201
) -> float:
    """The amount to take off ``predicted`` that gives the least mean ``asymmetric_cost``
    against ``truth`` (out-of-sample predictions of calibration folds): the estimate an
    operator pays least for when a late one costs more than an early one.

    >>> rng = np.random.default_rng(0)
    >>> y = rng.uniform(0, 100, 2000)
    >>> shift = least_cost_shift(y + rng.normal(0, 10, 2000), y, 13.0, 10.0)
    >>> bool(1.0 < shift < 4.0)  # err early by a little: late errors cost more
    True
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if not predicted.size:
        return 0.0
    span = 3.0 * max(early_s, late_s)
    grid = np.linspace(-span, span, steps)
    d = predicted[None, :] - grid[:, None] - truth[None, :]
    return float(grid[np.argmin(asymmetric_cost(d, early_s, late_s).mean(axis=1))])


class Regressor(Protocol):
    """A fitted regressor (an ``xgboost.XGBRegressor``): rows of inputs in, one value each."""

    def predict(self, x: Any) -> Any: ...


@dataclass
class HealthModel:
    """The served RUL model's own numbers, around its residual regressor: how several sensors
    make one health indicator, the similarity prior, the estimate's shift and its interval.

    The **indicator** is a weighted mean of the declared sensors' feature, each a z-score
    against the training fleet (``centre``, ``scale``), signed so that wear pushes it up
    (``weights``; 0 for a sensor that does not follow remaining life).  The **prior** is the
    remaining life of the training runs whose indicator curves the asset's recent indicator
    matches best (``SimilarityPrior``); the regressor learns its residual from the inputs
    (``inputs``): the prior, the indicator now, its rolling level, slope and spread, its rise
    above the asset's own healthy baseline, each sensor's rolling level and slope and, where
    the plant says a life starts at the asset's first window, its age.  The estimate is
    ``prior + residual - shift`` (the least-cost shift of its band, 0 without a cost), capped
    at ``cap`` seconds, with the conformal ``bands``' interval."""

    sensors: list[str]
    centre: F64
    scale: F64
    weights: F64
    cap: float
    use_age: bool = False
    window: int = HEALTH_WINDOW
    prior: SimilarityPrior | None = None
    shift: list[float] = field(default_factory=list)  # per band of the conformal edges
    bands: ConformalBands | None = None

    @property
    def input_names(self) -> list[str]:
        names = ["prior_rul", "hi_now", "hi_level", "hi_slope", "hi_std", "hi_rise"]
        if self.use_age:
            names.append("age_s")
        return names + [f"level_{s}" for s in self.sensors] + [f"slope_{s}" for s in self.sensors]

    def indicator(self, x: F64) -> F64:
        """The health indicator of aligned values ``x`` (..., sensors); a missing sensor counts
        as the fleet's mean, a row with none is NaN."""
        z = (np.asarray(x, dtype=np.float64) - self.centre) / self.scale
        ok = np.isfinite(z)
        total = np.abs(self.weights).sum()
        hi = np.where(ok, z, 0.0) @ self.weights / (total if total > 0 else 1.0)
        return np.where(ok.any(axis=-1), hi, np.nan)

    def inputs(self, snap: HealthSnapshot, prior: F64 | None = None) -> dict[str, F64]:
        """The regressor's inputs (``input_names``) of each asset of ``snap`` (``prior``: the
        prior RUL when the caller has it already)."""
        z = (snap.ring_x - self.centre) / self.scale  # (m, W, n)
        dt = snap.ring_t - snap.t[:, None]  # seconds before the newest window
        hi = self.indicator(snap.ring_x)  # (m, W)
        level, slope, std = window_stats(dt, hi)
        out = {
            "prior_rul": self.prior_rul(hi) if prior is None else prior,
            "hi_now": hi[:, -1],
            "hi_level": level,
            "hi_slope": slope,
            "hi_std": std,
            "hi_rise": level - self.indicator(snap.baseline),
        }
        if self.use_age:
            out["age_s"] = snap.age
        lv, sl, _ = window_stats(np.repeat(dt[:, None, :], z.shape[2], 1), z.transpose(0, 2, 1))
        for j, s in enumerate(self.sensors):
            out[f"level_{s}"], out[f"slope_{s}"] = lv[:, j], sl[:, j]
        return out

    def prior_rul(self, hi: F64, exclude: NDArray[np.int64] | None = None) -> F64:
        """The similarity prior after each row of indicator values ``hi`` (oldest first; NaN
        before the history began, padded with its first value as the library is);
        ``exclude[i]`` is a library run left out for row i (its own, in training; -1: none)."""
        if self.prior is None:
            return np.zeros(len(hi))
        q = np.asarray(hi, dtype=np.float64)[:, -self.prior.window :].copy()
        first = np.argmax(np.isfinite(q), axis=1)
        fill = q[np.arange(len(q)), first]
        q = np.where(np.isfinite(q), q, fill[:, None])
        out = self.prior.predict_many(np.nan_to_num(q, nan=0.0), exclude)
        return np.where(np.isfinite(fill), out, self.cap)

    def estimate(self, inputs: dict[str, F64], residual: Regressor) -> F64:
        """RUL in seconds: prior + the residual regressor's correction - the band's shift."""
        x = np.column_stack([inputs[name] for name in self.input_names])
        raw = inputs["prior_rul"] + np.asarray(residual.predict(x), dtype=np.float64)
        return np.clip(raw - self.shift_of(raw), 0.0, self.cap)

    def shift_of(self, raw: F64) -> F64:
        if not self.shift:
            return np.zeros(len(raw))
        edges = self.bands.edges if self.bands is not None else ()
        return np.asarray(self.shift)[np.searchsorted(np.asarray(edges), raw, side="right")]

    def interval(self, rul: F64) -> tuple[F64, F64]:
        if self.bands is None:
            raise RuntimeError("HealthModel.interval before its bands are fitted")
        return self.bands.interval(rul)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able numbers (what travels with the registered version)."""
        return {
            "sensors": list(self.sensors),
            "centre": self.centre.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "cap": self.cap,
            "use_age": self.use_age,
            "window": self.window,
            "prior": None
            if self.prior is None
            else {
                "window": self.prior.window,
                "k": self.prior.k,
                "curves": [c.tolist() for c in self.prior.curves],
                "ruls": [r.tolist() for r in self.prior.ruls],
            },
            "shift": list(self.shift),
            "bands": None
            if self.bands is None
            else {
                "edges": list(self.bands.edges),
                "coverage": self.bands.coverage,
                "quantiles": [list(q) for q in self.bands.quantiles],
            },
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> HealthModel:
        cap = float(d["cap"])
        prior = None
        if d.get("prior"):
            p = d["prior"]
            prior = SimilarityPrior(window=int(p["window"]), k=int(p["k"]), cap=cap).index(
                [np.asarray(c) for c in p["curves"]], [np.asarray(r) for r in p["ruls"]]
            )
        bands = None
        if d.get("bands"):
            b = d["bands"]
            bands = ConformalBands(
                edges=tuple(b["edges"]),
                coverage=float(b["coverage"]),
                cap=cap,
                quantiles=[(float(lo), float(hi)) for lo, hi in b["quantiles"]],
            )
        return HealthModel(
            sensors=list(d["sensors"]),
            centre=np.asarray(d["centre"], dtype=np.float64),
            scale=np.asarray(d["scale"], dtype=np.float64),
            weights=np.asarray(d["weights"], dtype=np.float64),
            cap=cap,
            use_age=bool(d["use_age"]),
            window=int(d.get("window", HEALTH_WINDOW)),
            prior=prior,
            shift=[float(v) for v in d.get("shift", [])],
            bands=bands,
        )
