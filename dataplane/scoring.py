"""Scoring, per asset: the champion fault classifier from the MLflow registry (followed without
restart), online anomaly detectors that learn as they score, drift detectors on the scores and
on the physics features, alerts with hysteresis, and the flight recorder of frames.

Every detector is a plain picklable object (River's where River has one) kept in the shard's
state, so an engine's recovery snapshots it with everything else.  Rows go to an ``Out``
collector (``dataplane.rows``), stamped with the message that produced them.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from river import base, drift, preprocessing

from dataplane.rows import Out
from physics.registry import FEATURE_VERSION, feature_names

if TYPE_CHECKING:  # the served model's type only: the shell injects it (dataplane.context)
    from models.registry import LoadedModel

__all__ = [
    "AssetScorer",
    "AlertPolicy",
    "Emit",
    "DETECTOR_NAME",
    "SCORED_FEATURES",
    "FrameCandidate",
    "score_window",
    "score_process",
    "record_frame",
    "now_us",
]


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Emit:
    """Where a scoring step's rows go: the batch's collector, and the message (index in the
    batch, arrival time) that produced them."""

    out: Out
    msg: int
    received_us: int

    def add(self, table: str, row: dict[str, Any]) -> None:
        self.out.add(table, row, self.msg)


DETECTOR_NAME = "river:StandardScaler|mean-squared-z"
PROCESS_DETECTOR_NAME = "river:StandardScaler|mean-squared-z|process"
DRIFT_FEATURES = ("vib_rms", "vib_kurtosis", "env_bpfo_1", "env_bpfi_1")
"""Features watched one by one for a sustained rise (Page-Hinkley on their z-score against the
learnt normal): a slow mean shift, which ADWIN on the combined score may average away."""
SCORED_FEATURES = [
    n
    for n in feature_names("vibration", role="symptom")
    if n not in ("demod_centre_hz", "vib_speed_ok")
]
"""Features the online detector sees (where the band sits and whether speed was known are
context, not symptoms)."""


class StandardisedDistance(base.AnomalyDetector):
    """Mean squared z-score of the features against running (Welford) statistics of what the
    detector has judged normal.  It learns as it scores, but only from windows scoring below
    ``learn_below``: a developing fault is not absorbed into "normal".

    >>> det = StandardisedDistance()
    >>> for i in range(200):
    ...     det.learn_one({"a": float(i % 7), "b": 1.0 + (i % 3)})
    >>> det.score_one({"a": 3.0, "b": 2.0}) < 1.0 < det.score_one({"a": 40.0, "b": 2.0})
    True
    """

    def __init__(self, learn_below: float = 9.0):
        self.learn_below = learn_below
        self.scaler = preprocessing.StandardScaler()

    def score_one(self, x: dict[str, float]) -> float:
        z = self.scaler.transform_one(x)
        return sum(v * v for v in z.values()) / max(len(z), 1)

    def learn_one(self, x: dict[str, float]) -> None:
        if (
            self.scaler.counts
            and max(self.scaler.counts.values()) >= 30
            and self.score_one(x) > self.learn_below
        ):
            return
        self.scaler.learn_one(x)


FRAME_KEEP_EVERY = int(os.environ.get("PLANTPULSE_FRAME_KEEP_EVERY", "60"))
"""Keep one accepted vibration frame in this many in ``frames`` (the rest live on as features)."""


PROCESS_WARMUP = int(os.environ.get("PLANTPULSE_PROCESS_WARMUP", "400"))
"""Process windows an asset's detector learns from before it scores (SKAB's protocol: the first
400 readings of an experiment are anomaly-free)."""


def _robust_scale(x: np.ndarray) -> np.ndarray:
    """Per column, the normal-consistent interquartile scale (1.349 IQR), falling back to the
    standard deviation and then to 1 where a column barely moves (a quantised channel)."""
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    std = x.std(axis=0)
    scale = np.where(scale > 1e-9 * np.maximum(np.abs(np.median(x, axis=0)), 1.0), scale, std)
    return np.where(scale > 0, scale, 1.0)


def _robust_fit(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Location, scatter and inlier mask of standardised warm-up vectors: scikit-learn's
    reweighted Minimum Covariance Determinant (a fault filling up to half of the warm-up
    cannot pull it), or, with too few vectors for a full matrix (under 5 per dimension), the
    coordinate-wise median and a diagonal scatter of the robust scales."""
    n, p = z.shape
    if n >= 5 * p:
        from sklearn.covariance import MinCovDet  # on first fit only: a light core's import

        mcd = MinCovDet(random_state=0).fit(z)
        cov = mcd.covariance_ + 1e-6 * np.eye(p)
        return mcd.location_, cov, mcd.support_
    return np.median(z, axis=0), np.diag(_robust_scale(z) ** 2), np.ones(n, bool)


def _sq_distance(z: np.ndarray, location: np.ndarray, cov: np.ndarray) -> np.ndarray:
    d = z - location
    return np.einsum("ij,jk,ik->i", d, np.linalg.pinv(cov), d) / max(z.shape[1], 1)


_METADATA = {"resolution", "window_s", "rate_hz", "overlap"}
"""Entries of a process vector that describe the sensor rather than measure it."""


class RobustMahalanobis(base.AnomalyDetector):
    """Squared Mahalanobis distance per dimension of an asset's process vector from what this
    asset showed to be normal: it sees broken relationships between sensors (flow without
    pressure), not only unusual values.  It sets itself up from the asset's own warm-up:

    - **warm-up**: the first ``warmup`` vectors are kept, then fitted at once;
    - **what each sensor is watched as**: a sensor offered as ``<sensor>:level``,
      ``<sensor>:slope`` and ``<sensor>:std`` (its window's level, slope and within-window
      scatter) is a *slow state*, watched by its slope, when its level wanders over the warm-up
      by more than its readings scatter within a window (robust spread of the level > the
      median within-window std: averaging a window shrinks a stationary channel's scatter, so a
      level that still moves more than one reading's scatter follows something slow, like a
      housing following its cooling); otherwise by its level.  A sensor offered with one view
      only (declared in the plant) keeps it;
    - **normal**: a robust location and scatter of the warm-up (``_robust_fit``: an anomaly
      inside the warm-up is not learnt as normal);
    - **its own score scale** (``calibration``): the sorted out-of-sample scores of the warm-up
      vectors judged normal: the warm-up cut into ``folds`` blocks, each scored by the mean and
      covariance of the other blocks' normal vectors, leaving out a purge of one window length
      on each side of the block (consecutive windows share readings, so a neighbour would leak
      its own value in).  The alert policy takes its thresholds as quantiles of it
      (``AlertPolicy.for_channel``);
    - **after the warm-up** it keeps learning, only from windows scoring below the
      ``learn_quantile`` (99.9 %) of its calibration, so a fault's windows, above it, are not
      absorbed: a running mean and covariance over the warm-up's normal vectors and every window
      learnt since, forgetting exponentially once there are ``memory`` of them (default ten
      warm-ups), so it follows slow normal drift.

    >>> import random
    >>> rng, det = random.Random(0), RobustMahalanobis(warmup=300)
    >>> for _ in range(300):
    ...     a = rng.gauss(0, 1)
    ...     det.learn_one({"flow": a, "pressure": a + rng.gauss(0, 0.1)})
    >>> det.score_one({"flow": 1.0, "pressure": 1.0}) < det.quantile(0.99) < det.score_one(
    ...     {"flow": 1.0, "pressure": -1.0})
    True
    """

    def __init__(
        self,
        warmup: int = PROCESS_WARMUP,
        memory: int | None = None,
        learn_quantile: float = 0.999,
        folds: int = 5,
        refresh: int = 20,
    ):
        self.warmup, self.learn_quantile, self.refresh = warmup, learn_quantile, refresh
        self.folds = folds
        self.memory = memory if memory is not None else 10 * warmup
        self.buffer: list[dict[str, float]] | None = []
        self.views: dict[str, str] = {}  # sensor -> the view it is watched by
        self.keys: list[str] = []
        self.center = np.zeros(0)
        self.scale = np.zeros(0)
        self.floor = np.zeros(0)
        self.mean = np.zeros(0)
        self.cov = np.zeros((0, 0))
        self.precision: np.ndarray | None = None
        self.calibration = np.zeros(0)
        self.learn_below = math.inf
        self.learnt = 0
        self.normal = 0  # warm-up windows judged normal
        self.purge = 0  # windows sharing readings with a window (its window's length)

    @property
    def fitted(self) -> bool:
        return self.buffer is None

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of this asset's normal scores (NaN before the warm-up ends)."""
        if not self.calibration.size:
            return math.nan
        return float(np.quantile(self.calibration, q))

    def _z(self, x: dict[str, float]) -> np.ndarray:
        v = np.array([x.get(k, math.nan) for k in self.keys])
        z = (v - self.center) / self.scale
        return np.where(np.isfinite(z), z, self.mean)

    def score_one(self, x: dict[str, float]) -> float:
        if not self.fitted:
            return 0.0
        if self.precision is None:
            self.precision = np.linalg.pinv(self.cov)
        d = self._z(x) - self.mean
        return float(d @ self.precision @ d) / max(len(self.keys), 1)

    def learn_one(self, x: dict[str, float]) -> None:
        if self.buffer is not None:
            self.buffer.append(x)
            if len(self.buffer) >= self.warmup:
                self._fit(self.buffer)
            return
        if self.score_one(x) > self.learn_below:
            return
        d = self._z(x) - self.mean
        # a running mean and covariance over the warm-up's normal and every window learnt
        # since, forgetting exponentially once there are ``memory`` of them
        rate = 1.0 / min(self.memory, self.normal + self.learnt + 1)
        self.mean = self.mean + rate * d
        self.cov = (1.0 - rate) * (self.cov + rate * np.outer(d, d))
        self.learnt += 1
        if self.learnt % self.refresh == 0:
            self.precision = None

    def _choose_views(self, rows: list[dict[str, float]]) -> None:
        offered: dict[str, set[str]] = {}
        for r in rows:
            for k in r:  # "<sensor>:<view>"; a bare name is watched as it is
                sensor, _, view = k.rpartition(":") if ":" in k else (k, "", "")
                offered.setdefault(sensor, set()).add(view)
        for sensor, views in sorted(offered.items()):
            if {"level", "slope"} <= views:
                level = np.array([r.get(f"{sensor}:level", math.nan) for r in rows])
                within = np.array([r.get(f"{sensor}:std", math.nan) for r in rows])
                level, within = level[np.isfinite(level)], within[np.isfinite(within)]
                wanders = (
                    level.size > 3
                    and within.size > 0
                    and float(_robust_scale(level[:, None])[0]) > np.median(within)
                )
                self.views[sensor] = "slope" if wanders else "level"
            else:
                self.views[sensor] = next(iter(sorted(views - {"std"} - _METADATA)), "")
        self.keys = sorted(f"{s}:{v}" if v else s for s, v in self.views.items())
        last = rows[-1]
        floors = []
        for key in self.keys:
            # the quantisation noise of a window's level (readings' rounding error, q / sqrt(12)
            # each, averaged over the window's readings) and of its least-squares slope: no
            # warm-up, however still, makes the detector believe in finer changes
            sensor, _, view = key.rpartition(":")
            window_s = max(last.get(f"{sensor}:window_s", 1.0), 1e-9)
            n = max(window_s * last.get(f"{sensor}:rate_hz", 1.0), 1.0)
            noise = last.get(f"{sensor}:resolution", 0.0) / math.sqrt(12.0 * n)
            floors.append(noise * math.sqrt(12.0) / window_s if view == "slope" else noise)
        self.floor = np.array(floors)
        self.purge = max((int(last.get(f"{s}:overlap", 1)) for s in self.views), default=1)

    def _fit(self, rows: list[dict[str, float]]) -> None:
        self._choose_views(rows)
        x = np.array([[r.get(k, math.nan) for k in self.keys] for r in rows])
        x = x[np.isfinite(x).all(axis=1)] if x.size else x.reshape(0, len(self.keys))
        self.buffer = None
        if len(x) < 4 or not self.keys:  # nothing to learn from: never scores
            self.keys, self.mean, self.cov = [], np.zeros(0), np.zeros((0, 0))
            return
        self.center = np.median(x, axis=0)
        self.scale = np.maximum(_robust_scale(x), self.floor)
        z = (x - self.center) / self.scale
        least = np.diag((self.floor / self.scale) ** 2)  # variance floor, standardised
        self.mean, self.cov, inliers = _robust_fit(z)
        self.cov = self.cov + np.diag(np.maximum(np.diag(least) - np.diag(self.cov), 0.0))
        # out-of-sample scores: each block of the warm-up scored by the normal of the others
        order = np.arange(len(z))
        block = order * self.folds // len(z)
        out_of_sample = np.empty(len(z))
        for k in range(self.folds):
            held = np.flatnonzero(block == k)
            near = (order >= held[0] - self.purge) & (order <= held[-1] + self.purge)
            fit_on = inliers & ~near
            d = z[fit_on] - z[fit_on].mean(axis=0)
            cov = d.T @ d / max(fit_on.sum() - 1, 1) + 1e-6 * np.eye(z.shape[1])
            cov += np.diag(np.maximum(np.diag(least) - np.diag(cov), 0.0))
            out_of_sample[block == k] = _sq_distance(z[block == k], z[fit_on].mean(axis=0), cov)
        self.calibration = np.sort(out_of_sample[inliers])
        self.normal = int(inliers.sum())
        self.learn_below = self.quantile(self.learn_quantile)
        self.precision = None


@dataclass
class FrameCandidate:
    """An accepted vibration frame on its way through the flight recorder: kept in ``frames``
    only if sampled or near an alert (the row is built only then)."""

    asset_id: str
    sensor_id: str
    ts_start_us: int
    sample_rate_hz: float
    samples: np.ndarray

    def row(self, because: str) -> dict[str, Any]:
        return {
            "asset_id": self.asset_id,
            "sensor_id": self.sensor_id,
            "ts_start": self.ts_start_us,
            "sample_rate_hz": self.sample_rate_hz,
            "n_samples": int(self.samples.size),
            "samples": self.samples.astype(np.float32),
            "retained_because": because,
        }


@dataclass(frozen=True)
class AlertPolicy:
    """When an alert opens and closes.

    An asset is *hot* in a window when the champion classifier gives P(fault) >= ``open_at`` or
    the online detector's score is >= ``anomaly_open_at``; *calm* when P(fault) < ``close_below``
    (or no model) and the score < ``anomaly_close_below``.  An alert opens after ``open_after``
    hot windows in a row and closes after ``close_after`` calm ones (hysteresis: one noisy
    window neither opens nor closes anything); while it is open, no second alert opens for the
    asset (de-duplication).  ``critical`` when P(fault) >= ``critical_at`` or the score is >=
    ``anomaly_critical_at`` at opening, else ``warning``.  The flight recorder keeps the
    ``recorder_frames`` frames before the opening and ``after_frames`` after it.
    """

    open_at: float = 0.8
    close_below: float = 0.5
    anomaly_open_at: float = 9.0
    anomaly_close_below: float = 4.0
    open_after: int = 3
    close_after: int = 10
    critical_at: float = 0.95
    anomaly_critical_at: float = 25.0
    recorder_frames: int = 10
    after_frames: int = 10
    false_alarm_budget: float = 0.01
    calm_quantile: float = 0.9

    def for_channel(self, name: str, detector: base.AnomalyDetector | None = None) -> AlertPolicy:
        """The thresholds of one channel.  A detector that set itself up from its asset's
        warm-up (``RobustMahalanobis``: the process channel) brings its own score scale: a
        window is hot above the ``1 - false_alarm_budget`` quantile of that asset's normal
        scores and calm below their ``calm_quantile``; critical at twice the opening
        threshold.  The budget is the share of normal windows the operator accepts above the
        opening threshold (an alert still needs ``open_after`` of them in a row)."""
        if not isinstance(detector, RobustMahalanobis) or not detector.calibration.size:
            return self
        cached = detector.__dict__.get("_policy")
        if cached is None or cached[0] != self:
            hot = detector.quantile(1.0 - self.false_alarm_budget)
            cached = (
                self,
                replace(
                    self,
                    anomaly_open_at=hot,
                    anomaly_close_below=detector.quantile(self.calm_quantile),
                    anomaly_critical_at=2 * hot,
                ),
            )
            detector.__dict__["_policy"] = cached
        return cached[1]


@dataclass
class OpenAlert:
    alert_id: str
    opened_us: int
    severity: str
    summary: str
    top_features: list[dict[str, float | str]]
    diagnosis: int = -1  # class index of the suspected fault, -1 when unknown
    frames_after: int = 0


@dataclass
class Channel:
    """One detector of an asset: ``vibration`` (a window per frame) or ``process`` (a vector
    of its scalar sensors' 30 s levels per time step).  Each has its anomaly detector, the
    drift detector on its score and its own alert state."""

    name: str = "vibration"
    warmup: int = 60
    seen: int = 0
    detector: base.AnomalyDetector = field(default_factory=StandardisedDistance)
    drift_detector: drift.ADWIN = field(
        default_factory=lambda: drift.ADWIN(delta=0.001, grace_period=60)
    )
    hot: int = 0
    calm: int = 0
    alert: OpenAlert | None = None
    evidence: np.ndarray | None = None  # summed class probabilities while hot or alerting
    # Page-Hinkley on the standardised physics features a bearing defect moves first
    feature_drift: dict[str, drift.PageHinkley] = field(default_factory=dict)


@dataclass
class AssetScorer:
    """Per asset: the vibration and process channels, the flight recorder (the newest frames)
    and the process windows waiting for the rest of their sensors."""

    vib: Channel = field(default_factory=Channel)
    proc: Channel = field(
        default_factory=lambda: Channel(
            "process", PROCESS_WARMUP, detector=RobustMahalanobis(PROCESS_WARMUP)
        )
    )
    frames_seen: int = 0
    recorder: deque = field(default_factory=deque)  # [FrameCandidate, retained?]
    # tick -> [{sensor: watched value}, newest window end]
    proc_pending: dict[int, list] = field(default_factory=dict)
    proc_sensors: set[str] = field(default_factory=set)
    proc_known: bool = False  # True once a whole time step of the scalar sensors has been seen


def _features(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(row[k])
        for k in SCORED_FEATURES
        if row.get(k) is not None and math.isfinite(row[k])
    }


def _contributions(detector: base.AnomalyDetector, x: dict[str, float]) -> dict[str, float]:
    """Per input, a signed z-like value whose square says how much it adds to the score."""
    if isinstance(detector, StandardisedDistance):
        return detector.scaler.transform_one(x)
    if isinstance(detector, RobustMahalanobis) and detector.precision is not None:
        d = detector._z(x) - detector.mean
        part = d * (detector.precision @ d)  # sums to the squared distance
        return {
            k: float(np.sign(p) * np.sqrt(abs(p))) for k, p in zip(detector.keys, part, strict=True)
        }
    return {}


def _supervised(
    model: LoadedModel | None, row: dict[str, Any]
) -> tuple[float | None, np.ndarray | None, np.ndarray | None]:
    """P(fault), the feature vector and the class probabilities from the champion, if any."""
    if model is None:
        return None, None, None
    x = np.array(
        [[np.nan if row.get(f) is None else float(row[f]) for f in model.features]], np.float64
    )
    p, proba = model.fault_probability(x)
    return float(p[0]), x, proba[0]


def _top_features(
    model: LoadedModel | None, x: np.ndarray | None, klass: int, z: dict[str, float], k: int = 3
) -> list[dict[str, float | str]]:
    """The ``k`` features that pushed the prediction most: XGBoost SHAP contributions for the
    predicted class, or without a model, the largest squared z-scores of the online detector."""
    if model is not None and x is not None:
        contrib = model.contributions(x, klass)[0]
        order = np.argsort(-contrib)[:k]
        return [{"feature": model.features[i], "contribution": float(contrib[i])} for i in order]
    top = sorted(z.items(), key=lambda kv: -kv[1] * kv[1])[:k]
    return [{"feature": f, "contribution": float(v * v)} for f, v in top]


def _alert_row(state: Channel, asset: str, now_us: int, closed: bool = False) -> dict[str, Any]:
    a = state.alert
    return {
        "alert_id": a.alert_id,
        "asset_id": asset,
        "opened_ts": a.opened_us,
        "closed_ts": now_us if closed else None,
        "updated_ts": now_us,
        "severity": a.severity,
        "status": "closed" if closed else "open",
        "summary": a.summary,
        "top_features": a.top_features,
    }


def _diagnosis(state: Channel, model: LoadedModel | None, p_fault: float | None) -> tuple[int, str]:
    """The most likely fault class so far (index into the model's classes, -1 without one)
    and the words for the alert."""
    if model is None or not model.classes or p_fault is None or state.evidence is None:
        return -1, "vibration unlike this machine's normal"
    faults = [i for i, c in enumerate(model.classes) if c != "normal"]
    best = max(faults, key=lambda i: state.evidence[i])
    return best, (
        f"{model.classes[best]} suspected (P(fault)={p_fault:.2f}, model {model.name} "
        f"v{model.version})"
    )


def _update_alert(
    state: Channel,
    policy: AlertPolicy,
    asset: str,
    end_us: int,
    anomaly: float,
    p_fault: float | None,
    model: LoadedModel | None,
    x: np.ndarray | None,
    proba: np.ndarray | None,
    z: dict[str, float],
) -> list[dict[str, Any]]:
    """Advance ``asset``'s alert state by the window ending at ``end_us``; returns the ``alerts`` rows to write: the
    opening, a revision when the diagnosis changes (same ``alert_id``; the newest row of an
    alert is its current state), and the closing."""
    hot = (p_fault is not None and p_fault >= policy.open_at) or anomaly >= policy.anomaly_open_at
    calm = (
        p_fault is None or p_fault < policy.close_below
    ) and anomaly < policy.anomaly_close_below
    state.hot = state.hot + 1 if hot else 0
    state.calm = state.calm + 1 if calm else 0
    if proba is not None and (hot or state.alert is not None):
        # class evidence since the hot streak began: the diagnosis firms up as the fault grows
        if state.evidence is None or state.evidence.shape != proba.shape:
            state.evidence = np.zeros_like(proba)
        state.evidence = state.evidence + proba
    elif state.alert is None:
        state.evidence = None
    klass, words = _diagnosis(state, model, p_fault)
    summary = f"{asset}: {words}; anomaly score {anomaly:.1f}"
    if state.alert is None and state.hot >= policy.open_after:
        critical = (p_fault is not None and p_fault >= policy.critical_at) or (
            anomaly >= policy.anomaly_critical_at
        )
        state.alert = OpenAlert(
            alert_id=f"{asset}-{end_us}",
            opened_us=end_us,
            severity="critical" if critical else "warning",
            summary=summary,
            top_features=_top_features(model, x, max(klass, 0), z),
            diagnosis=klass,
        )
        return [_alert_row(state, asset, end_us)]
    if state.alert is None:
        return []
    if state.calm >= policy.close_after:
        out = [_alert_row(state, asset, end_us, closed=True)]
        state.alert, state.evidence = None, None
        return out
    if klass != state.alert.diagnosis:
        a = state.alert
        a.summary, a.diagnosis = summary, klass
        a.top_features = _top_features(model, x, max(klass, 0), z)
        if p_fault is not None and p_fault >= policy.critical_at:
            a.severity = "critical"
        return [_alert_row(state, asset, end_us)]
    return []


def record_frame(
    state: AssetScorer, policy: AlertPolicy, frame: FrameCandidate, emit: Emit
) -> None:
    """The flight recorder: keep the newest frames; retain one in ``FRAME_KEEP_EVERY`` as a
    sample, all buffered frames when an alert opens, and the ``after_frames`` after it.  Frames
    retained later than they arrived carry the current message's position (the sink's
    exactly-once key moves forward only)."""
    state.frames_seen += 1
    state.recorder.append([frame, False])
    while len(state.recorder) > policy.recorder_frames:
        state.recorder.popleft()
    a = state.vib.alert
    if a is not None and a.frames_after <= policy.after_frames:
        if a.frames_after == 0:  # the alert just opened: dump what led up to it
            pending = [entry for entry in state.recorder if not entry[1]]
        else:
            pending = [state.recorder[-1]]
        a.frames_after += 1
        for entry in pending:
            emit.add("frames", entry[0].row(f"alert:{a.alert_id}"))
            entry[1] = True
    elif (state.frames_seen - 1) % FRAME_KEEP_EVERY == 0:
        emit.add("frames", frame.row("sampled"))
        state.recorder[-1][1] = True


def score_window(
    ch: Channel,
    emit: Emit,
    asset_id: str,
    window_end: int,
    x: dict[str, float],
    row: dict[str, Any],
    model: LoadedModel | None,
    policy: AlertPolicy,
    detector_name: str,
) -> None:
    """Score one window on channel ``ch``, learn from it, update its alert and drift state."""
    warm = ch.seen >= ch.warmup
    anomaly = float(ch.detector.score_one(x)) if warm else 0.0
    z = _contributions(ch.detector, x) if warm else {}
    ch.detector.learn_one(x)
    ch.seen += 1
    if not warm and ch.name == "process":  # learning the asset's normal: nothing to report
        return
    p_fault, xs, proba = _supervised(model, row)
    emit.add(
        "scores",
        {
            "asset_id": asset_id,
            "window_end": window_end,
            "anomaly_score": anomaly,
            "prediction": p_fault,
            "model_name": model.name if model is not None else detector_name,
            "model_version": model.version if model is not None else "online",
            "feature_version": FEATURE_VERSION,
            "latency_ms": max(0.0, (now_us() - emit.received_us) / 1000.0),
        },
    )
    channel_policy = policy.for_channel(ch.name, ch.detector)
    if ch.seen <= ch.warmup:
        # the detector is still learning this machine's normal; the champion needs no warm-up
        if p_fault is not None:
            for r in _update_alert(
                ch, channel_policy, asset_id, window_end, 0.0, p_fault, model, xs, proba, z
            ):
                emit.add("alerts", r)
        return
    for r in _update_alert(
        ch, channel_policy, asset_id, window_end, anomaly, p_fault, model, xs, proba, z
    ):
        emit.add("alerts", r)
    _feature_drift(ch, emit, asset_id, window_end, z)
    ch.drift_detector.update(anomaly)
    if ch.drift_detector.drift_detected:
        est = float(ch.drift_detector.estimation)
        subject = "anomaly_score" if ch.name == "vibration" else f"{ch.name}_anomaly_score"
        emit.add(
            "drift_events",
            _drift_row(
                asset_id,
                window_end,
                "residual",
                subject,
                "ADWIN",
                est,
                f"mean {ch.name} anomaly score changed; now {est:.3f} over the last "
                f"{int(ch.drift_detector.width)} windows",
            ),
        )


def _drift_row(
    asset_id: str,
    window_end: int,
    kind: str,
    subject: str,
    detector: str,
    statistic: float,
    detail: str,
) -> dict[str, Any]:
    return {
        "ts": window_end,
        "asset_id": asset_id,
        "subject_kind": kind,
        "subject": subject,
        "detector": detector,
        "statistic": statistic,
        "detail": detail,
    }


def _feature_drift(
    ch: Channel, emit: Emit, asset_id: str, window_end: int, z: dict[str, float]
) -> None:
    """Page-Hinkley (upward, in units of the feature's normal spread) on each watched feature;
    a detection is a ``drift_events`` row with the cumulative statistic's input that fired."""
    for name in DRIFT_FEATURES:
        if name not in z or not math.isfinite(z[name]):
            continue
        ph = ch.feature_drift.setdefault(
            name, drift.PageHinkley(min_instances=30, delta=0.5, threshold=25.0, mode="up")
        )
        ph.update(z[name])
        if ph.drift_detected:
            emit.add(
                "drift_events",
                _drift_row(
                    asset_id,
                    window_end,
                    "feature",
                    name,
                    "PageHinkley",
                    float(z[name]),
                    f"{name} rose persistently above this machine's normal (now {z[name]:.1f} "
                    f"standard deviations)",
                ),
            )


def score_vibration(
    state: AssetScorer,
    emit: Emit,
    row: dict[str, Any],
    model: LoadedModel | None,
    policy: AlertPolicy,
) -> None:
    """Score one vibration window (a ``features`` row of a frame) with the champion
    classifier and the vibration detector."""
    score_window(
        state.vib,
        emit,
        row["asset_id"],
        row["window_end"],
        _features(row),
        row,
        model,
        policy,
        DETECTOR_NAME,
    )


def score_process(
    state: AssetScorer,
    emit: Emit,
    asset_id: str,
    sensor_id: str,
    tick_us: int,
    window_end: int,
    views: dict[str, float],
    policy: AlertPolicy,
) -> None:
    """Collect the asset's scalar sensors per cadence tick, each as the views of its window
    the detector may watch (``level``, ``slope``, ``std``: all three unless its contract
    declares ``watched_as``, then that one); a tick is scored once every sensor has reported
    it (or a later tick has begun).  Only for assets without vibration frames: one detector per
    asset, scoring the vector of its sensors."""
    if state.vib.seen:  # an asset with vibration frames is watched through them
        state.proc_pending.clear()
        return
    state.proc_sensors.add(sensor_id)
    finite = {f"{sensor_id}:{k}": float(v) for k, v in views.items() if math.isfinite(v)}
    if finite:
        entry = state.proc_pending.setdefault(tick_us, [{}, window_end, set()])
        entry[0].update(finite)
        entry[1] = max(entry[1], window_end)
        entry[2].add(sensor_id)
    for tick in sorted(state.proc_pending):
        # until one whole tick has been seen, the asset's set of sensors is not known yet
        complete = state.proc_known and len(state.proc_pending[tick][2]) >= len(state.proc_sensors)
        state.proc_known |= tick < tick_us
        if tick < tick_us or complete:
            vector, end, _ = state.proc_pending.pop(tick)
            score_window(
                state.proc, emit, asset_id, end, vector, {}, None, policy, PROCESS_DETECTOR_NAME
            )
