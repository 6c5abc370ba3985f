"""Routing, stateless: decode a micro-batch and split it by asset into keyed pieces, one per
shard, wherever the batch arrived."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from dataplane.batch_decode import decode_batch
from dataplane.columns import Decoded
from dataplane.formats import Batch

__all__ = ["shard_of", "route"]


def shard_of(asset: str | None, n_shards: int, groups: Mapping[str, str] | None = None) -> int:
    if asset is None:
        return 0
    if groups:  # the assets of one topology component share a shard (dataplane.topology)
        asset = groups.get(asset, asset)
    return zlib.crc32(asset.encode("utf-8", "replace")) % n_shards


def route(
    batch: Batch, n_shards: int = 1, groups: Mapping[str, str] | None = None
) -> list[tuple[str, Decoded]]:
    """Decode a micro-batch and split it by asset into ``n_shards`` keyed pieces; ``groups``
    (``dataplane.topology.shard_groups``) routes an asset by the id of its topology component
    instead of its own, so that connected assets' alerts meet on one shard."""
    d = decode_batch(batch.messages)
    if n_shards <= 1:
        return [("0", d)] if batch.messages else []
    asset_shard = np.array([shard_of(a, n_shards, groups) for a in d.assets], np.int32)
    g_shard = asset_shard[d.g_a] if d.n_groups else np.empty(0, np.int32)
    frame_shard = [shard_of(f.asset_id, n_shards, groups) for _, f in d.frames]
    reject_shard = [shard_of(r[3], n_shards, groups) for r in d.rejects]
    out = []
    for k in range(n_shards):
        mine = np.flatnonzero(g_shard == k)  # this shard's groups
        frames = [fr for fr, sh in zip(d.frames, frame_shard, strict=True) if sh == k]
        rejects = [r for r, sh in zip(d.rejects, reject_shard, strict=True) if sh == k]
        if not mine.size and not frames and not rejects:
            continue
        used = np.unique(
            np.concatenate(
                [
                    d.g_msg[mine],
                    np.array([i for i, _ in frames], np.int32),
                    np.array([r[0] for r in rejects], np.int32),
                ]
            )
        )
        remap = np.full(len(d.messages), -1, np.int32)
        remap[used] = np.arange(used.size, dtype=np.int32)
        piece = Decoded([d.messages[i] for i in used.tolist()], d.assets, d.sensors)
        piece.g_a, piece.g_s, piece.g_msg = d.g_a[mine], d.g_s[mine], remap[d.g_msg[mine]]
        new_group = np.full(d.n_groups, -1, np.int32)
        new_group[mine] = np.arange(mine.size, dtype=np.int32)
        keep = new_group[d.group] >= 0
        piece.group, piece.ts, piece.value = new_group[d.group[keep]], d.ts[keep], d.value[keep]
        piece.shard = str(k)
        piece.frames = [(int(remap[i]), f) for i, f in frames]
        piece.rejects = [(int(remap[r[0]]), *r[1:]) for r in rejects]
        out.append((str(k), piece))
    return out
