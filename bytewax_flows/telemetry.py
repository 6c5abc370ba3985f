"""The telemetry dataflow, Bytewax's shell over the engine-agnostic ``dataplane``.

Run it with ``python -m bytewax.run bytewax_flows.telemetry:flow`` (the live simulator, lake
from ``PLANTPULSE_LAKE``) or build a variant with ``get_flow(source, lake_uri)``.

Every item is a micro-batch of messages (``dataplane.wire.Batch``): what a source partition
received together.  The flow decodes it into arrays, splits it by asset into ``shards`` keyed
pieces (``PLANTPULSE_SHARDS``, default 4: what lets several workers share the stateful work)
and hands each to ``dataplane.step.process``, which returns every lake table's rows of the
batch.  Every input ends in exactly one place: accepted rows in ``readings`` (scalar sensors)
or ``features``/``frames`` (vibration frames), rejected ones in ``dead_letter`` with a reason.

The module-level ``flow`` is only a plan: its source's fleet, the plant watcher, the champion
watchers (MLflow) and the calibration cache (Delta) are built in each worker process when the
flow first needs them, so importing this module (a test, a probe, ``bytewax.run`` itself) costs
no registry, lake or fleet.
"""

from __future__ import annotations

import gc
import logging
import pickle
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic

from bytewax_flows.routing import SHARDS, worker_key
from bytewax_flows.sinks import DeltaSink, progress_rows, sink_key
from bytewax_flows.sources import SimulatorSource
from dataplane.columns import Decoded
from dataplane.context import Context, Plant
from dataplane.formats import Batch, as_batch
from dataplane.rows import SinkRows
from dataplane.shard import ShardState
from dataplane.step import process, route
from dataplane.topology import as_topology, shard_groups
from lake import Settings

if TYPE_CHECKING:
    from models.registry import ChampionWatcher

__all__ = ["get_flow", "build_flow", "flow", "simulated_flow", "SHARDS"]

log = logging.getLogger(__name__)


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
    champion of the same registry.  Settings are read here, once; the watchers and the
    calibration cache are built on first use (``build_flow``)."""
    settings = Settings.from_env()
    lake_uri = lake_uri or settings.lake_uri
    tracking = champion.tracking_uri if champion else tracking_uri or settings.mlflow_tracking_uri
    refresh_s = champion.refresh_s if champion else 5.0

    def context() -> Context:
        from bytewax_flows.calibration import CalibrationCache
        from bytewax_flows.labels import MaintenanceFeed
        from models.registry import FAULT_MODEL, RUL_MODEL, ChampionWatcher
        from plant.model import Plant as PlantModel
        from plant.watch import PlantWatcher

        ctx = Context(
            calibration=CalibrationCache(lake_uri),
            champion=champion or ChampionWatcher(tracking, FAULT_MODEL),
            rul_champion=ChampionWatcher(tracking, RUL_MODEL, refresh_s),
            labels=MaintenanceFeed(lake_uri),  # re-baselines and confirmations, no restart
        )
        if plant is not None:  # a loaded plant file is followed like the default one
            ctx.plant = PlantWatcher.following(plant) if isinstance(plant, PlantModel) else plant
        return ctx

    return build_flow(source or SimulatorSource(live=True), DeltaSink(lake_uri), context, shards)


def simulated_flow(
    n_chunks: int, speed: float | None = None, lake_uri: str | None = None
) -> Dataflow:
    """The demo fleet for ``n_chunks`` seconds of event time, ``speed`` times real time (None: as
    fast as possible): ``python -m bytewax.run "bytewax_flows.telemetry:simulated_flow(600, 10)"``."""
    return get_flow(SimulatorSource(speed=speed, n_chunks=n_chunks), lake_uri)


def build_flow(
    source: Source,
    sink: DeltaSink,
    ctx: Context | Callable[[], Context] | None = None,
    shards: int | None = None,
) -> Dataflow:
    """The telemetry dataflow between an explicit source and sink; ``ctx`` is the workers'
    context, or what builds it on first use (default: ``Context()``)."""
    shell = _Shell(ctx if ctx is not None else Context, shards or SHARDS)
    flow = Dataflow("telemetry")
    items = op.input("source", flow, source)  # Batch (or Message / list of them)
    batches = op.map("as_batch", items, as_batch)  # Batch
    # (table#writer, SinkRows): durability marks, to every writer of every table
    marks = op.flat_map("to_every_table", batches, partial(_marks, writers=sink.writers))
    pieces = op.flat_map("route", batches, shell.route)
    # (shard, Decoded): the batch's readings, frames and rejects of one shard's assets
    processed = op.stateful("process", pieces, shell.shard_logic)
    # (shard key, (shard, [SinkRows])): readings, features, scores, alerts, drift, frames, ...
    rows = op.flat_map("rows", processed, partial(_by_table, writers=sink.writers))
    # (table#writer, SinkRows): each shard's rows to its own writer, on its own worker
    op.output("lake", op.merge("all_rows", rows, marks), sink)
    return flow


GC_THRESHOLD = (100_000, 50, 100)
"""The worker's cyclic garbage collector runs after this many allocations (CPython's default
is (700, 10, 10)).  A worker keeps a large, slowly growing state (per series and per asset)
and allocates many short-lived objects per batch, so the default made a full collection every
second or so: the core took 190-196 k one-reading messages per CPU second with it and 231-252 k
with this (500 assets x 20 sensors, 12 s of event time); what it costs is cyclic garbage
living up to 100,000 allocations longer."""


def tune_gc() -> None:
    """Set ``GC_THRESHOLD`` for this process (the worker's, when it builds a shard's step)."""
    gc.set_threshold(*GC_THRESHOLD)


class _Shell:
    """The two data-plane calls with what they need, built once per worker process on the
    first batch: the context, and the shard groups of the plant's topology."""

    def __init__(self, ctx: Context | Callable[[], Context], n_shards: int):
        self._ctx = ctx if isinstance(ctx, Context) else None
        self._build = ctx if not isinstance(ctx, Context) else None
        self.n_shards = n_shards
        self._groups: dict[str, str] | None = None
        self._grouped = False

    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            assert self._build is not None
            self._ctx = self._build()
        return self._ctx

    def groups(self) -> dict[str, str] | None:
        # assets joined by the plant's topology share a shard (fixed at start, dataplane.topology)
        if not self._grouped:
            topology = as_topology(self.ctx.plant)
            self._groups = shard_groups(topology) if topology.topology else None
            self._grouped = True
        return self._groups

    def route(self, batch: Batch) -> list[tuple[str, Decoded]]:
        """``dataplane.step.route``, each piece keyed for the worker its shard belongs on (the
        piece keeps its shard number: the sink's exactly-once key, ``Decoded.shard``)."""
        return [
            (worker_key(int(shard)), piece)
            for shard, piece in route(batch, self.n_shards, groups=self.groups())
        ]

    def shard_logic(self, resume: bytes | ShardState | None) -> _ShardLogic:
        tune_gc()  # in the process that holds the shards' state
        return _ShardLogic(self, resume)


def keeps_snapshots(argv: list[str] | None = None, main_module: str | None = None) -> bool:
    """Whether this process keeps Bytewax's snapshots.  False only for ``python -m
    bytewax.run`` without ``-r``/``--recovery-directory``: Bytewax asks every stateful step
    for a snapshot at the end of each epoch even then, and throws it away, while building the
    shard's costs 1.4 CPU s at the plant's shape (200 MB, most of it the process detectors'
    warm-ups).  Any other way of running (``run_main`` with a ``RecoveryConfig``, a test's
    cluster) keeps them."""
    if main_module is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        main_module = getattr(spec, "name", None)
    if main_module != "bytewax.run":
        return True
    args = sys.argv[1:] if argv is None else argv
    return any(a.startswith("-r") or a.startswith("--recovery-directory") for a in args)


class _ShardLogic(StatefulLogic[Decoded, tuple[int, list[SinkRows]], bytes | None]):
    """One shard's stateful step: ``dataplane.step.process`` on each piece.  Its snapshot is
    the pickled state: Bytewax's ``stateful_map`` deep-copies the state at every epoch, which
    cost a tenth of the worker's time (``bench/results/profile_*.svg``); a pickle is one C-level
    pass and is what the recovery store keeps anyway.  Without recovery there is none
    (``keeps_snapshots``)."""

    KEEP = keeps_snapshots()

    def __init__(self, shell: _Shell, resume: bytes | ShardState | None):
        self.shell = shell
        # (a ShardState itself: a snapshot of the earlier stateful_map step)
        self.state = pickle.loads(resume) if isinstance(resume, bytes) else resume

    def on_item(self, value: Decoded) -> tuple[list[tuple[int, list[SinkRows]]], bool]:
        self.state, rows = process(self.state, value, self.shell.ctx)
        return [(int(value.shard), rows)], StatefulLogic.RETAIN

    def snapshot(self) -> bytes | None:
        if not self.KEEP:
            return None
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)


def _marks(batch: Batch, writers: int) -> list[tuple[str, SinkRows]]:
    return [item for p in batch.progress for item in progress_rows(p.source, p.offset, writers)]


def _by_table(
    keyed: tuple[str, tuple[int, list[SinkRows]]], writers: int
) -> list[tuple[str, SinkRows]]:
    shard, rows = keyed[1]
    return [(sink_key(r.table, shard, writers), r) for r in rows]


flow = get_flow()
