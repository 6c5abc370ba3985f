"""Online scoring in the stream: a River anomaly detector per asset that learns as it scores,
and a River drift detector on each asset's anomaly score.

Both are plain picklable River objects kept in the step's state, so Bytewax recovery snapshots
them with everything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from river import base, drift, preprocessing

from bytewax_flows.sinks import SinkRows
from bytewax_flows.sources import now_us
from lake import table_spec
from physics.registry import FEATURE_VERSION, feature_names

__all__ = ["AssetScorer", "score", "DETECTOR_NAME", "SCORED_FEATURES"]

DETECTOR_NAME = "river:StandardScaler|mean-squared-z"
SCORED_FEATURES = [
    n for n in feature_names("vibration") if n not in ("demod_centre_hz", "vib_speed_ok")
]
"""Features the online detector sees (where the band sits and whether speed was known are
context, not symptoms)."""


class StandardisedDistance(base.AnomalyDetector):
    """Mean squared z-score of the features against running (Welford) statistics of what the
    detector has judged normal.  It learns as it scores, but only from windows scoring below
    ``learn_below``: a developing fault is not absorbed into "normal".

    >>> det = StandardisedDistance()
    >>> for i in range(200):
    ...     det.learn_one({"a": float(i % 7), "b": 1.0 + (i % 3)})
    >>> det.score_one({"a": 3.0, "b": 2.0}) < 1.0 < det.score_one({"a": 40.0, "b": 2.0})
    True
    """

    def __init__(self, learn_below: float = 9.0):
        self.learn_below = learn_below
        self.scaler = preprocessing.StandardScaler()

    def score_one(self, x: dict[str, float]) -> float:
        z = self.scaler.transform_one(x)
        return sum(v * v for v in z.values()) / max(len(z), 1)

    def learn_one(self, x: dict[str, float]) -> None:
        if (
            self.scaler.counts
            and max(self.scaler.counts.values()) >= 30
            and self.score_one(x) > self.learn_below
        ):
            return
        self.scaler.learn_one(x)


@dataclass
class AssetScorer:
    """Per asset: the anomaly detector, the drift detector on its score, and a warm-up count."""

    warmup: int = 60
    seen: int = 0
    detector: StandardisedDistance = field(default_factory=StandardisedDistance)
    drift_detector: drift.ADWIN = field(
        default_factory=lambda: drift.ADWIN(delta=0.001, grace_period=60)
    )


def _features(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(row[k])
        for k in SCORED_FEATURES
        if row.get(k) is not None and math.isfinite(row[k])
    }


def score(state: AssetScorer | None, item: SinkRows) -> tuple[AssetScorer, list[SinkRows]]:
    """Score one feature window, learn from it, and watch the score for drift."""
    state = state or AssetScorer()
    row = item.rows.to_pylist()[0]
    x = _features(row)
    value = float(state.detector.score_one(x)) if state.seen >= state.warmup else 0.0
    state.detector.learn_one(x)
    state.seen += 1
    spec = table_spec("scores")
    ts_type = spec.schema.field("window_end").type
    scores = pa.table(
        {
            "asset_id": [row["asset_id"]],
            "window_end": pa.array([row["window_end"]], ts_type),
            "anomaly_score": [value],
            "prediction": pa.array([None], pa.float64()),
            "model_name": [DETECTOR_NAME],
            "model_version": ["online"],
            "feature_version": pa.array([FEATURE_VERSION], pa.int32()),
            "latency_ms": [max(0.0, (now_us() - item.received_us) / 1000.0)],
        },
        schema=spec.input_schema,
    )
    out = [SinkRows("scores", item.source, item.offset, scores, item.received_us)]
    if state.seen > state.warmup:
        state.drift_detector.update(value)
        if state.drift_detector.drift_detected:
            dspec = table_spec("drift_events")
            event = pa.table(
                {
                    "ts": pa.array([row["window_end"]], dspec.schema.field("ts").type),
                    "asset_id": [row["asset_id"]],
                    "subject_kind": ["residual"],
                    "subject": ["anomaly_score"],
                    "detector": ["ADWIN"],
                    "statistic": [float(state.drift_detector.estimation)],
                    "detail": [
                        f"mean anomaly score changed; now {state.drift_detector.estimation:.3f} "
                        f"over the last {int(state.drift_detector.width)} windows"
                    ],
                },
                schema=dspec.input_schema,
            )
            out.append(SinkRows("drift_events", item.source, item.offset, event, item.received_us))
    return state, out
