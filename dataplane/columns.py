"""A micro-batch decoded into arrays (``Decoded``), and the builder the batch decoder fills it
with: per message O(1) Python work, arrays built once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from dataplane.formats import Frame, Message

__all__ = ["Decoded", "Builder"]


@dataclass
class Decoded:
    """A micro-batch decoded into arrays.

    Scalar readings come in *groups*: one group per (message, sensor), with its asset and
    sensor (codes into the batch's ``assets`` and ``sensors`` names) and message index;
    ``group`` gives each reading's group.  Frames and whole rejected messages are listed with
    their message index.  ``messages`` is the batch itself (offsets, arrival times, raw
    payloads for dead letters)."""

    messages: list[Message]
    assets: list[str] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    g_a: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    g_s: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    g_msg: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    group: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    ts: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    value: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    frames: list[tuple[int, Frame]] = field(default_factory=list)
    # (message index, reason, detail, asset_id, sensor_id, raw or None for the whole payload)
    rejects: list[tuple[int, str, str, str | None, str | None, bytes | None]] = field(
        default_factory=list
    )
    shard: str = "0"  # which keyed piece of its batch this is (``step.route``)

    @property
    def n_readings(self) -> int:
        return int(self.ts.size)

    @property
    def n_groups(self) -> int:
        return int(self.g_msg.size)

    def group_names(self, g: int) -> tuple[str, str]:
        return self.assets[self.g_a[g]], self.sensors[self.g_s[g]]


class Builder:
    """Accumulates groups; per message O(1) Python work (dictionary look-ups and appends),
    arrays built once.

    Readings of scalar and list messages gather in Python lists (converted by numpy in one
    call each); array groups (Arrow payloads, bulk-decoded batches) are kept as arrays."""

    def __init__(self, messages: list[Message]):
        self.out = Decoded(messages)
        self.a_index: dict[str, int] = {}
        self.s_index: dict[str, int] = {}
        self.g_a: list[int] = []
        self.g_s: list[int] = []
        self.g_msg: list[int] = []
        self.ts: list[Any] = []
        self.values: list[Any] = []
        self.counts: list[int] = []
        self.pending_from = 0  # first group whose readings are still in the Python lists
        self.chunks: list[tuple[NDArray[np.int64], NDArray[np.float64]]] = []
        self.g_chunks: list[tuple[NDArray, NDArray, NDArray, NDArray]] = []

    def code(self, index: dict[str, int], names: list[str], name: str) -> int:
        c = index.get(name)
        if c is None:
            c = index[name] = len(names)
            names.append(name)
        return c

    def add(self, i: int, asset: str, sensor: str, ts: Any, value: Any, n: int) -> None:
        a = self.a_index.get(asset)
        if a is None:
            a = self.code(self.a_index, self.out.assets, asset)
        s = self.s_index.get(sensor)
        if s is None:
            s = self.code(self.s_index, self.out.sensors, sensor)
        self.g_a.append(a)
        self.g_s.append(s)
        self.g_msg.append(i)
        self.counts.append(n)
        if n == 1 and type(ts) is not list:
            self.ts.append(ts)
            self.values.append(value)
        else:
            self.ts.extend(ts)
            self.values.extend(value)

    def add_arrays(self, i: int, asset: str, sensor: str, ts: NDArray, values: NDArray) -> None:
        self._flush()
        self.g_a.append(self.code(self.a_index, self.out.assets, asset))
        self.g_s.append(self.code(self.s_index, self.out.sensors, sensor))
        self.g_msg.append(i)
        self.counts.append(ts.size)
        self.chunks.append((ts.astype(np.int64, copy=False), values.astype(np.float64)))
        self.pending_from = len(self.counts)

    def add_groups(
        self,
        g_a: NDArray,
        g_s: NDArray,
        g_msg: NDArray,
        counts: NDArray,
        ts: NDArray[np.int64],
        values: NDArray[np.float64],
    ) -> None:
        """Many groups at once (already coded against this builder's names)."""
        self._flush()
        self._close_lists()
        self.g_chunks.append((g_a, g_s, g_msg, counts))
        self.chunks.append((ts, values))

    def reject(
        self,
        i: int,
        reason: str,
        detail: str,
        asset: str | None = None,
        sensor: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.out.rejects.append((i, reason, detail, asset, sensor, raw))

    def _close_lists(self) -> None:
        if self.g_msg:
            self.g_chunks.append(
                (
                    np.array(self.g_a, np.int32),
                    np.array(self.g_s, np.int32),
                    np.array(self.g_msg, np.int32),
                    np.array(self.counts, np.int64),
                )
            )
            self.g_a, self.g_s, self.g_msg, self.counts = [], [], [], []
            self.pending_from = 0

    def _flush(self) -> None:
        if not self.ts:
            self.pending_from = len(self.counts)
            return
        try:
            self.chunks.append(
                (np.array(self.ts, dtype=np.int64), np.array(self.values, dtype=np.float64))
            )
        except (OverflowError, TypeError, ValueError):
            self._flush_carefully()
        self.ts, self.values = [], []
        self.pending_from = len(self.counts)

    def _flush_carefully(self) -> None:
        """Some group holds a number numpy cannot take (an int beyond 64 bits): convert group
        by group; such a group keeps no readings and is rejected alone."""
        o, start = self.out, 0
        for g in range(self.pending_from, len(self.counts)):
            n = self.counts[g]
            ts_l, v_l = self.ts[start : start + n], self.values[start : start + n]
            start += n
            try:
                self.chunks.append(
                    (np.array(ts_l, dtype=np.int64), np.array(v_l, dtype=np.float64))
                )
            except (OverflowError, TypeError, ValueError):
                asset, sensor = o.assets[self.g_a[g]], o.sensors[self.g_s[g]]
                raw = orjson.dumps(
                    {
                        "asset_id": asset,
                        "sensor_id": sensor,
                        "ts": str(ts_l)[:200],
                        "value": str(v_l)[:200],
                    }
                )
                self.reject(
                    self.g_msg[g],
                    "out_of_range",
                    "a timestamp or value does not fit 64 bits",
                    asset,
                    sensor,
                    raw,
                )
                self.counts[g] = 0  # an empty group: nothing of it goes further

    def finish(self) -> Decoded:
        self._flush()
        self._close_lists()
        o = self.out
        if self.chunks:
            o.ts = np.concatenate([c[0] for c in self.chunks])
            o.value = np.concatenate([c[1] for c in self.chunks])
        if self.g_chunks:
            o.g_a = np.concatenate([c[0] for c in self.g_chunks]).astype(np.int32, copy=False)
            o.g_s = np.concatenate([c[1] for c in self.g_chunks]).astype(np.int32, copy=False)
            o.g_msg = np.concatenate([c[2] for c in self.g_chunks]).astype(np.int32, copy=False)
            counts = np.concatenate([c[3] for c in self.g_chunks])
            o.group = np.repeat(np.arange(counts.size, dtype=np.int32), counts)
        return o
