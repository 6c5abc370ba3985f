"""Scoring, per asset: the champion fault classifier (followed without restart by the shell),
a self-setting ensemble detector per channel (``dataplane.detectors``), the alert lifecycle
(``dataplane.alerts``), maintenance labels that re-baseline or confirm in the running stream,
drift detectors on the scores and on the physics features, and the flight recorder of frames.

Two channels per asset: ``vibration`` (a window per frame: its physics features) and
``process`` (a vector of the asset's scalar sensors' 30 s windows per cadence tick; only for
assets without frames).  Every detector is a plain picklable object kept in the shard's state,
so an engine's recovery snapshots it with everything else.  Rows go to an ``Out`` collector
(``dataplane.rows``), stamped with the message that produced them.

What the shell injects (the way it injects the plant, calibration and champion): a
``LabelFeed`` of each asset's ``maintenance_events`` (``bytewax_flows.labels.MaintenanceFeed``
reads the table), and a plant that may declare each asset's false-alarm budget
(``alerts_per_day``).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dataplane.alerts import (
    ALERTS_PER_DAY,
    AlertPolicy,
    AlertState,
    FaultModel,
    OpenAlert,
    settle,
    update_alert,
)
from dataplane.detectors import MEMBERS, Ensemble
from dataplane.rows import Out
from physics.detectors import PageHinkley
from physics.registry import FEATURE_VERSION, feature_names

__all__ = [
    "AssetScorer",
    "AlertPolicy",
    "Channel",
    "Emit",
    "DETECTOR_NAME",
    "PROCESS_DETECTOR_NAME",
    "SCORED_FEATURES",
    "FrameCandidate",
    "LabelFeed",
    "OpenAlert",
    "score_window",
    "score_process",
    "score_vibration",
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


class LabelFeed(Protocol):
    """Each asset's maintenance labels, oldest first, as ``(ts_us, kind, component, detail)``;
    an implementation refreshes itself (``bytewax_flows.labels.MaintenanceFeed``) and returns
    the same object while nothing changed, so the per-window check is an identity test."""

    def notes(self, asset_id: str) -> Sequence[tuple[int, str, str, str]]: ...


_ENSEMBLE = "ensemble:" + "+".join(MEMBERS)
DETECTOR_NAME = _ENSEMBLE
PROCESS_DETECTOR_NAME = _ENSEMBLE + "|process"
DRIFT_FEATURES = ("vib_rms", "vib_kurtosis", "env_bpfo_1", "env_bpfi_1")
"""Features watched one by one for a sustained rise (Page-Hinkley on their deviation from the
learnt normal): a slow mean shift of one, which the channel's combined surprise may average away."""
SCORED_FEATURES = [
    n
    for n in feature_names("vibration", role="symptom")
    if n not in ("demod_centre_hz", "vib_speed_ok")
]
"""Features the vibration detector sees (where the band sits and whether speed was known are
context, not symptoms)."""
LEARN_BELOW = 2.0
"""A window whose fused surprise is below this (p > 1 %) may be learnt as normal when no alert
is open (while one is, a window whose state surprise is below the asset's calm level): the
detector follows slow normal drift without absorbing what it finds unusual."""

FRAME_KEEP_EVERY = int(os.environ.get("PLANTPULSE_FRAME_KEEP_EVERY", "60"))
"""Keep one accepted vibration frame in this many in ``frames`` (the rest live on as features)."""
PROCESS_WARMUP = int(os.environ.get("PLANTPULSE_PROCESS_WARMUP", "400"))
"""Process windows an asset's detector learns from before it scores (SKAB's protocol: the first
400 readings of an experiment are anomaly-free); extended by up to half as many again while
the normal is still moving (``dataplane.detectors``)."""
VIBRATION_WARMUP = int(os.environ.get("PLANTPULSE_VIBRATION_WARMUP", "300"))
"""Vibration frames (one a second on the demo's pumps: five minutes) an asset's vibration
detector learns from before it scores; the champion classifier needs none."""


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


@dataclass
class Channel(AlertState):
    """One detector of an asset: ``vibration`` (a window per frame) or ``process`` (a vector
    of its scalar sensors' 30 s windows per time step), with the drift detector on its score,
    Page-Hinkley on the physics features a bearing defect moves first, and its alert state."""

    name: str = "vibration"
    seen: int = 0
    detector: Ensemble = field(
        default_factory=lambda: Ensemble(VIBRATION_WARMUP, VIBRATION_WARMUP * 3 // 2)
    )
    # Page-Hinkley on the channel's surprise: a lasting rise of how unusual it is
    drift_detector: PageHinkley = field(
        default_factory=lambda: PageHinkley(min_instances=60, delta=0.5, threshold=50.0)
    )
    feature_drift: dict[str, PageHinkley] = field(default_factory=dict)


def _process_channel() -> Channel:
    return Channel(name="process", detector=Ensemble(PROCESS_WARMUP, PROCESS_WARMUP * 3 // 2))


@dataclass
class AssetScorer:
    """Per asset: the vibration and process channels, the flight recorder (the newest frames),
    the process windows waiting for the rest of their sensors, and the labels already acted on."""

    vib: Channel = field(default_factory=Channel)
    proc: Channel = field(default_factory=_process_channel)
    frames_seen: int = 0
    recorder: deque = field(default_factory=deque)  # [FrameCandidate, retained?]
    # tick -> [{sensor: watched value}, newest window end]
    proc_pending: dict[int, list] = field(default_factory=dict)
    proc_sensors: set[str] = field(default_factory=set)
    proc_known: bool = False  # True once a whole time step of the scalar sensors has been seen
    started_us: int | None = None  # the first window this scorer saw (older labels predate it)
    notes_done: set[tuple[int, str, str, str]] = field(default_factory=set)
    notes_seen: object = None  # the feed's last answer (an identity check per window)
    budget: tuple[object, float] | None = None  # (plant version, alerts per day)


def _features(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(row[k])
        for k in SCORED_FEATURES
        if row.get(k) is not None and math.isfinite(row[k])
    }


def _supervised(
    model: FaultModel | None, row: dict[str, Any]
) -> tuple[float | None, np.ndarray | None, np.ndarray | None]:
    """P(fault), the feature vector and the class probabilities from the champion, if any."""
    if model is None:
        return None, None, None
    x = np.array(
        [[np.nan if row.get(f) is None else float(row[f]) for f in model.features]], np.float64
    )
    p, proba = model.fault_probability(x)
    return float(p[0]), x, proba[0]


_update_alert = update_alert  # the name the alert tests of other modules know


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
    model: FaultModel | None,
    policy: AlertPolicy,
    detector_name: str,
    per_day: float | None = None,
) -> None:
    """Score one window on channel ``ch``, learn from it, update its alert and drift state."""
    det = ch.detector
    verdict = det.observe(x, window_end)
    ch.seen += 1
    for end, subject, statistic, words in det.events:
        emit.add(
            "drift_events",
            _drift_row(
                asset_id, end, "residual", f"{ch.name}_{subject}", "warm-up", statistic, words
            ),
        )
    det.events.clear()
    if verdict is None and ch.name == "process":  # learning the asset's normal: nothing to report
        return
    p_fault, xs, proba = _supervised(model, row)
    anomaly = verdict.score if verdict is not None else 0.0
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
    if verdict is None:
        # the detector is still learning this machine's normal; the champion needs no warm-up
        if p_fault is not None:
            for r in update_alert(
                ch, policy, asset_id, window_end, 0.0, p_fault, model, xs, proba, {}, 0.0
            ):
                emit.add("alerts", r)
        return
    was_open = ch.alert is not None
    for r in update_alert(
        ch,
        policy.for_channel(ch.name, det, per_day),
        asset_id,
        window_end,
        anomaly,
        p_fault,
        model,
        xs,
        proba,
        lambda: dict(det.contributions()),
        math.inf if verdict.accumulating else verdict.state,
        f"{ch.name} unlike this machine's normal",
    ):
        emit.add("alerts", r)
    if was_open and ch.alert is None:
        det.restart_changepoints()  # the change they found is over
    # the normal keeps following the machine while an alert is open, from the windows its
    # state members find as usual as most warm-up windows (the change's own windows are not
    # learnt, and the CUSUM keeps its memory of it): otherwise a normal that drifts on while an
    # alert is open could never be caught up with, and the alert would never close
    usual = verdict.raw < LEARN_BELOW if ch.alert is None else verdict.now < det.calm_level
    if usual:
        det.learn()
    _feature_drift(ch, emit, asset_id, window_end)
    # on the unsmoothed surprise (the smoothed one is autocorrelated by construction), capped
    # so that one extreme window cannot make a drift on its own
    ph = ch.drift_detector
    ph.update(min(verdict.raw, 10.0))
    if ph.drift_detected:
        subject = "anomaly_score" if ch.name == "vibration" else f"{ch.name}_anomaly_score"
        emit.add(
            "drift_events",
            _drift_row(
                asset_id,
                window_end,
                "residual",
                subject,
                "PageHinkley",
                verdict.raw,
                f"the {ch.name} channel's surprise rose and stayed up (now {verdict.raw:.1f}, "
                f"mean {ph.mean:.2f} over {ph.n} windows)",
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


def _feature_drift(ch: Channel, emit: Emit, asset_id: str, window_end: int) -> None:
    """Page-Hinkley (upward, in units of the feature's normal spread) on each watched feature;
    a detection is a ``drift_events`` row with the deviation that fired."""
    z = ch.detector.deviations(DRIFT_FEATURES)
    for name, value in z.items():
        ph = ch.feature_drift.setdefault(
            name, PageHinkley(min_instances=30, delta=0.5, threshold=25.0)
        )
        ph.update(value)
        if ph.drift_detected:
            emit.add(
                "drift_events",
                _drift_row(
                    asset_id,
                    window_end,
                    "feature",
                    name,
                    "PageHinkley",
                    value,
                    f"{name} rose persistently above this machine's normal (now {value:.1f} "
                    f"standard deviations)",
                ),
            )


def _per_day(state: AssetScorer, plant: object | None, asset_id: str) -> float | None:
    """The asset's declared false-alarm budget: ``plant.alerts_per_day(asset_id)`` where the
    plant has it (``plant.Plant`` does), looked up again when the plant file changes."""
    lookup = getattr(plant, "alerts_per_day", None)
    if lookup is None:
        return None
    version = getattr(plant, "version", None)
    if state.budget is None or state.budget[0] != version:
        state.budget = (version, lookup(asset_id) or ALERTS_PER_DAY)
    return state.budget[1]


def apply_labels(
    state: AssetScorer, emit: Emit, asset_id: str, end_us: int, labels: LabelFeed | None
) -> None:
    """Act on the asset's maintenance labels up to event time ``end_us`` that this scorer has
    not acted on yet (labels older than its first window predate what it knows): a
    ``normal_operation`` or ``operating_change`` (or a repair) closes the open alert and learns
    the normal again; a ``failure`` confirms the open alert."""
    if state.started_us is None:
        state.started_us = end_us
    if labels is None:
        return
    notes = labels.notes(asset_id)
    if notes is state.notes_seen:
        return
    pending = False
    for note in notes:
        ts, kind, component, detail = note
        if note in state.notes_done or ts < state.started_us:
            continue
        if ts > end_us:  # the stream has not reached it yet
            pending = True
            continue
        state.notes_done.add(note)
        for ch in (state.vib, state.proc):
            done = settle(ch, asset_id, end_us, kind, component, detail)
            for r in done.rows:
                emit.add("alerts", r)
            if done.rebaseline and ch.seen:
                ch.detector.rebaseline()
                ch.feature_drift.clear()
    state.notes_seen = None if pending else notes


def score_vibration(
    state: AssetScorer,
    emit: Emit,
    row: dict[str, Any],
    model: FaultModel | None,
    policy: AlertPolicy,
    plant: object | None = None,
    labels: LabelFeed | None = None,
) -> None:
    """Score one vibration window (a ``features`` row of a frame) with the champion
    classifier and the vibration detector."""
    asset = row["asset_id"]
    apply_labels(state, emit, asset, row["window_end"], labels)
    score_window(
        state.vib,
        emit,
        asset,
        row["window_end"],
        _features(row),
        row,
        model,
        policy,
        DETECTOR_NAME,
        _per_day(state, plant, asset),
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
    plant: object | None = None,
    labels: LabelFeed | None = None,
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
            apply_labels(state, emit, asset_id, end, labels)
            score_window(
                state.proc,
                emit,
                asset_id,
                end,
                vector,
                {},
                None,
                policy,
                PROCESS_DETECTOR_NAME,
                _per_day(state, plant, asset_id),
            )
