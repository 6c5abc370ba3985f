"""The Delta sink: batched, exactly-once appends to the lake's tables.

Every item carries the source partition and offset of the input message it came from.  A commit
records, as Delta application transactions, the newest offset committed so far per source
(``app_id = "<flow>:<source>"``).  What a sink partition finds recorded when it first meets a
source is its resume point: items at or below it are what Bytewax replays after a crash
(everything since its last snapshot) and are dropped, so each input's rows land in each table
exactly once, independent of how the replay is batched.  Items above it are all written, in
whatever order they arrive: one source's items reach a table along several paths (rejected at
parsing, validated on the asset's worker), and a late item with a lower offset than one already
committed is new, not a replay.

Rows are buffered and committed when a table's buffer reaches ``max_rows`` or ``max_age_s``,
and at every epoch snapshot (so nothing buffered is lost to a crash).

Writers: each table has ``writers`` partitions (``<table>#<k>``, default one per shard of the
flow), and the rows of shard ``s`` go to writer ``s % writers`` (``sink_key``).  Bytewax puts
partition ``i`` of the sorted names on worker ``i % workers``, and shard ``s``'s state lives on
worker ``s % workers`` (``bytewax_flows.routing``), so with as many writers as shards every
table is written by every worker, each writing the rows it made itself: no table is funnelled
through one worker, and no rows cross between processes.  Delta takes the concurrent appends
(optimistic concurrency); the exactly-once key stays per writer, since a shard's rows
(``<source>#<shard>``) reach only its own writer.

Durability marks: a source that must acknowledge its input (MQTT) sends a ``Progress`` item to
every writer of every table the stream writes (``STREAM_OUTPUTS``).  At each snapshot - when
Bytewax has delivered every item of the epoch, along every path, to this partition - the writer
commits the newest mark per source as the application transaction
``"<flow>:<source>:durable#<k>"`` (at most every ``mark_every_s``, in the snapshot's commit of
rows when there is one).  Once those versions reach an offset for every writer of every stream
table, everything derived from the inputs up to it is in the lake (``durable_offsets``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from bytewax_flows.routing import SHARDS
from dataplane.rows import STREAM_OUTPUTS, SinkRows, empty_rows
from lake import Lake, table_names

__all__ = [
    "SinkRows",
    "DeltaSink",
    "STREAM_OUTPUTS",
    "durable_offsets",
    "committed_offset",
    "progress_rows",
    "sink_key",
]

log = logging.getLogger(__name__)


def progress_rows(source: str, offset: int, writers: int = SHARDS) -> list[tuple[str, SinkRows]]:
    """The durability mark of ``source`` at ``offset`` for every writer of every stream table."""
    return [
        (sink_key(t, k, writers), SinkRows(t, source, offset, empty_rows(t), progress=True))
        for t in STREAM_OUTPUTS
        for k in range(writers)
    ]


MARK_EVERY_S = 5.0
"""How often a sink partition records durability marks by default (each may need a commit of
its own: the trade is between acknowledgement delay and the number of commits in quiet tables).
An MQTT source acknowledges after the marks, so its throughput is at most ``receive_maximum``
messages per client per acknowledgement delay: a fast stream sets ``DeltaSink(mark_every_s=)``
lower (``bench.soak``)."""


def durable_app_id(flow_id: str, source: str, writer: int = 0) -> str:
    return f"{flow_id}:{source}:durable#{writer}"


def sink_key(table: str, shard: int, writers: int = SHARDS) -> str:
    """The sink partition of ``table`` that writes shard ``shard``'s rows."""
    return f"{table}#{shard % writers:03d}"


def durable_offsets(
    lake: Lake, sources: Iterable[str], flow_id: str = "telemetry", writers: int = SHARDS
) -> dict[str, int | None]:
    """Per source, the newest offset whose rows are committed by every writer of every stream
    table, or None while some writer has no mark of it yet (each table is read once)."""
    marks: dict[str, list[int | None]] = {s: [] for s in sources}
    for table in STREAM_OUTPUTS:
        if not lake.exists(table):
            return dict.fromkeys(marks)
        dt = lake.table(table)
        for source, versions in marks.items():
            versions += [
                dt.transaction_version(durable_app_id(flow_id, source, k)) for k in range(writers)
            ]
    durable: dict[str, int | None] = {}
    for source, versions in marks.items():
        known = [v for v in versions if v is not None]
        durable[source] = min(known) if len(known) == len(versions) else None
    return durable


def committed_offset(
    lake: Lake, table: str, source: str, flow_id: str = "telemetry", shards: int = SHARDS
) -> int | None:
    """The newest offset of ``source`` whose rows ``table`` has committed, along any of the
    flow's ``shards`` paths (``<source>#<shard>``, ``dataplane.rows.Out.sink_rows``); None
    when it has none."""
    if not lake.exists(table):
        return None
    versions = lake.committed_versions(table, [f"{flow_id}:{source}#{k}" for k in range(shards)])
    known = [v for v in versions.values() if v is not None]
    return max(known) if known else None


@dataclass
class _Buffer:
    items: list[SinkRows] = field(default_factory=list)
    n_rows: int = 0
    since: float = 0.0


class _DeltaSinkPartition(StatefulSinkPartition[SinkRows, None]):
    def __init__(
        self,
        lake: Lake,
        flow_id: str,
        max_rows: int,
        max_age_s: float,
        mark_every_s: float,
        writer: int = 0,
    ):
        self.lake, self.flow_id, self.writer = lake, flow_id, writer
        self.max_rows, self.max_age_s, self.mark_every_s = max_rows, max_age_s, mark_every_s
        self.buffers: dict[str, _Buffer] = {}
        # (table, source) -> offset recorded in Delta when first seen: replays are at or below it
        self.resume: dict[tuple[str, str], int] = {}
        self.committed: dict[tuple[str, str], int] = {}  # (table, source) -> newest in Delta
        # (table, source) -> newest durability mark not yet recorded
        self.marks: dict[tuple[str, str], int] = {}
        self.marked_at = 0.0

    def write_batch(self, values: list[SinkRows]) -> None:
        now = time.monotonic()
        for item in values:
            if item.progress:
                if isinstance(item.source, str):  # a mark: one source, one offset
                    key = (item.table, item.source)
                    self.marks[key] = max(self.marks.get(key, -1), int(item.offset))
                continue
            buf = self.buffers.setdefault(item.table, _Buffer(since=now))
            if not buf.items:
                buf.since = now
            buf.items.append(item)
            buf.n_rows += item.rows.num_rows
        for table, buf in list(self.buffers.items()):
            if buf.n_rows >= self.max_rows or (buf.items and now - buf.since >= self.max_age_s):
                self._flush(table)

    def snapshot(self) -> None:
        """Commit everything buffered (and, when due, the durability marks with it)."""
        durable: dict[str, dict[str, int]] = {}
        if self.marks and time.monotonic() - self.marked_at >= self.mark_every_s:
            for (table, source), offset in self.marks.items():
                app_id = durable_app_id(self.flow_id, source, self.writer)
                durable.setdefault(table, {})[app_id] = offset
            self.marks.clear()
            self.marked_at = time.monotonic()
        for table in set(self.buffers) | set(durable):
            self._flush(table, durable.get(table, {}))
        return None

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        for table in list(self.buffers):
            self._flush(table)

    def _app_id(self, source: str) -> str:
        return f"{self.flow_id}:{source}"

    def _flush(self, table: str, durable: dict[str, int] | None = None) -> None:
        """Commit the buffered rows of ``table`` that are not replays (row by row, vectorised:
        an item holds the rows of many messages), recording the newest offset per source;
        ``durable`` adds durability marks to the same commit."""
        buf = self.buffers.pop(table, None) or _Buffer()
        # resume points of the sources met for the first time, the table read once for all
        # (an MQTT plant has a source per publisher, asset topic and partition: thousands)
        first = {
            name for item in buf.items for name in _names(item) if (table, name) not in self.resume
        }
        if first:
            done = self.lake.committed_versions(table, [self._app_id(n) for n in first])
            for name in first:
                v = done[self._app_id(name)]
                self.resume[(table, name)] = self.committed[(table, name)] = -1 if v is None else v
        fresh: list[pa.Table] = []
        newest: dict[str, int] = {}
        for item in buf.items:
            # every row against its source's resume point at once (an item holds the rows of
            # many messages and sources)
            names = _names(item)
            n = item.rows.num_rows
            offsets = (
                np.full(n, item.offset, np.int64)
                if np.ndim(item.offset) == 0
                else np.asarray(item.offset, np.int64)
            )
            index = (
                item.source_index
                if item.source_index is not None and len(names) > 1
                else np.zeros(n, np.intp)
            )
            resume = np.array([self.resume[(table, name)] for name in names], np.int64)
            keep = offsets > resume[index]
            if not keep.any():
                continue
            fresh.append(item.rows if keep.all() else item.rows.take(np.flatnonzero(keep)))
            best = np.full(len(names), -1, np.int64)
            np.maximum.at(best, index[keep], offsets[keep])
            for k in np.flatnonzero(best >= 0).tolist():
                name = names[k]
                newest[name] = max(
                    newest.get(name, -1), int(best[k]), self.committed[(table, name)]
                )
        if not fresh and not durable:
            return
        data = pa.concat_tables(fresh, promote_options="none") if fresh else empty_rows(table)
        self.lake.append(
            table,
            data,
            transactions={**{self._app_id(s): o for s, o in newest.items()}, **(durable or {})},
        )
        for source, offset in newest.items():
            self.committed[(table, source)] = offset
        log.debug("committed %d rows to %s", data.num_rows, table)


def _names(item: SinkRows) -> tuple[str, ...]:
    return (item.source,) if isinstance(item.source, str) else item.source


class DeltaSink(FixedPartitionedSink[SinkRows, None]):
    """Writes ``(<table>#<writer>, SinkRows)`` items (``sink_key``) to the lake; ``writers``
    partitions per table (default: the flow's shards, ``PLANTPULSE_SHARDS``)."""

    def __init__(
        self,
        lake_uri: str,
        *,
        flow_id: str = "telemetry",
        max_rows: int = 200_000,
        max_age_s: float = 1.0,
        mark_every_s: float = MARK_EVERY_S,
        writers: int = SHARDS,
    ):
        self.lake_uri, self.flow_id = lake_uri, flow_id
        self.max_rows, self.max_age_s, self.mark_every_s = max_rows, max_age_s, mark_every_s
        self.writers = writers
        # Bytewax puts partition i of the sorted names on worker i % workers: writer k of each
        # table on worker k % workers (when writers is a multiple of the workers)
        self._parts = sorted(f"{t}#{k:03d}" for t in table_names() for k in range(writers))
        self._index = {p: i for i, p in enumerate(self._parts)}

    def list_parts(self) -> list[str]:
        return self._parts

    def part_fn(self, item_key: str) -> int:
        return self._index[item_key]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DeltaSinkPartition:
        writer = for_part.partition("#")[2]
        return _DeltaSinkPartition(
            Lake(self.lake_uri),
            self.flow_id,
            self.max_rows,
            self.max_age_s,
            self.mark_every_s,
            int(writer) if writer else 0,
        )
