"""Replay of the reference data sets through the stream, as wire-format messages.

One partition per asset (an engine, a SKAB experiment, a CWRU recording, the NAB machine), so
several workers share a replay.  Messages are ordered by event time; a partition resumes from
its message index.  ``speed=1`` replays in real time, ``speed=N`` N times faster, ``None`` as
fast as possible (pacing follows the data's own event times).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from bytewax_flows.sources import now_us
from dataplane.wire import Batch, Message, encode_frame, encode_scalars
from physics import datasets as ds

__all__ = ["DATASETS", "ReplaySource", "dataset_messages", "UnknownDatasetError"]

Timeline = list[tuple[int, bytes]]
"""(event time in us, payload) in event-time order."""


class UnknownDatasetError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def readings_messages(readings: pd.DataFrame, batch_s: float) -> dict[str, Timeline]:
    """Long-format readings → one JSON batch per asset, sensor and ``batch_s`` of event time."""
    out: dict[str, Timeline] = {}
    ts = readings["ts"].to_numpy("datetime64[us]").astype(np.int64)
    bucket = ts // round(batch_s * 1e6)
    frame = readings.assign(_ts=ts, _bucket=bucket)
    for (asset, _, sensor), g in frame.groupby(["asset_id", "_bucket", "sensor_id"], sort=True):
        out.setdefault(str(asset), []).append(
            (
                int(g["_ts"].iloc[-1]),
                encode_scalars(str(asset), str(sensor), g["_ts"].to_numpy(), g["value"].to_numpy()),
            )
        )
    for timeline in out.values():
        timeline.sort(key=lambda m: m[0])
    return out


def _cmapss(data: Path) -> dict[str, Timeline]:
    return readings_messages(
        ds.cmapss_readings(ds.read_cmapss(data)), batch_s=10 * 3600.0
    )  # 10 cycles


def _skab(data: Path) -> dict[str, Timeline]:
    folder = data / "skab" / "valve1"
    names = sorted((p.stem for p in folder.glob("*.csv")), key=int) if folder.is_dir() else []
    if not names:
        raise ds.DatasetError(f"no SKAB experiments under {folder}; set PLANTPULSE_DATA")
    parts = [ds.skab_readings(ds.read_skab(data, f"valve1/{n}"), f"skab-valve1-{n}") for n in names]
    return readings_messages(pd.concat(parts, ignore_index=True), batch_s=10.0)


def _nab(data: Path) -> dict[str, Timeline]:
    nab = ds.read_nab(data)
    readings = pd.DataFrame(
        {
            "asset_id": "nab-machine",
            "sensor_id": "nab_machine_temperature",
            "ts": nab["ts"],
            "value": nab["value"],
        }
    )
    # one message per reading, in file order: the file's one backwards step must reach the stream
    ts = readings["ts"].to_numpy("datetime64[us]").astype(np.int64)
    return {
        "nab-machine": [
            (int(t), encode_scalars("nab-machine", "nab_machine_temperature", [t], [v]))
            for t, v in zip(ts, readings["value"], strict=True)
        ]
    }


def _cwru(data: Path) -> dict[str, Timeline]:
    out: dict[str, Timeline] = {}
    for name in ds.cwru_recordings(data):
        rec = ds.read_cwru(data, name)
        frames = ds.cwru_frames(rec, 12_000)  # 1 s frames, like the simulator's
        asset = f"cwru-{name}"
        timeline: Timeline = []
        for row in frames.itertuples():
            t0 = int(row.ts_start.value // 1000)
            timeline.append((t0, encode_scalars(asset, "shaft_speed", [t0], [rec.rpm])))
            timeline.append((t0 + 1, encode_frame(asset, "vib_de", t0, rec.fs, row.samples)))
        out[asset] = timeline
    return out


DATASETS: dict[str, Callable[[Path], dict[str, Timeline]]] = {
    "cmapss": _cmapss,
    "cwru": _cwru,
    "nab": _nab,
    "skab": _skab,
}


def dataset_messages(name: str, data_dir: str | Path) -> dict[str, Timeline]:
    """The data set ``name`` as per-asset timelines of wire-format messages."""
    try:
        build = DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}"
        ) from None
    return build(Path(data_dir))


class _ReplayPartition(StatefulSourcePartition[Batch, int]):
    def __init__(
        self, source: str, timeline: Timeline, position: int, speed: float | None, batch: int
    ):
        self.source, self.timeline, self.position, self.speed, self.batch = (
            source,
            timeline,
            position,
            speed,
            batch,
        )
        self._wall0 = time.time()
        self._event0 = timeline[position][0] if position < len(timeline) else 0

    def next_batch(self) -> list[Batch]:
        if self.position >= len(self.timeline):
            raise StopIteration()
        end = min(self.position + self.batch, len(self.timeline))
        if self.speed is not None:  # only what is due by now
            due_event = self._event0 + (time.time() - self._wall0) * 1e6 * self.speed
            end = self.position + max(
                1,
                int(
                    np.searchsorted(
                        [t for t, _ in self.timeline[self.position : end]], due_event, "right"
                    )
                ),
            )
        received = now_us()
        out = [
            Message(self.source, i, received, self.timeline[i][1])
            for i in range(self.position, end)
        ]
        self.position = end
        return [Batch(out)]

    def next_awake(self) -> datetime | None:
        if self.speed is None or self.position >= len(self.timeline):
            return None
        wait_s = (self.timeline[self.position][0] - self._event0) / 1e6 / self.speed
        return datetime.fromtimestamp(self._wall0 + wait_s, tz=UTC)

    def snapshot(self) -> int:
        return self.position


class ReplaySource(FixedPartitionedSource[Batch, int]):
    """Replays per-asset timelines (``dataset_messages``) through the stream."""

    def __init__(
        self, timelines: dict[str, Timeline], *, speed: float | None = None, batch: int = 1024
    ):
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.timelines, self.speed, self.batch = timelines, speed, batch

    def list_parts(self) -> list[str]:
        return [f"replay:{asset}" for asset in sorted(self.timelines)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ReplayPartition:
        asset = for_part.removeprefix("replay:")
        return _ReplayPartition(
            for_part, self.timelines[asset], resume_state or 0, self.speed, self.batch
        )
