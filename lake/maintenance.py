"""Lake maintenance: expire rows past their table's retention, compact the stream's many small
files (Z-ordered by asset and time where the catalogue says so), and vacuum files that have been
out of the table for longer than its vacuum window.

Every rule is the table's own declaration in ``lake.catalogue`` (``retention_days``,
``vacuum_hours``, ``z_order``); the control plane runs these functions on a schedule
(``dagster_project.assets.maintenance``).  They are safe while the stream appends: Delta's
optimistic concurrency lets an append and a compaction of other files commit side by side, and a
commit that does conflict is retried on the new version.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import CommitFailedError

from lake.catalogue import table_names, table_spec
from lake.store import Lake, LakeError, writer_properties

__all__ = [
    "TableMaintenance",
    "compact",
    "expire",
    "maintain",
    "partition_files",
    "vacuum",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
_ATTEMPTS = 5


@dataclass
class TableMaintenance:
    """What one maintenance pass did to one table."""

    table: str
    files_before: int = 0
    files_after: int = 0
    expired_partitions: list[str] = field(default_factory=list)
    compacted_partitions: list[str] = field(default_factory=list)
    vacuumed_files: int = 0

    def as_row(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "files_before": self.files_before,
            "files_after": self.files_after,
            "expired_partitions": len(self.expired_partitions),
            "compacted_partitions": len(self.compacted_partitions),
            "vacuumed_files": self.vacuumed_files,
        }


def _retry(what: str, action: Callable[[], T]) -> T:
    """Run ``action``; when its commit loses a race with another writer, retry it (each try
    reloads the table, so it re-plans on the winner's version)."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return action()
        except CommitFailedError as exc:
            if attempt == _ATTEMPTS:
                raise LakeError(
                    f"{what}: commit still conflicting after {attempt} tries ({exc})"
                ) from None
            log.info("%s: commit conflict (%s), retry %d", what, exc, attempt)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def partition_files(lake: Lake, name: str) -> dict[str | None, int]:
    """Number of data files per ``date`` partition (key None for an unpartitioned table)."""
    if not lake.exists(name):
        return {}
    actions = pa.table(lake.table(name).get_add_actions(flatten=True))  # arro3 -> pyarrow
    if actions.num_rows == 0:
        return {}
    column = "partition.date"
    if column not in actions.column_names:
        return {None: actions.num_rows}
    counts = pc.value_counts(actions[column].cast(pa.string()))
    return {c["values"].as_py(): c["counts"].as_py() for c in counts}


def _today(now: dt.datetime | None) -> dt.date:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date()


def expire(lake: Lake, name: str, *, now: dt.datetime | None = None) -> list[str]:
    """Delete the ``date`` partitions older than the table's ``retention_days`` (a metadata-only
    commit: whole files are removed, none rewritten).  Returns the partitions deleted."""
    spec = table_spec(name)
    if spec.retention_days is None or "date" not in spec.partition_by or not lake.exists(name):
        return []
    cutoff = _today(now) - dt.timedelta(days=spec.retention_days)
    old = sorted(d for d in partition_files(lake, name) if d is not None and d < cutoff.isoformat())
    if old:
        _retry(f"expire {name}", lambda: lake.table(name).delete(f"date < '{cutoff.isoformat()}'"))
        log.info("%s: expired %d partition(s) before %s", name, len(old), cutoff)
    return old


def compact(
    lake: Lake, name: str, *, min_files: int = 2, now: dt.datetime | None = None
) -> list[str]:
    """Fold the small files of every partition that has at least ``min_files`` of them.

    Closed partitions (before today) of a table with a declared ``z_order`` are rewritten
    clustered by those columns, so that one asset's time range is a few row groups; today's
    partition, which the stream is still appending to, is only bin-packed (cheap, repeatable).
    Returns the partitions compacted.
    """
    spec = table_spec(name)
    today = _today(now).isoformat()
    done: list[str] = []
    for partition, n_files in sorted(
        partition_files(lake, name).items(), key=lambda kv: str(kv[0])
    ):
        if n_files < min_files:
            continue
        filters = None if partition is None else [("date", "=", partition)]
        z_order = spec.z_order and partition is not None and partition < today

        def run(filters: Any = filters, z_order: bool = bool(z_order)) -> dict[str, Any]:
            optimizer = lake.table(name).optimize
            props = writer_properties(spec)
            if z_order:
                return optimizer.z_order(
                    list(spec.z_order), partition_filters=filters, writer_properties=props
                )
            return optimizer.compact(partition_filters=filters, writer_properties=props)

        metrics = _retry(f"compact {name} {partition}", run)
        log.info(
            "%s %s: %s %d -> %d file(s)",
            name,
            partition or "",
            "z-ordered" if z_order else "compacted",
            metrics.get("numFilesRemoved", 0),
            metrics.get("numFilesAdded", 0),
        )
        done.append(str(partition))
    return done


def vacuum(lake: Lake, name: str, *, retention_hours: int | None = None) -> list[str]:
    """Delete files that have been out of the table for longer than its ``vacuum_hours`` (or
    ``retention_hours``).  Returns the files deleted."""
    if not lake.exists(name):
        return []
    hours = table_spec(name).vacuum_hours if retention_hours is None else retention_hours
    # The catalogue's window is the rule, also where it is shorter than Delta's one-week default.
    removed = _retry(
        f"vacuum {name}",
        lambda: lake.table(name).vacuum(
            retention_hours=hours, dry_run=False, enforce_retention_duration=False
        ),
    )
    if removed:
        log.info("%s: vacuumed %d file(s) older than %d h", name, len(removed), hours)
    return removed


def maintain(
    lake: Lake,
    names: Sequence[str] | None = None,
    *,
    now: dt.datetime | None = None,
    compact_tables: bool = True,
    vacuum_tables: bool = True,
) -> list[TableMaintenance]:
    """One maintenance pass over ``names`` (default: every table that exists): expire, compact,
    vacuum, each by the table's declared rules."""
    reports = []
    for name in names or table_names():
        if not lake.exists(name):
            continue
        report = TableMaintenance(name, files_before=sum(partition_files(lake, name).values()))
        report.expired_partitions = expire(lake, name, now=now)
        if compact_tables:
            report.compacted_partitions = compact(lake, name, now=now)
        if vacuum_tables:
            report.vacuumed_files = len(vacuum(lake, name))
        report.files_after = sum(partition_files(lake, name).values())
        reports.append(report)
    return reports
