"""The Delta Lake catalogue: table declarations, the idempotent writer, readers and SQL.

The catalogue and settings load with the package; the writer and views (which import
``deltalake`` and pandas) load on first use of their names, so a light user of the schemas
(the stream's engine-agnostic core) imports neither."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lake.catalogue import TABLES, TableSpec, UnknownTableError, table_names, table_spec
from lake.settings import Settings

if TYPE_CHECKING:
    from lake.store import Lake, LakeError, SchemaMismatchError, conform
    from lake.views import current_alerts

__all__ = [
    "TABLES",
    "Lake",
    "LakeError",
    "SchemaMismatchError",
    "Settings",
    "TableSpec",
    "UnknownTableError",
    "conform",
    "current_alerts",
    "table_names",
    "table_spec",
]

_LAZY = {
    "Lake": "lake.store",
    "LakeError": "lake.store",
    "SchemaMismatchError": "lake.store",
    "conform": "lake.store",
    "current_alerts": "lake.views",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lake' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
