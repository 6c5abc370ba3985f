"""Remaining useful life in the stream: one ``prognostics`` row per health-indicator window of
every asset whose plant declaration names a health indicator, while an RUL champion serves.

Per asset, a ``physics.prognostics.DegradationTracker`` (kept in the shard's state, so recovery
snapshots it) learns the asset's healthy level from its first windows and fits an exponential
degradation to the indicator's history after every window: the physics prior.  The champion of
``models.registry.RUL_MODEL`` (followed by alias, like the fault classifier) carries the failure
level of that prior, a regressor of the prior's residual and the conformal interval
(``models.prognostics.ServedRUL``); the row's ``rul`` is prior + correction, ``rul_low`` /
``rul_high`` the interval, all in seconds and capped at the plant's ``rul_cap_s``.  The trackers
learn whether a champion serves or not, so a champion promoted later starts from each asset's
whole history.  One regressor call per micro-batch and call site, whatever the number of assets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from dataplane.rows import Out
from physics.prognostics import ConformalBands, DegradationTracker
from plant import HealthIndicator

if TYPE_CHECKING:  # the served model's type only: the shell injects it (dataplane.context)
    from models.registry import LoadedModel

__all__ = ["Prognoses", "observe_windows", "observe_rows"]

log = logging.getLogger(__name__)


@dataclass
class Prognoses:
    """Per shard: each asset's tracker, and which series carry a health indicator."""

    trackers: dict[str, DegradationTracker] = field(default_factory=dict)
    hi: list[HealthIndicator | None] = field(default_factory=list)  # per series number
    mask: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))

    def series_mask(self, names: list[tuple[str, str]], plant: Any) -> NDArray[np.bool_]:
        """Per series number: is it the health-indicator sensor of its asset (extended as
        series are registered; a plant without ``health_indicator`` declares none)."""
        lookup = getattr(plant, "health_indicator", None)
        for asset, sensor in names[len(self.hi) :]:
            h = lookup(asset) if lookup is not None else None
            self.hi.append(h if h is not None and h.sensor_id == sensor else None)
        if self.mask.size != len(self.hi):
            self.mask = np.array([h is not None for h in self.hi], bool)
        return self.mask


def _served(model: LoadedModel | None) -> tuple[float, ConformalBands] | None:
    if model is None:
        return None
    cached = getattr(model, "_served_rul", False)
    if cached is False:
        from models.prognostics import ServedRUL  # once per served version (it imports sklearn)

        cached = ServedRUL.bands_from_tags(model.tags)
        if cached is None:
            log.warning(
                "RUL champion %s v%s is not a served hybrid (no z_fail/conformal tags); "
                "no prognostics",
                model.name,
                model.version,
            )
        object.__setattr__(model, "_served_rul", cached)
    return cached


def _emit(
    p: Prognoses,
    model: LoadedModel | None,
    out: Out,
    items: list[tuple[int, str, HealthIndicator, int, float]],
) -> None:
    """Update each item's asset tracker (message, asset, indicator, window end us, value)
    and, with a served champion, write the RUL rows of the updated ones."""
    served = _served(model)
    ready = []
    for msg, asset, hi, end_us, value in items:
        tracker = p.trackers.get(asset)
        if tracker is None:
            tracker = p.trackers[asset] = DegradationTracker(hi.sign, hi.baseline_windows)
        state = tracker.update(end_us / 1e6, value)
        if state is not None and served is not None:
            ready.append((msg, asset, hi, end_us, value, state))
    if not ready:
        return
    z_fail, bands = served
    feats = [s.features(z_fail, hi.rul_cap_s) for _, _, hi, _, _, s in ready]
    x = np.array([[f[name] for name in model.features] for f in feats], np.float64)
    prior = np.array([f["prior_rul"] for f in feats])
    cap = np.array([hi.rul_cap_s for _, _, hi, _, _, _ in ready])
    rul = np.clip(prior + model.model.predict(x), 0.0, cap)
    low, high = bands.interval(rul)
    low, high = np.clip(low, 0.0, cap), np.clip(high, 0.0, cap)
    for j, (msg, asset, hi, end_us, value, state) in enumerate(ready):
        out.add(
            "prognostics",
            {
                "asset_id": asset,
                "ts": end_us,
                "sensor_id": hi.sensor_id,
                "feature": hi.feature,
                "health_indicator": value,
                "hi_z": state.hi_z,
                "prior_rul": float(prior[j]),
                "rul": float(rul[j]),
                "rul_low": float(low[j]),
                "rul_high": float(high[j]),
                "coverage": bands.coverage,
                "model_name": model.name,
                "model_version": model.version,
            },
            msg,
        )


def observe_windows(
    p: Prognoses,
    model: LoadedModel | None,
    plant: Any,
    out: Out,
    names: list[tuple[str, str]],
    sid: NDArray[np.int64],
    window_end: NDArray[np.int64],
    columns: dict[str, NDArray[np.float64]],
    msg: NDArray[np.intp],
) -> None:
    """Process windows just emitted (series ``sid``, their ``features`` columns): those of a
    health-indicator series go to their asset's tracker, in event-time order."""
    mask = p.series_mask(names, plant)
    sel = np.flatnonzero(mask[sid])
    if not sel.size:
        return
    sel = sel[np.argsort(window_end[sel], kind="stable")]
    items = []
    for j in sel.tolist():
        s = int(sid[j])
        hi = p.hi[s]
        if hi.feature in columns:
            items.append(
                (int(msg[j]), names[s][0], hi, int(window_end[j]), float(columns[hi.feature][j]))
            )
    _emit(p, model, out, items)


def observe_rows(
    p: Prognoses,
    model: LoadedModel | None,
    plant: Any,
    out: Out,
    rows: list[tuple[int, dict[str, Any]]],
) -> None:
    """Vibration ``features`` rows (message, row) of a batch: those of an asset's
    health-indicator sensor go to its tracker."""
    lookup = getattr(plant, "health_indicator", None)
    if lookup is None:
        return
    items = []
    for msg, row in rows:
        hi = lookup(row["asset_id"])
        if hi is None or hi.sensor_id != row["sensor_id"]:
            continue
        v = row.get(hi.feature)
        if v is not None:
            items.append((msg, row["asset_id"], hi, int(row["window_end"]), float(v)))
    _emit(p, model, out, items)
