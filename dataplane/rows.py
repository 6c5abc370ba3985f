"""Rows on their way to the lake: each table's rows of one micro-batch, with the source position
(source, offset) of the input message every row came from - the exactly-once key of the sink."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from dataplane.formats import Message
from lake.catalogue import table_spec

__all__ = ["SinkRows", "STREAM_OUTPUTS", "Out", "empty_rows"]

STREAM_OUTPUTS = (
    "readings",
    "features",
    "frames",
    "scores",
    "alerts",
    "drift_events",
    "dead_letter",
    "unknown_readings",
    "prognostics",
)
"""The tables the telemetry flow writes (the others belong to the control plane)."""


@dataclass(frozen=True)
class SinkRows:
    """Rows for one table.  ``source`` is one source name, or a tuple of them with
    ``source_index`` naming each row's; ``offset`` is one offset for every row or one per row.
    ``progress`` marks a durability mark (no rows): everything of ``source`` up to ``offset``
    was sent."""

    table: str
    source: str | tuple[str, ...]
    offset: int | NDArray[np.int64]
    rows: pa.Table
    received_us: int = 0  # when the (newest) input message arrived
    progress: bool = False
    source_index: NDArray[np.int32] | None = None

    def parts(self) -> Iterator[tuple[str, NDArray[np.int64], NDArray[np.intp] | None]]:
        """``(source, offsets, row indices or None for all rows)`` per source of the rows."""
        n = self.rows.num_rows
        offsets = (
            np.full(n, self.offset, np.int64)
            if np.ndim(self.offset) == 0
            else np.asarray(self.offset, np.int64)
        )
        if isinstance(self.source, str):
            yield self.source, offsets, None
            return
        index = self.source_index if self.source_index is not None else np.zeros(n, np.int32)
        if len(self.source) == 1:
            yield self.source[0], offsets, None
            return
        for k, name in enumerate(self.source):
            take = np.flatnonzero(index == k)
            if take.size:
                yield name, offsets[take], take


_EMPTY: dict[str, pa.Table] = {}


def empty_rows(table: str) -> pa.Table:
    if table not in _EMPTY:
        _EMPTY[table] = table_spec(table).input_schema.empty_table()
    return _EMPTY[table]


class Out:
    """Collects the rows of one micro-batch per table - whole Arrow tables built from arrays,
    or a few row dictionaries (alerts, scores) - and turns them into one ``SinkRows`` per
    table, stamped with each row's message position."""

    def __init__(self, messages: list[Message]):
        self.messages = messages
        self.tables: dict[str, list[tuple[pa.Table, NDArray[np.intp]]]] = defaultdict(list)
        self.dicts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.dict_msg: dict[str, list[int]] = defaultdict(list)

    def add(self, table: str, row: dict[str, Any], msg: int) -> None:
        self.dicts[table].append(row)
        self.dict_msg[table].append(msg)

    def add_table(self, table: str, rows: pa.Table, msg: NDArray[np.intp]) -> None:
        if rows.num_rows:
            self.tables[table].append((rows, np.asarray(msg, np.intp)))

    def sink_rows(self, path: str | None = None) -> list[SinkRows]:
        """One ``SinkRows`` per table.  ``path`` names the way these rows take to the sink (the
        shard): each row's source becomes ``<source>#<path>``, so the sink's exactly-once key
        follows one path, along which a source's offsets only grow.  (Rows of one source reach
        a table along several shards; a lower offset still in flight on one shard when a higher
        one was committed on another would otherwise be taken for a replay after a crash.)"""
        if not self.tables and not self.dicts:
            return []
        messages = self.messages
        src = [m.source for m in messages]
        if path is not None:
            suffix = f"#{path}"
            src = [x + suffix for x in src]
        names = dict.fromkeys(src)
        if len(names) == 1:
            m_src = np.zeros(len(messages), np.int32)
        else:
            code = {name: i for i, name in enumerate(names)}
            m_src = np.array([code[x] for x in src], np.int32)
        m_off = np.array([m.offset for m in messages], np.int64)
        newest = max(m.received_us for m in messages) if messages else 0
        sources = tuple(names)
        out = []
        for table in sorted(set(self.tables) | set(self.dicts)):
            schema = table_spec(table).input_schema
            parts = list(self.tables.get(table, ()))
            if self.dicts.get(table):
                parts.append(
                    (
                        pa.Table.from_pylist(self.dicts[table], schema=schema),
                        np.asarray(self.dict_msg[table], np.intp),
                    )
                )
            rows = (
                parts[0][0]
                if len(parts) == 1
                else pa.concat_tables([p[0] for p in parts], promote_options="none")
            )
            msg = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
            out.append(SinkRows(table, sources, m_off[msg], rows, newest, source_index=m_src[msg]))
        return out
