"""Which worker of a Bytewax cluster does a shard's stateful work (light: no data-plane imports,
so a probe of the routing starts in a second)."""

from __future__ import annotations

import os

__all__ = ["SHARDS", "WORKER_KEYS", "worker_key"]

SHARDS = int(os.environ.get("PLANTPULSE_SHARDS", "4"))
"""Keyed pieces each micro-batch is split into by asset: the unit Bytewax spreads over workers
(more shards than workers balance better; each costs a little per batch).  The Delta sink has
as many writers per table (``bytewax_flows.sinks``)."""

WORKER_KEYS = (
    "13",
    "10",
    "5",
    "6",
    "15",
    "0",
    "4",
    "1",
    "16",
    "14",
    "11",
    "24",
    "17",
    "9",
    "21",
    "2",
)
"""The Bytewax state key of each shard.  Bytewax routes a key to worker ``hash(key) % workers``;
the plain names ``"0"``..``"3"`` all hash to the same worker of a 2-process cluster, which then
did every shard's work alone.  Key ``k`` of this tuple lands on worker ``k % n`` for ``n`` = 1,
2, 4 and 8 workers (measured on Bytewax 0.21; ``tests/test_cluster.py`` checks 2 and 4 on a real
cluster), so the shards spread evenly.  Shards beyond these use their number."""


def worker_key(shard: int) -> str:
    """The state key of shard number ``shard``."""
    return WORKER_KEYS[shard] if shard < len(WORKER_KEYS) else str(shard)
