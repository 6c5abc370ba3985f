"""The scalar path of a shard's micro-batch: each group of readings found as a series (new
series registered against their contract), undeclared sensors kept in ``unknown_readings``,
then the contract and event-time checks of every reading, calibration, the ``readings`` rows
and the process windows; the accepted shaft speeds are handed on to the frames."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pyarrow as pa
from numpy.typing import NDArray

from dataplane.arrivals import arrivals
from dataplane.calibration import calibrate
from dataplane.columns import Decoded
from dataplane.context import Context
from dataplane.dead_letters import (
    BAD_TS,
    NON_FINITE,
    OUT_OF_RANGE,
    REASON,
    DeadLetters,
    reading_detail,
)
from dataplane.formats import TS_MAX, TS_MIN
from dataplane.rows import Out
from dataplane.scoring import now_us
from dataplane.shard import SENSOR_SPACE, ShardState
from dataplane.windows import windows
from expectations.checks import value_problems
from lake.catalogue import TS, table_spec

__all__ = ["Speeds", "series_of_groups", "land_unknown", "scalars", "rpm_at", "keep_speeds"]

Speeds = tuple[NDArray[np.int32], NDArray[np.float64], NDArray[np.intp]]
"""Accepted shaft-speed readings of a batch: (asset number, rpm, message index)."""


def series_of_groups(
    state: ShardState, d: Decoded, ctx: Context, dead: DeadLetters
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


def land_unknown(
    d: Decoded, unknown: list[tuple[int, bytes | None]], out: Out, dead: DeadLetters
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
            REASON[BAD_TS],
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


def scalars(
    state: ShardState,
    d: Decoded,
    g_sid: NDArray[np.int64],
    ctx: Context,
    out: Out,
    dead: DeadLetters,
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
    code[(ts < TS_MIN) | (ts >= TS_MAX)] = BAD_TS
    non_finite, out_of_range = value_problems(raw, state.low[sid], state.high[sid])
    code[(code == 0) & non_finite] = NON_FINITE
    code[(code == 0) & out_of_range] = OUT_OF_RANGE
    valid = np.flatnonzero(code == 0)
    if valid.size:
        code[valid] = arrivals(state, sid[valid], ts[valid])
    acc = np.flatnonzero(code == 0)
    if acc.size < code.size:
        bad = np.flatnonzero(code != 0)
        for j in bad.tolist():
            s = int(sid[j])
            asset, sensor = state.names[s]
            v = float(raw[j])
            dead.add(
                int(msg[j]),
                REASON[code[j]],
                reading_detail(int(code[j]), v, state.contracts[s]),
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
    values, quality = calibrate(ctx.calibration, state.names, sid, ts, raw)
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
    windows(state, d, ctx, out, sid, ts, values, msg)
    return _speeds(state, sid, values, msg)


def _speeds(
    state: ShardState, sid: NDArray[np.int64], values: NDArray[np.float64], msg: NDArray[np.intp]
) -> Speeds | None:
    speed = state.speed[sid]
    if not speed.any():
        return None
    return state.s_asset[sid[speed]], values[speed], msg[speed]


def rpm_at(state: ShardState, speeds: Speeds | None, asset: int, i: int) -> float:
    """The asset's shaft speed as of message ``i``: its newest speed reading in an earlier
    message of the batch, else the newest before the batch."""
    if speeds is not None:
        a, v, m = speeds
        mine = np.flatnonzero((a == asset) & (m < i))
        if mine.size:
            return float(v[mine[-1]])
    return state.assets[asset].shaft_rpm


def keep_speeds(state: ShardState, speeds: Speeds | None) -> None:
    if speeds is not None:
        for asset, value in zip(speeds[0].tolist(), speeds[1].tolist(), strict=True):
            state.assets[asset].shaft_rpm = value
