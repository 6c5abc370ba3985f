"""Logins kept in the state directory: JSON files the set-up writes readable by their owner
only (the broker's users, the OPC UA servers' users), read by every client that logs in with
them.  One reader for all of them, so the file shapes stay the same everywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["login", "read_logins", "write_private"]


def read_logins(path: str | Path) -> dict[str, object] | None:
    """The entries of the credentials file at ``path``; None when there is no such file.
    ``ConnectionError`` (with the path) when it cannot be read or is not a JSON object: a client
    that cannot log in says why instead of trying without."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"cannot read credentials from {path}: {exc}") from None
    if not isinstance(entries, dict):
        raise ConnectionError(f"cannot read credentials from {path}: not a JSON object")
    return entries


def login(path: str | Path, name: str) -> tuple[str, str] | None:
    """``(username, password)`` of entry ``name`` in the credentials file at ``path``: either
    ``{"<name>": "<password>"}`` (the broker set-up's shape: the username is ``name``) or
    ``{"<name>": {"username": ..., "password": ...}}``; None when the file or the entry is
    missing.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "credentials.json"
    >>> _ = p.write_text('{"worker": "s3cret", "scada": {"username": "hmi", "password": "x"}}')
    >>> login(p, "worker"), login(p, "scada"), login(p, "nobody")
    (('worker', 's3cret'), ('hmi', 'x'), None)
    """
    entry = (read_logins(path) or {}).get(name)
    if isinstance(entry, str):
        return name, entry
    if isinstance(entry, dict) and "username" in entry:
        return str(entry["username"]), str(entry.get("password", ""))
    return None


def write_private(path: str | Path, text: str | bytes) -> None:
    """Write ``path`` readable and writable by its owner only (mode 0600), also when it existed
    with wider permissions."""
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
