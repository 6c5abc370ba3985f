"""The telemetry dataflow: raw messages in; readings, features, frames and dead letters out.

Run it with ``python -m bytewax.run bytewax_flows.telemetry:flow`` (the live simulator, lake
from ``PLANTPULSE_LAKE``) or build a variant with ``get_flow(source, lake_uri)``.

Every input message ends in exactly one place per value: accepted rows in ``readings`` (scalar
sensors) or ``features``/``frames`` (vibration frames), rejected ones in ``dead_letter`` with a
reason code.  Work is per message on NumPy arrays, never per sample in Python.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from bytewax_flows.calibration import CalibrationCache
from bytewax_flows.payloads import Frame, Message, PayloadError, Progress, ScalarBatch, decode
from bytewax_flows.scoring import FrameCandidate, score
from bytewax_flows.sinks import DeltaSink, SinkRows, progress_rows
from bytewax_flows.sources import SimulatorSource, now_us
from expectations.checks import OK, Arrivals, arrival_reasons, frame_problem, scalar_reasons
from expectations.contracts import SENSORS
from lake import Settings, TableSpec, table_spec
from models.registry import FAULT_MODEL, ChampionWatcher
from physics.bearing import SKF_6205
from physics.features import vibration_features
from physics.process import rolling_window_stats
from physics.registry import FEATURE_VERSION, PROCESS_WINDOW_S, feature_names
from physics.simulator import default_fleet

__all__ = [
    "get_flow",
    "build_flow",
    "flow",
    "Rejected",
    "parse",
    "AssetState",
    "validate",
    "rejected_rows",
]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Rejected:
    """A whole message that cannot be used, with its dead-letter reason."""

    msg: Message
    reason: str
    detail: str
    asset_id: str | None = None
    sensor_id: str | None = None


@dataclass(frozen=True)
class Parsed:
    msg: Message
    body: ScalarBatch | Frame

    @property
    def asset_id(self) -> str:
        return self.body.asset_id


def parse(msg: Message) -> Parsed | Rejected:
    """Decode the payload and look its sensor up in the contracts."""
    if msg.set_aside is not None:
        return Rejected(msg, *msg.set_aside)
    try:
        body = decode(msg.payload)
    except PayloadError as exc:
        return Rejected(msg, exc.reason, exc.detail, exc.asset_id, exc.sensor_id)
    contract = SENSORS.get(body.sensor_id)
    if contract is None:
        return Rejected(
            msg,
            "unknown_sensor",
            f"sensor {body.sensor_id!r} has no contract",
            body.asset_id,
            body.sensor_id,
        )
    if contract.frames != isinstance(body, Frame):
        kind = "frames" if contract.frames else "scalar readings"
        return Rejected(
            msg,
            "wrong_type",
            f"sensor {body.sensor_id!r} sends {kind}",
            body.asset_id,
            body.sensor_id,
        )
    return Parsed(msg, body)


@dataclass
class AssetState:
    """Per asset: the arrival bookkeeping of each sensor and the newest shaft speed."""

    arrivals: dict[str, Arrivals] = field(default_factory=dict)
    # per scalar sensor: timestamps and values of its last readings (the process window)
    history: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    shaft_rpm: float = float("nan")  # newest accepted shaft_speed reading


def _table(spec: TableSpec, columns: dict[str, Any]) -> pa.Table:
    schema = spec.input_schema
    return pa.table(
        {
            f.name: pa.array(columns[f.name], f.type)
            if not isinstance(columns[f.name], pa.Array)
            else columns[f.name]
            for f in schema
        },
        schema=schema,
    )


def _repeat(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), n)


def rejected_rows(
    msg: Message, items: list[tuple[bytes, str, str]], asset_id: str | None, sensor_id: str | None
) -> SinkRows:
    """``dead_letter`` rows for one message: ``(raw, reason, detail)`` per rejected input."""
    n = len(items)
    spec = table_spec("dead_letter")
    rows = _table(
        spec,
        {
            "received_ts": _repeat(msg.received_us, n, spec.schema.field("received_ts").type),
            "source": _repeat(msg.source, n, pa.string()),
            "raw": [r for r, _, _ in items],
            "reason": [c for _, c, _ in items],
            "detail": [d for _, _, d in items],
            "asset_id": _repeat(asset_id, n, pa.string()),
            "sensor_id": _repeat(sensor_id, n, pa.string()),
        },
    )
    return SinkRows("dead_letter", msg.source, msg.offset, rows)


def dead_letter(rej: Rejected) -> list[tuple[str, SinkRows]]:
    rows = rejected_rows(
        rej.msg, [(rej.msg.payload, rej.reason, rej.detail)], rej.asset_id, rej.sensor_id
    )
    return [("dead_letter", rows)]


def _scalar_rows(
    p: Parsed, b: ScalarBatch, state: AssetState, calibration: CalibrationCache | None
) -> list[SinkRows]:
    contract = SENSORS[b.sensor_id]
    reasons = scalar_reasons(contract, b.values)
    valid = reasons == OK
    reasons[valid] = arrival_reasons(
        b.ts_us[valid],
        state.arrivals.setdefault(b.sensor_id, Arrivals()),
        round(contract.allowed_lateness_s * 1e6),
    )
    accept = reasons == OK
    out: list[SinkRows] = []
    n = int(accept.sum())
    if n:
        if b.sensor_id == "shaft_speed":
            state.shaft_rpm = float(b.values[accept][-1])
        spec = table_spec("readings")
        raw = b.values[accept]
        values, quality = raw, _repeat("good", n, pa.string())
        correction = calibration.get(b.asset_id, b.sensor_id) if calibration is not None else None
        if correction is not None:
            values, applied = correction.apply(b.ts_us[accept], raw)
            quality = pa.array(np.where(applied, f"calibrated:v{correction.version}", "good"))
        ts_type = spec.schema.field("ts").type
        rows = _table(
            spec,
            {
                "asset_id": _repeat(b.asset_id, n, pa.string()),
                "sensor_id": _repeat(b.sensor_id, n, pa.string()),
                "ts": pa.array(b.ts_us[accept]).cast(ts_type),
                "value": values,
                "raw_value": raw,
                "quality": quality,
                "ingest_ts": _repeat(now_us(), n, ts_type),
            },
        )
        out.append(SinkRows("readings", p.msg.source, p.msg.offset, rows))
        out.append(_process_row(p, b, state, b.ts_us[accept], np.asarray(values, np.float64)))
    if n < b.values.size:
        bad = np.flatnonzero(~accept)
        items = [
            (
                json.dumps(
                    {
                        "asset_id": b.asset_id,
                        "sensor_id": b.sensor_id,
                        "ts": int(b.ts_us[i]),
                        "value": float(b.values[i]) if np.isfinite(b.values[i]) else None,
                    }
                ).encode(),
                str(reasons[i]),
                _detail(str(reasons[i]), b.values[i], contract.low, contract.high),
            )
            for i in bad
        ]
        out.append(rejected_rows(p.msg, items, b.asset_id, b.sensor_id))
    return out


def _process_row(
    p: Parsed, b: ScalarBatch, state: AssetState, ts: np.ndarray, values: np.ndarray
) -> SinkRows:
    """One ``features`` row per accepted scalar message: level, slope and std of the sensor's
    last ``PROCESS_WINDOW_S`` of readings, as of its newest reading (the same
    ``rolling_window_stats`` the training features use)."""
    window = max(2, round(PROCESS_WINDOW_S * SENSORS[b.sensor_id].sample_rate_hz))
    h_ts, h_v = state.history.get(b.sensor_id, (np.empty(0, np.int64), np.empty(0)))
    all_ts, all_v = np.concatenate([h_ts, ts]), np.concatenate([h_v, values])
    stats = rolling_window_stats(all_v[:-1][-(window - 1):], all_v[-1:], window)
    state.history[b.sensor_id] = (all_ts[-(window - 1):], all_v[-(window - 1):])
    values_at = {
        "asset_id": b.asset_id,
        "sensor_id": b.sensor_id,
        "window_start": int(all_ts[-window:][0]),
        "window_end": int(all_ts[-1]),
        "feature_version": FEATURE_VERSION,
        "n_samples": min(window, all_v.size),
        **{f"proc_{k}": float(stats[k][-1]) for k in ("level", "slope", "std")},
    }
    return SinkRows("features", p.msg.source, p.msg.offset, _process_table(values_at),
                    p.msg.received_us)


_NULL_FEATURES: list[pa.Array] = []


def _process_table(values_at: dict[str, Any]) -> pa.Table:
    """A one-row ``features`` table: the given columns set, every other feature null (one
    ``from_arrays`` over cached null columns; a process window is written per scalar message)."""
    schema = table_spec("features").input_schema
    if not _NULL_FEATURES:
        _NULL_FEATURES.extend(pa.nulls(1, f.type) for f in schema)
    arrays = list(_NULL_FEATURES)
    for name, value in values_at.items():
        i = schema.get_field_index(name)
        if isinstance(value, float) and not np.isfinite(value):
            value = None
        arrays[i] = pa.array([value], schema.field(i).type)
    return pa.Table.from_arrays(arrays, schema=schema)


def _detail(reason: str, value: float, low: float, high: float) -> str:
    if reason == "out_of_range":
        return f"value {value:.6g} outside [{low:g}, {high:g}]"
    if reason == "non_finite":
        return "value is null, NaN or infinite"
    return {
        "duplicate": "timestamp already accepted for this sensor",
        "late": "older than the newest reading of this sensor minus the allowed lateness",
    }.get(reason, reason)


def _frame_rows(p: Parsed, f: Frame, state: AssetState) -> list[SinkRows]:
    contract = SENSORS[f.sensor_id]
    problem = frame_problem(contract, f.sample_rate_hz, f.samples)
    if problem is None:
        arrivals = state.arrivals.setdefault(f.sensor_id, Arrivals())
        order = arrival_reasons(
            np.array([f.ts_start_us]), arrivals, round(contract.allowed_lateness_s * 1e6)
        )[0]
        if order != OK:
            problem = (str(order), _detail(str(order), 0.0, 0.0, 0.0))
    if problem is not None:
        return [rejected_rows(p.msg, [(p.msg.payload, *problem)], f.asset_id, f.sensor_id)]
    n = f.samples.size
    window_end = f.ts_start_us + round(n / f.sample_rate_hz * 1e6)
    feats = vibration_features(f.samples[None, :], f.sample_rate_hz, state.shaft_rpm, SKF_6205)
    spec = table_spec("features")
    ts_type = spec.schema.field("window_start").type
    columns: dict[str, Any] = {
        "asset_id": [f.asset_id],
        "sensor_id": [f.sensor_id],
        "window_start": pa.array([f.ts_start_us]).cast(ts_type),
        "window_end": pa.array([window_end]).cast(ts_type),
        "feature_version": [FEATURE_VERSION],
        "n_samples": [n],
    }
    columns.update(
        {name: [float(feats[name][0]) if name in feats else None] for name in feature_names()}
    )
    out = [
        SinkRows("features", p.msg.source, p.msg.offset, _table(spec, columns), p.msg.received_us)
    ]
    # not for the lake yet: the scorer's flight recorder decides whether the frame is kept
    out.append(
        FrameCandidate(f.asset_id, f.sensor_id, f.ts_start_us, f.sample_rate_hz, f.samples,
                       p.msg.source, p.msg.offset, p.msg.received_us)
    )
    return out


def validate(
    state: AssetState | None, p: Parsed, calibration: CalibrationCache | None = None
) -> tuple[AssetState, list[SinkRows]]:
    """Check one parsed message against its contract and the asset's history, apply the
    sensor's newest calibration, and build its rows."""
    state = state or AssetState()
    if isinstance(p.body, ScalarBatch):
        return state, _scalar_rows(p, p.body, state, calibration)
    return state, _frame_rows(p, p.body, state)


def get_flow(
    source: Source[Message] | None = None,
    lake_uri: str | None = None,
    tracking_uri: str | None = None,
    champion: ChampionWatcher | None = None,
) -> Dataflow:
    """The telemetry dataflow from ``source`` (default: the live simulated fleet) to the lake,
    scoring with the champion fault classifier of the MLflow registry at ``tracking_uri`` (or
    the given ``champion`` watcher)."""
    settings = Settings.from_env()
    source = source or SimulatorSource(default_fleet(), live=True)
    lake_uri = lake_uri or settings.lake_uri
    champion = champion or ChampionWatcher(
        tracking_uri or settings.mlflow_tracking_uri, FAULT_MODEL
    )
    return build_flow(source, DeltaSink(lake_uri), CalibrationCache(lake_uri), champion)


def simulated_flow(
    n_chunks: int, speed: float | None = None, lake_uri: str | None = None
) -> Dataflow:
    """The demo fleet for ``n_chunks`` seconds of event time, ``speed`` times real time (None: as
    fast as possible): ``python -m bytewax.run "bytewax_flows.telemetry:simulated_flow(600, 10)"``."""
    return get_flow(SimulatorSource(default_fleet(), speed=speed, n_chunks=n_chunks), lake_uri)


def build_flow(
    source: Source[Message],
    sink: DeltaSink,
    calibration: CalibrationCache | None = None,
    champion: ChampionWatcher | None = None,
) -> Dataflow:
    """The telemetry dataflow between an explicit source and sink."""
    flow = Dataflow("telemetry")
    items = op.input("source", flow, source)  # Message | Progress
    marked = op.branch("marks", items, lambda x: isinstance(x, Progress))
    marks = op.flat_map("to_every_table", marked.trues, lambda m: progress_rows(m.source,
                                                                                   m.offset))
    parsed = op.map("parse", marked.falses, parse)  # Parsed | Rejected
    split = op.branch("accepted", parsed, lambda x: isinstance(x, Parsed))
    rejected = op.flat_map("reject", split.falses, dead_letter)  # (table, SinkRows)
    keyed = op.key_on("by_asset", split.trues, lambda p: p.asset_id)  # (asset_id, Parsed)
    checked = op.stateful_map("validate", keyed, partial(validate, calibration=calibration))
    # (asset_id, [SinkRows])
    rows = op.flat_map("rows", checked, _by_table)  # (table, SinkRows)
    to_score = op.branch("to_score", rows, lambda item: item[0] in ("features", "frames"))
    windows = op.map("by_asset_again", to_score.trues, _keyed_by_asset)  # (asset_id, SinkRows)
    scored = op.stateful_map("score", windows, partial(score, champion=champion))
    # (asset_id, [SinkRows]) features, scores, drift events, alerts, retained frames
    scores = op.flat_map("score_rows", scored, _by_table)  # (table, SinkRows)
    op.output("lake", op.merge("all_rows", to_score.falses, rejected, scores, marks), sink)
    return flow


def _by_table(keyed_rows: tuple[str, list[SinkRows]]) -> list[tuple[str, SinkRows]]:
    return [(r.table, r) for r in keyed_rows[1]]


def _keyed_by_asset(
    item: tuple[str, SinkRows | FrameCandidate],
) -> tuple[str, SinkRows | FrameCandidate]:
    rows = item[1]
    if isinstance(rows, FrameCandidate):
        return rows.asset_id, rows
    return rows.rows.column("asset_id")[0].as_py(), rows


flow = get_flow()
