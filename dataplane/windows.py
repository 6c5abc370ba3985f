"""Process windows of the scalar path, vectorised over every series of the batch.

Per series, a ring of the sums (count, t, t², y, y², t·y, first and last time) of its readings
per *cadence bucket* (``window_every_s`` of its contract, 1 s by default).  A bucket closes when
the series' event time reaches its end (less half a sample period); the window as of a closed
bucket is the sum of the last ``k`` buckets (30 s by default), and its level, slope and std come
from ``physics.process.stats_from_sums``.  One ``features`` row per series per bucket, whatever
the message rate; each window then goes to the RUL hook (``dataplane.prognostics``) and to its
asset's process detector (``dataplane.scoring.score_process``), one call per window.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from dataplane import prognostics
from dataplane.columns import Decoded
from dataplane.context import Context
from dataplane.rows import Out
from dataplane.scoring import Emit, score_process
from dataplane.shard import I64_MIN, MAX_K, RING, ShardState
from lake.catalogue import TS, table_spec
from physics.process import stats_from_sums
from physics.registry import FEATURE_VERSION

__all__ = ["windows"]


def windows(
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
    evicts = newer & (tag != I64_MIN) & (tag > state.emitted[sid])
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
        & (tags != I64_MIN)
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
        state.emitted[present], np.where(closed, tags, I64_MIN).max(axis=1)
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
    # each bucket's sums moved from its own start to the emitted bucket's (t -> t + dt); in
    # elementwise steps and row sums, whose rounding does not depend on how many windows a
    # batch emits (np.einsum's does: a cluster's tables must equal one worker's bit for bit)
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
        ctx.rul_model(),
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
    messages, policy, assets = d.messages, ctx.policy, state.assets
    # element access on Python lists, not NumPy scalars (a tenth of the per-window cost)
    o_asset, o_sid, o_msg = asset[order].tolist(), sid[order].tolist(), msg[order].tolist()
    o_tick, o_end = tick[order].tolist(), window_end[order].tolist()
    level, slope, std = (v[order].tolist() for v in views)
    emits: dict[int, Emit] = {}  # one per closing message (a multi-sensor one closes many)
    for j, s in enumerate(o_sid):
        a = assets[o_asset[j]]
        i = o_msg[j]
        emit = emits.get(i)
        if emit is None:
            emit = emits[i] = Emit(out, i, messages[i].received_us)
        contract = state.contracts[s]
        declared = contract.watched_as
        offered = (
            {"level": level[j], "slope": slope[j], "std": std[j]}
            if declared == "auto"
            else {declared: slope[j] if declared == "slope" else level[j]}
        )
        # the sensor's quantum and its window's length: the finest change a window resolves
        k = float(state.k[s])
        offered["resolution"] = contract.resolution
        offered["window_s"] = k * float(state.cadence[s]) / 1e6
        offered["rate_hz"] = contract.sample_rate_hz
        offered["overlap"] = k  # consecutive windows share readings
        score_process(
            a.scorer, emit, a.asset_id, state.names[s][1], o_tick[j], o_end[j], offered, policy
        )
