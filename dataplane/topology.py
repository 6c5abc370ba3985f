"""Topology in the alerts: an asset that alerts while an asset upstream of it (the plant's
``topology``: what feeds or drives it) has an open alert, or had a drift event shortly before,
names that as the suspected cause; the upstream alert lists its downstream effects.

The stream's alert rows of a micro-batch pass through ``annotate_alerts`` after scoring
(``dataplane.step.process``), which keeps a ``TopologyBoard`` per shard: the open alerts and
the newest drift event of each asset.  An operator then reads, on motor-7's alert,
``upstream pump-3 in alert since 10:02:00 UTC`` and on pump-3's a revised row whose
``downstream_effects`` lists ``motor-7 alert motor-7-... since 10:04:10 UTC``.

Shards: the board sees the assets of its own shard only, so the stream routes the assets of one
topology component (assets joined by edges, in either direction) to the same shard
(``shard_groups``, used by ``dataplane.step.route``).  Routing is fixed when the flow starts:
a topology edge added to the plant file while the stream runs annotates alerts from the next
start on (moving an asset between shards at run time would lose its state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from dataplane.rows import Out

__all__ = [
    "TopologyBoard",
    "Topology",
    "as_topology",
    "annotate_alerts",
    "shard_groups",
    "DRIFT_LOOKBACK_S",
]

DRIFT_LOOKBACK_S = float(os.environ.get("PLANTPULSE_TOPOLOGY_DRIFT_LOOKBACK_S", "900"))
"""An upstream drift event at most this long (event time) before a downstream alert opens is
named as its suspected cause."""


class _Edge(Protocol):
    source: str
    target: str


@runtime_checkable
class Topology(Protocol):
    """What the annotation needs of the plant: its edges and the edges into an asset."""

    topology: tuple[Any, ...]

    def upstream(self, asset_id: str) -> list[Any]: ...


class _NoTopology:
    """A plant that declares no topology (a test's or a benchmark's): no edges, no causes."""

    topology: tuple[Any, ...] = ()

    def upstream(self, asset_id: str) -> list[Any]:
        return []


def as_topology(plant: object) -> Topology:
    """``plant`` itself if it has a topology (``topology`` and ``upstream``), else one without
    edges."""
    return plant if isinstance(plant, Topology) else _NoTopology()


@dataclass
class _Open:
    asset_id: str
    opened_us: int
    row: dict[str, Any]  # the newest row written for the alert
    cause: str | None = None
    effects: list[str] = field(default_factory=list)


@dataclass
class TopologyBoard:
    """Per shard (picklable, part of the shard's state): the open alerts by id and by asset,
    and each asset's newest drift event (event time, subject, detector)."""

    open: dict[str, _Open] = field(default_factory=dict)
    by_asset: dict[str, list[str]] = field(default_factory=dict)
    drift: dict[str, tuple[int, str, str]] = field(default_factory=dict)


def _hms(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%H:%M:%S UTC")


def _us(v: Any) -> int:
    """Row timestamps are µs integers in the stream (datetimes from elsewhere)."""
    if isinstance(v, datetime):
        return int(v.timestamp() * 1_000_000)
    return int(v)


def upstream_assets(plant: Topology, asset_id: str) -> list[str]:
    """Every asset upstream of ``asset_id``, nearest first (breadth first over the edges)."""
    seen: dict[str, None] = {}
    frontier = [asset_id]
    while frontier:
        nxt = []
        for a in frontier:
            for e in plant.upstream(a):
                if e.source not in seen and e.source != asset_id:
                    seen[e.source] = None
                    nxt.append(e.source)
        frontier = nxt
    return list(seen)


def shard_groups(plant: Topology) -> dict[str, str]:
    """Asset id -> the id its shard is chosen by: the smallest asset id of its topology
    component (assets joined by edges in either direction).  Assets without edges are absent
    (they are routed by their own id)."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for e in plant.topology:
        ra, rb = find(e.source), find(e.target)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {a: find(a) for a in parent}


def _cause(
    board: TopologyBoard, plant: Topology, asset: str, opened: int
) -> tuple[str | None, list[str]]:
    """The suspected cause of an alert of ``asset`` opening at ``opened`` (words), and the
    upstream alerts open at that moment (their ids)."""
    words, upstream_open = [], []
    for u in upstream_assets(plant, asset):
        alerts = [
            board.open[a]
            for a in board.by_asset.get(u, ())
            if a in board.open and board.open[a].opened_us <= opened
        ]
        if alerts:
            first = min(alerts, key=lambda o: o.opened_us)
            words.append(f"upstream {u} in alert since {_hms(first.opened_us)}")
            upstream_open += [o.row["alert_id"] for o in alerts]
            continue
        d = board.drift.get(u)
        if d is not None and opened - DRIFT_LOOKBACK_S * 1e6 <= d[0] <= opened:
            words.append(f"upstream {u} drift in {d[1]} ({d[2]}) at {_hms(d[0])}")
    return ("; ".join(words) or None), upstream_open


def annotate_alerts(board: TopologyBoard, plant: object, out: Out) -> None:
    """Fill ``suspected_cause`` and ``downstream_effects`` into the batch's alert rows (every
    row of an alert carries its current ones), and add a revision row to each upstream alert
    that gains a downstream effect.  Drift events of the batch are noted first.  A plant that
    declares no topology (``as_topology``) names no causes."""
    for row in out.dicts.get("drift_events", ()):
        ts = _us(row["ts"])
        if ts >= board.drift.get(row["asset_id"], (-1 << 62,))[0]:
            board.drift[row["asset_id"]] = (ts, str(row["subject"]), str(row["detector"]))
    rows = out.dicts.get("alerts")
    if not rows:
        return
    topology = as_topology(plant)  # (a protocol check: only for a batch with alerts)
    if not topology.topology and not board.open:
        return
    msgs = out.dict_msg["alerts"]
    revisions: list[tuple[dict[str, Any], int]] = []
    for row, msg in zip(list(rows), list(msgs), strict=True):
        aid, asset = row["alert_id"], row["asset_id"]
        entry = board.open.get(aid)
        if entry is None:
            opened = _us(row["opened_ts"])
            cause, upstream_open = _cause(board, topology, asset, opened)
            entry = _Open(asset, opened, row, cause)
            if row["status"] == "open":
                board.open[aid] = entry
                board.by_asset.setdefault(asset, []).append(aid)
            effect = f"{asset} alert {aid} since {_hms(opened)}"
            for up_id in upstream_open:
                up = board.open[up_id]
                up.effects.append(effect)
                rev = dict(
                    up.row,
                    downstream_effects=list(up.effects),
                    updated_ts=max(_us(up.row["updated_ts"]), opened),
                )
                up.row = rev
                revisions.append((rev, msg))
        row["suspected_cause"] = entry.cause
        row["downstream_effects"] = list(entry.effects) or None
        entry.row = row
        if row["status"] != "open" and aid in board.open:
            del board.open[aid]
            ids = board.by_asset.get(asset, [])
            if aid in ids:
                ids.remove(aid)
    for rev, msg in revisions:
        out.add("alerts", rev, msg)
