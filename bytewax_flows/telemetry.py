"""The telemetry dataflow, Bytewax's shell over the engine-agnostic ``dataplane``.

Run it with ``python -m bytewax.run bytewax_flows.telemetry:flow`` (the live simulator, lake
from ``PLANTPULSE_LAKE``) or build a variant with ``get_flow(source, lake_uri)``.

Every item is a micro-batch of messages (``dataplane.wire.Batch``): what a source partition
received together.  The flow decodes it into arrays, splits it by asset into ``shards`` keyed
pieces (``PLANTPULSE_SHARDS``, default 4: what lets several workers share the stateful work)
and hands each to ``dataplane.step.process``, which returns every lake table's rows of the
batch.  Every input ends in exactly one place: accepted rows in ``readings`` (scalar sensors)
or ``features``/``frames`` (vibration frames), rejected ones in ``dead_letter`` with a reason.
"""

from __future__ import annotations

import logging
import os
from functools import partial

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from bytewax_flows.routing import worker_key
from bytewax_flows.sinks import DeltaSink, progress_rows
from bytewax_flows.sources import SimulatorSource
from dataplane.calibration import CalibrationCache
from dataplane.rows import SinkRows
from dataplane.step import Context, Plant, process, route
from dataplane.topology import shard_groups
from dataplane.wire import Batch, Decoded, as_batch
from lake import Settings
from lake.labels import MaintenanceFeed
from models.registry import FAULT_MODEL, RUL_MODEL, ChampionWatcher
from physics.simulator import default_fleet
from plant.model import Plant as PlantModel
from plant.watch import PlantWatcher

__all__ = ["get_flow", "build_flow", "flow", "simulated_flow", "SHARDS"]

log = logging.getLogger(__name__)

SHARDS = int(os.environ.get("PLANTPULSE_SHARDS", "4"))
"""Keyed pieces each micro-batch is split into by asset: the unit Bytewax spreads over workers
(more shards than workers balance better; each costs a little per batch)."""


def get_flow(
    source: Source | None = None,
    lake_uri: str | None = None,
    tracking_uri: str | None = None,
    champion: ChampionWatcher | None = None,
    plant: Plant | None = None,
    shards: int | None = None,
) -> Dataflow:
    """The telemetry dataflow from ``source`` (default: the live simulated fleet) to the lake,
    scoring with the champion fault classifier of the MLflow registry at ``tracking_uri`` (or
    the given ``champion`` watcher), and serving remaining useful life with the RUL model's
    champion of the same registry.  Settings are read here, once."""
    settings = Settings.from_env()
    source = source or SimulatorSource(default_fleet(), live=True)
    lake_uri = lake_uri or settings.lake_uri
    champion = champion or ChampionWatcher(
        tracking_uri or settings.mlflow_tracking_uri, FAULT_MODEL
    )
    rul_champion = ChampionWatcher(champion.tracking_uri, RUL_MODEL, champion.refresh_s)
    ctx = Context(
        calibration=CalibrationCache(lake_uri),
        champion=champion,
        rul_champion=rul_champion,
        labels=MaintenanceFeed(lake_uri),  # re-baselines and confirmations without restart
    )
    if plant is not None:  # a loaded plant file is followed like the default one
        ctx.plant = PlantWatcher.following(plant) if isinstance(plant, PlantModel) else plant
    return build_flow(source, DeltaSink(lake_uri), ctx, shards=shards)


def simulated_flow(
    n_chunks: int, speed: float | None = None, lake_uri: str | None = None
) -> Dataflow:
    """The demo fleet for ``n_chunks`` seconds of event time, ``speed`` times real time (None: as
    fast as possible): ``python -m bytewax.run "bytewax_flows.telemetry:simulated_flow(600, 10)"``."""
    return get_flow(SimulatorSource(default_fleet(), speed=speed, n_chunks=n_chunks), lake_uri)


def build_flow(
    source: Source,
    sink: DeltaSink,
    ctx: Context | None = None,
    shards: int | None = None,
) -> Dataflow:
    """The telemetry dataflow between an explicit source and sink."""
    ctx = ctx or Context()
    flow = Dataflow("telemetry")
    items = op.input("source", flow, source)  # Batch (or Message / list of them)
    batches = op.map("as_batch", items, as_batch)  # Batch
    marks = op.flat_map("to_every_table", batches, _marks)  # (table, SinkRows) durability
    # assets joined by the plant's topology share a shard (fixed at start, dataplane.topology)
    groups = shard_groups(ctx.plant) if getattr(ctx.plant, "topology", None) else None
    pieces = op.flat_map(
        "route", batches, partial(_route, n_shards=shards or SHARDS, groups=groups)
    )
    # (shard, Decoded): the batch's readings, frames and rejects of one shard's assets
    processed = op.stateful_map("process", pieces, partial(process, ctx=ctx))
    # (shard, [SinkRows]): readings, features, scores, alerts, drift, frames, dead letters
    rows = op.flat_map("rows", processed, _by_table)  # (table, SinkRows)
    op.output("lake", op.merge("all_rows", rows, marks), sink)
    return flow


def _route(
    batch: Batch, n_shards: int, groups: dict[str, str] | None = None
) -> list[tuple[str, Decoded]]:
    """``dataplane.step.route``, each piece keyed for the worker its shard belongs on (the
    piece keeps its shard number: the sink's exactly-once key, ``Decoded.shard``)."""
    return [
        (worker_key(int(shard)), piece) for shard, piece in route(batch, n_shards, groups=groups)
    ]


def _marks(batch: Batch) -> list[tuple[str, SinkRows]]:
    return [item for p in batch.progress for item in progress_rows(p.source, p.offset)]


def _by_table(keyed_rows: tuple[str, list[SinkRows]]) -> list[tuple[str, SinkRows]]:
    return [(r.table, r) for r in keyed_rows[1]]


flow = get_flow()
