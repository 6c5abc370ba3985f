"""The Delta Lake catalogue: table declarations, the idempotent writer, readers and SQL."""

from lake.catalogue import TABLES, TableSpec, UnknownTableError, table_names, table_spec
from lake.settings import Settings
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
