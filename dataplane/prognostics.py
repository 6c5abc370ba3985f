"""Remaining useful life in the stream: one ``prognostics`` row per health-indicator window of
every asset whose plant declaration names a health indicator, while an RUL champion serves.

Per asset, the windows of the sensors that feed its indicator (``HealthIndicator.inputs``, the
primary first) are aligned on the primary's (``physics.prognostics.AlignedWindows``) and kept
in a ``HealthHistory`` (its last windows, age and healthy baseline), both in the shard's state,
so recovery snapshots them.  The champion of ``models.registry.RUL_MODEL`` (followed by alias,
like the fault classifier) carries the health model (``physics.prognostics.HealthModel``, its
``health`` extra: the indicator's weights, the similarity prior, the shift and the conformal
interval) and the residual regressor; the row's ``rul`` is prior + correction - shift,
``rul_low`` / ``rul_high`` the interval, all in seconds and capped at the plant's ``rul_cap_s``.
An asset whose indicator is not the champion's (other sensors or feature) gets no row.  The
histories grow whether a champion serves or not, so a champion promoted later starts from
each asset's recent history, and the training set is built by the same objects over the lake
(``models.prognostics.lake_rul_rows``).  One regressor call per micro-batch and call site,
whatever the number of assets.

The core imports no model library: the champion is anything with the attributes of
``RULChampion`` (``models.registry.LoadedModel`` is one).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from dataplane.rows import Out
from physics.prognostics import (
    AlignedWindows,
    HealthHistory,
    HealthModel,
    HealthSnapshot,
    Regressor,
)
from plant import HealthIndicator

__all__ = ["RULChampion", "Prognoses", "observe_windows", "observe_rows"]

log = logging.getLogger(__name__)


class RULChampion(Protocol):
    """The served RUL model as the stream needs it: its name and version (stamped on every
    row), the residual regressor and the ``health`` extra (``HealthModel.to_dict``)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def model(self) -> Regressor: ...
    @property
    def extras(self) -> Mapping[str, Any]: ...


@dataclass
class Prognoses:
    """Per shard: each asset's aligned windows and history, and which series feed an
    indicator (its declaration and the sensor's place in it, per series number)."""

    aligned: dict[str, AlignedWindows] = field(default_factory=dict)
    histories: dict[str, HealthHistory] = field(default_factory=dict)
    feeds: list[tuple[HealthIndicator, int] | None] = field(default_factory=list)
    mask: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Recovery of a state written by an older version: what it does not have starts
        empty (the histories regrow), what this version does not know is dropped."""
        fresh = Prognoses()
        self.__dict__.update({k: state.get(k, v) for k, v in vars(fresh).items()})

    def series_mask(self, names: list[tuple[str, str]], plant: Any) -> NDArray[np.bool_]:
        """Per series number: does it feed its asset's indicator (extended as series are
        registered; a plant without ``health_indicator`` declares none)."""
        lookup = getattr(plant, "health_indicator", None)
        for asset, sensor in names[len(self.feeds) :]:
            self.feeds.append(_feed(lookup(asset) if lookup is not None else None, sensor))
        if self.mask.size != len(self.feeds):
            self.mask = np.array([f is not None for f in self.feeds], bool)
        return self.mask


def _feed(hi: HealthIndicator | None, sensor: str) -> tuple[HealthIndicator, int] | None:
    if hi is None or sensor not in hi.inputs:
        return None
    return hi, hi.inputs.index(sensor)


def _served(model: RULChampion | None) -> HealthModel | None:
    """The champion's health model, parsed once per loaded version."""
    if model is None:
        return None
    if hasattr(model, "_served_health"):
        cached: HealthModel | None = model._served_health
    else:
        doc = model.extras.get("health") if model.extras else None
        cached = HealthModel.from_dict(doc) if doc else None
        if cached is None:
            log.warning(
                "RUL champion %s v%s carries no health model (served/health.json); no prognostics",
                model.name,
                model.version,
            )
        object.__setattr__(model, "_served_health", cached)
    return cached


Item = tuple[int, str, HealthIndicator, int, int, float]
"""A window of a sensor feeding an indicator: (message, asset, its indicator, the sensor's
place in it, window end in us, value)."""


def _emit(p: Prognoses, model: RULChampion | None, out: Out, items: list[Item]) -> None:
    """Align each item's window with its asset's other sensors, grow the histories, and, with
    a served champion, write the RUL rows of the assets whose history grew."""
    health = _served(model)
    ready: list[tuple[int, str, HealthIndicator, float, HealthSnapshot]] = []
    for msg, asset, hi, place, end_us, value in items:
        aligned = p.aligned.get(asset)
        if aligned is None or aligned.n_sensors != len(hi.inputs):  # new, or redeclared
            aligned = p.aligned[asset] = AlignedWindows(len(hi.inputs))
            p.histories[asset] = HealthHistory(len(hi.inputs), baseline_windows=hi.baseline_windows)
        history = p.histories[asset]
        for t, x in aligned.push(place, end_us / 1e6, value):
            if history.update(t, x) and health is not None and _serves(health, hi):
                ready.append((msg, asset, hi, t, history.snapshot()))
    if not ready or health is None or model is None:
        return
    snap = HealthSnapshot.stack([r[4] for r in ready])
    inputs = health.inputs(snap)
    rul = health.estimate(inputs, model.model)
    low, high = health.interval(rul)
    cap = np.array([hi.rul_cap_s for _, _, hi, _, _ in ready])
    rul, low, high = (np.clip(v, 0.0, cap) for v in (rul, low, high))
    coverage = health.bands.coverage if health.bands is not None else float("nan")
    for j, (msg, asset, hi, t, _) in enumerate(ready):
        out.add(
            "prognostics",
            {
                "asset_id": asset,
                "ts": round(t * 1e6),
                "sensor_id": hi.sensor_id,
                "feature": hi.feature,
                "health_indicator": float(inputs["hi_now"][j]),
                "hi_z": float(inputs["hi_rise"][j]),
                "prior_rul": float(inputs["prior_rul"][j]),
                "rul": float(rul[j]),
                "rul_low": float(low[j]),
                "rul_high": float(high[j]),
                "coverage": coverage,
                "model_name": model.name,
                "model_version": model.version,
            },
            msg,
        )


def _serves(health: HealthModel, hi: HealthIndicator) -> bool:
    """Whether the champion's indicator is this asset's (the same sensors, in order)."""
    return tuple(health.sensors) == hi.inputs


def observe_windows(
    p: Prognoses,
    model: RULChampion | None,
    plant: Any,
    out: Out,
    names: list[tuple[str, str]],
    sid: NDArray[np.int64],
    window_end: NDArray[np.int64],
    columns: dict[str, NDArray[np.float64]],
    msg: NDArray[np.intp],
) -> None:
    """Process windows just emitted (series ``sid``, their ``features`` columns): those of a
    series feeding an indicator go to their asset's alignment, in event-time order."""
    mask = p.series_mask(names, plant)
    sel = np.flatnonzero(mask[sid])
    if not sel.size:
        return
    sel = sel[np.argsort(window_end[sel], kind="stable")]
    items: list[Item] = []
    for j in sel.tolist():
        s = int(sid[j])
        feed = p.feeds[s]
        if feed is not None and feed[0].feature in columns:
            hi, place = feed
            value = float(columns[hi.feature][j])
            if np.isfinite(value):
                items.append((int(msg[j]), names[s][0], hi, place, int(window_end[j]), value))
    _emit(p, model, out, items)


def observe_rows(
    p: Prognoses,
    model: RULChampion | None,
    plant: Any,
    out: Out,
    rows: list[tuple[int, dict[str, Any]]],
) -> None:
    """Vibration ``features`` rows (message, row) of a batch: those of a sensor feeding its
    asset's indicator go to the asset's alignment."""
    lookup = getattr(plant, "health_indicator", None)
    if lookup is None:
        return
    items: list[Item] = []
    for msg, row in sorted(rows, key=lambda r: int(r[1]["window_end"])):
        feed = _feed(lookup(row["asset_id"]), row["sensor_id"])
        if feed is None:
            continue
        hi, place = feed
        v = row.get(hi.feature)
        if v is not None and np.isfinite(v):
            items.append((msg, row["asset_id"], hi, place, int(row["window_end"]), float(v)))
    _emit(p, model, out, items)
