"""The alert lifecycle of one asset's channel: when an alert opens, how it follows the machine
while open, and when it ends.  Every state change is one ``alerts`` row (the newest row of an
``alert_id`` is its current state; ``status`` stays ``open`` or ``closed`` for the consumers that
only ask that, and ``summary`` says which state the alert is in).

- **opened**: ``open_after`` hot windows in a row (the champion's P(fault) >= ``open_at``, or the
  channel's smoothed fused surprise at or above the asset's own alarm level for its budget of
  false alarms per day, ``dataplane.detectors.Ensemble.alarm_level``);
- **re-diagnosed**: the suspected fault class (with a classifier) or what carries the evidence
  changes;
- **persisting change**: the evidence has not risen for ``persist_after`` windows: a step to a
  new state rather than a developing fault, which asks for a decision: a technician's
  ``normal_operation`` label (or a declared ``operating_change``) re-baselines the asset, a
  ``failure`` confirms it;  rising again makes it **rising** once more;
- **confirmed**: a technician confirmed a fault (``failure``): it stays open until a repair;
- **closed**: back within its normal for ``close_after`` windows in a row (the state members'
  smoothed surprise below the asset's calm level, and P(fault) below ``close_below``), or
  re-baselined by a label.

One noisy window neither opens nor closes anything (hysteresis); while an alert is open no
second one opens for the channel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from dataplane.detectors import Ensemble

__all__ = [
    "AlertPolicy",
    "OpenAlert",
    "AlertState",
    "FaultModel",
    "update_alert",
    "alert_row",
    "settle",
    "ALERTS_PER_DAY",
]

ALERTS_PER_DAY = 1.0
"""The default budget of false alarms per asset and day (the plant file may declare another)."""


class FaultModel(Protocol):
    """What the stream needs of the champion fault classifier (``models.registry.LoadedModel``
    is one): its identity, its inputs and classes, P(fault) and per-feature contributions."""

    name: str
    version: str
    features: list[str]
    classes: list[str] | None

    def fault_probability(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def contributions(self, x: np.ndarray, klass: int | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class AlertPolicy:
    """When an alert opens, changes state and closes (see the module docstring).

    ``anomaly_open_at`` / ``anomaly_close_below`` / ``anomaly_critical_at`` are the fused
    surprise levels of a channel whose detector has not set its own yet; a detector that has
    (``for_channel``) opens at its alarm level for ``alerts_per_day`` (the budget of false
    alarms per asset-day, declared in the plant file), calls a window calm below its calm
    level, and critical at twice its alarm level.  The flight recorder keeps the
    ``recorder_frames`` frames before an opening and ``after_frames`` after it.
    """

    open_at: float = 0.8
    close_below: float = 0.5
    anomaly_open_at: float = 4.0
    anomaly_close_below: float = 2.0
    anomaly_critical_at: float = 25.0
    open_after: int = 3
    close_after: int = 10
    persist_after: int = 60
    rise: float = 1.25
    critical_at: float = 0.95
    recorder_frames: int = 10
    after_frames: int = 10
    alerts_per_day: float = ALERTS_PER_DAY

    def for_channel(
        self, name: str, detector: object | None = None, per_day: float | None = None
    ) -> AlertPolicy:
        """The levels of one channel: a fitted ``Ensemble`` brings the asset's own (for the
        budget ``per_day``, default ``alerts_per_day``); otherwise this policy's."""
        if not isinstance(detector, Ensemble) or detector.alarm is None:
            return self
        budget = self.alerts_per_day if per_day is None else per_day
        cached = detector.__dict__.get("_policy")
        if cached is None or cached[0] != (self, budget):
            hot = detector.alarm_level(budget)
            cached = (
                (self, budget),
                replace(
                    self,
                    anomaly_open_at=hot,
                    anomaly_close_below=min(detector.calm_level, hot),
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
    phase: str = "rising"  # rising | persisting | confirmed
    peak: float = 0.0  # the highest evidence so far
    since_peak: int = 0  # windows since it last rose
    leader: str = ""  # what carried the evidence at the last revision


@dataclass
class AlertState:
    """The alert bookkeeping of one channel (``dataplane.scoring.Channel`` is one)."""

    hot: int = 0
    calm: int = 0
    alert: OpenAlert | None = None
    evidence: np.ndarray | None = None  # summed class probabilities while hot or alerting


Contributions = Mapping[str, float] | Callable[[], Mapping[str, float]]
"""What carried a window (feature or ``member:channel`` -> contribution), or a function giving
it (computed only when an alert row needs it)."""


def _top_features(
    model: FaultModel | None,
    x: np.ndarray | None,
    klass: int,
    z: Contributions,
    k: int = 3,
) -> list[dict[str, float | str]]:
    """The ``k`` features that pushed the alert most: the champion's SHAP contributions for the
    suspected class, or without a model what carried the detector's evidence."""
    if model is not None and x is not None:
        contrib = model.contributions(x, klass)[0]
        order = np.argsort(-contrib)[:k]
        return [{"feature": model.features[i], "contribution": float(contrib[i])} for i in order]
    parts = z() if callable(z) else z
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:k]
    return [{"feature": f, "contribution": float(v)} for f, v in top]


def alert_row(
    a: OpenAlert, asset: str, now_us: int, closed: bool = False, summary: str | None = None
) -> dict[str, Any]:
    return {
        "alert_id": a.alert_id,
        "asset_id": asset,
        "opened_ts": a.opened_us,
        "closed_ts": now_us if closed else None,
        "updated_ts": now_us,
        "severity": a.severity,
        "status": "closed" if closed else "open",
        "summary": summary if summary is not None else a.summary,
        "top_features": a.top_features,
    }


def _diagnosis(
    state: AlertState, model: FaultModel | None, p_fault: float | None, default: str
) -> tuple[int, str]:
    """The most likely fault class so far (index into the model's classes, -1 without one)
    and the words for the alert."""
    if model is None or not model.classes or p_fault is None or state.evidence is None:
        return -1, default
    evidence = state.evidence
    faults = [i for i, c in enumerate(model.classes) if c != "normal"]
    best = max(faults, key=lambda i: evidence[i])
    return best, (
        f"{model.classes[best]} suspected (P(fault)={p_fault:.2f}, model {model.name} "
        f"v{model.version})"
    )


def _words(top: list[dict[str, float | str]], default: str) -> str:
    if not top or "contribution" not in top[0]:
        return default
    return f"{default}, led by {top[0]['feature']}"


def update_alert(
    state: AlertState,
    policy: AlertPolicy,
    asset: str,
    end_us: int,
    anomaly: float,
    p_fault: float | None,
    model: FaultModel | None,
    x: np.ndarray | None,
    proba: np.ndarray | None,
    z: Contributions,
    calm_score: float | None = None,
    default: str = "unlike this machine's normal",
) -> list[dict[str, Any]]:
    """Advance ``asset``'s alert state by the window ending at ``end_us``: ``anomaly`` is the
    channel's smoothed fused surprise, ``calm_score`` the one whether the asset is back within
    its normal is judged on (default: ``anomaly``).  Returns the ``alerts`` rows to write."""
    calm_score = anomaly if calm_score is None else calm_score
    hot = (p_fault is not None and p_fault >= policy.open_at) or anomaly >= policy.anomaly_open_at
    calm = (
        p_fault is None or p_fault < policy.close_below
    ) and calm_score < policy.anomaly_close_below
    state.hot = state.hot + 1 if hot else 0
    state.calm = state.calm + 1 if calm else 0
    if proba is not None and (hot or state.alert is not None):
        # class evidence since the hot streak began: the diagnosis firms up as the fault grows
        if state.evidence is None or state.evidence.shape != proba.shape:
            state.evidence = np.zeros_like(proba)
        state.evidence = state.evidence + proba
    elif state.alert is None:
        state.evidence = None
    klass, words = _diagnosis(state, model, p_fault, default)
    evidence = max(anomaly, 10.0 * (p_fault or 0.0))
    a = state.alert
    if a is None:
        if state.hot < policy.open_after:
            return []
        critical = (p_fault is not None and p_fault >= policy.critical_at) or (
            anomaly >= policy.anomaly_critical_at
        )
        top = _top_features(model, x, max(klass, 0), z)
        a = state.alert = OpenAlert(
            alert_id=f"{asset}-{end_us}",
            opened_us=end_us,
            severity="critical" if critical else "warning",
            summary=f"{asset}: {_words(top, words) if klass < 0 else words}; anomaly score "
            f"{anomaly:.1f} (alarm level {policy.anomaly_open_at:.1f})",
            top_features=top,
            diagnosis=klass,
            peak=evidence,
            leader=str(top[0]["feature"]) if top else "",
        )
        state.calm = 0
        return [alert_row(a, asset, end_us)]
    if state.calm >= policy.close_after and a.phase != "confirmed":
        out = [
            alert_row(
                a,
                asset,
                end_us,
                closed=True,
                summary=f"{asset}: closed, back within its normal for {state.calm} windows "
                f"(was: {a.summary.removeprefix(asset + ': ')})",
            )
        ]
        state.alert, state.evidence, state.hot = None, None, 0
        return out
    rows = []
    if evidence > a.peak * policy.rise:  # still rising
        a.peak, a.since_peak = evidence, 0
        if a.phase == "persisting":
            a.phase = "rising"
            a.summary = f"{asset}: rising again: {words}; anomaly score {anomaly:.1f}"
            rows.append(alert_row(a, asset, end_us))
    else:
        a.peak = max(a.peak, evidence)
        a.since_peak += 1
        if a.phase == "rising" and a.since_peak >= policy.persist_after and hot:
            a.phase = "persisting"
            a.summary = (
                f"{asset}: persisting change, no longer rising for {a.since_peak} windows: "
                f"{words}; label it normal_operation to re-baseline, or failure to confirm"
            )
            rows.append(alert_row(a, asset, end_us))
    if klass != a.diagnosis:  # the classifier's suspicion moved: re-diagnosed
        a.diagnosis, a.top_features = klass, _top_features(model, x, max(klass, 0), z)
        a.summary = f"{asset}: {words}; anomaly score {anomaly:.1f}"
        if p_fault is not None and p_fault >= policy.critical_at:
            a.severity = "critical"
        rows = rows or [alert_row(a, asset, end_us)]
    elif klass < 0 and hot and a.phase == "rising" and state.hot % policy.persist_after == 0:
        top = _top_features(model, x, 0, z)  # every so often: is the same thing carrying it?
        leader = str(top[0]["feature"]) if top else ""
        if leader and leader != a.leader:
            a.top_features, a.leader = top, leader
            a.summary = f"{asset}: re-diagnosed: {_words(top, words)}; anomaly score {anomaly:.1f}"
            rows = rows or [alert_row(a, asset, end_us)]
    return rows


@dataclass(frozen=True)
class Settled:
    """What a maintenance label did to a channel's alert: the rows, and whether the asset's
    normal is to be learnt again."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rebaseline: bool = False


REBASELINE = ("normal_operation", "operating_change", "repair", "replacement")
"""``maintenance_events`` kinds after which the asset's normal is learnt again: a technician says
the new state is normal operation, an operating change was declared, or the asset was repaired."""
CONFIRM = ("failure",)
"""Kinds that confirm an open alert's fault: it stays open until a repair."""


def settle(
    state: AlertState, asset: str, now_us: int, kind: str, component: str, detail: str
) -> Settled:
    """Apply one maintenance label (``kind``, ``component``, ``detail`` of a
    ``maintenance_events`` row) to the channel's alert state at event time ``now_us``."""
    a = state.alert
    what = f"{kind.replace('_', ' ')}" + (f" ({component})" if component else "")
    if kind in REBASELINE:
        rows = []
        if a is not None:
            rows.append(
                alert_row(
                    a,
                    asset,
                    now_us,
                    closed=True,
                    summary=f"{asset}: closed, re-baselined: {what} recorded"
                    + (f": {detail}" if detail else "")
                    + f" (was: {a.summary.removeprefix(asset + ': ')})",
                )
            )
        state.alert, state.evidence, state.hot, state.calm = None, None, 0, 0
        return Settled(rows, rebaseline=True)
    if kind in CONFIRM and a is not None and a.phase != "confirmed":
        a.phase = "confirmed"
        a.summary = (
            f"{asset}: confirmed {what}; stays open until a repair is recorded (was: "
            f"{a.summary.removeprefix(asset + ': ')})"
        )
        return Settled([alert_row(a, asset, now_us)])
    return Settled()
