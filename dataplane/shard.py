"""A shard's state: everything ``process`` remembers for the assets of one shard, in arrays
indexed by a series number (one series is one (asset, sensor)), plus one small object per
asset (its scorer, its frame sensors' arrivals, its newest shaft speed).  Picklable, so an
engine's recovery snapshots it as it is."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from dataplane import prognostics
from dataplane.scoring import AssetScorer
from dataplane.topology import TopologyBoard
from expectations.checks import Arrivals
from expectations.contracts import SensorContract
from physics.registry import PROCESS_WINDOW_S

if TYPE_CHECKING:
    from dataplane.context import Plant

__all__ = ["RING", "MAX_K", "SENSOR_SPACE", "I64_MIN", "AssetState", "ShardState"]

RING = 64
"""Cadence buckets kept per series: a process window spans at most ``MAX_K`` of them, and a
micro-batch adds at most ``RING - MAX_K`` new ones per series before its windows are emitted
(longer batches are taken in slices), so no window ever misses a bucket."""
MAX_K = 32
I64_MIN = int(np.iinfo(np.int64).min)
SENSOR_SPACE = 1 << 24  # sensor numbers of a shard stay below this
RING_FIELDS = ("n", "st", "stt", "sy", "syy", "sty", "tmin", "tmax")  # ring fields


@dataclass
class AssetState:
    """Per asset of the shard: its scorer (detectors, alerts, flight recorder), the arrival
    bookkeeping of its frame sensors and the newest shaft speed."""

    asset_id: str
    scorer: AssetScorer = field(default_factory=AssetScorer)
    frame_arrivals: dict[str, Arrivals] = field(default_factory=dict)
    shaft_rpm: float = float("nan")


def _grow(a: np.ndarray, n: int, fill: Any) -> np.ndarray:
    if a.shape[0] >= n:
        return a
    cap = max(n, 2 * a.shape[0], 16)
    out = np.full((cap, *a.shape[1:]), fill, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


@dataclass
class ShardState:
    """Everything ``process`` remembers for the assets of one shard (picklable)."""

    index: dict[tuple[str, str], int] = field(default_factory=dict)
    names: list[tuple[str, str]] = field(default_factory=list)
    sensor_index: dict[str, int] = field(default_factory=dict)
    # (asset number * SENSOR_SPACE + sensor number) of every series, sorted, and its series
    pair_keys: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    pair_sids: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    contracts: list[SensorContract] = field(default_factory=list)
    assets: list[AssetState] = field(default_factory=list)
    asset_index: dict[str, int] = field(default_factory=dict)
    # per series (grown in capacity; the first len(names) entries are in use)
    s_asset: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    low: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    high: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    lateness: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    cadence: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    half_period: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    k: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    speed: NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, bool))
    newest: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    win_newest: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    emitted: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    y0: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    ring_tag: NDArray[np.int64] = field(default_factory=lambda: np.empty((0, RING), np.int64))
    ring: NDArray[np.float64] = field(default_factory=lambda: np.empty((0, RING, len(RING_FIELDS))))
    # accepted (series, ts) chunks within the allowed lateness: (sids, ts, max ts)
    arrival_log: deque = field(default_factory=deque)
    log_rows: int = 0
    max_lateness: int = 0
    newest_any: int = I64_MIN
    plant_version: int = 0  # the ``version`` of the (watched) plant the contracts come from
    topology: TopologyBoard = field(default_factory=TopologyBoard)
    prognoses: prognostics.Prognoses = field(default_factory=prognostics.Prognoses)

    def __getstate__(self) -> dict[str, Any]:
        self.index_new_series()
        state = dict(self.__dict__)
        state.pop("_names_pa", None)  # a cache, rebuilt on demand
        return state

    @property
    def n(self) -> int:
        return len(self.names)

    def register(self, asset: str, sensor: str, contract: SensorContract) -> int:
        sid = len(self.names)
        a = self.asset_index.get(asset)
        if a is None:
            a = self.asset_index[asset] = len(self.assets)
            self.assets.append(AssetState(asset))
        self.index[(asset, sensor)] = sid
        self.names.append((asset, sensor))
        s_no = self.sensor_index.setdefault(sensor, len(self.sensor_index))
        self.__dict__.setdefault("_new_pairs", []).append((a * SENSOR_SPACE + s_no, sid))
        self.contracts.append(contract)
        n = sid + 1
        for name, fill in (
            ("s_asset", 0),
            ("low", 0.0),
            ("high", 0.0),
            ("lateness", 0),
            ("cadence", 1),
            ("half_period", 0),
            ("k", 1),
            ("speed", False),
            ("newest", I64_MIN),
            ("win_newest", I64_MIN),
            ("emitted", I64_MIN),
            ("y0", np.nan),
            ("ring_tag", I64_MIN),
            ("ring", 0.0),
        ):
            setattr(self, name, _grow(getattr(self, name), n, fill))
        period_s = 1.0 / contract.sample_rate_hz
        cadence_s = max(contract.window_every_s or 1.0, period_s)
        window_s = max(PROCESS_WINDOW_S, 2 * period_s)
        self.s_asset[sid] = a
        self.low[sid], self.high[sid] = contract.low, contract.high
        self.lateness[sid] = round(contract.allowed_lateness_s * 1e6)
        self.cadence[sid] = round(cadence_s * 1e6)
        self.half_period[sid] = round(0.5 * period_s * 1e6)
        self.k[sid] = min(MAX_K, max(1, round(window_s / cadence_s)))
        self.speed[sid] = contract.kind == "speed"
        self.max_lateness = max(self.max_lateness, int(self.lateness[sid]))
        self.__dict__.pop("_names_pa", None)
        return sid

    def refresh_contracts(self, plant: Plant) -> int:
        """After the plant file changed: each registered series takes its new contract's
        checks (range, lateness, what is watched); its cadence and window stay as registered
        (its rings are built on them).  A series the plant no longer declares keeps its last
        contract until a restart.  Returns how many series changed."""
        changed = 0
        for sid, (asset, sensor) in enumerate(self.names):
            c = plant.contract(asset, sensor)
            if c is None or c == self.contracts[sid] or c.frames:
                continue
            self.contracts[sid] = c
            self.low[sid], self.high[sid] = c.low, c.high
            self.lateness[sid] = round(c.allowed_lateness_s * 1e6)
            changed += 1
        if changed:
            self.max_lateness = int(self.lateness[: self.n].max(initial=0))
        return changed

    def index_new_series(self) -> None:
        """Fold the series registered since the last call into the sorted key search."""
        new = self.__dict__.pop("_new_pairs", None)
        if new:
            keys = np.concatenate([self.pair_keys, np.array([k for k, _ in new], np.int64)])
            sids = np.concatenate([self.pair_sids, np.array([s for _, s in new], np.int64)])
            order = np.argsort(keys, kind="stable")
            self.pair_keys, self.pair_sids = keys[order], sids[order]

    def names_pa(self) -> tuple[pa.Array, pa.Array]:
        """The asset and sensor id of every series as Arrow arrays (to ``take`` from)."""
        cached = self.__dict__.get("_names_pa")
        if cached is None or len(cached[0]) != self.n:
            cached = (
                pa.array([a for a, _ in self.names], pa.string()),
                pa.array([s for _, s in self.names], pa.string()),
            )
            self.__dict__["_names_pa"] = cached
        return cached
