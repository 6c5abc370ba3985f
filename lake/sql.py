"""Read-only SQL over the lake with DuckDB, offline.

Every table of the catalogue is visible under its own name, read through its Delta log as a
pyarrow dataset (no DuckDB extension is downloaded).  The connection is locked down before the
query runs:

- file system access is off (``enable_external_access = false``) and no directory is allowed,
  not even a temporary one (``temp_directory = ''``: DuckDB otherwise permits its spill
  directory ``.tmp/``), so ``COPY ... TO``, ``ATTACH``, ``read_text``/``read_csv`` of a file and
  extension installs are refused;
- the configuration is locked (``lock_configuration = true``), so a query cannot turn it back;
- exactly one statement, and it must be a query (``SELECT``, ``FROM``, ``WITH``, ``VALUES``,
  ``DESCRIBE``, ``SUMMARIZE``, ``SHOW`` or ``EXPLAIN``): ``CREATE``, ``INSERT``, ``SET`` ...
  are refused even though they would only touch the throw-away in-memory database.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from lake.catalogue import table_names
from lake.store import Lake, LakeError

__all__ = ["connect", "query", "run", "QueryResult", "SQLError", "DEFAULT_LIMIT"]

DEFAULT_LIMIT = 1000
"""Rows returned when the caller gives no limit (``plantpulse sql --limit N`` changes it)."""

_QUERY_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class SQLError(LakeError):
    """A query refused (by DuckDB or by the read-only rules); the message is one line."""


@dataclass(frozen=True)
class QueryResult:
    """The rows of one query, at most ``limit``; ``truncated`` when the query had more."""

    table: pa.Table
    limit: int | None
    truncated: bool


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """A locked-down DuckDB connection with one view per lake table (empty tables included)."""
    con = duckdb.connect(":memory:", config={"temp_directory": ""})
    for name in table_names():
        con.register(name, lake.dataset(name))
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _one_query(sql: str) -> None:
    """Refuse anything but exactly one read-only query (before DuckDB runs any of it)."""
    if not sql.strip():
        raise SQLError('empty query; give one SQL statement, e.g. "select * from alerts"')
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SQLError(f"query failed: {_first_line(exc)}") from None
    if not statements:
        raise SQLError("empty query (only comments or semicolons); give one SQL statement")
    if len(statements) > 1:
        raise SQLError(
            f"{len(statements)} statements given; `plantpulse sql` runs exactly one query"
        )
    kind = statements[0].type
    if kind not in _QUERY_TYPES:
        raise SQLError(
            f"query failed: {kind.name} statements are disabled; the lake is read-only here"
            " (run one SELECT)"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run(lake: Lake, sql: str, limit: int | None = DEFAULT_LIMIT) -> QueryResult:
    """Run one read-only query over the lake; at most ``limit`` rows (None: all of them).

    >>> import tempfile
    >>> r = run(Lake(tempfile.mkdtemp()), "select asset_id, value from readings")
    >>> r.table.column_names, r.table.num_rows, r.truncated
    (['asset_id', 'value'], 0, False)
    """
    if limit is not None and limit < 1:
        raise SQLError(f"limit must be at least 1, got {limit}")
    _one_query(sql)
    con = connect(lake)
    try:
        relation = con.sql(sql)
        if relation is None:  # cannot happen for the statement types allowed, but be exact
            return QueryResult(pa.table({}), limit, False)
        if limit is None:
            return QueryResult(relation.to_arrow_table(), None, False)
        table = relation.limit(limit + 1).to_arrow_table()
        return QueryResult(table.slice(0, limit), limit, table.num_rows > limit)
    except duckdb.Error as exc:
        raise SQLError(f"query failed: {_first_line(exc)}") from None
    finally:
        con.close()


def query(lake: Lake, sql: str) -> pa.Table:
    """Run one read-only SQL statement over the lake and return all its rows as Arrow.

    >>> import tempfile
    >>> query(Lake(tempfile.mkdtemp()), "select count(*) as n from readings").to_pylist()
    [{'n': 0}]
    """
    return run(lake, sql, limit=None).table
