"""The stream's two steps over micro-batches: ``route`` (stateless decode and split by asset)
and ``process`` (everything stateful, for all assets of one shard at once).

Per micro-batch, ``process`` does a handful of NumPy operations over all its readings - the
contract checks, event-time bookkeeping, calibration and the process windows are vectorised
over every (asset, sensor) series of the batch - plus O(1) Python work per message (a
dictionary look-up of its series) and per emitted window (its score).  Each lake table's rows
are built once per batch.

Series state lives in arrays indexed by a series number (``ShardState``):

- event time: the newest accepted timestamp per series; accepted timestamps within the allowed
  lateness are kept in a chunked log, consulted only for readings that arrive out of order
  (the in-order common case never touches it);
- process windows: per series, a ring of the sums (count, t, t², y, y², t·y, first and last
  time) of its readings per *cadence bucket* (``window_every_s`` of its contract, 1 s by
  default).  A bucket closes when the series' event time reaches its end (less half a sample
  period); the window as of a closed bucket is the sum of the last ``k`` buckets (30 s by
  default), and its level, slope and std come from ``physics.process.stats_from_sums``.  One
  ``features`` row per series per bucket, whatever the message rate.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa
from numpy.typing import NDArray

from dataplane import prognostics
from dataplane.calibration import CalibrationCache
from dataplane.rows import Out, SinkRows
from dataplane.scoring import (
    AlertPolicy,
    AssetScorer,
    Emit,
    FrameCandidate,
    LabelFeed,
    now_us,
    record_frame,
    score_process,
    score_vibration,
)
from dataplane.topology import TopologyBoard, annotate_alerts
from dataplane.wire import TS_MAX, TS_MIN, Batch, Decoded, Frame, decode_batch
from expectations.checks import OK, Arrivals, arrival_reasons, frame_problem, value_problems
from expectations.contracts import SensorContract
from lake import table_spec
from lake.catalogue import TS
from models.registry import ChampionWatcher
from physics.bearing import SKF_6205, BearingGeometry
from physics.features import vibration_features
from physics.process import stats_from_sums
from physics.registry import FEATURE_VERSION, PROCESS_WINDOW_S, feature_names
from plant import default_plant
from plant.watch import PlantWatcher

__all__ = ["Plant", "Context", "ShardState", "route", "process", "run_batch", "RING", "MAX_SERIES"]

log = logging.getLogger(__name__)

RING = 64
"""Cadence buckets kept per series: a process window spans at most ``MAX_K`` of them, and a
micro-batch adds at most ``RING - MAX_K`` new ones per series before its windows are emitted
(longer batches are taken in slices), so no window ever misses a bucket."""
MAX_K = 32
MAX_SERIES = int(os.environ.get("PLANTPULSE_MAX_SERIES", "200000"))
"""Series (asset, sensor) one shard tracks; readings of further ones are dead-lettered
(``capacity``), never silently dropped, so invented ids cannot grow the state without bound."""
LOG_MAX_ROWS = int(os.environ.get("PLANTPULSE_ARRIVAL_LOG_ROWS", "20000000"))
"""Accepted timestamps kept for recognising duplicates (beyond the allowed lateness they are
forgotten anyway); past this bound the oldest are forgotten first."""

_I64_MIN = np.iinfo(np.int64).min
SENSOR_SPACE = 1 << 24  # sensor numbers of a shard stay below this
# reading-level reason codes
_OK, _BAD_TS, _NON_FINITE, _OUT_OF_RANGE, _LATE, _DUPLICATE = range(6)
_REASON = ("ok", "bad_timestamp", "non_finite", "out_of_range", "late", "duplicate")
_NF = ("n", "st", "stt", "sy", "syy", "sty", "tmin", "tmax")  # ring fields


class Plant(Protocol):
    """What the stream needs to know of the plant (``plant.PlantModel`` is one): each (asset,
    sensor)'s contract, and the bearing a vibration sensor is mounted on."""

    def contract(self, asset_id: str, sensor_id: str) -> SensorContract | None: ...

    def bearing(self, asset_id: str, sensor_id: str | None = None) -> BearingGeometry | None: ...


def _watched_default_plant() -> Plant:
    return PlantWatcher.following(default_plant())


@dataclass
class Context:
    """Per worker, not state: the plant, calibration, the champion model and the alert policy.
    The plant (a ``plant.watch.PlantWatcher`` by default), the calibration and the champion
    follow their file, table and alias by themselves: edits take effect without a restart."""

    plant: Plant = field(default_factory=_watched_default_plant)
    calibration: CalibrationCache | None = None
    champion: ChampionWatcher | None = None
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    max_series: int = MAX_SERIES
    rul_champion: ChampionWatcher | None = None  # the RUL model (dataplane.prognostics)
    labels: LabelFeed | None = None  # maintenance labels (re-baseline, confirm) by asset


# -- routing ----------------------------------------------------------------------------------
def _shard_of(asset: str | None, n_shards: int, groups: Mapping[str, str] | None = None) -> int:
    if asset is None:
        return 0
    if groups:  # the assets of one topology component share a shard (dataplane.topology)
        asset = groups.get(asset, asset)
    return zlib.crc32(asset.encode("utf-8", "replace")) % n_shards


def route(
    batch: Batch, n_shards: int = 1, groups: Mapping[str, str] | None = None
) -> list[tuple[str, Decoded]]:
    """Decode a micro-batch and split it by asset into ``n_shards`` keyed pieces; ``groups``
    (``dataplane.topology.shard_groups``) routes an asset by the id of its topology component
    instead of its own, so that connected assets' alerts meet on one shard."""
    d = decode_batch(batch.messages)
    if n_shards <= 1:
        return [("0", d)] if batch.messages else []
    asset_shard = np.array([_shard_of(a, n_shards, groups) for a in d.assets], np.int32)
    g_shard = asset_shard[d.g_a] if d.n_groups else np.empty(0, np.int32)
    frame_shard = [_shard_of(f.asset_id, n_shards, groups) for _, f in d.frames]
    reject_shard = [_shard_of(r[3], n_shards, groups) for r in d.rejects]
    out = []
    for k in range(n_shards):
        groups = np.flatnonzero(g_shard == k)
        frames = [fr for fr, sh in zip(d.frames, frame_shard, strict=True) if sh == k]
        rejects = [r for r, sh in zip(d.rejects, reject_shard, strict=True) if sh == k]
        if not groups.size and not frames and not rejects:
            continue
        used = np.unique(
            np.concatenate(
                [
                    d.g_msg[groups],
                    np.array([i for i, _ in frames], np.int32),
                    np.array([r[0] for r in rejects], np.int32),
                ]
            )
        )
        remap = np.full(len(d.messages), -1, np.int32)
        remap[used] = np.arange(used.size, dtype=np.int32)
        piece = Decoded([d.messages[i] for i in used.tolist()], d.assets, d.sensors)
        piece.g_a, piece.g_s, piece.g_msg = d.g_a[groups], d.g_s[groups], remap[d.g_msg[groups]]
        new_group = np.full(d.n_groups, -1, np.int32)
        new_group[groups] = np.arange(groups.size, dtype=np.int32)
        keep = new_group[d.group] >= 0
        piece.group, piece.ts, piece.value = new_group[d.group[keep]], d.ts[keep], d.value[keep]
        piece.shard = str(k)
        piece.frames = [(int(remap[i]), f) for i, f in frames]
        piece.rejects = [(int(remap[r[0]]), *r[1:]) for r in rejects]
        out.append((str(k), piece))
    return out


# -- state ------------------------------------------------------------------------------------
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
    ring: NDArray[np.float64] = field(default_factory=lambda: np.empty((0, RING, len(_NF))))
    # accepted (series, ts) chunks within the allowed lateness: (sids, ts, max ts)
    arrival_log: deque = field(default_factory=deque)
    log_rows: int = 0
    max_lateness: int = 0
    newest_any: int = _I64_MIN
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
            ("newest", _I64_MIN),
            ("win_newest", _I64_MIN),
            ("emitted", _I64_MIN),
            ("y0", np.nan),
            ("ring_tag", _I64_MIN),
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


# -- the stateful step ------------------------------------------------------------------------
class _DeadLetters:
    def __init__(self, d: Decoded):
        self.d = d
        self.msg: list[int] = []
        self.raw: list[bytes] = []
        self.reason: list[str] = []
        self.detail: list[str] = []
        self.asset: list[str | None] = []
        self.sensor: list[str | None] = []

    def add(
        self,
        i: int,
        reason: str,
        detail: str,
        asset: str | None,
        sensor: str | None,
        raw: bytes | None = None,
    ) -> None:
        self.msg.append(i)
        self.raw.append(self.d.messages[i].payload if raw is None else raw)
        self.reason.append(reason)
        self.detail.append(detail)
        self.asset.append(asset)
        self.sensor.append(sensor)

    def emit(self, out: Out) -> None:
        if not self.msg:
            return
        spec = table_spec("dead_letter")
        received = np.fromiter(
            (self.d.messages[i].received_us for i in self.msg), np.int64, len(self.msg)
        )
        rows = pa.Table.from_arrays(
            [
                pa.array(received).view(TS),
                pa.array([self.d.messages[i].source for i in self.msg], pa.string()),
                pa.array(self.raw, pa.binary()),
                pa.array(self.reason, pa.string()),
                pa.array(self.detail, pa.string()),
                pa.array(self.asset, pa.string()),
                pa.array(self.sensor, pa.string()),
            ],
            schema=spec.input_schema,
        )
        out.add_table("dead_letter", rows, np.asarray(self.msg, np.intp))


def _reading_detail(code: int, value: float, contract: SensorContract) -> str:
    if code == _OUT_OF_RANGE:
        return f"value {value:.6g} outside [{contract.low:g}, {contract.high:g}]"
    if code == _NON_FINITE:
        return "value is null, NaN or infinite"
    if code == _BAD_TS:
        return "timestamp outside 1990..2100"
    if code == _DUPLICATE:
        return "timestamp already accepted for this sensor"
    return "older than the newest reading of this sensor minus the allowed lateness"


def process(
    state: ShardState | None, d: Decoded, ctx: Context | None = None
) -> tuple[ShardState, list[SinkRows]]:
    """The stateful step for one shard's piece of a micro-batch: returns the new state and
    the rows of every lake table."""
    state = state or ShardState()
    ctx = ctx or Context()
    version = getattr(ctx.plant, "version", 0)
    if version != state.plant_version:  # the plant file changed: take the new contracts
        state.plant_version = version
        if state.refresh_contracts(ctx.plant):
            log.info("shard %s: contracts refreshed from plant version %d", d.shard, version)
    out, dead = Out(d.messages), _DeadLetters(d)
    for i, reason, detail, asset, sensor, raw in d.rejects:
        dead.add(i, reason, detail, asset, sensor, raw)
    g_sid, unknown = _series_of_groups(state, d, ctx, dead)
    if unknown:
        _land_unknown(d, unknown, out, dead)
    speeds = _scalars(state, d, g_sid, ctx, out, dead)
    if d.frames:
        _frames(state, d, ctx, out, dead, speeds)
    _keep_speeds(state, speeds)
    annotate_alerts(state.topology, ctx.plant, out)
    dead.emit(out)
    return state, out.sink_rows(path=d.shard)


def run_batch(
    state: ShardState | None, batch: Batch, ctx: Context | None = None
) -> tuple[ShardState, list[SinkRows]]:
    """``route`` and ``process`` of one batch on one shard: the whole stream without an engine
    (tests, benchmarks, another engine's single-partition shell)."""
    rows: list[SinkRows] = []
    for _, piece in route(batch, 1):
        state, r = process(state, piece, ctx)
        rows += r
    return state or ShardState(), rows


def _series_of_groups(
    state: ShardState, d: Decoded, ctx: Context, dead: _DeadLetters
) -> tuple[NDArray[np.int64], list[tuple[int, bytes | None]]]:
    """Each group's series number, registering new series; -1 for a group that is not a
    series: a dead letter for a frame sensor sending scalars or no capacity; an undeclared
    sensor is returned in the list of (group, raw input or None for the message's payload)
    for the landing table.  Known series are found for the whole batch at once (one search
    over the shard's sorted series keys); only the others are looked at one by one."""
    n_groups = d.n_groups
    g_sid = np.full(n_groups, -1, np.int64)
    unknown: list[tuple[int, bytes | None]] = []
    if not n_groups:
        return g_sid, unknown
    a_no = np.fromiter((state.asset_index.get(a, -1) for a in d.assets), np.int64, len(d.assets))
    s_no = np.fromiter((state.sensor_index.get(x, -1) for x in d.sensors), np.int64, len(d.sensors))
    ga, gs = a_no[d.g_a], s_no[d.g_s]
    if state.pair_keys.size:
        key = ga * SENSOR_SPACE + gs
        pos = np.minimum(np.searchsorted(state.pair_keys, key), state.pair_keys.size - 1)
        hit = (ga >= 0) & (gs >= 0) & (state.pair_keys[pos] == key)
        g_sid[hit] = state.pair_sids[pos[hit]]
    missing = np.flatnonzero(g_sid < 0)
    if not missing.size:
        return g_sid, unknown
    counts = np.bincount(d.group, minlength=n_groups)
    per_msg: NDArray[np.int64] | None = None
    for g in missing.tolist():
        if counts[g] == 0:
            continue
        asset, sensor = d.group_names(g)
        sid = state.index.get((asset, sensor))
        if sid is not None:  # registered earlier in this batch
            g_sid[g] = sid
            continue
        contract = ctx.plant.contract(asset, sensor)
        problem = None
        if contract is None:  # schema on read: kept in the landing table, not rejected
            if per_msg is None:
                per_msg = np.bincount(d.g_msg, minlength=len(d.messages))
            unknown.append((g, None if per_msg[d.g_msg[g]] == 1 else _group_raw(d, g)))
            continue
        if contract.frames:
            problem = ("wrong_type", f"sensor {sensor!r} sends frames")
        elif state.n >= ctx.max_series:
            problem = (
                "capacity",
                f"this shard already tracks {state.n} series (PLANTPULSE_MAX_SERIES)",
            )
        if problem is None:
            g_sid[g] = state.register(asset, sensor, contract)
            continue
        if per_msg is None:
            per_msg = np.bincount(d.g_msg, minlength=len(d.messages))
        raw = None if per_msg[d.g_msg[g]] == 1 else _group_raw(d, g)
        dead.add(int(d.g_msg[g]), *problem, asset, sensor, raw)
    state.index_new_series()
    return g_sid, unknown


def _land_unknown(
    d: Decoded, unknown: list[tuple[int, bytes | None]], out: Out, dead: _DeadLetters
) -> None:
    """The readings of undeclared sensors as ``unknown_readings`` rows (each with the input it
    came in); a reading whose timestamp cannot be stored (outside 1990..2100) is a dead
    letter, as for a declared sensor."""
    groups = np.array([g for g, _ in unknown], np.int64)
    pos = np.full(d.n_groups, -1, np.int64)
    pos[groups] = np.arange(groups.size)
    sel = np.flatnonzero(pos[d.group] >= 0)
    ts, values, k = d.ts[sel], d.value[sel], pos[d.group[sel]]
    msg = d.g_msg[groups[k]].astype(np.intp)
    names = [d.group_names(int(g)) for g in groups.tolist()]
    bad = (ts < TS_MIN) | (ts >= TS_MAX)
    for j in np.flatnonzero(bad).tolist():
        asset, sensor = names[int(k[j])]
        v = float(values[j])
        dead.add(
            int(msg[j]),
            _REASON[_BAD_TS],
            "timestamp outside 1990..2100",
            asset,
            sensor,
            orjson.dumps(
                {
                    "asset_id": asset,
                    "sensor_id": sensor,
                    "ts": int(ts[j]),
                    "value": v if math.isfinite(v) else None,
                }
            ),
        )
    if bad.any():
        keep = ~bad
        ts, values, k, msg = ts[keep], values[keep], k[keep], msg[keep]
    if not ts.size:
        return
    k_pa = pa.array(k)
    raws = [d.messages[int(d.g_msg[g])].payload if raw is None else raw for g, raw in unknown]
    rows = pa.Table.from_arrays(
        [
            pa.array([a for a, _ in names], pa.string()).take(k_pa),
            pa.array([s for _, s in names], pa.string()).take(k_pa),
            pa.array(ts).view(TS),
            pa.array(values),
            pa.array(raws, pa.binary()).take(k_pa),
            pa.array([d.messages[int(d.g_msg[g])].source for g, _ in unknown], pa.string()).take(
                k_pa
            ),
            pa.array(np.full(ts.size, now_us(), np.int64)).view(TS),
        ],
        schema=table_spec("unknown_readings").input_schema,
    )
    out.add_table("unknown_readings", rows, msg)


def _group_raw(d: Decoded, g: int) -> bytes:
    """One group's readings as JSON: the raw input of one rejected tag of a multi-sensor
    message (a single-sensor message keeps its own payload)."""
    asset, sensor = d.group_names(g)
    sel = d.group == g
    return orjson.dumps(
        {
            "asset_id": asset,
            "sensor_id": sensor,
            "ts": d.ts[sel].tolist(),
            "value": [v if math.isfinite(v) else None for v in d.value[sel].tolist()],
        }
    )


def _scalars(
    state: ShardState,
    d: Decoded,
    g_sid: NDArray[np.int64],
    ctx: Context,
    out: Out,
    dead: _DeadLetters,
) -> Speeds | None:
    """Contract and event-time checks of every scalar reading, calibration, the ``readings``
    rows and the process windows; returns the accepted shaft speeds (for the frames)."""
    if not d.n_readings:
        return None
    sid_all = g_sid[d.group]
    take = np.flatnonzero(sid_all >= 0)
    if not take.size:
        return None
    sid, ts, raw = sid_all[take], d.ts[take], d.value[take]
    msg = d.g_msg[d.group[take]].astype(np.intp)
    code = np.zeros(sid.size, np.int8)
    code[(ts < TS_MIN) | (ts >= TS_MAX)] = _BAD_TS
    non_finite, out_of_range = value_problems(raw, state.low[sid], state.high[sid])
    code[(code == 0) & non_finite] = _NON_FINITE
    code[(code == 0) & out_of_range] = _OUT_OF_RANGE
    valid = np.flatnonzero(code == 0)
    if valid.size:
        code[valid] = _arrivals(state, sid[valid], ts[valid])
    acc = np.flatnonzero(code == 0)
    if acc.size < code.size:
        bad = np.flatnonzero(code != 0)
        for j in bad.tolist():
            s = int(sid[j])
            asset, sensor = state.names[s]
            v = float(raw[j])
            dead.add(
                int(msg[j]),
                _REASON[code[j]],
                _reading_detail(int(code[j]), v, state.contracts[s]),
                asset,
                sensor,
                orjson.dumps(
                    {
                        "asset_id": asset,
                        "sensor_id": sensor,
                        "ts": int(ts[j]),
                        "value": v if math.isfinite(v) else None,
                    }
                ),
            )
    if not acc.size:
        return None
    sid, ts, raw, msg = sid[acc], ts[acc], raw[acc], msg[acc]
    values, quality = _calibrate(state, ctx, sid, ts, raw)
    a_names, s_names = state.names_pa()
    sid_pa = pa.array(sid)
    n = sid.size
    rows = pa.Table.from_arrays(
        [
            a_names.take(sid_pa),
            s_names.take(sid_pa),
            pa.array(ts).view(TS),
            pa.array(values),
            pa.array(raw),
            quality,
            pa.array(np.full(n, now_us(), np.int64)).view(TS),
        ],
        schema=table_spec("readings").input_schema,
    )
    out.add_table("readings", rows, msg)
    _windows(state, d, ctx, out, sid, ts, values, msg)
    return _speeds(state, sid, values, msg)


def _arrivals(state: ShardState, sid: NDArray[np.int64], ts: NDArray[np.int64]) -> NDArray[np.int8]:
    """Per valid reading (in arrival order): ok, ``late`` (older than the series' newest
    timestamp so far minus its allowed lateness) or ``duplicate`` (that timestamp already
    accepted); accepted timestamps update the series' event time and the arrival log.

    In-order series (each reading newer than everything before it) are the common case and
    cost a sort; only series with readings out of order are looked at one by one."""
    code = np.zeros(sid.size, np.int8)
    order = np.argsort(sid, kind="stable")
    s_o, t_o = sid[order], ts[order]
    first = np.ones(s_o.size, bool)
    first[1:] = s_o[1:] != s_o[:-1]
    in_order = np.empty(s_o.size, bool)
    in_order[first] = t_o[first] > state.newest[s_o[first]]
    in_order[~first] = t_o[1:][~first[1:]] > t_o[:-1][~first[1:]]
    if not in_order.all():
        starts = np.flatnonzero(first)
        group_of = np.cumsum(first) - 1
        disordered = np.unique(group_of[~in_order])
        ends = np.append(starts[1:], s_o.size)
        known = _logged(state, np.unique(s_o[starts[disordered]]))
        for g in disordered.tolist():
            rows = order[starts[g] : ends[g]]
            s = int(s_o[starts[g]])
            arrivals = Arrivals(
                None if state.newest[s] == _I64_MIN else int(state.newest[s]),
                known.get(s, np.empty(0, np.int64)),
            )
            reasons = arrival_reasons(ts[rows], arrivals, int(state.lateness[s]))
            code[rows[reasons == "late"]] = _LATE
            code[rows[reasons == "duplicate"]] = _DUPLICATE
    ok = code == 0
    np.maximum.at(state.newest, sid[ok], ts[ok])
    if ok.any():
        t_ok = ts[ok]
        state.arrival_log.append((sid[ok].astype(np.int32), t_ok, int(t_ok.max())))
        state.log_rows += int(ok.sum())
        state.newest_any = max(state.newest_any, int(t_ok.max()))
        _prune_log(state)
    return code


def _logged(state: ShardState, sids: NDArray[np.int64]) -> dict[int, NDArray[np.int64]]:
    """The logged accepted timestamps of ``sids``, sorted, per series."""
    if not state.arrival_log:
        return {}
    s_all = np.concatenate([c[0] for c in state.arrival_log])
    t_all = np.concatenate([c[1] for c in state.arrival_log])
    sel = np.isin(s_all, sids)
    s_sel, t_sel = s_all[sel], t_all[sel]
    return {int(s): np.unique(t_sel[s_sel == s]) for s in sids.tolist()}


def _prune_log(state: ShardState) -> None:
    horizon = state.newest_any - 2 * state.max_lateness
    log_ = state.arrival_log
    while log_ and (log_[0][2] < horizon or state.log_rows > LOG_MAX_ROWS):
        state.log_rows -= log_.popleft()[0].size


def _calibrate(
    state: ShardState,
    ctx: Context,
    sid: NDArray[np.int64],
    ts: NDArray[np.int64],
    raw: NDArray[np.float64],
) -> tuple[NDArray[np.float64], pa.Array]:
    """``gain * raw + offset`` of each series' newest calibration from its ``valid_from`` on,
    and the quality column (``good`` or ``calibrated:v<version>``)."""
    n = sid.size
    arrays = ctx.calibration.arrays(state.names) if ctx.calibration is not None else None
    if arrays is None:
        return raw, pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array(["good"])
        ).cast(pa.string())
    gain, offset, valid_from, version = arrays
    applied = ts >= valid_from[sid]
    values = np.where(applied, gain[sid] * raw + offset[sid], raw)
    v = np.where(applied, version[sid], 0)
    uniq, inverse = np.unique(v, return_inverse=True)
    labels = ["good" if x == 0 else f"calibrated:v{x}" for x in uniq.tolist()]
    quality = pa.DictionaryArray.from_arrays(
        pa.array(inverse.astype(np.int32)), pa.array(labels)
    ).cast(pa.string())
    return values, quality


Speeds = tuple[NDArray[np.int32], NDArray[np.float64], NDArray[np.intp]]
"""Accepted shaft-speed readings of a batch: (asset number, rpm, message index)."""


def _speeds(
    state: ShardState, sid: NDArray[np.int64], values: NDArray[np.float64], msg: NDArray[np.intp]
) -> Speeds | None:
    speed = state.speed[sid]
    if not speed.any():
        return None
    return state.s_asset[sid[speed]], values[speed], msg[speed]


def _rpm_at(state: ShardState, speeds: Speeds | None, asset: int, i: int) -> float:
    """The asset's shaft speed as of message ``i``: its newest speed reading in an earlier
    message of the batch, else the newest before the batch."""
    if speeds is not None:
        a, v, m = speeds
        mine = np.flatnonzero((a == asset) & (m < i))
        if mine.size:
            return float(v[mine[-1]])
    return state.assets[asset].shaft_rpm


def _keep_speeds(state: ShardState, speeds: Speeds | None) -> None:
    if speeds is not None:
        for asset, value in zip(speeds[0].tolist(), speeds[1].tolist(), strict=True):
            state.assets[asset].shaft_rpm = value


# -- process windows ----------------------------------------------------------------------
def _windows(
    state: ShardState,
    d: Decoded,
    ctx: Context,
    out: Out,
    sid: NDArray[np.int64],
    ts: NDArray[np.int64],
    values: NDArray[np.float64],
    msg: NDArray[np.intp],
) -> None:
    """Add the accepted readings to their series' bucket rings and emit the windows of the
    buckets they close.  A batch spanning more than ``RING - MAX_K`` buckets of some series (a
    bulk replay) is taken in slices of event time, so a ring never wraps within a step."""
    cadence = state.cadence[sid]
    bucket = ts // cadence
    first_bucket = np.full(state.n, np.iinfo(np.int64).max)
    np.minimum.at(first_bucket, sid, bucket)
    rank = (bucket - first_bucket[sid]) // (RING - MAX_K)
    if rank.max(initial=0) == 0:
        _window_slice(state, d, ctx, out, sid, ts, values, msg, bucket)
    else:
        for r in np.unique(rank).tolist():
            sel = np.flatnonzero(rank == r)
            _window_slice(state, d, ctx, out, sid[sel], ts[sel], values[sel], msg[sel], bucket[sel])


def _window_slice(
    state: ShardState,
    d: Decoded,
    ctx: Context,
    out: Out,
    sid: NDArray[np.int64],
    ts: NDArray[np.int64],
    values: NDArray[np.float64],
    msg: NDArray[np.intp],
    bucket: NDArray[np.int64],
) -> None:
    new_series = np.isnan(state.y0[sid])
    if new_series.any():  # the reference level of a series: its first value (for precision)
        first = np.unique(sid[new_series], return_index=True)
        state.y0[first[0]] = values[new_series][first[1]]
    slot = bucket % RING
    tag = state.ring_tag[sid, slot]
    newer = bucket > tag
    evicts = newer & (tag != _I64_MIN) & (tag > state.emitted[sid])
    np.maximum.at(state.win_newest, sid, ts)
    if evicts.any():  # an open bucket about to lose its slot (after a gap): emit it first
        gone, last = np.unique(sid[evicts][::-1], return_index=True)
        _emit_closed(state, d, ctx, out, gone, msg[evicts][::-1][last])
    if newer.any():  # a bucket takes over its ring slot
        state.ring_tag[sid[newer], slot[newer]] = bucket[newer]
        state.ring[sid[newer], slot[newer]] = 0.0
        state.ring[sid[newer], slot[newer], 6] = np.inf
        state.ring[sid[newer], slot[newer], 7] = -np.inf
    add = np.flatnonzero(state.ring_tag[sid, slot] == bucket)  # not older than the ring
    if add.size:
        s_a, sl_a = sid[add], slot[add]
        t = (ts[add] - bucket[add] * state.cadence[s_a]) / 1e6  # seconds into the bucket
        y = values[add] - state.y0[s_a]
        flat = s_a * RING + sl_a
        order = np.argsort(flat, kind="stable")
        flat_o = flat[order]
        starts = np.flatnonzero(np.r_[True, flat_o[1:] != flat_o[:-1]])
        keys = flat_o[starts]
        ks, kl = keys // RING, keys % RING
        t_o, y_o = t[order], y[order]
        ring = state.ring
        ring[ks, kl, 0] += np.add.reduceat(np.ones_like(t_o), starts)
        ring[ks, kl, 1] += np.add.reduceat(t_o, starts)
        ring[ks, kl, 2] += np.add.reduceat(t_o * t_o, starts)
        ring[ks, kl, 3] += np.add.reduceat(y_o, starts)
        ring[ks, kl, 4] += np.add.reduceat(y_o * y_o, starts)
        ring[ks, kl, 5] += np.add.reduceat(t_o * y_o, starts)
        ring[ks, kl, 6] = np.minimum(ring[ks, kl, 6], np.minimum.reduceat(t_o, starts))
        ring[ks, kl, 7] = np.maximum(ring[ks, kl, 7], np.maximum.reduceat(t_o, starts))
    # the message that moved each series last: it closes that series' buckets
    present, last = np.unique(sid[::-1], return_index=True)
    last_msg = msg[::-1][last]
    _emit_closed(state, d, ctx, out, present, last_msg)


def _emit_closed(
    state: ShardState,
    d: Decoded,
    ctx: Context,
    out: Out,
    present: NDArray[np.int64],
    last_msg: NDArray[np.intp],
) -> None:
    """Every bucket of the ``present`` series whose end the series' event time has reached:
    its window's ``features`` row, then the process scores of the ticks that completes."""
    tags = state.ring_tag[present]  # (m, RING)
    c = state.cadence[present][:, None]
    closed = (
        (tags > state.emitted[present][:, None])
        & (tags != _I64_MIN)
        & (
            (tags + 1) * c - 3 * state.half_period[present][:, None]
            <= state.win_newest[present][:, None]
        )
    )
    rows_i, cols_i = np.nonzero(closed)
    if not rows_i.size:
        return
    e_sid = present[rows_i]
    e_bucket = tags[rows_i, cols_i]
    e_msg = last_msg[rows_i]
    state.emitted[present] = np.maximum(
        state.emitted[present], np.where(closed, tags, _I64_MIN).max(axis=1)
    )
    # the window of each emitted bucket: its series' buckets in (bucket - k, bucket], read
    # from the MAX_K ring slots before and at the bucket's own
    back = np.arange(MAX_K)
    want = e_bucket[:, None] - back  # (E, MAX_K) bucket ids of the window
    slots = want % RING
    rows2 = e_sid[:, None]
    in_win = (state.ring_tag[rows2, slots] == want) & (back < state.k[e_sid][:, None])
    agg = state.ring[rows2, slots]  # (E, MAX_K, fields)
    w = in_win.astype(np.float64)
    dt = -back * (state.cadence[e_sid][:, None] / 1e6)  # bucket start offsets, seconds
    n, st, stt = agg[:, :, 0] * w, agg[:, :, 1] * w, agg[:, :, 2] * w
    sy, syy, sty = agg[:, :, 3] * w, agg[:, :, 4] * w, agg[:, :, 5] * w
    sums = (
        n.sum(1),
        (st + n * dt).sum(1),
        (stt + 2 * dt * st + n * dt * dt).sum(1),
        sy.sum(1),
        syy.sum(1),
        (sty + dt * sy).sum(1),
    )
    stats = stats_from_sums(*sums)
    level = stats["level"] + state.y0[e_sid]
    bucket_start = e_bucket * state.cadence[e_sid]
    t_min = np.where(in_win & (n > 0), agg[:, :, 6] + dt, np.inf).min(1)
    t_max = agg[:, 0, 7]
    window_start = bucket_start + np.round(t_min * 1e6).astype(np.int64)
    window_end = bucket_start + np.round(t_max * 1e6).astype(np.int64)
    _features_rows(
        state,
        out,
        e_sid,
        window_start,
        window_end,
        sums[0],
        level,
        stats["slope"],
        stats["std"],
        e_msg,
    )
    prognostics.observe_windows(
        state.prognoses,
        _rul_model(ctx),
        ctx.plant,
        out,
        state.names,
        e_sid,
        window_end,
        {"proc_level": level, "proc_slope": stats["slope"], "proc_std": stats["std"]},
        e_msg,
    )
    _score_ticks(
        state,
        d,
        ctx,
        out,
        e_sid,
        bucket_start,
        window_end,
        (level, stats["slope"], stats["std"]),
        e_msg,
    )


def _features_rows(
    state: ShardState,
    out: Out,
    sid: NDArray[np.int64],
    start: NDArray[np.int64],
    end: NDArray[np.int64],
    n: NDArray[np.float64],
    level: NDArray[np.float64],
    slope: NDArray[np.float64],
    std: NDArray[np.float64],
    msg: NDArray[np.intp],
) -> None:
    schema = table_spec("features").input_schema
    a_names, s_names = state.names_pa()
    sid_pa = pa.array(sid)
    m = sid.size
    given = {
        "asset_id": a_names.take(sid_pa),
        "sensor_id": s_names.take(sid_pa),
        "window_start": pa.array(start).view(TS),
        "window_end": pa.array(end).view(TS),
        "feature_version": pa.array(np.full(m, FEATURE_VERSION, np.int32)),
        "n_samples": pa.array(n.astype(np.int32)),
        "proc_level": pa.array(level, from_pandas=True),
        "proc_slope": pa.array(slope, from_pandas=True),
        "proc_std": pa.array(std, from_pandas=True),
    }
    arrays = [
        given[f.name].cast(f.type) if f.name in given else pa.nulls(m, f.type) for f in schema
    ]
    out.add_table("features", pa.Table.from_arrays(arrays, schema=schema), msg)


def _score_ticks(
    state: ShardState,
    d: Decoded,
    ctx: Context,
    out: Out,
    sid: NDArray[np.int64],
    tick: NDArray[np.int64],
    window_end: NDArray[np.int64],
    views: tuple[NDArray[np.float64], ...],
    msg: NDArray[np.intp],
) -> None:
    """Hand each emitted window (its level, slope and std) to its asset's process detector,
    asset by asset and tick by tick in event-time order; a sensor whose contract declares
    ``watched_as`` hands over that view only."""
    asset = state.s_asset[sid]
    order = np.lexsort((sid, tick, asset))
    messages = d.messages
    level, slope, std = views
    for j in order.tolist():
        a = state.assets[int(asset[j])]
        i = int(msg[j])
        s = int(sid[j])
        contract = state.contracts[s]
        declared = contract.watched_as
        offered = (
            {"level": float(level[j]), "slope": float(slope[j]), "std": float(std[j])}
            if declared == "auto"
            else {declared: float(slope[j] if declared == "slope" else level[j])}
        )
        # the sensor's quantum and its window's length: the finest change a window resolves
        offered["resolution"] = contract.resolution
        offered["window_s"] = float(state.k[s] * state.cadence[s]) / 1e6
        offered["rate_hz"] = contract.sample_rate_hz
        offered["overlap"] = float(state.k[s])  # consecutive windows share readings
        score_process(
            a.scorer,
            Emit(out, i, messages[i].received_us),
            a.asset_id,
            state.names[s][1],
            int(tick[j]),
            int(window_end[j]),
            offered,
            ctx.policy,
            ctx.plant,
            ctx.labels,
        )


# -- vibration frames -------------------------------------------------------------------------
_VIB_FEATURES = feature_names("vibration")


def _frames(
    state: ShardState, d: Decoded, ctx: Context, out: Out, dead: _DeadLetters, speeds: Speeds | None
) -> None:
    """Check each frame against its contract and its sensor's event time, compute the
    vibration features of all accepted frames (one call per sample rate, length and bearing),
    then score them and pass them through the flight recorder, in arrival order."""
    accepted: list[tuple[int, Frame, int, float]] = []  # (msg, frame, asset number, rpm)
    for i, f in d.frames:
        contract = ctx.plant.contract(f.asset_id, f.sensor_id)
        if contract is None:
            dead.add(
                i,
                "unknown_sensor",
                f"sensor {f.sensor_id!r} has no contract",
                f.asset_id,
                f.sensor_id,
            )
            continue
        if not contract.frames:
            dead.add(
                i,
                "wrong_type",
                f"sensor {f.sensor_id!r} sends scalar readings",
                f.asset_id,
                f.sensor_id,
            )
            continue
        a = state.asset_index.get(f.asset_id)
        if a is None:
            if state.n + len(state.assets) >= ctx.max_series:
                dead.add(
                    i, "capacity", "this shard tracks too many assets", f.asset_id, f.sensor_id
                )
                continue
            a = state.asset_index[f.asset_id] = len(state.assets)
            state.assets.append(AssetState(f.asset_id))
        problem = frame_problem(contract, f.sample_rate_hz, f.samples)
        if problem is None:
            arrivals = state.assets[a].frame_arrivals.setdefault(f.sensor_id, Arrivals())
            order = arrival_reasons(
                np.array([f.ts_start_us]), arrivals, round(contract.allowed_lateness_s * 1e6)
            )[0]
            if order != OK:
                problem = (
                    str(order),
                    "timestamp already accepted for this sensor"
                    if order == "duplicate"
                    else "older than the newest frame of this sensor minus the allowed lateness",
                )
        if problem is not None:
            dead.add(i, *problem, f.asset_id, f.sensor_id)
            continue
        accepted.append((i, f, a, _rpm_at(state, speeds, a, i)))
    if not accepted:
        return
    feats: list[dict[str, float]] = [{}] * len(accepted)
    by_shape: dict[tuple, list[int]] = {}
    for j, (_, f, _, _) in enumerate(accepted):
        key = (f.sample_rate_hz, f.samples.size, ctx.plant.bearing(f.asset_id, f.sensor_id))
        by_shape.setdefault(key, []).append(j)
    for (rate, _, bearing), js in by_shape.items():
        x = np.stack([accepted[j][1].samples for j in js])
        rpm = np.array([accepted[j][3] for j in js])
        if bearing is None:  # no declared bearing: no defect orders (never a made-up geometry)
            bearing, rpm = SKF_6205, np.full(rpm.shape, np.nan)
        computed = vibration_features(x, rate, rpm, bearing)
        for r, j in enumerate(js):
            feats[j] = {name: float(v[r]) for name, v in computed.items()}
    model = ctx.champion.get() if ctx.champion is not None else None
    rows = []
    for (i, f, a, _), values in zip(accepted, feats, strict=True):
        n = f.samples.size
        row: dict[str, Any] = {
            "asset_id": f.asset_id,
            "sensor_id": f.sensor_id,
            "window_start": f.ts_start_us,
            "window_end": f.ts_start_us + round(n / f.sample_rate_hz * 1e6),
            "feature_version": FEATURE_VERSION,
            "n_samples": n,
            **{name: values.get(name) for name in _VIB_FEATURES},
        }
        rows.append(row)
        out.add("features", row, i)
        emit = Emit(out, i, d.messages[i].received_us)
        scorer = state.assets[a].scorer
        score_vibration(scorer, emit, row, model, ctx.policy, ctx.plant, ctx.labels)
        record_frame(
            scorer,
            ctx.policy,
            FrameCandidate(f.asset_id, f.sensor_id, f.ts_start_us, f.sample_rate_hz, f.samples),
            emit,
        )
    prognostics.observe_rows(
        state.prognoses,
        _rul_model(ctx),
        ctx.plant,
        out,
        [(i, row) for (i, *_), row in zip(accepted, rows, strict=True)],
    )


def _rul_model(ctx: Context):
    return ctx.rul_champion.get() if ctx.rul_champion is not None else None
