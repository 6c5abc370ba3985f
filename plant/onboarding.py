"""Onboarding a sensor the plant model does not declare: profile its landed readings and
propose a contract (a plant-file sensor entry).

The stream keeps such readings in ``unknown_readings`` (schema on read).  ``profile_sensor``
measures what they say about the sensor - range, reading rate, resolution (the quantum of its
values), gaps, stuck stretches, non-finite values - and guesses its kind among the kinds the
plant already uses (by name, unit-free: the kind whose declared range holds the values and
whose rate is nearest, a hint in the sensor's id first).  ``propose_sensor`` turns the profile
into the entry ``plantpulse sensors accept`` writes into the plant file.

>>> import numpy as np
>>> from plant import load_plant, PLANTS_DIR
>>> plant = load_plant(PLANTS_DIR / "demo.yaml")
>>> ts = 1_767_225_600_000_000 + np.arange(600) * 1_000_000
>>> p = profile_sensor("pump-01", "oil_temp", ts, 40 + np.round(np.sin(np.arange(600) / 50), 1),
...                    plant)
>>> p.kind, round(p.rate_hz, 3), p.resolution, p.gaps
('temperature', 1.0, 0.1, 0)
>>> propose_sensor(p, plant)["range"]
[-40.0, 200.0]
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from plant.model import Plant

__all__ = [
    "SensorProfile",
    "profile_sensor",
    "propose_sensor",
    "proposal_yaml",
    "KindInfo",
    "plant_kinds",
    "GAP_FACTOR",
    "STUCK_MIN_S",
]

GAP_FACTOR = 5.0
"""An interval longer than this many median intervals is a gap."""
STUCK_MIN_S = 10.0
"""A run of one repeated value lasting at least this long is a stuck stretch."""

# words in a sensor id that name a kind (checked before ranges and rates)
_HINTS = {
    "temperature": ("temp", "tt", "degc", "thermo"),
    "pressure": ("press", "pt", "bar", "psi"),
    "current": ("current", "amp", "it"),
    "speed": ("speed", "rpm", "tacho"),
    "vibration": ("vib", "accel"),
    "flow": ("flow", "ft"),
    "level": ("level", "lt"),
    "voltage": ("volt",),
}


@dataclass(frozen=True)
class KindInfo:
    """What the plant's declared sensors of one kind look like (their most common contract)."""

    kind: str
    unit: str
    low: float
    high: float
    rate_hz: float
    frames: bool


def plant_kinds(plant: Plant) -> dict[str, KindInfo]:
    """Per sensor kind the plant declares: the most common (unit, range, rate) of its sensors."""
    seen: dict[str, Counter] = {}
    for _, s in plant.iter_sensors():
        c = s.contract
        seen.setdefault(c.kind, Counter())[(c.unit, c.low, c.high, c.sample_rate_hz, c.frames)] += 1
    return {k: KindInfo(k, *cnt.most_common(1)[0][0]) for k, cnt in seen.items()}


@dataclass(frozen=True)
class SensorProfile:
    asset_id: str
    sensor_id: str
    n_readings: int
    first_us: int
    last_us: int
    min: float | None
    max: float | None
    rate_hz: float | None
    resolution: float | None
    gaps: int
    longest_gap_s: float | None
    stuck_stretches: int
    longest_stuck_s: float | None
    non_finite: int
    kind: str | None
    kind_reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolution(values: NDArray[np.float64]) -> float | None:
    """The quantum of the values: the smallest step between distinct values, when the others
    are (nearly) whole multiples of it; None for values that look continuous."""
    u = np.unique(values)
    if u.size < 3:
        return None
    steps = np.diff(u)
    q = float(steps.min())
    if q <= 0:
        return None
    ratio = steps / q
    if np.max(np.abs(ratio - np.round(ratio))) > 0.01 or u.size > 0.5 * values.size:
        return None
    digits = max(0, -math.floor(math.log10(q)) + 2)
    return round(q, digits)


def _runs(values: NDArray[np.float64], ts_s: NDArray[np.float64]) -> tuple[int, float | None]:
    """Stretches of one repeated value lasting >= ``STUCK_MIN_S``: how many, the longest (s)."""
    if values.size < 2:
        return 0, None
    change = np.flatnonzero(np.r_[True, values[1:] != values[:-1], True])
    starts, ends = change[:-1], change[1:] - 1
    dur = ts_s[ends] - ts_s[starts]
    stuck = dur >= STUCK_MIN_S
    return int(stuck.sum()), (float(dur[stuck].max()) if stuck.any() else None)


INSIDE_SHARE = 0.99
"""A kind's range holds a sensor's values when at least this share of them lie in it (a few
spikes or faulty readings do not decide the kind; the contract then rejects them)."""


def _guess_kind(
    sensor_id: str, v: NDArray[np.float64], rate: float | None, kinds: dict[str, KindInfo]
) -> tuple[str | None, str]:
    scalar = {k: i for k, i in kinds.items() if not i.frames}
    name = sensor_id.lower().replace("-", "_")
    parts = set(name.split("_"))

    def holds(info: KindInfo) -> bool:
        return bool(v.size) and float(np.mean((v >= info.low) & (v <= info.high))) >= INSIDE_SHARE

    for kind, info in scalar.items():
        words = (*_HINTS.get(kind, ()), kind)
        named = any(w in parts or (len(w) > 3 and w in name) for w in words)
        if named and (not v.size or holds(info)):
            return kind, f"its id {sensor_id!r} names a {kind}" + (
                ""
                if not v.size
                else f" and its values lie in {kind}'s range [{info.low:g}, {info.high:g}]"
            )
    if not v.size:
        return None, "no finite values to judge by"
    lo, hi = np.quantile(v, [0.005, 0.995]).tolist()
    best, best_score = None, -math.inf
    for kind, info in scalar.items():
        if not holds(info):
            continue
        # a tight range that holds the values and a rate near the kind's are more telling
        span = max(hi - lo, 1e-9)
        score = -math.log10((info.high - info.low) / span) * 0.5
        if rate:
            score -= abs(math.log10(rate / info.rate_hz))
        if score > best_score:
            best, best_score = kind, score
    if best is None:
        return None, f"no declared kind's range holds [{lo:g}, {hi:g}]"
    info = scalar[best]
    return best, (
        f"values in [{lo:g}, {hi:g}] lie in {best}'s range [{info.low:g}, "
        f"{info.high:g}] and its rate is nearest ({info.rate_hz:g} Hz)"
    )


def profile_sensor(
    asset_id: str,
    sensor_id: str,
    ts_us: NDArray[np.int64],
    values: NDArray[np.float64],
    plant: Plant,
) -> SensorProfile:
    """The profile of one sensor's readings (any order; duplicates of a timestamp count once
    for the rate and gaps)."""
    ts_us = np.asarray(ts_us, np.int64)
    values = np.asarray(values, np.float64)
    order = np.argsort(ts_us, kind="stable")
    ts_us, values = ts_us[order], values[order]
    finite = np.isfinite(values)
    v = values[finite]
    t_s = (ts_us - (ts_us[0] if ts_us.size else 0)) / 1e6
    dt: NDArray[np.float64] = np.diff(np.unique(ts_us)).astype(np.float64) / 1e6
    rate: float | None = None
    gaps, longest_gap = 0, None
    if dt.size:
        median = float(np.median(dt))
        rate = 1.0 / median if median > 0 else None
        big = dt > GAP_FACTOR * median
        gaps = int(big.sum())
        longest_gap = float(dt[big].max()) if big.any() else None
    stuck, longest_stuck = _runs(v, t_s[finite])
    lo = float(v.min()) if v.size else None
    hi = float(v.max()) if v.size else None
    kind, why = _guess_kind(sensor_id, v, rate, plant_kinds(plant))
    return SensorProfile(
        asset_id,
        sensor_id,
        int(values.size),
        int(ts_us[0]) if ts_us.size else 0,
        int(ts_us[-1]) if ts_us.size else 0,
        lo,
        hi,
        rate,
        _resolution(v),
        gaps,
        longest_gap,
        stuck,
        longest_stuck,
        int((~finite).sum()),
        kind,
        why,
    )


def _nice(x: float) -> float:
    """``x`` to 3 significant digits (a rate of 0.99987 Hz is proposed as 1 Hz)."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.3g}")


def propose_sensor(profile: SensorProfile, plant: Plant) -> dict[str, Any]:
    """The plant-file sensor entry for ``profile``: its guessed kind (with that kind's unit and,
    when the values lie in it, its range), else the observed range with a margin of half its
    span; the measured rate and resolution; a description saying where it came from."""
    kinds = plant_kinds(plant)
    info = kinds.get(profile.kind or "")
    lo, hi = profile.min, profile.max
    entry: dict[str, Any] = {"id": profile.sensor_id, "kind": profile.kind or "unclassified"}
    if info is not None:
        entry["unit"] = info.unit
        entry["range"] = [float(info.low), float(info.high)]
    else:
        entry["unit"] = "unknown"
        if lo is None or hi is None:
            lo, hi = 0.0, 1.0
        margin = max(0.5 * (hi - lo), 0.1 * max(abs(lo), abs(hi)), 1e-6)
        entry["range"] = [_nice(lo - margin), _nice(hi + margin)]
    entry["rate_hz"] = (
        _nice(profile.rate_hz) if profile.rate_hz else (info.rate_hz if info else 1.0)
    )
    if profile.resolution:
        entry["resolution"] = profile.resolution
    if profile.longest_gap_s:  # it pauses by nature: do not call its normal gaps missing data
        entry["max_gap_s"] = _nice(profile.longest_gap_s * 2)
    span = "no finite values" if lo is None else f"values {profile.min:g}..{profile.max:g}"
    entry["description"] = (
        f"onboarded from {profile.n_readings} readings ({span}); "
        f"kind guessed: {profile.kind_reason}"
    )
    return entry


def proposal_yaml(entry: dict[str, Any]) -> str:
    """The entry as YAML, as it will appear under the asset's ``sensors:``."""
    import yaml

    return yaml.safe_dump([entry], sort_keys=False, default_flow_style=None, width=100)
