"""Numerics of self-setting anomaly detectors: a robust location and scatter (FastMCD), tail
probabilities calibrated on a warm-up with a peaks-over-threshold (generalised Pareto) tail,
p-value fusion (Cauchy combination), and the threshold that a budget of alarms per day allows.

Pure NumPy/SciPy, no state: ``dataplane.detectors`` keeps the per-asset state and calls these.

- ``mcd``: the reweighted Minimum Covariance Determinant (Rousseeuw & Van Driessen's FastMCD:
  random elemental starts, concentration steps, consistency factor, one reweighting step), so
  an anomaly filling up to half of a warm-up does not pull the normal it defines.
- ``gpd_fit``: generalised Pareto shape and scale of threshold excesses by probability-weighted
  moments (Hosking & Wallis 1987): closed form, stable on the few dozen excesses a warm-up
  gives, where maximum likelihood is not.
- ``Tails``: conformal p-values of scores (one per channel) against the sorted out-of-sample
  scores of a warm-up, continued beyond the warm-up's range by a GPD fitted to each upper tail
  (as SPOT does), so a score far outside everything seen gets a small, finite, ordered
  probability.
- ``cauchy_combine``: Liu & Xie's Cauchy combination of p-values, valid under arbitrary
  dependence between them (the members of an ensemble watch the same sensors).
- ``alarm_threshold``: the level that a warm-up's alarm statistic crosses, as declustered
  peaks over a threshold, at a given rate per day (extreme-value extrapolation from the
  warm-up's clusters of high values to a rate an operator accepts).
- ``PageHinkley``: Page's test for a sustained rise of a series' mean (River's
  ``drift.PageHinkley`` in mode ``up``, here because importing River pulls in scikit-learn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "robust_scale",
    "Mcd",
    "mcd",
    "gpd_fit",
    "Tails",
    "cauchy_combine",
    "cauchy_terms",
    "alarm_threshold",
    "extremal_index",
    "PageHinkley",
    "principal_directions",
    "cusum_path",
    "ewma",
    "smooth",
    "median3",
]

SHAPE_BOUNDS = (0.0, 0.5)
"""The GPD shape a tail may take.  Never negative: a bounded tail claimed from a few dozen
excesses would make anything past its end impossible (p = 0); at most 0.5 (finite variance)."""


def robust_scale(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per column, the normal-consistent interquartile scale (IQR / 1.349), falling back to the
    standard deviation and then to 1 where a column barely moves (a quantised channel).

    >>> robust_scale(np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])).round(3)
    array([1.112, 1.   ])
    """
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    std = x.std(axis=0)
    scale = np.where(scale > 1e-9 * np.maximum(np.abs(np.median(x, axis=0)), 1.0), scale, std)
    return np.where(scale > 0, scale, 1.0)


@dataclass(frozen=True)
class Mcd:
    """A robust fit: ``location``, ``covariance`` and which rows it kept (``support``)."""

    location: NDArray[np.float64]
    covariance: NDArray[np.float64]
    support: NDArray[np.bool_]


def _sq_mahalanobis(
    x: NDArray[np.float64], loc: NDArray[np.float64], cov: NDArray[np.float64]
) -> NDArray[np.float64]:
    d = x - loc
    return np.einsum("ij,ij->i", d @ np.linalg.pinv(cov, hermitian=True), d)


def _mean_cov(
    x: NDArray[np.float64], floor: NDArray[np.float64], ridge: float = 0.0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    loc = x.mean(axis=0)
    d = x - loc
    cov = d.T @ d / max(len(x) - 1, 1) + ridge * np.eye(x.shape[1])
    cov[np.diag_indices_from(cov)] = np.maximum(np.diag(cov), floor)
    return loc, cov


def mcd(
    x: NDArray[np.float64],
    floor: NDArray[np.float64] | None = None,
    support_fraction: float = 0.75,
    starts: int = 30,
    seed: int = 0,
    ridge: float = 0.0,
) -> Mcd:
    """The reweighted Minimum Covariance Determinant of the rows of ``x`` (n x p).

    FastMCD: ``starts`` random (p + 1)-subsets (deterministic in ``seed``), each grown to the
    h = ``support_fraction`` x n rows nearest to it (at least (n + p + 1) / 2, the most robust choice)
    and concentrated twice; the ten best concentrated to convergence; the smallest determinant
    wins.  A support of 3/4 withstands a quarter of the rows being anomalous while keeping most
    of a warm-up whose normal wanders (the half-sample of a time series that drifts is one
    stretch of it, and the rest would look outlying).  Its covariance is scaled to be consistent at
    the normal, then the rows within the 97.5 % chi-square distance are refitted (the
    reweighting step).  ``floor`` is a per-column variance floor (a sensor's quantisation), which
    also keeps a column that sat still from making the scatter singular; ``ridge`` is added to
    every direction (columns that are exact functions of others leave singular directions).  With fewer than
    2 (p + 1) rows: the mean and covariance of all rows.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 2))
    >>> x[:90] += 8.0  # 30 % outliers
    >>> fit = mcd(x, support_fraction=0.5)
    >>> bool(np.all(np.abs(fit.location) < 0.3)), int(fit.support[:90].sum())
    (True, 0)
    """
    from scipy import stats  # at a fit only: importing the stream's core stays light

    x = np.asarray(x, np.float64)
    n, p = x.shape
    floor = np.zeros(p) if floor is None else np.asarray(floor, np.float64)
    if n < 2 * (p + 1):
        loc, cov = _mean_cov(x, floor + 1e-12, ridge)
        return Mcd(loc, cov, np.ones(n, bool))
    h = min(max((n + p + 1) // 2, int(support_fraction * n)), n)
    rng = np.random.default_rng(seed)
    floor = floor + 1e-9

    def concentrate(idx: NDArray[np.intp], steps: int) -> tuple[float, NDArray[np.intp]]:
        for _ in range(steps):
            loc, cov = _mean_cov(x[idx], floor, ridge)
            new = np.argpartition(_sq_mahalanobis(x, loc, cov), h - 1)[:h]
            if np.array_equal(np.sort(new), np.sort(idx)):
                break
            idx = new
        return float(np.linalg.slogdet(_mean_cov(x[idx], floor, ridge)[1])[1]), idx

    trials = []
    for _ in range(starts):
        idx = rng.choice(n, p + 1, replace=False)
        loc, cov = _mean_cov(x[idx], floor, ridge)
        grown = np.argpartition(_sq_mahalanobis(x, loc, cov), h - 1)[:h]
        trials.append(concentrate(grown, 2))
    trials.sort(key=lambda t: t[0])
    best = min((concentrate(idx, 30) for _, idx in trials[:10]), key=lambda t: t[0])[1]
    loc, cov = _mean_cov(x[best], floor, ridge)
    d2 = _sq_mahalanobis(x, loc, cov)
    cov = cov * np.median(d2) / stats.chi2.ppf(0.5, p)  # consistency at the normal
    d2 = _sq_mahalanobis(x, loc, cov)
    support = d2 <= stats.chi2.ppf(0.975, p)
    if support.sum() <= p:
        support = np.zeros(n, bool)
        support[best] = True
    loc, cov = _mean_cov(x[support], floor, ridge)
    # the reweighted scatter of a normal sample cut at the 97.5 % chi-square point is too small
    # by the truncated second moment: scale it back (Croux & Haesbroeck's correction)
    q = stats.chi2.ppf(0.975, p)
    cov = cov * 0.975 / stats.chi2.cdf(q, p + 2)
    return Mcd(loc, cov, support)


def gpd_fit(excess: NDArray[np.float64]) -> tuple[float, float]:
    """Generalised Pareto ``(shape, scale)`` of positive threshold excesses, by
    probability-weighted moments, the shape kept within ``SHAPE_BOUNDS`` (and the scale refitted
    to the excesses' mean for a clipped shape).  Exponential (shape 0) for fewer than 5.

    >>> from scipy import stats
    >>> y = stats.genpareto.rvs(0.2, scale=2.0, size=4000, random_state=1)
    >>> shape, scale = gpd_fit(y)
    >>> round(shape, 1), round(scale, 1)
    (0.2, 2.0)
    """
    y = np.sort(np.asarray(excess, np.float64))
    y = y[y > 0]
    m = y.size
    if m == 0:
        return 0.0, 1e-9
    mean = float(y.mean())
    if m < 5:
        return 0.0, mean
    # a_1 = E[X (1 - F(X))], with plotting positions (i - 0.35) / m
    a0, a1 = mean, float(np.mean(y * (1.0 - (np.arange(1, m + 1) - 0.35) / m)))
    if a0 - 2 * a1 <= 0:
        return SHAPE_BOUNDS[1], mean * (1 - SHAPE_BOUNDS[1])
    k = a0 / (a0 - 2 * a1) - 2.0  # Hosking & Wallis' k = -shape
    shape = -k
    clipped = min(max(shape, SHAPE_BOUNDS[0]), SHAPE_BOUNDS[1])
    if clipped != shape:  # keep the mean excess: E[Y] = scale / (1 - shape)
        return clipped, mean * (1 - clipped)
    return shape, 2.0 * a0 * a1 / (a0 - 2 * a1)


def _gpd_isf(q: float, shape: float, scale: float) -> float:
    if q >= 1.0:
        return 0.0
    if shape < 1e-9:
        return -scale * math.log(q)
    return scale / shape * (q ** (-shape) - 1.0)


GRID = np.linspace(0.5, 0.9, 41)
"""Levels at which a calibration's bulk is kept (its quantiles): below the median a p-value is
at least 1/2, where the fusion caps it anyway; above ``GRID[-1]`` the GPD tail takes over."""


@dataclass(frozen=True)
class Tails:
    """Tail probabilities of one score per channel, each against its own warm-up scores.

    Conformal: ``p = (1 + #{calibration >= s}) / (n + 1)`` in the bulk (read off the
    calibration's quantiles at ``GRID``, to a hundredth), and never less than ``1 / (n + 1)``
    for a score within the calibration's range (the warm-up saw one that high; a fitted tail
    may not call it rarer).  Above the ``GRID[-1]`` quantile ``u`` of a channel's calibration, a
    GPD fitted to its excesses over ``u`` continues it: ``p = (1 + #{calibration > u}) / (n + 1)
    * S_gpd(s - u)``, so a score beyond every warm-up score still gets a probability, ordered by
    how far out it is (SPOT's tail).  Vectorised over channels (and over rows of scores).

    >>> rng = np.random.default_rng(0)
    >>> tails = Tails.fit(rng.exponential(size=(400, 2)))
    >>> p = tails.p_values(np.array([0.0, 6.0]))
    >>> float(p[0]) >= 0.5, 1e-4 < float(p[1]) < 0.01  # below the median: at least 1/2
    (True, True)
    """

    grid: NDArray[np.float64]  # (channels, len(GRID)): the calibration's quantiles
    u: NDArray[np.float64]  # the GRID[-1] quantile, where the tail begins
    top: NDArray[np.float64]  # the tail probability at u
    shape: NDArray[np.float64]
    scale: NDArray[np.float64]
    highest: NDArray[np.float64]  # the calibration's largest score
    n: int

    @classmethod
    def fit(cls, scores: NDArray[np.float64]) -> Tails:
        """From warm-up ``scores`` (n rows x channels; a 1-D array is one channel)."""
        x = np.asarray(scores, np.float64)
        x = x[:, None] if x.ndim == 1 else x
        n, m = x.shape
        if not n:
            inf = np.full(m, np.inf)
            return cls(
                np.full((m, GRID.size), np.inf), inf, np.ones(m), np.zeros(m), np.ones(m), inf, 0
            )
        cal = np.sort(x.T, axis=1)
        grid = np.quantile(cal, GRID, axis=1).T
        u = grid[:, -1]
        shape, scale, top = np.zeros(m), np.ones(m), np.ones(m)
        for j in range(m):
            excess = cal[j][cal[j] > u[j]] - u[j]
            shape[j], scale[j] = gpd_fit(excess)
            # a tail no wider than a tenth of the bulk's interquartile range around u would
            # claim too much from too little
            iqr = float(np.quantile(cal[j], 0.75) - np.quantile(cal[j], 0.25))
            scale[j] = max(scale[j], 1e-9, 0.1 * iqr)
            top[j] = (1 + excess.size) / (n + 1)
        return cls(grid, u, top, shape, scale, cal[:, -1].copy(), n)

    @classmethod
    def stack(cls, parts: list[Tails]) -> Tails:
        """Several calibrations of the same warm-up windows as one (their channels in turn)."""
        u, top, shape, scale, highest = (
            np.concatenate([getattr(t, f) for t in parts])
            for f in ("u", "top", "shape", "scale", "highest")
        )
        return cls(
            np.concatenate([t.grid for t in parts]), u, top, shape, scale, highest, parts[0].n
        )

    def p_values(self, s: NDArray[np.float64]) -> NDArray[np.float64]:
        """The tail probability of each channel's score (``s``: channels, or rows x channels)."""
        s = np.asarray(s, np.float64)
        n = self.n
        above = (self.grid >= s[..., None]).sum(axis=-1)  # quantiles of the bulk above s
        frac = (1.0 - GRID[-1]) + above * ((GRID[-1] - GRID[0]) / (GRID.size - 1))
        bulk = np.where(above > 0, (1.0 + n * frac) / (n + 1.0), self.top)
        out = s > self.u
        if not out.any():  # the common case: every score in its bulk
            return bulk
        y = np.maximum(s - self.u, 0.0)
        flat = self.shape < 1e-9
        safe = np.where(flat, 1.0, self.shape)
        sf = np.where(flat, np.exp(-y / self.scale), (1.0 + safe * y / self.scale) ** (-1.0 / safe))
        tail = self.top * sf
        floor = np.where(s <= self.highest, 1.0 / (n + 1.0), 0.0)
        return np.where(out, np.maximum(tail, floor), bulk)

    def score_at(self, p: float) -> NDArray[np.float64]:
        """Each channel's score whose tail probability is ``p`` (below its ``top``)."""
        q = np.minimum(p / self.top, 1.0)
        flat = self.shape < 1e-9
        safe = np.where(flat, 1.0, self.shape)
        excess = np.where(flat, -self.scale * np.log(q), self.scale / safe * (q ** (-safe) - 1.0))
        return self.u + excess


def cauchy_terms(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each p-value's term of the Cauchy combination, ``tan((1/2 - p) pi)``, with p capped at
    1/2: a member that sees nothing adds no evidence, instead of vetoing the others (an uncapped
    p-value near 1 contributes an unbounded negative term)."""
    q = np.clip(p, 1e-300, 0.5)
    # tan((0.5 - q) pi) = 1 / tan(q pi): the second form keeps precision for tiny q
    return np.where(
        q < 1e-6, 1.0 / np.tan(np.maximum(q, 1e-300) * math.pi), np.tan((0.5 - q) * math.pi)
    )


def cauchy_combine(p: NDArray[np.float64], weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """One p-value from several (the last axis of ``p``), by the Cauchy combination test with
    ``weights`` (summing to 1): valid whatever the dependence between them, and dominated by
    the smallest when one is very small (each capped at 1/2, ``cauchy_terms``).

    >>> w = np.array([0.5, 0.5])
    >>> float(cauchy_combine(np.array([0.5, 0.9]), w)), float(cauchy_combine(np.array([1e-6, 0.9]), w)) < 1e-5
    (0.5, True)
    """
    return np.arctan2(1.0, cauchy_terms(p) @ weights) / math.pi


def extremal_index(above: NDArray[np.bool_]) -> float:
    """Ferro & Segers' intervals estimator of the extremal index of a series' exceedances
    (``above``: which steps exceed): 1 for isolated exceedances, 1 / (mean cluster size) for
    exceedances that come in clusters.

    >>> x = np.random.default_rng(0).exponential(size=4000)
    >>> extremal_index(x > 3.0), round(extremal_index(np.repeat(x, 5) > 3.0), 1)  # clusters of 5
    (1.0, 0.2)
    """
    t = np.diff(np.flatnonzero(above)).astype(np.float64)
    if t.size < 2:
        return 1.0
    if t.max() <= 2:
        theta = 2 * t.sum() ** 2 / (t.size * (t * t).sum())
    else:
        theta = 2 * (t - 1).sum() ** 2 / (t.size * ((t - 1) * (t - 2)).sum())
    return float(min(1.0, theta))


def alarm_threshold(
    a: NDArray[np.float64], step_s: float, per_day: float, start_quantile: float = 0.8
) -> float:
    """The level that the alarm statistic ``a`` (one value per step of ``step_s`` seconds, from a
    warm-up) crosses ``per_day`` times a day, as clusters of high values.

    Peaks over threshold: the excesses of ``a`` over its ``start_quantile`` fitted by an
    exponential tail (GPD of shape 0), the rate of exceedances times the extremal index (``extremal_index``: exceedances of a
    smoothed series come in clusters, and an alarm is a cluster) extrapolated down to
    ``per_day``; as SPOT sets its alarm level from a probability, with clusters counted as one.

    >>> a = np.random.default_rng(0).exponential(size=4000)  # independent steps of 1 s
    >>> level = alarm_threshold(a, 1.0, 86400.0 / 1000)  # one in 1000 steps
    >>> bool(6.0 < level < 8.0)  # exp(-6.9) = 1/1000
    True
    """
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    if not a.size:
        return math.inf
    t0 = float(np.quantile(a, start_quantile))
    above = a > t0
    if not above.any():
        return t0
    rate0 = extremal_index(above) * above.sum() / (a.size * step_s) * 86400.0  # clusters/day
    if per_day >= rate0:
        return t0
    # an exponential tail (GPD shape 0): a surprise -log10 p has one where p is calibrated, and
    # so has a weighted average of surprises; a shape estimated from a warm-up's few dozen
    # excesses would swing the extrapolation to a rate hundreds of times rarer
    scale = float(np.mean(a[above] - t0))
    return t0 + _gpd_isf(per_day / rate0, 0.0, max(scale, 1e-9))


def principal_directions(cov: NDArray[np.float64], share: float) -> NDArray[np.float64]:
    """The eigenvectors of ``cov`` that hold ``share`` of its variance (p x k), the largest
    first; when every direction is needed, none is left out (the PCA residual is empty)."""
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    held = np.cumsum(values) / max(float(values.sum()), 1e-300)
    k = int(np.searchsorted(held, share) + 1)
    return vectors[:, : min(k, len(values))]


def cusum_path(e: NDArray[np.float64], k: NDArray[np.float64]) -> NDArray[np.float64]:
    """The two-sided CUSUM of each column of ``e`` (allowance ``k`` per column), per row the
    larger side of each column.

    >>> cusum_path(np.array([[0.0], [2.0], [2.0], [-3.0]]), np.array([1.0])).ravel().tolist()
    [0.0, 1.0, 2.0, 2.0]
    """
    up, down = np.zeros(e.shape[1]), np.zeros(e.shape[1])
    out = np.empty_like(e)
    for i, row in enumerate(e):
        up = np.maximum(up + row - k, 0.0)
        down = np.maximum(down - row - k, 0.0)
        out[i] = np.maximum(up, down)
    return out


def median3(a: float, b: float, c: float) -> float:
    return max(min(a, b), min(max(a, b), c))


def ewma(v: NDArray[np.float64], alpha: float) -> NDArray[np.float64]:
    """The EWMA of ``v`` along its first axis, from zero."""
    out = np.empty_like(v)
    level = np.zeros(v.shape[1:])
    for i, x in enumerate(v):
        level = level + alpha * (x - level)
        out[i] = level
    return out


def smooth(v: NDArray[np.float64], alpha: float) -> NDArray[np.float64]:
    """The running median of three, then an EWMA: a window's score as
    ``dataplane.detectors.Ensemble`` smooths it, over a whole series.

    >>> smooth(np.array([0.0, 9.0, 0.0, 0.0]), 0.5).tolist()  # one spike alone moves nothing
    [0.0, 0.0, 0.0, 0.0]
    """
    padded = np.concatenate([np.zeros(2), v])
    med3 = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    return ewma(med3, alpha)


class PageHinkley:
    """Page-Hinkley test for a rise in the mean: the cumulative excess of each value over the
    running mean plus ``delta`` (faded by ``alpha``), against its minimum so far; a drift when
    it exceeds ``threshold`` after ``min_instances`` values, after which the test starts afresh
    (as River's ``drift.PageHinkley(mode="up")``).

    >>> ph, found = PageHinkley(min_instances=30, delta=0.5, threshold=25.0), []
    >>> for i in range(200):
    ...     ph.update(0.0 if i < 100 else 3.0)
    ...     found += [i] if ph.drift_detected else []
    >>> found[0]  # 100 + 25 / (3 - mean - 0.5), within a dozen values of the rise
    110
    """

    __slots__ = (
        "min_instances",
        "delta",
        "threshold",
        "alpha",
        "n",
        "mean",
        "total",
        "lowest",
        "drift_detected",
    )

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
    ):
        self.min_instances, self.delta, self.threshold, self.alpha = (
            min_instances,
            delta,
            threshold,
            alpha,
        )
        self.drift_detected = False
        self._reset()

    def _reset(self) -> None:
        self.n, self.mean, self.total, self.lowest = 0, 0.0, 0.0, math.inf

    def __getstate__(self) -> dict[str, float | int | bool]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict[str, float | int | bool]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def update(self, x: float) -> None:
        if self.drift_detected:
            self.drift_detected = False
            self._reset()
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.total = self.alpha * self.total + x - self.mean - self.delta
        self.lowest = min(self.lowest, self.total)
        self.drift_detected = (
            self.n >= self.min_instances and self.total - self.lowest > self.threshold
        )
