"""The self-setting anomaly detector of one asset's channel: an ensemble of online detectors
over the channel's vector (the process windows of an asset's scalar sensors, or a vibration
frame's features), each turned into tail probabilities calibrated on the asset's own warm-up,
fused into one surprise score whose alarm level follows a budget of false alarms per day.

Members, on the vector standardised by the warm-up's median and robust spread:

- ``distance``: the squared Mahalanobis distance from a robust normal (FastMCD,
  ``physics.detectors.mcd``): unusual combinations, such as flow without pressure;
- ``spe``: the squared prediction error of a PCA of that normal (the Q statistic of T^2 + Q
  and MSET-style monitors): what the principal directions of normal variation cannot explain,
  i.e. correlations between sensors that break while each stays in its range;
- ``shift``, per channel: its deviation from the normal, in its own warm-up spread (a level or
  slope far out on one sensor, which a distance over all sensors dilutes);
- ``cusum``, per channel: a two-sided CUSUM of that deviation (its allowance what the channel's
  normal reaches one window in 20), capped at its one-in-a-million warm-up value: small
  sustained shifts, found by accumulation.

Each member (and each channel of the per-channel members) gets its own conformal p-value
against its out-of-sample warm-up scores (the warm-up cut into ``folds`` blocks, each scored by
the normal of the others with a purge of one window length around it), continued past the
warm-up's range by a generalised Pareto tail (``physics.detectors.Tails``), so one channel that
wandered in the warm-up does not blunt the others.  They are fused by the Cauchy combination
(valid under their dependence), each family weighing the same; the channel's score is
``-log10`` of the fused p-value, smoothed (the median of the last three windows, so that one
window alone moves nothing, then an EWMA).  Its alarm level for a budget of false
alarms per day comes from the warm-up's own smoothed scores by peaks over threshold
(``physics.detectors.alarm_threshold``).  Whether an alert may close is judged on the members
that say where the asset is *now* (``Verdict.state``: all but the CUSUM, which remembers how it
got there), while no CUSUM is still accumulating (a small shift that goes on); the CUSUMs
restart when an alert closes.

The warm-up is judged before it is used: if the normal is still moving at its end (its last
block unlike the others, or a channel still heading away), it is extended one block at a
time up to ``warmup_max`` windows, each extension reported in ``events`` (``drift_events``
rows, by the caller).  The judgement and, once settled, the fit look at the latest ``warmup``
windows only: a normal that moved and settled is the one the asset is in now, not a mixture of
where it was and where it went (a robust fit of such a mixture keeps its majority, the old
state, and every window after the warm-up would then lie outside it: an alert that opens as
scoring starts and never closes).  A normal still moving at the bound is fitted on every
window (their majority), and what departs from it asks for a decision.  After the warm-up the detector follows slow normal drift over the windows the
caller lets it learn from (no open alert and a fused p-value not small, or, while an alert is
open, a window whose state members find it as usual as most warm-up windows): its mean at a
constant pace (a time constant of half a warm-up), its covariance over ``memory`` windows.
``rebaseline`` learns the normal again (a technician declared the new state normal operation,
or a repair).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from dataplane.views import METADATA, choose_views
from physics.detectors import (
    Tails,
    alarm_threshold,
    cauchy_combine,
    cauchy_terms,
    cusum_path,
    mcd,
    median3,
    principal_directions,
    robust_scale,
    smooth,
)

__all__ = ["Ensemble", "Verdict", "MEMBERS", "METADATA", "MOVING"]

MEMBERS = ("distance", "spe", "shift", "cusum")
"""The member families; all but the last say where the asset is now."""
TRAIL = 10
"""Windows over which a CUSUM that has not grown counts as no longer accumulating."""
RIDGE = 1e-2
"""Variance added to every standardised direction: no combination of channels is trusted to be
tighter than this (a tenth of a spread).  Without it, features that are exact functions of
others (band energies that add up to the RMS, a crest factor that is peak over RMS) leave
directions of near-zero variance in which rounding noise would look like a broken relation."""
PCA_VARIANCE = 0.9
"""Share of the normal's variance the principal subspace keeps; the rest is the residual."""
MOVING = 2.0
"""How far (``Ensemble._moving``) a warm-up's end may be from settled before it is extended."""


@dataclass(frozen=True)
class Verdict:
    """One window's evidence: ``score`` (the smoothed fused surprise, ``-log10 p``), the
    unsmoothed ``raw`` one, ``state``, the smoothed surprise of the members that say where the
    asset is now (all but the CUSUM), whether a CUSUM is still ``accumulating`` (its largest
    value grew over the last ``TRAIL`` windows: a small shift is still going on), and ``now``,
    the unsmoothed state surprise of this window alone."""

    score: float
    raw: float
    state: float
    accumulating: bool = False
    now: float = 0.0


@dataclass
class _Alarm:
    """The warm-up's smoothed scores, kept to set the alarm level at any budget."""

    series: NDArray[np.float64]
    step_s: float
    calm: float
    apart: int = 1  # windows between independent ones (a window's overlap with the next)
    cache: dict[float, float] = field(default_factory=dict)

    def level(self, per_day: float) -> float:
        """Peaks over threshold on the warm-up's alarm statistic, and never below what
        calibrated p-values would give: the median of three windows is only high when two of
        them are, so with ``w`` independent windows a day a level ``L`` is crossed about
        ``3 w 10^(-2 L)`` times a day; a warm-up of minutes may not promise a rarer tail than
        that floor."""
        found = self.cache.get(per_day)
        if found is None:
            independent = 86400.0 / (self.step_s * self.apart)
            floor = 0.5 * math.log10(max(3.0 * independent / per_day, 1.0))
            found = self.cache[per_day] = max(
                alarm_threshold(self.series, self.step_s, per_day), floor
            )
        return found


class Ensemble:
    """See the module docstring.  ``observe(x, end_us)`` takes one window (a dict of
    ``<sensor>:<view>`` or feature name -> value, plus sensor metadata) and returns its
    ``Verdict`` (None while warming up); ``learn()`` folds the last observed window into the
    normal; ``alarm_level(per_day)`` and ``calm_level`` are the alert hysteresis levels.

    >>> import random
    >>> rng, det = random.Random(0), Ensemble(warmup=300)
    >>> for t in range(300):
    ...     a = rng.gauss(0, 1)
    ...     _ = det.observe({"flow": a, "pressure": a + rng.gauss(0, 0.1)}, t * 1_000_000)
    >>> normal = det.observe({"flow": 1.0, "pressure": 1.0}, 300_000_000)
    >>> for t in range(301, 304):  # flow without pressure, three windows in a row
    ...     broken = det.observe({"flow": 1.0, "pressure": -1.0}, t * 1_000_000)
    >>> normal.score < det.calm_level < det.alarm_level(1.0) < broken.score
    True
    >>> det.contributions(1)[0][0]  # what carried the broken window
    'distance:pressure'
    """

    def __init__(
        self,
        warmup: int = 400,
        warmup_max: int | None = None,
        folds: int = 5,
        memory: int | None = None,
        smoothing: float = 0.3,
        refresh: int = 20,
    ):
        self.warmup, self.folds, self.refresh, self.smoothing = warmup, folds, refresh, smoothing
        self.warmup_max = warmup_max if warmup_max is not None else warmup + warmup // 2
        self.memory = memory if memory is not None else 10 * warmup
        # the warm-up's windows, each as (its channel names, their values): a shared tuple and
        # a packed array take a fifth of a dict of floats (3.0 against 0.66 KB for 60
        # channels: 500 assets warming up held 2.6 GB as dicts)
        self.buffer: list[tuple[tuple[str, ...], array[float]]] | None = []
        self.ends: list[int] = []
        self.target = warmup  # windows the warm-up takes (grows when extended)
        self.events: list[tuple[int, str, float, str]] = []  # (end_us, subject, statistic, words)
        self.views: dict[str, str] = {}
        self.keys: list[str] = []
        self.tails: tuple[Tails, ...] = ()
        self.weights = np.zeros(0)
        self.alarm: _Alarm | None = None
        self.center = self.scale = self.floor = self.mean = np.zeros(0)
        self.allowance = self.cap = np.zeros(0)
        self.cov = np.zeros((0, 0))
        self.cusum = np.zeros((2, 0))
        self.smoothed = self.state = 0.0
        self.recent: tuple[tuple[float, float], ...] = ((0.0, 0.0),) * 3
        self.trail: tuple[float, ...] = (0.0,) * TRAIL
        self.learnt = self.normal = 0
        self.purge = 1
        self._stale = True
        self._last: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None

    # -- state -------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.buffer is None

    @property
    def calm_level(self) -> float:
        """The state surprise below which a window is back within the asset's normal (the
        90 % point of the warm-up's)."""
        return self.alarm.calm if self.alarm is not None else math.inf

    def alarm_level(self, per_day: float) -> float:
        """The smoothed score that normal windows of this asset exceed, as a cluster of high
        values, ``per_day`` times a day (inf before the warm-up ends)."""
        return self.alarm.level(per_day) if self.alarm is not None else math.inf

    def rebaseline(self) -> None:
        """Forget the normal and learn it again from the next ``warmup`` windows."""
        events = self.events
        self.__init__(  # type: ignore[misc]
            self.warmup, self.warmup_max, self.folds, self.memory, self.smoothing, self.refresh
        )
        self.events = events

    def restart_changepoints(self) -> None:
        """Start the CUSUMs afresh (after an alert closes: the change they found is over), and
        the smoothed score from the state members' (it no longer carries their memory)."""
        self.cusum[:] = 0.0
        self.smoothed = self.state

    # -- the stream's calls ------------------------------------------------------------------
    def observe(self, x: dict[str, float], end_us: int) -> Verdict | None:
        if self.buffer is not None:
            names = tuple(x)
            last = self.buffer[-1] if self.buffer else None
            if isinstance(last, tuple) and last[0] == names:
                names = last[0]  # one tuple for the run of windows that share it
            self.buffer.append((names, array("d", x.values())))
            self.ends.append(end_us)
            if len(self.buffer) >= self.target:
                self._end_warmup()
            return None
        if not self.keys:
            return Verdict(0.0, 0.0, 0.0)
        v = np.fromiter((x.get(k, math.nan) for k in self.keys), np.float64, len(self.keys))
        z = (v - self.center) / self.scale
        return self._score(np.where(np.isfinite(z), z, self.mean))

    def learn(self) -> None:
        """Fold the last observed window into the running normal."""
        if self._last is None or not self.keys:
            return
        d = self._last[0]
        # the level follows at a constant pace (a time constant of half a warm-up), the
        # covariance, which is slower to estimate and to change, over ``memory`` windows
        self.mean = self.mean + d / max(self.warmup // 2, 1)
        rate = 1.0 / min(self.memory, self.normal + self.learnt + 1)
        self.cov = (1.0 - rate) * (self.cov + rate * np.outer(d, d))
        self.learnt += 1
        if self.learnt % self.refresh == 0:
            self._stale = True

    def contributions(self, k: int = 3) -> list[tuple[str, float]]:
        """What carried the last window: up to ``k`` ``(member:channel, surprise)`` pairs, the
        strongest first (a multivariate member names the channel that adds most to it)."""
        if self._last is None or not self.keys:
            return []
        d, _ = self._last
        p = self._p
        n = len(self.keys)
        named = [
            f"distance:{self.keys[int(np.argmax(d * (self._precision @ d)))]}",
            f"spe:{self.keys[int(np.argmax((d - self._basis @ (self._basis.T @ d)) ** 2))]}",
            *(f"{member}:{key}" for member in MEMBERS[2:] for key in self.keys),
        ]
        order = np.argsort(p, kind="stable")[:k]
        assert len(named) == 2 + 2 * n
        return [(named[i], float(-math.log10(max(p[i], 1e-300)))) for i in order.tolist()]

    # -- scoring -----------------------------------------------------------------------------
    def _refresh(self) -> None:
        self._precision = np.linalg.inv(self.cov + RIDGE * np.eye(len(self.cov)))
        self._basis = principal_directions(self.cov, PCA_VARIANCE)
        self._inv_sd = 1.0 / np.sqrt(np.maximum(np.diag(self.cov), 1e-12))
        self._stale = False

    def _p_values(self, d: NDArray[np.float64], e: NDArray[np.float64]) -> NDArray[np.float64]:
        r = d - self._basis @ (self._basis.T @ d)
        scores = self._scores
        scores[0] = d @ self._precision @ d
        scores[1] = r @ r
        n = len(self.keys)
        np.abs(e, out=scores[2 : 2 + n])
        np.maximum(self.cusum[0], self.cusum[1], out=scores[2 + n :])
        return self._all.p_values(scores)

    def _score(self, z: NDArray[np.float64]) -> Verdict:
        if self._stale:
            self._refresh()
        d = z - self.mean
        e = d * self._inv_sd
        up, down = self.cusum
        up += e - self.allowance
        down -= e + self.allowance
        np.minimum(np.maximum(self.cusum, 0.0, out=self.cusum), self.cap, out=self.cusum)
        p = self._p_values(d, e)
        t = cauchy_terms(p)  # the fused and the state p-value share the terms
        raw = _surprise(math.atan2(1.0, float(t @ self.weights)) / math.pi)
        now = _surprise(math.atan2(1.0, float(t[: self._n_state] @ self._state_weights)) / math.pi)
        # the median of the last three windows, then an EWMA: one window alone (a frame's
        # spike) moves neither score; two in three do
        (r1, n1), (r2, n2) = self.recent[1:]
        self.recent = ((r1, n1), (r2, n2), (raw, now))
        self.smoothed += self.smoothing * (median3(r1, r2, raw) - self.smoothed)
        self.state += self.smoothing * (median3(n1, n2, now) - self.state)
        self._last, self._p = (d, e), p
        top = float(self.cusum.max())
        self.trail = (*self.trail[1:], top)
        return Verdict(self.smoothed, raw, self.state, top > min(self.trail) + 1e-9, now)

    def deviations(self, names: Sequence[str]) -> dict[str, float]:
        """The last window's deviation of each of ``names`` (watched keys) from the normal, in
        its normal spread."""
        if self._last is None or not self.keys:
            return {}
        e = self._last[1]
        where = self.__dict__.get("_where")
        if where is None or len(where) != len(self.keys):
            where = self.__dict__["_where"] = {k: i for i, k in enumerate(self.keys)}
        return {n: float(e[where[n]]) for n in names if n in where}

    # -- the warm-up -------------------------------------------------------------------------
    def _end_warmup(self) -> None:
        assert self.buffer is not None
        # a snapshot from before the packed buffer holds dicts
        rows = [w if isinstance(w, dict) else dict(zip(*w, strict=True)) for w in self.buffer]
        if not self.keys:
            self.views, self.keys, self.floor, self.purge = choose_views(rows)
        x = np.array([[r.get(k, math.nan) for k in self.keys] for r in rows], np.float64)
        usable = np.isfinite(x).all(axis=1) if x.size else np.zeros(len(rows), bool)
        if usable.sum() < max(4, 2 * self.folds) or not self.keys:
            self.buffer, self.keys = None, []  # nothing to learn from: never scores
            return
        x, ends = x[usable], np.asarray(self.ends, np.int64)[usable]
        # judged on the latest ``warmup`` windows: once extended, the older ones are where the
        # asset was
        moving = self._moving(x[-self.warmup :])
        if moving > MOVING and self.target < self.warmup_max:
            self.target = min(self.target + max(self.warmup // self.folds, 1), self.warmup_max)
            self.events.append(
                (
                    int(ends[-1]),
                    "warmup_extended",
                    moving,
                    f"normal still moving at the end of the warm-up ({moving:.1f} times what a "
                    f"settled one shows): learning for {self.target} windows instead of "
                    f"{len(rows)}, from the latest {self.warmup}",
                )
            )
            return
        if moving > MOVING:
            self.events.append(
                (
                    int(ends[-1]),
                    "warmup_unsettled",
                    moving,
                    f"normal still moving after {len(rows)} windows, the declared bound "
                    f"({moving:.1f} times what a settled one shows): scoring against all of "
                    "them anyway",
                )
            )
            # no settled stretch to learn: the robust fit of every window keeps their
            # majority, and what departs from it is a change that asks for a decision
            self._fit(x, ends)
            return
        # settled: the normal is the one it settled in (the latest ``warmup`` windows)
        self._fit(x[-self.warmup :], ends[-self.warmup :])

    def _standardise(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        self.center = np.median(x, axis=0)
        self.scale = np.maximum(robust_scale(x), self.floor)
        return (x - self.center) / self.scale

    @property
    def _least(self) -> NDArray[np.float64]:
        return (self.floor / self.scale) ** 2  # the variance floor, standardised

    def _blocks(self, n: int) -> list[tuple[NDArray[np.bool_], NDArray[np.bool_]]]:
        """Per block of the warm-up: (the block, the windows its normal is fitted on: all but
        the block and a purge of one window length either side, which share its readings)."""
        block = np.arange(n) * self.folds // n
        order = np.arange(n)
        out = []
        for k in range(self.folds):
            held = block == k
            idx = np.flatnonzero(held)
            near = (order >= idx[0] - self.purge) & (order <= idx[-1] + self.purge)
            out.append((held, ~near))
        return out

    def _moving(self, x: NDArray[np.float64]) -> float:
        """Whether the normal is still moving at the warm-up's end, as the larger of two ratios
        (each 1 for a settled normal, ``MOVING`` or more for one still moving):

        - *apart*: the median distance of the last block from the normal of the other blocks,
          over the median of the other blocks' distances from theirs (a last stretch unlike
          the rest);
        - *heading*: how many of its warm-up spreads a watched channel moves within a block at
          the pace of the warm-up's second half (robust, Theil-Sen slope), the largest."""
        z = self._standardise(x)
        med = []
        for held, fit_on in self._blocks(len(z)):
            if fit_on.sum() <= z.shape[1] + 1:
                return 0.0
            loc, cov = _mean_cov(z[fit_on], self._least)
            med.append(float(np.median(_sq_distance(z[held], loc, cov))))
        rest = float(np.median(med[:-1]))
        apart = med[-1] / rest if rest > 0 else 0.0
        half = z[len(z) // 2 :]
        t = np.arange(len(half), dtype=np.float64)
        # the median of pairwise slopes (Theil-Sen), on a subsample of the pairs
        idx = np.linspace(0, len(half) - 1, min(len(half), 120)).astype(np.intp)
        i, j = np.triu_indices(idx.size, 1)
        slopes = np.median((half[idx][j] - half[idx][i]) / (t[idx][j] - t[idx][i])[:, None], axis=0)
        heading = float(np.max(np.abs(slopes))) * len(z) / self.folds
        return max(apart, heading)

    def _fit(self, x: NDArray[np.float64], ends: NDArray[np.int64]) -> None:
        from scipy.stats import chi2  # at a fit only: importing the stream's core stays light

        self.buffer, self.ends = None, []
        z = self._standardise(x)
        n, p = z.shape
        least = self._least
        robust = mcd(z, floor=least, ridge=RIDGE)
        self.mean, self.cov = robust.location, robust.covariance
        # gross outliers of the warm-up (past the 99.9 % chi-square point of its robust normal)
        # are neither fitted nor calibrated on: an anomaly inside the warm-up is not "normal"
        keep = _sq_distance(z, self.mean, self.cov) <= chi2.ppf(0.999, p)
        d2, spe, e = np.empty(n), np.empty(n), np.empty_like(z)
        for held, fit_on in self._blocks(n):
            loc, cov = _mean_cov(z[fit_on & keep], least)
            dz = z[held] - loc
            d2[held] = np.einsum("ij,ij->i", dz @ np.linalg.pinv(cov, hermitian=True), dz)
            basis = principal_directions(cov, PCA_VARIANCE)
            res = dz - (dz @ basis) @ basis.T
            spe[held] = np.einsum("ij,ij->i", res, res)
            e[held] = dz / np.sqrt(np.maximum(np.diag(cov), 1e-12))
        # each channel's CUSUM allowance: what its normal deviation reaches one window in 20,
        # so it accumulates what is unusual for this channel, not its ordinary wandering
        self.allowance = np.maximum(np.quantile(np.abs(e[keep]), 0.95, axis=0), 0.5)
        cus = cusum_path(e, self.allowance)
        self.tails = (
            Tails.fit(d2[keep]),
            Tails.fit(spe[keep]),
            Tails.fit(np.abs(e[keep])),
            Tails.fit(cus[keep]),
        )
        self._all = Tails.stack(list(self.tails))  # one call per window scores every member
        self._scores = np.zeros(2 + 2 * p)
        # a CUSUM holds at most the evidence of a one-in-10^12 window (so that it forgets a long
        # change within a bounded time); it restarts when an alert closes
        self.cap = np.maximum(self.tails[3].score_at(1e-12), self.allowance)
        # each family weighs the same; a per-channel family shares its weight among channels
        share = 1.0 / len(MEMBERS)
        self.weights = np.concatenate([[share, share], np.full(2 * p, share / p)])
        self._n_state = 2 + p
        state_share = 1.0 / (len(MEMBERS) - 1)
        self._state_weights = np.concatenate(
            [[state_share, state_share], np.full(p, state_share / p)]
        )
        pv = self._all.p_values(np.concatenate([d2[:, None], spe[:, None], np.abs(e), cus], axis=1))
        # the alarm statistic as the stream would have computed it on the windows kept as
        # normal (a gross outlier's surprise must not leak into its neighbours' smoothing)
        pv = pv[keep]
        series = smooth(_surprises(cauchy_combine(pv, self.weights)), self.smoothing)
        state = smooth(
            _surprises(cauchy_combine(pv[:, : self._n_state], self._state_weights)),
            self.smoothing,
        )
        series, state = series[self.purge :], state[self.purge :]
        step_s = float(np.median(np.diff(ends))) / 1e6 if n > 1 else 1.0
        self.alarm = _Alarm(
            series,
            max(step_s, 1e-6),
            calm=float(np.quantile(state, 0.9)) if state.size else math.inf,
            apart=self.purge,
        )
        self.normal = int(keep.sum())
        self.cusum = np.zeros((2, p))
        self.smoothed = float(np.median(series)) if series.size else 0.0
        self.state = float(np.median(state)) if state.size else 0.0
        self._stale = True


def _surprise(p: float) -> float:
    return -math.log10(max(p, 1e-300))


def _surprises(p: NDArray[np.float64]) -> NDArray[np.float64]:
    return -np.log10(np.maximum(p, 1e-300))


def _mean_cov(
    z: NDArray[np.float64], least: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    loc = z.mean(axis=0)
    d = z - loc
    cov = d.T @ d / max(len(z) - 1, 1) + RIDGE * np.eye(z.shape[1])
    cov[np.diag_indices_from(cov)] = np.maximum(np.diag(cov), least)
    return loc, cov


def _sq_distance(
    z: NDArray[np.float64], loc: NDArray[np.float64], cov: NDArray[np.float64]
) -> NDArray[np.float64]:
    d = z - loc
    return np.einsum("ij,ij->i", d @ np.linalg.pinv(cov, hermitian=True), d)
