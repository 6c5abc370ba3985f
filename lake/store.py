"""Read and write the Delta tables of the catalogue.

``Lake`` is the one door to the tables: appends are checked against the declared schema,
conformed (timestamps to UTC microseconds, the ``date`` partition derived) and, when given an
idempotency key, committed at most once using Delta application transactions, so that a
replayed batch never duplicates rows.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import DeltaError, TableNotFoundError

from lake.catalogue import TableSpec, table_names, table_spec
from lake.settings import Settings, SettingsError, is_remote_uri
from lake.settings import storage_options as _env_storage_options

__all__ = ["Lake", "LakeError", "SchemaMismatchError", "Filters"]

log = logging.getLogger(__name__)

Filters: TypeAlias = pads.Expression | Sequence[tuple[str, str, Any]] | None
"""A pyarrow expression, or DNF tuples such as ``[("asset_id", "=", "pump-01")]``."""


class LakeError(Exception):
    """A problem with the lake that the user can fix; the message says how."""


class SchemaMismatchError(LakeError):
    """Data handed to the lake does not match the table's declared schema."""


def _to_arrow(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, Mapping):
        return pa.table(dict(data))
    if isinstance(data, Sequence) and data and all(isinstance(b, pa.RecordBatch) for b in data):
        return pa.Table.from_batches(list(data))
    raise SchemaMismatchError(
        f"cannot write {type(data).__name__}; give an Arrow table/batch, a DataFrame or a dict"
    )


def _cast_column(spec: TableSpec, field: pa.Field, column: pa.ChunkedArray) -> pa.ChunkedArray:
    where = f"table {spec.name!r}, column {field.name!r}"
    if column.null_count and not field.nullable:
        raise SchemaMismatchError(
            f"{where}: {column.null_count} null value(s) in a required column"
        )
    if column.type == field.type:
        return column
    try:
        if pa.types.is_timestamp(field.type) and pa.types.is_timestamp(column.type):
            if column.type.tz is None:  # naive timestamps are taken as UTC
                column = pc.assume_timezone(column, "UTC")
            return column.cast(field.type, safe=False)  # ns -> us truncates, never wraps
        return column.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaMismatchError(
            f"{where}: expected {field.type}, got {column.type} ({exc})"
        ) from None


def conform(spec: TableSpec, data: Any) -> pa.Table:
    """Check ``data`` against the table's declared schema and return it in exactly that schema.

    Raises ``SchemaMismatchError`` naming the table and the first offending column.
    """
    table = _to_arrow(data)
    expected = spec.input_schema
    missing = [n for n in expected.names if n not in table.column_names]
    if missing:
        raise SchemaMismatchError(f"table {spec.name!r}: missing column(s) {', '.join(missing)}")
    extra = [n for n in table.column_names if n not in spec.schema.names]
    if extra:
        raise SchemaMismatchError(
            f"table {spec.name!r}: column(s) {', '.join(extra)} are not in the declared schema"
            f" ({', '.join(spec.columns)})"
        )
    columns = [_cast_column(spec, f, table.column(f.name)) for f in expected]
    if expected is not spec.schema:  # derive the date partition from the time column
        assert spec.time_column is not None
        ts = columns[expected.get_field_index(spec.time_column)]
        columns.append(ts.cast(pa.date32()))
    return pa.Table.from_arrays(columns, schema=spec.schema)


def writer_properties(spec: TableSpec) -> WriterProperties:
    """How a table's Parquet files are written (by the writer and by compaction alike): zstd,
    and float columns (measurements, features, the frames' samples) without a dictionary,
    because they are nearly all distinct values: Parquet's default tries a dictionary first and,
    when it overflows, keeps the dictionary page *and* the plain values (1.5x the raw float32
    size for a frame's samples).  Top-level float columns are also byte-stream-split; delta-rs
    applies per-column settings to top-level columns only, so a table with a list of floats
    (``frames.samples``) turns dictionaries off for all its columns."""
    floats = ColumnProperties(dictionary_enabled=False, encoding="BYTE_STREAM_SPLIT")
    columns = {f.name: floats for f in spec.schema if pa.types.is_floating(f.type)}
    nested = any(
        pa.types.is_list(f.type) and pa.types.is_floating(f.type.value_type) for f in spec.schema
    )
    return WriterProperties(
        compression="ZSTD",
        default_column_properties=ColumnProperties(dictionary_enabled=False) if nested else None,
        column_properties=columns or None,
    )


class Lake:
    """The Delta tables under one root (a local directory or an object-store URI)."""

    def __init__(self, uri: str | Path, storage_options: dict[str, str] | None = None):
        self.uri = str(uri)
        # An object-store lake without explicit options takes them from the environment
        # (AWS_* and PLANTPULSE_LAKE_OPTIONS), so every component configured by PLANTPULSE_LAKE
        # alone (the stream's sink, the Dagster resource, the CLI) reaches the same store.
        if storage_options is None:
            try:
                storage_options = _env_storage_options(self.uri)
            except SettingsError as exc:
                raise LakeError(str(exc)) from None
        self.storage_options = storage_options
        self._tables: dict[str, DeltaTable] = {}

    @classmethod
    def from_env(cls) -> Lake:
        return cls(Settings.from_env().lake_uri)

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    # -- locations ---------------------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        table_spec(name)  # unknown names fail here, with the list of known ones
        return f"{self.uri.rstrip('/')}/{name}"

    def _ensure_root(self) -> None:
        if is_remote_uri(self.uri):
            return
        root = Path(self.uri)
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".write-probe-"):
                pass  # a unique name: several workers may probe at once
        except OSError as exc:
            raise LakeError(
                f"lake location {self.uri} is not a writable directory ({exc.strerror or exc});"
                " set PLANTPULSE_LAKE to one that is"
            ) from None

    def exists(self, name: str) -> bool:
        # a table once opened stays (the probe lists the table's log: ~0.3 ms a call)
        return name in self._tables or DeltaTable.is_deltatable(
            self.table_uri(name), self.storage_options
        )

    def table(self, name: str) -> DeltaTable:
        """The newest version of table ``name``; ``LakeError`` if it has never been written."""
        dt = self._tables.get(name)
        if dt is not None:
            dt.update_incremental()
            return dt
        try:
            dt = DeltaTable(self.table_uri(name), storage_options=self.storage_options)
        except TableNotFoundError:
            raise LakeError(
                f"table {name!r} has no data yet at {self.table_uri(name)}"
                " (start the stream or run `make run` first)"
            ) from None
        self._tables[name] = dt
        return dt

    def create_tables(self, names: Sequence[str] | None = None) -> None:
        """Create the declared tables that do not exist yet (empty, with schema and partitions)."""
        self._ensure_root()
        for name in names or table_names():
            spec = table_spec(name)
            if self.exists(name):
                continue
            try:
                DeltaTable.create(
                    self.table_uri(name),
                    schema=spec.schema,
                    partition_by=list(spec.partition_by) or None,
                    mode="ignore",
                    name=name,
                    description=spec.description,
                    storage_options=self.storage_options,
                )
            except (DeltaError, OSError) as exc:
                raise LakeError(f"cannot create table {name!r} at {self.uri}: {exc}") from None

    # -- writing -----------------------------------------------------------------------------
    def committed_version(self, name: str, app_id: str) -> int | None:
        """The newest version committed under ``app_id`` to table ``name``, or None."""
        if not self.exists(name):
            return None
        return self.table(name).transaction_version(app_id)

    def committed_versions(self, name: str, app_ids: Iterable[str]) -> dict[str, int | None]:
        """``committed_version`` of each of ``app_ids``, the table read once (each look-up
        costs ~0.5 ms in deltalake 1.6, a table refresh as much again)."""
        ids = list(app_ids)
        if not ids or not self.exists(name):
            return dict.fromkeys(ids)
        dt = self.table(name)
        return {app_id: dt.transaction_version(app_id) for app_id in ids}

    def append(
        self,
        name: str,
        data: Any,
        *,
        idempotency_key: tuple[str, int] | None = None,
        transactions: Mapping[str, int] | None = None,
    ) -> bool:
        """Append ``data`` to table ``name`` in one commit.

        With ``idempotency_key=(app_id, version)`` the commit records that application
        transaction, and a batch whose key was already committed (same app_id, same or lower
        version) is skipped: replaying it adds no rows.  ``transactions`` records several
        application transactions in the same commit (the caller is responsible for having
        filtered out rows that were already committed under them).

        Returns True when rows were committed, False when the batch was a replay or empty.
        """
        spec = table_spec(name)
        table = conform(spec, data)
        txns = dict(transactions or {})
        if idempotency_key is not None:
            app_id, version = idempotency_key
            done = self.committed_version(name, app_id)
            if done is not None and done >= version:
                log.info(
                    "skip replayed batch %s v%d for %s (committed v%d)", app_id, version, name, done
                )
                return False
            txns[app_id] = version
        if table.num_rows == 0 and not txns:
            return False
        self._write(spec, table, mode="append", transactions=txns)
        return True

    def replace(self, name: str, data: Any) -> None:
        """Replace all rows of an unpartitioned table with ``data`` in one commit (a snapshot
        table rebuilt by each run, e.g. ``sensor_proposals``): reruns are safe."""
        spec = table_spec(name)
        if spec.partition_by:
            raise LakeError(f"table {name!r} is partitioned; replace one partition instead")
        self._write(spec, conform(spec, data), mode="overwrite")

    def replace_partition(self, name: str, data: Any, **partition: Any) -> None:
        """Replace exactly one partition (e.g. ``date=2026-11-21``) with ``data``: reruns are safe."""
        spec = table_spec(name)
        if set(partition) != set(spec.partition_by):
            raise LakeError(
                f"table {name!r} is partitioned by {', '.join(spec.partition_by) or 'nothing'};"
                f" got {', '.join(partition) or 'no partition'}"
            )
        table = conform(spec, data)
        predicate = " AND ".join(f"{k} = '{v}'" for k, v in partition.items())
        for k, v in partition.items():
            if table.num_rows and not pc.all(pc.equal(table[k].cast(pa.string()), str(v))).as_py():
                raise LakeError(f"table {name!r}: rows outside partition {k}={v} in replace")
        self._write(spec, table, mode="overwrite", predicate=predicate)

    def _write(
        self,
        spec: TableSpec,
        table: pa.Table,
        *,
        mode: Literal["append", "overwrite"],
        transactions: Mapping[str, int] | None = None,
        predicate: str | None = None,
    ) -> None:
        if not self.exists(spec.name):
            self.create_tables([spec.name])
        commit = CommitProperties(
            app_transactions=[Transaction(a, v) for a, v in (transactions or {}).items()] or None
        )
        dt = self.table(spec.name)
        # a table written before the catalogue declared more (nullable) columns gains them on
        # its next append (e.g. alerts' suspected_cause); conform() admits declared ones only
        have = {f.name for f in dt.schema().fields}
        evolve = mode == "append" and any(f.name not in have for f in spec.schema)
        try:
            if mode == "overwrite":  # only an overwrite takes a predicate (its own overload)
                write_deltalake(
                    dt,
                    table,
                    mode="overwrite",
                    predicate=predicate,
                    commit_properties=commit,
                    writer_properties=writer_properties(spec),
                )
            else:
                write_deltalake(
                    dt,
                    table,
                    mode="append",
                    commit_properties=commit,
                    writer_properties=writer_properties(spec),
                    schema_mode="merge" if evolve else None,
                )
        except (DeltaError, OSError) as exc:
            raise LakeError(f"writing table {spec.name!r} at {self.uri} failed: {exc}") from None

    # -- reading -----------------------------------------------------------------------------
    def dataset(self, name: str, version: int | None = None) -> pads.Dataset:
        """A pyarrow dataset over the table (the newest version, or ``version``)."""
        spec = table_spec(name)
        if not self.exists(name):
            return pads.dataset(pa.table({f.name: pa.array([], f.type) for f in spec.schema}))
        if version is None:
            dt = self.table(name)
        else:
            dt = DeltaTable(
                self.table_uri(name), version=version, storage_options=self.storage_options
            )
        if is_remote_uri(self.uri):
            return dt.to_pyarrow_dataset()
        # Locally, Arrow's own filesystem: with deltalake's Rust-backed handler, Arrow's scan
        # threads can outlive it and abort the interpreter at exit (delta-rs #2184, arrow #34314).
        local = pafs.SubTreeFileSystem(self.table_uri(name), pafs.LocalFileSystem())
        return dt.to_pyarrow_dataset(filesystem=local)

    def read_arrow(
        self,
        name: str,
        *,
        filters: Filters = None,
        columns: Sequence[str] | None = None,
        version: int | None = None,
    ) -> pa.Table:
        """Rows of table ``name`` matching ``filters`` (an expression or DNF tuples)."""
        spec = table_spec(name)
        if columns is not None:
            unknown = [c for c in columns if c not in spec.columns]
            if unknown:
                raise LakeError(f"table {name!r} has no column(s) {', '.join(unknown)}")
        expr = filters
        if filters is not None and not isinstance(filters, pads.Expression):
            expr = pq.filters_to_expression(list(filters))
        try:
            return self.dataset(name, version).to_table(filter=expr, columns=columns)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise LakeError(f"bad filter on table {name!r}: {exc}") from None

    def read(self, name: str, **kwargs: Any) -> pd.DataFrame:
        """Like ``read_arrow`` but as a pandas DataFrame."""
        return self.read_arrow(name, **kwargs).to_pandas()

    def count(self, name: str) -> int:
        return self.dataset(name).count_rows()

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return self.table(name).history(limit)

    # -- maintenance (the rules per table: lake.maintenance) -----------------------------------
    def compact(self, name: str) -> dict[str, Any]:
        """Fold small files into large ones (the stream commits often)."""
        return self.table(name).optimize.compact()

    def vacuum(self, name: str, retention_hours: int | None = None) -> list[str]:
        """Delete files out of the table for longer than ``retention_hours`` (default: the
        table's declared ``vacuum_hours``)."""
        hours = table_spec(name).vacuum_hours if retention_hours is None else retention_hours
        return self.table(name).vacuum(
            retention_hours=hours, dry_run=False, enforce_retention_duration=False
        )
