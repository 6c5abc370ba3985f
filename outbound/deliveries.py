"""The ``deliveries`` table: one row per delivery attempt of an alert state to a target.

Rows of the MQTT and OPC UA targets are buffered and appended in one commit per ``flush``
(the service flushes after each poll); a work order's attempts are committed one by one as
they end (``write_now``), because the table is also the webhook's memory of what it has
delivered: a key with a ``delivered`` row is never sent again, even after a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pyarrow.compute as pc

from lake import Lake
from lake.store import LakeError

__all__ = ["DeliveryLog", "DELIVERED", "RETRY", "FAILED"]

log = logging.getLogger(__name__)

DELIVERED, RETRY, FAILED = "delivered", "retry", "failed"


class DeliveryLog:
    """Thread-safe writer of ``deliveries`` rows."""

    def __init__(self, lake: Lake):
        self.lake = lake
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    @staticmethod
    def row(
        target: str,
        key: str,
        status: str,
        *,
        alert_id: str | None = None,
        asset_id: str | None = None,
        attempt: int = 1,
        code: int | None = None,
        error: str | None = None,
        ts_us: int | None = None,
    ) -> dict[str, Any]:
        return {
            "ts": ts_us if ts_us is not None else time.time_ns() // 1000,
            "target": target,
            "key": key,
            "alert_id": alert_id,
            "asset_id": asset_id,
            "attempt": attempt,
            "status": status,
            "code": code,
            "error": error,
        }

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)

    def flush(self) -> int:
        """Append the buffered rows in one commit; returns how many."""
        with self._lock:
            rows, self._rows = self._rows, []
        if rows:
            self._append(rows)
        return len(rows)

    def write_now(self, row: dict[str, Any]) -> None:
        self._append([row])

    def _append(self, rows: list[dict[str, Any]]) -> None:
        data = {name: [r[name] for r in rows] for name in rows[0]}
        with self._write_lock:  # one writer per process: no commit conflicts with ourselves
            try:
                self.lake.append("deliveries", data)
            except LakeError:
                log.exception("could not record %d delivery rows", len(rows))
                if len(rows) > 1:  # keep them for the next flush rather than lose them
                    with self._lock:
                        self._rows[:0] = rows
                else:
                    raise

    def attempts(self, target: str) -> tuple[set[str], dict[str, int]]:
        """For ``target``: the keys delivered so far, and the attempts made per key."""
        if not self.lake.exists("deliveries"):
            return set(), {}
        t = self.lake.read_arrow(
            "deliveries", filters=[("target", "=", target)], columns=["key", "attempt", "status"]
        )
        delivered = set(t.filter(pc.equal(t["status"], DELIVERED))["key"].to_pylist())
        made: dict[str, int] = {}
        for key, attempt in zip(t["key"].to_pylist(), t["attempt"].to_pylist(), strict=True):
            made[key] = max(made.get(key, 0), attempt)
        return delivered, made
