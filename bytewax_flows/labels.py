"""The stream's label feed: each asset's ``maintenance_events`` rows, re-read when the table
changes (checked every ``refresh_s``), so a technician's label reaches the running stream
without a restart (``dataplane.scoring.LabelFeed``; ``telemetry.get_flow`` injects it the way it
injects the calibration cache and the champion).  A table that cannot be read keeps the last good
labels and never stops the stream."""

from __future__ import annotations

import logging
import time

import pandas as pd

from lake import Lake, LakeError

__all__ = ["MaintenanceFeed", "FEED_KINDS"]

log = logging.getLogger(__name__)

FEED_KINDS = ("normal_operation", "operating_change", "failure", "repair", "replacement")
"""The kinds the stream acts on (re-baseline, confirm); inspections and the simulator's ground
truth (``fault_injected``) change nothing in it."""

Note = tuple[int, str, str, str]  # (ts_us, kind, component, detail)


class MaintenanceFeed:
    """``notes(asset_id)``: the asset's labels of ``FEED_KINDS``, oldest first, as
    ``(ts_us, kind, component, detail)``; the same tuple object while nothing changed."""

    def __init__(self, lake_uri: str, refresh_s: float = 5.0):
        self.lake, self.refresh_s = Lake(lake_uri), refresh_s
        self._checked = -float("inf")
        self._version: int | None = None
        self._notes: dict[str, tuple[Note, ...]] = {}

    def notes(self, asset_id: str) -> tuple[Note, ...]:
        now = time.monotonic()
        if now - self._checked >= self.refresh_s:
            self._checked = now
            self._refresh()
        return self._notes.get(asset_id, ())

    def _refresh(self) -> None:
        try:
            if not self.lake.exists("maintenance_events"):
                return
            version = self.lake.table("maintenance_events").version()
            if version == self._version:
                return
            rows = self.lake.read(
                "maintenance_events", columns=["asset_id", "ts", "kind", "component", "detail"]
            )
        except (LakeError, OSError) as exc:  # keep the last good labels; never stop the stream
            log.warning("maintenance_events unreadable, keeping version %s: %s", self._version, exc)
            return
        rows = rows[rows["kind"].isin(FEED_KINDS)].sort_values("ts", kind="stable")
        ts = rows["ts"].astype("datetime64[us, UTC]").astype("int64")
        fresh: dict[str, list[Note]] = {}
        for asset, t, kind, component, detail in zip(
            rows["asset_id"], ts, rows["kind"], rows["component"], rows["detail"], strict=True
        ):
            note = (int(t), str(kind), str(component or ""), "" if pd.isna(detail) else str(detail))
            fresh.setdefault(str(asset), []).append(note)
        old = self._notes
        # an asset whose labels did not change keeps the same tuple (the stream's identity test)
        self._notes = {a: old[a] if old.get(a) == tuple(n) else tuple(n) for a, n in fresh.items()}
        self._version = version
        log.info("maintenance_events version %s: labels for %d assets", version, len(fresh))
