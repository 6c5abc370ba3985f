"""Checks the read commands make before they look at the lake, so that a mistyped location is
an error that says what is wrong instead of a set of empty tables.

A lake that can be read is a directory holding at least one of the catalogue's Delta tables
(``plantpulse up`` and every writer create them).  A location that does not exist, is a file,
cannot be read, or is a directory with none of the tables is taken for a mistyped
``PLANTPULSE_LAKE`` (or a lake nothing has written yet), and the message says which.
Object-store URIs are not checked here: their errors come from the store when it is read.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["UsageError", "readable_lake_error", "check_readable_lake"]


class UsageError(Exception):
    """A mistake on the command line or in the environment; the message says how to fix it."""


def readable_lake_error(location: str) -> str | None:
    """Why the lake at ``location`` cannot be read, or None when it can (or is remote)."""
    from lake.catalogue import table_names
    from lake.settings import is_remote_uri

    if is_remote_uri(location):
        return None
    root = Path(location.removeprefix("file://"))
    where = f"PLANTPULSE_LAKE={location}"
    if root.is_file():
        return (
            f"{where} is a file, not a lake directory; set PLANTPULSE_LAKE to the lake's directory"
        )
    if not root.exists():
        parent = root.parent
        if not parent.exists():
            return (
                f"{where} does not exist, nor does its parent {parent}; is PLANTPULSE_LAKE"
                " mistyped?"
            )
        return (
            f"{where} does not exist: no lake there (mistyped PLANTPULSE_LAKE, or nothing has "
            "written one yet: `plantpulse up` creates it)"
        )
    if not root.is_dir():
        return f"{where} is not a directory"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"{where} cannot be read by this user (permission denied)"
    if not any((root / name / "_delta_log").is_dir() for name in table_names()):
        writable = "" if os.access(root, os.W_OK) else " (and it is not writable)"
        return (
            f"{where} holds none of the lake's tables{writable}; is PLANTPULSE_LAKE mistyped? "
            "(`plantpulse up` creates the tables)"
        )
    return None


def check_readable_lake(location: str) -> None:
    """Raise ``UsageError`` when the lake at ``location`` cannot be read (see module doc)."""
    problem = readable_lake_error(location)
    if problem is not None:
        raise UsageError(problem)
