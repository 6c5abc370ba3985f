"""Wire formats of the data plane and their decoding into arrays.

Scalar readings travel as JSON, one sensor per message, either one reading or a batch::

    {"asset_id": "pump-01", "sensor_id": "bearing_temp", "ts": 1767225600000000, "value": 41.2}
    {"asset_id": "pump-01", "sensor_id": "motor_current",
     "ts": [1767225600000000, 1767225600100000], "value": [21.5, 21.7]}

``ts`` is microseconds since the Unix epoch (UTC) or an ISO-8601 string with a zone.

Vibration frames travel as compact little-endian binary: a 28-byte header
``b"PPF1", len(asset_id): u16, len(sensor_id): u16, ts_start_us: i64, sample_rate_hz: f64,
n_samples: u32``, then the two UTF-8 ids, then ``n_samples`` float32 samples.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd
from numpy.typing import NDArray

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Message",
    "Progress",
    "ScalarBatch",
    "Frame",
    "PayloadError",
    "encode_scalars",
    "encode_frame",
    "decode",
]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
FRAME_MAGIC = b"PPF1"
_HEADER = struct.Struct("<4sHHqdI")
_NUMBER_TYPES = {int, float, type(None)}
# plausible event times: 1990-01-01 .. 2100-01-01, in microseconds
_TS_MIN, _TS_MAX = 631_152_000_000_000, 4_102_444_800_000_000


@dataclass(frozen=True)
class Message:
    """One raw input: where it came from, its position there, and the bytes."""

    source: str
    offset: int
    received_us: int
    payload: bytes
    # (reason, detail) when the source sets it aside unprocessed (load shedding, a numbered
    # message out of sequence): it goes to dead_letter with its payload
    set_aside: tuple[str, str] | None = None


@dataclass(frozen=True)
class Progress:
    """A source's mark that it has emitted everything up to ``offset``: sent to every table the
    stream writes, whose sink records it as durable at its next snapshot (by then each row of
    those messages is committed).  Sources that must acknowledge input (MQTT) wait for it."""

    source: str
    offset: int


@dataclass(frozen=True)
class ScalarBatch:
    asset_id: str
    sensor_id: str
    ts_us: NDArray[np.int64]
    values: NDArray[np.float64]


@dataclass(frozen=True)
class Frame:
    asset_id: str
    sensor_id: str
    ts_start_us: int
    sample_rate_hz: float
    samples: NDArray[np.float32]


class PayloadError(ValueError):
    """A payload that cannot be decoded; ``reason`` is a dead-letter reason code."""

    def __init__(
        self, reason: str, detail: str, asset_id: str | None = None, sensor_id: str | None = None
    ):
        super().__init__(detail)
        self.reason, self.detail = reason, detail
        self.asset_id, self.sensor_id = asset_id, sensor_id


def encode_scalars(asset_id: str, sensor_id: str, ts_us: Any, values: Any) -> bytes:
    """JSON batch payload for one sensor.  NaN/inf are sent as null (JSON has neither)."""
    vals = [v if np.isfinite(v) else None for v in np.asarray(values, np.float64).tolist()]
    body = {
        "asset_id": asset_id,
        "sensor_id": sensor_id,
        "ts": np.asarray(ts_us, np.int64).tolist(),
        "value": vals,
    }
    return orjson.dumps(body)


def encode_frame(
    asset_id: str, sensor_id: str, ts_start_us: int, sample_rate_hz: float, samples: Any
) -> bytes:
    a, s = asset_id.encode(), sensor_id.encode()
    data = np.ascontiguousarray(samples, dtype="<f4")
    return (
        _HEADER.pack(FRAME_MAGIC, len(a), len(s), ts_start_us, sample_rate_hz, data.size)
        + a
        + s
        + data.tobytes()
    )


def decode(payload: bytes) -> ScalarBatch | Frame:
    """Decode one payload; ``PayloadError`` says why it is unusable."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise PayloadError("oversized", f"{len(payload)} bytes > limit of {MAX_MESSAGE_BYTES}")
    if payload[:4] == FRAME_MAGIC:
        return _decode_frame(payload)
    return _decode_json(payload)


def _decode_frame(payload: bytes) -> Frame:
    if len(payload) < _HEADER.size:
        raise PayloadError("malformed", f"frame header truncated ({len(payload)} bytes)")
    _, la, ls, ts, rate, n = _HEADER.unpack_from(payload)
    end_ids = _HEADER.size + la + ls
    if len(payload) != end_ids + 4 * n:
        raise PayloadError(
            "malformed", f"frame length {len(payload)} does not match header ({n} samples)"
        )
    try:
        asset_id = payload[_HEADER.size : _HEADER.size + la].decode()
        sensor_id = payload[_HEADER.size + la : end_ids].decode()
    except UnicodeDecodeError:
        raise PayloadError("malformed", "frame ids are not UTF-8") from None
    if not asset_id or not sensor_id:
        raise PayloadError("malformed", "frame without asset_id or sensor_id")
    if not _TS_MIN <= ts < _TS_MAX:
        raise PayloadError(
            "bad_timestamp", f"frame start {ts} us is outside 1990..2100", asset_id, sensor_id
        )
    samples = np.frombuffer(payload, dtype="<f4", count=n, offset=end_ids)
    return Frame(asset_id, sensor_id, ts, rate, samples)


def _decode_json(payload: bytes) -> ScalarBatch:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8
        try:  # NaN/Infinity literals (what Python's json.dumps writes): the values are rejected
            body = json.loads(payload)  # one by one as non_finite, not the whole message
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise PayloadError("malformed", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PayloadError("malformed", f"expected a JSON object, got {type(body).__name__}")
    missing = [k for k in ("asset_id", "sensor_id", "ts", "value") if k not in body]
    if missing:
        raise PayloadError(
            "malformed",
            f"missing field(s) {', '.join(missing)}",
            _str_or_none(body.get("asset_id")),
            _str_or_none(body.get("sensor_id")),
        )
    asset_id, sensor_id = body["asset_id"], body["sensor_id"]
    if not (isinstance(asset_id, str) and asset_id and isinstance(sensor_id, str) and sensor_id):
        raise PayloadError("wrong_type", "asset_id and sensor_id must be non-empty strings")
    ts, value = body["ts"], body["value"]
    if isinstance(ts, list) != isinstance(value, list):
        raise PayloadError(
            "malformed", "ts and value must both be lists or both scalars", asset_id, sensor_id
        )
    ts_l, val_l = (ts, value) if isinstance(ts, list) else ([ts], [value])
    if len(ts_l) != len(val_l):
        raise PayloadError(
            "malformed", f"{len(ts_l)} timestamps but {len(val_l)} values", asset_id, sensor_id
        )
    return ScalarBatch(
        asset_id,
        sensor_id,
        _timestamps(ts_l, asset_id, sensor_id),
        _values(val_l, asset_id, sensor_id),
    )


def _str_or_none(x: Any) -> str | None:
    return x if isinstance(x, str) else None


def _timestamps(ts: list[Any], asset_id: str, sensor_id: str) -> NDArray[np.int64]:
    try:
        kinds = set(map(type, ts))
        if kinds == {int}:
            out = np.asarray(ts, dtype=np.int64)
        else:
            if kinds - {str}:
                raise ValueError("timestamps must be integer microseconds or ISO-8601 strings")
            parsed = pd.to_datetime(pd.Series(ts, dtype=object), utc=True, format="mixed")
            out = parsed.to_numpy(dtype="datetime64[us]").astype(np.int64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise PayloadError(
            "bad_timestamp", f"unusable timestamp: {exc}", asset_id, sensor_id
        ) from None
    bad = (out < _TS_MIN) | (out >= _TS_MAX)
    if bad.any():
        raise PayloadError(
            "bad_timestamp",
            f"{int(bad.sum())} timestamp(s) outside 1990..2100",
            asset_id,
            sensor_id,
        )
    return out


def _values(values: list[Any], asset_id: str, sensor_id: str) -> NDArray[np.float64]:
    """Numbers become float64, null becomes NaN (rejected later as non_finite); anything else
    (strings, booleans, objects) makes the whole message ``wrong_type``."""
    if not set(map(type, values)) <= _NUMBER_TYPES:  # one C-level pass, no Python loop body
        raise PayloadError("wrong_type", "value must be a number or null", asset_id, sensor_id)
    return np.array(values, dtype=np.float64)  # None -> nan
