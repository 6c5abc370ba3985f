"""The stream's two steps over micro-batches: ``route`` (stateless decode and split by asset)
and ``process`` (everything stateful, for all assets of one shard at once).

Per micro-batch, ``process`` does a handful of NumPy operations over all its readings - the
contract checks, event-time bookkeeping, calibration and the process windows are vectorised
over every (asset, sensor) series of the batch - plus O(1) Python work per message (a
dictionary look-up of its series) and per emitted window (its score).  Each lake table's rows
are built once per batch.  The stages live one per module:

=======================  ===============================================================
``dataplane.routing``     decode and split a batch by asset (``route``)
``dataplane.shard``       the shard's state: arrays indexed by series number (``ShardState``)
``dataplane.scalars``     series look-up, undeclared sensors, checks, ``readings`` rows
``dataplane.arrivals``    event time: newest timestamp per series, the out-of-order log
``dataplane.calibration`` ``gain * raw + offset`` from the injected calibration
``dataplane.windows``     process windows on their cadence, their ``features`` and scores
``dataplane.frames``      vibration frames: checks, features, scores, flight recorder
``dataplane.dead_letters`` every rejected input with its reason
``dataplane.context``     the plant and the protocols the shell injects (``Context``)
=======================  ===============================================================
"""

from __future__ import annotations

import logging

from dataplane.columns import Decoded
from dataplane.context import MAX_SERIES, Context, Plant
from dataplane.dead_letters import DeadLetters
from dataplane.formats import Batch
from dataplane.frames import frames
from dataplane.routing import route
from dataplane.rows import Out, SinkRows
from dataplane.scalars import keep_speeds, land_unknown, scalars, series_of_groups
from dataplane.shard import RING, AssetState, ShardState
from dataplane.topology import annotate_alerts

__all__ = [
    "Plant",
    "Context",
    "ShardState",
    "AssetState",
    "route",
    "process",
    "run_batch",
    "RING",
    "MAX_SERIES",
]

log = logging.getLogger(__name__)


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
    out, dead = Out(d.messages), DeadLetters(d)
    for i, reason, detail, asset, sensor, raw in d.rejects:
        dead.add(i, reason, detail, asset, sensor, raw)
    g_sid, unknown = series_of_groups(state, d, ctx, dead)
    if unknown:
        land_unknown(d, unknown, out, dead)
    speeds = scalars(state, d, g_sid, ctx, out, dead)
    if d.frames:
        frames(state, d, ctx, out, dead, speeds)
    keep_speeds(state, speeds)
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
