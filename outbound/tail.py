"""Follow a Delta table: the rows of the data files that appeared since the last look.

The stream only appends; a new table version adds files.  ``TableTail.poll`` compares the
table's files with those it has read and reads only the new ones (with the columns asked for),
so a poll costs one incremental log update when nothing changed.  Compaction rewrites old rows
into new files, which are then read again: consumers must fold rows idempotently
(``outbound.state`` does).  The first poll can be limited to the newest ``date`` partitions
(``first_days``): the current state of a big table is in its last days, not its history.
"""

from __future__ import annotations

import datetime as dt
import logging

import pyarrow as pa
import pyarrow.dataset as pads

from lake import Lake

__all__ = ["TableTail"]

log = logging.getLogger(__name__)


class TableTail:
    """New rows of table ``name`` of ``lake`` since the previous ``poll``."""

    def __init__(
        self, lake: Lake, name: str, columns: list[str] | None = None, first_days: int | None = None
    ):
        self.lake, self.name, self.columns = lake, name, columns
        self.first_days = first_days
        self.version: int | None = None
        self.read: set[str] = set()

    def poll(self) -> pa.Table | None:
        """The rows of the files added since the last poll (None when there are none)."""
        if self.version is None and not self.lake.exists(self.name):
            return None
        version = self.lake.table(self.name).version()
        if version == self.version:
            return None
        ds = self.lake.dataset(self.name)
        fragments = list(ds.get_fragments())
        new = [f for f in fragments if f.path not in self.read]
        first = self.version is None
        self.version, self.read = version, {f.path for f in fragments}
        if first and self.first_days is not None:
            new = _newest_days(new, self.first_days)
        if not new:
            return None
        subset = pads.FileSystemDataset(new, ds.schema, ds.format, ds.filesystem)
        return subset.to_table(columns=self.columns)


def _newest_days(fragments: list, days: int) -> list:
    """The fragments of the newest ``days`` date partitions (all when unpartitioned)."""
    dates: list[tuple[dt.date | None, object]] = []
    for f in fragments:
        keys = pads.get_partition_keys(f.partition_expression)
        value = keys.get("date")
        if isinstance(value, str):
            value = dt.date.fromisoformat(value)
        dates.append((value, f))
    known = sorted({d for d, _ in dates if d is not None})
    if not known:
        return fragments
    keep = set(known[-days:])
    return [f for d, f in dates if d is None or d in keep]
