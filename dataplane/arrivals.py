"""Event time of the scalar path: per series the newest accepted timestamp, and a chunked log
of the accepted timestamps within the allowed lateness, consulted only for readings that arrive
out of order (the in-order common case never touches it)."""

from __future__ import annotations

import os

import numpy as np
from numpy.typing import NDArray

from dataplane.dead_letters import DUPLICATE, LATE
from dataplane.shard import I64_MIN, ShardState
from expectations.checks import Arrivals, arrival_reasons

__all__ = ["LOG_MAX_ROWS", "arrivals"]

LOG_MAX_ROWS = int(os.environ.get("PLANTPULSE_ARRIVAL_LOG_ROWS", "20000000"))
"""Accepted timestamps kept for recognising duplicates (beyond the allowed lateness they are
forgotten anyway); past this bound the oldest are forgotten first."""


def arrivals(state: ShardState, sid: NDArray[np.int64], ts: NDArray[np.int64]) -> NDArray[np.int8]:
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
            seen = Arrivals(
                None if state.newest[s] == I64_MIN else int(state.newest[s]),
                known.get(s, np.empty(0, np.int64)),
            )
            reasons = arrival_reasons(ts[rows], seen, int(state.lateness[s]))
            code[rows[reasons == "late"]] = LATE
            code[rows[reasons == "duplicate"]] = DUPLICATE
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
