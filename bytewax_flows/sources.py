"""Resumable Bytewax sources: each partition knows its position and can be rebuilt from it; each
``next_batch`` emits one micro-batch (``Batch``) of what it produced together."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import cached_property
from typing import NamedTuple

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataplane.wire import Batch, Message, encode_frame, encode_scalars
from physics.simulator import Chunk, FleetSimulator, default_fleet

__all__ = ["SimulatorSource", "SimPosition", "now_us", "chunk_payloads", "MESSAGES_PER_CHUNK"]

MESSAGES_PER_CHUNK = 64
"""Offsets are ``(chunk start in whole chunks since the epoch) * 64 + j``: monotonic per
machine, stable across replays, and larger for later event times, so a new simulation run after
an earlier one continues the machine's offsets instead of being taken for a replay of it."""


def chunk_payloads(chunk: Chunk) -> list[tuple[str, bytes]]:
    """One simulated second of a machine as wire-format messages: ``(sensor_id, payload)``,
    a JSON batch per scalar sensor, then the binary vibration frames."""
    out = [
        (sid, encode_scalars(chunk.asset_id, sid, ts, v)) for sid, (ts, v) in chunk.scalars.items()
    ]
    out += [
        (sid, encode_frame(chunk.asset_id, sid, t0, rate, x)) for sid, t0, rate, x in chunk.frames
    ]
    return out


def now_us() -> int:
    return time.time_ns() // 1000


class SimPosition(NamedTuple):
    """Resume state of one simulated machine: when its simulation clock started, next chunk."""

    start_us: int
    next_chunk: int


class _SimPartition(StatefulSourcePartition[Batch, SimPosition]):
    def __init__(
        self,
        sim: FleetSimulator,
        asset_id: str,
        position: SimPosition,
        n_chunks: int | None,
        speed: float | None,
        live: bool,
    ):
        self.sim = sim.starting_at(position.start_us)
        self.asset_id, self.source = asset_id, f"sim:{asset_id}"
        self.next_chunk, self.n_chunks, self.speed, self.live = (
            position.next_chunk,
            n_chunks,
            speed,
            live,
        )
        self._paced_from = (time.time(), position.next_chunk)

    def next_batch(self) -> list[Batch]:
        if self.n_chunks is not None and self.next_chunk >= self.n_chunks:
            raise StopIteration()
        payloads = [p for _, p in chunk_payloads(self.sim.chunk(self.asset_id, self.next_chunk))]
        epoch_chunk = self.sim.start_us // round(self.sim.chunk_s * 1e6) + self.next_chunk
        base, received = epoch_chunk * MESSAGES_PER_CHUNK, now_us()
        self.next_chunk += 1
        return [
            Batch([Message(self.source, base + j, received, p) for j, p in enumerate(payloads)])
        ]

    def next_awake(self) -> datetime | None:
        if self.live:  # a chunk is released once its last sample lies in the past
            due = self.sim.start_us / 1e6 + (self.next_chunk + 1) * self.sim.chunk_s
        elif self.speed:  # replay N times faster than real time, from when this partition started
            wall0, chunk0 = self._paced_from
            due = wall0 + (self.next_chunk - chunk0) * self.sim.chunk_s / self.speed
        else:
            return None
        return datetime.fromtimestamp(due, tz=UTC)

    def snapshot(self) -> SimPosition:
        return SimPosition(self.sim.start_us, self.next_chunk)


class SimulatorSource(FixedPartitionedSource[Batch, SimPosition]):
    """One partition per simulated machine, emitting its telemetry as wire-format messages.

    ``live=True`` runs in real time with event time = wall-clock time from the first start (kept
    across restarts by the resume state, so a restart catches up rather than skipping).
    Otherwise ``speed=N`` replays N times faster than real time and ``speed=None`` as fast as
    possible.  ``n_chunks`` bounds the run (None: forever).  Without ``sim``, the demo fleet
    (``physics.simulator.default_fleet``), built when the flow first asks for its partitions.
    """

    def __init__(
        self,
        sim: FleetSimulator | None = None,
        *,
        live: bool = False,
        speed: float | None = None,
        n_chunks: int | None = None,
    ):
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self._given, self.live, self.speed, self.n_chunks = sim, live, speed, n_chunks

    @cached_property
    def sim(self) -> FleetSimulator:
        return self._given if self._given is not None else default_fleet()

    def list_parts(self) -> list[str]:
        return [f"sim:{a}" for a in self.sim.asset_ids]

    def build_part(
        self, step_id: str, for_part: str, resume_state: SimPosition | None
    ) -> _SimPartition:
        if resume_state is None:
            start = (now_us() // 1_000_000) * 1_000_000 if self.live else self.sim.start_us
            resume_state = SimPosition(start, 0)
        asset_id = for_part.removeprefix("sim:")
        return _SimPartition(
            self.sim, asset_id, SimPosition(*resume_state), self.n_chunks, self.speed, self.live
        )
