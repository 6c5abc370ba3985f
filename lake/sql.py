"""Read-only SQL over the lake with DuckDB, offline.

Every table of the catalogue is visible under its own name, read through its Delta log as a
pyarrow dataset (no DuckDB extension is downloaded).  External file access is switched off, so
a query can read the lake and nothing else, and write nothing.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from lake.catalogue import table_names
from lake.store import Lake, LakeError

__all__ = ["connect", "query", "SQLError"]


class SQLError(LakeError):
    """A query DuckDB refused; the message is DuckDB's, first line only."""


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per lake table (empty tables included)."""
    con = duckdb.connect(":memory:")
    for name in table_names():
        con.register(name, lake.dataset(name))
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def query(lake: Lake, sql: str) -> pa.Table:
    """Run one read-only SQL statement over the lake and return the result as Arrow.

    >>> import tempfile
    >>> query(Lake(tempfile.mkdtemp()), "select count(*) as n from readings").to_pylist()
    [{'n': 0}]
    """
    con = connect(lake)
    try:
        relation = con.sql(sql)
        if relation is None:  # a statement, not a query: nothing to return
            return pa.table({})
        return relation.to_arrow_table()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise SQLError(f"query failed: {first}") from None
    finally:
        con.close()
