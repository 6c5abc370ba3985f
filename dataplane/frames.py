"""Vibration frames of a shard's micro-batch: each frame checked against its contract and its
sensor's event time, the vibration features of all accepted frames (one call per sample rate,
length and bearing), then per frame its ``features`` row, its score, the flight recorder and
the RUL hook, in arrival order."""

from __future__ import annotations

from typing import Any

import numpy as np

from dataplane import prognostics
from dataplane.columns import Decoded
from dataplane.context import Context
from dataplane.dead_letters import DeadLetters
from dataplane.formats import Frame
from dataplane.rows import Out
from dataplane.scalars import Speeds, rpm_at
from dataplane.scoring import Emit, FrameCandidate, record_frame, score_vibration
from dataplane.shard import AssetState, ShardState
from expectations.checks import OK, Arrivals, arrival_reasons, frame_problem
from physics.bearing import SKF_6205
from physics.features import vibration_features
from physics.registry import FEATURE_VERSION, feature_names

__all__ = ["frames"]

_VIB_FEATURES = feature_names("vibration")


def frames(
    state: ShardState, d: Decoded, ctx: Context, out: Out, dead: DeadLetters, speeds: Speeds | None
) -> None:
    """Check each frame against its contract and its sensor's event time, compute the
    vibration features of all accepted frames (one call per sample rate, length and bearing),
    then score them and pass them through the flight recorder, in arrival order."""
    accepted: list[tuple[int, Frame, int, float]] = []  # (msg, frame, asset number, rpm)
    for i, f in d.frames:
        contract = ctx.plant.contract(f.asset_id, f.sensor_id)
        if contract is None:
            dead.add(
                i,
                "unknown_sensor",
                f"sensor {f.sensor_id!r} has no contract",
                f.asset_id,
                f.sensor_id,
            )
            continue
        if not contract.frames:
            dead.add(
                i,
                "wrong_type",
                f"sensor {f.sensor_id!r} sends scalar readings",
                f.asset_id,
                f.sensor_id,
            )
            continue
        a = state.asset_index.get(f.asset_id)
        if a is None:
            if state.n + len(state.assets) >= ctx.max_series:
                dead.add(
                    i, "capacity", "this shard tracks too many assets", f.asset_id, f.sensor_id
                )
                continue
            a = state.asset_index[f.asset_id] = len(state.assets)
            state.assets.append(AssetState(f.asset_id))
        problem = frame_problem(contract, f.sample_rate_hz, f.samples)
        if problem is None:
            arrivals = state.assets[a].frame_arrivals.setdefault(f.sensor_id, Arrivals())
            order = arrival_reasons(
                np.array([f.ts_start_us]), arrivals, round(contract.allowed_lateness_s * 1e6)
            )[0]
            if order != OK:
                problem = (
                    str(order),
                    "timestamp already accepted for this sensor"
                    if order == "duplicate"
                    else "older than the newest frame of this sensor minus the allowed lateness",
                )
        if problem is not None:
            dead.add(i, *problem, f.asset_id, f.sensor_id)
            continue
        accepted.append((i, f, a, rpm_at(state, speeds, a, i)))
    if not accepted:
        return
    feats: list[dict[str, float]] = [{}] * len(accepted)
    by_shape: dict[tuple, list[int]] = {}
    for j, (_, f, _, _) in enumerate(accepted):
        key = (f.sample_rate_hz, f.samples.size, ctx.plant.bearing(f.asset_id, f.sensor_id))
        by_shape.setdefault(key, []).append(j)
    for (rate, _, bearing), js in by_shape.items():
        x = np.stack([accepted[j][1].samples for j in js])
        rpm = np.array([accepted[j][3] for j in js])
        if bearing is None:  # no declared bearing: no defect orders (never a made-up geometry)
            bearing, rpm = SKF_6205, np.full(rpm.shape, np.nan)
        computed = vibration_features(x, rate, rpm, bearing)
        for r, j in enumerate(js):
            feats[j] = {name: float(v[r]) for name, v in computed.items()}
    model = ctx.fault_model()
    rows = []
    for (i, f, a, _), values in zip(accepted, feats, strict=True):
        n = f.samples.size
        row: dict[str, Any] = {
            "asset_id": f.asset_id,
            "sensor_id": f.sensor_id,
            "window_start": f.ts_start_us,
            "window_end": f.ts_start_us + round(n / f.sample_rate_hz * 1e6),
            "feature_version": FEATURE_VERSION,
            "n_samples": n,
            **{name: values.get(name) for name in _VIB_FEATURES},
        }
        rows.append(row)
        out.add("features", row, i)
        emit = Emit(out, i, d.messages[i].received_us)
        scorer = state.assets[a].scorer
        score_vibration(scorer, emit, row, model, ctx.policy)
        record_frame(
            scorer,
            ctx.policy,
            FrameCandidate(f.asset_id, f.sensor_id, f.ts_start_us, f.sample_rate_hz, f.samples),
            emit,
        )
    prognostics.observe_rows(
        state.prognoses,
        ctx.rul_model(),
        ctx.plant,
        out,
        [(i, row) for (i, *_), row in zip(accepted, rows, strict=True)],
    )
