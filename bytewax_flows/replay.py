"""Replay of the reference data sets through the stream, as wire-format messages.

What to read and how comes from a plant file's ``replay:`` adapter (``plant_messages``); the
four reference data sets are the bundled example plants (``dataset_messages("skab", data)``).

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
from typing import Any

import numpy as np
import pandas as pd
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from bytewax_flows.sources import now_us
from dataplane.wire import Batch, Message, encode_frame, encode_scalars
from physics import datasets as ds
from plant import Plant, PlantError, bundled_plant, load_plant

__all__ = [
    "DATASETS",
    "ReplaySource",
    "dataset_messages",
    "plant_messages",
    "readings_messages",
    "UnknownDatasetError",
]

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


def plant_messages(plant: Plant, data_dir: str | Path) -> dict[str, Timeline]:
    """The data set a plant file's ``replay:`` adapter names, as per-asset timelines: which
    files (any SKAB folder, a NAB series, a C-MAPSS split, CWRU recordings) and which data
    column is which sensor all come from the file.  Every replayed asset id must fall under
    the adapter's declared asset (``PlantError`` otherwise)."""
    spec = plant.replay
    if spec is None:
        raise PlantError(
            plant.path,
            None,
            "replay",
            "this plant file has no replay section (adapter: cmapss, cwru, nab "
            "or skab) to say which data to read",
        )
    timelines = _ADAPTERS[spec.adapter](plant, spec, Path(data_dir))
    declared = plant.assets[spec.asset]
    for asset_id in timelines:
        if plant.asset(asset_id) is not declared:
            key = "asset_id" if hasattr(spec, "asset_id") else "asset"
            raise PlantError(
                plant.path,
                spec.line(key),
                f"replay.{key}",
                f"replayed asset {asset_id!r} does not fall under asset {spec.asset!r}"
                + (f" (match: {declared.match!r})" if declared.match else ""),
            )
    return timelines


def _columns(plant: Plant, spec: Any) -> dict[str, str]:
    """Data column -> sensor id, from the declared asset's sensors' ``column``."""
    return {s.column: s.sensor_id for s in plant.assets[spec.asset].sensors.values() if s.column}


def _cmapss(plant: Plant, spec: Any, data: Path) -> dict[str, Timeline]:
    df = ds.read_cmapss(data, spec.subset, split=spec.split, root=spec.root or "cmapss")
    readings = ds.cmapss_readings(
        df, cycle_s=spec.cycle_s, sensor_ids=_columns(plant, spec), asset_id=spec.asset_id
    )
    return readings_messages(readings, batch_s=spec.batch_cycles * spec.cycle_s)


def _skab(plant: Plant, spec: Any, data: Path) -> dict[str, Timeline]:
    columns = _columns(plant, spec)
    root = spec.root or "skab"
    folder_name = Path(spec.folder).name or root
    parts = []
    for run in ds.skab_runs(data, spec.folder, spec.files, root=root):
        asset_id = spec.asset_id.format(folder=folder_name, stem=Path(run).name)
        df = ds.read_skab(data, run, columns=columns, root=root)
        parts.append(ds.skab_readings(df, asset_id, {c: c for c in columns.values()}))
    return readings_messages(pd.concat(parts, ignore_index=True), batch_s=spec.batch_s)


def _nab(plant: Plant, spec: Any, data: Path) -> dict[str, Timeline]:
    nab = ds.read_nab(data, spec.series, root=spec.root or "nab")
    # one message per reading, in file order: the file's one backwards step must reach the stream
    ts = nab["ts"].to_numpy("datetime64[us]").astype(np.int64)
    asset, sensor = spec.asset, spec.sensor
    return {
        asset: [
            (int(t), encode_scalars(asset, sensor, [t], [v]))
            for t, v in zip(ts, nab["value"], strict=True)
        ]
    }


def _cwru(plant: Plant, spec: Any, data: Path) -> dict[str, Timeline]:
    root = spec.root or "cwru"
    out: dict[str, Timeline] = {}
    for name in ds.cwru_recordings(data, spec.recordings, root=root):
        rec = ds.read_cwru(data, name, root=root)
        frames = ds.cwru_frames(rec, spec.frame_len)
        asset = spec.asset_id.format(name=name)
        timeline: Timeline = []
        for row in frames.itertuples():
            t0 = int(row.ts_start.value // 1000)
            timeline.append((t0, encode_scalars(asset, spec.speed_sensor, [t0], [rec.rpm])))
            timeline.append(
                (t0 + 1, encode_frame(asset, spec.vibration_sensor, t0, rec.fs, row.samples))
            )
        out[asset] = timeline
    if not out:
        raise ds.DatasetError(f"no CWRU recordings match {spec.recordings!r} under {data / root}")
    return out


_ADAPTERS: dict[str, Callable[[Plant, Any, Path], dict[str, Timeline]]] = {
    "cmapss": _cmapss,
    "cwru": _cwru,
    "nab": _nab,
    "skab": _skab,
}


def _bundled(name: str) -> Callable[[Path], dict[str, Timeline]]:
    def build(data: Path) -> dict[str, Timeline]:
        return plant_messages(load_plant(bundled_plant(name)), data)

    build.__doc__ = (
        f"The {name} data set as its bundled plant file (plant/plants/{name}.yaml) reads it."
    )
    return build


DATASETS: dict[str, Callable[[Path], dict[str, Timeline]]] = {
    name: _bundled(name) for name in ("cmapss", "cwru", "nab", "skab")
}
"""Each reference data set, replayed through its bundled example plant file."""


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
