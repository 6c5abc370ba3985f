"""Decoding one message: the careful reference path, whose ``PayloadError`` says why a payload
is unusable (the stream decodes whole micro-batches with ``dataplane.batch_decode``, which falls
back on these for anything unusual), and the checks of ids, timestamps and values it shares."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from dataplane.formats import (
    FRAME_HEADER,
    FRAME_MAGIC,
    MAX_ID_CHARS,
    MAX_MESSAGE_BYTES,
    NUMBER_TYPES,
    TS_MAX,
    TS_MIN,
    Frame,
    PayloadError,
    ScalarBatch,
)

__all__ = ["decode", "load_json", "clean_id", "decode_frame", "timestamps", "float_values"]


def decode(payload: bytes) -> ScalarBatch | Frame:
    """Decode one single-sensor payload; ``PayloadError`` says why it is unusable.  (The stream
    decodes whole batches with ``decode_batch``; this is its slow path and the reference.)"""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise PayloadError("oversized", f"{len(payload)} bytes > limit of {MAX_MESSAGE_BYTES}")
    if payload[:4] == FRAME_MAGIC:
        return decode_frame(payload)
    body = load_json(payload)
    if not isinstance(body, dict):
        raise PayloadError("malformed", f"expected a JSON object, got {type(body).__name__}")
    if "values" in body and "sensor_id" not in body:
        raise PayloadError("malformed", "a multi-sensor message: decode it with decode_batch")
    missing = [k for k in ("asset_id", "sensor_id", "ts", "value") if k not in body]
    if missing:
        raise PayloadError(
            "malformed",
            f"missing field(s) {', '.join(missing)}",
            clean_id(body.get("asset_id")),
            clean_id(body.get("sensor_id")),
        )
    asset_id, sensor_id = _ids(body.get("asset_id"), body.get("sensor_id"))
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
    if not ts_l:
        raise PayloadError("empty_message", "a batch with no readings", asset_id, sensor_id)
    return ScalarBatch(
        asset_id,
        sensor_id,
        timestamps(ts_l, asset_id, sensor_id),
        float_values(val_l, asset_id, sensor_id),
    )


def load_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8, lone surrogates, depth > 1024
        if b"NaN" not in payload and b"Infinity" not in payload:
            raise PayloadError("malformed", f"not JSON: {exc}") from None
        try:  # NaN/Infinity literals (what Python's json.dumps writes): the values are rejected
            return json.loads(payload)  # one by one as non_finite, not the whole message
        except (ValueError, RecursionError) as exc2:  # bad JSON, ints over 4,300 digits, depth
            raise PayloadError("malformed", f"not JSON: {str(exc2)[:200]}") from None


def clean_id(x: Any) -> str | None:
    """``x`` if it is usable as an asset or sensor id: non-empty text of at most
    ``MAX_ID_CHARS`` printable characters (no control characters, no lone surrogates)."""
    if type(x) is str and 0 < len(x) <= MAX_ID_CHARS and x.isprintable():
        return x
    return None


def _ids(asset_id: Any, sensor_id: Any) -> tuple[str, str]:
    a, s = clean_id(asset_id), clean_id(sensor_id)
    if a is None or s is None:
        raise PayloadError(
            "wrong_type",
            f"asset_id and sensor_id must be non-empty printable strings of at most "
            f"{MAX_ID_CHARS} characters",
            a,
            s,
        )
    return a, s


def decode_frame(payload: bytes) -> Frame:
    if len(payload) < FRAME_HEADER.size:
        raise PayloadError("malformed", f"frame header truncated ({len(payload)} bytes)")
    _, la, ls, ts, rate, n = FRAME_HEADER.unpack_from(payload)
    end_ids = FRAME_HEADER.size + la + ls
    if len(payload) != end_ids + 4 * n:
        raise PayloadError(
            "malformed", f"frame length {len(payload)} does not match header ({n} samples)"
        )
    try:
        asset_id = payload[FRAME_HEADER.size : FRAME_HEADER.size + la].decode()
        sensor_id = payload[FRAME_HEADER.size + la : end_ids].decode()
    except UnicodeDecodeError:
        raise PayloadError("malformed", "frame ids are not UTF-8") from None
    if clean_id(asset_id) is None or clean_id(sensor_id) is None:
        raise PayloadError("malformed", "frame without a usable asset_id or sensor_id")
    if not TS_MIN <= ts < TS_MAX:
        raise PayloadError(
            "bad_timestamp", f"frame start {ts} us is outside 1990..2100", asset_id, sensor_id
        )
    samples = np.frombuffer(payload, dtype="<f4", count=n, offset=end_ids)
    return Frame(asset_id, sensor_id, ts, rate, samples)


def timestamps(ts: list[Any], asset_id: str, sensor_id: str) -> NDArray[np.int64]:
    """Integer microseconds or ISO-8601 strings; a number outside int64 or a string that is no
    date is ``bad_timestamp`` (the plausible range is checked per reading, in validation)."""
    if not ts:
        return np.empty(0, np.int64)
    try:
        kinds = set(map(type, ts))
        if kinds == {int}:
            return np.asarray(ts, dtype=np.int64)
        if kinds - {str}:
            raise ValueError("timestamps must be integer microseconds or ISO-8601 strings")
        if max(map(len, ts)) > 64:
            raise ValueError("an ISO-8601 timestamp is at most 64 characters")
        return _parse_iso(ts)
    except (ValueError, TypeError, OverflowError) as exc:  # pandas' OutOfBounds* are ValueErrors
        raise PayloadError(
            "bad_timestamp", f"unusable timestamp: {str(exc)[:200]}", asset_id, sensor_id
        ) from None


def float_values(values: list[Any], asset_id: str, sensor_id: str) -> NDArray[np.float64]:
    """Numbers become float64, null becomes NaN (rejected later as non_finite); anything else
    (strings, booleans, objects) makes the whole message ``wrong_type``, and an integer too large
    for a float ``out_of_range``."""
    if not set(map(type, values)) <= NUMBER_TYPES:  # one C-level pass, no Python loop body
        raise PayloadError("wrong_type", "value must be a number or null", asset_id, sensor_id)
    try:
        return np.array(values, dtype=np.float64)  # None -> nan
    except OverflowError:
        raise PayloadError(
            "out_of_range", "a value is too large for a 64-bit float", asset_id, sensor_id
        ) from None


def _parse_iso(ts: list[str]) -> NDArray[np.int64]:
    """ISO-8601 strings (any zone; none means UTC) as microseconds.  Pandas' parser, imported on
    first use: the core imports nothing heavy, and integer timestamps are the common case."""
    import pandas as pd

    parsed = pd.to_datetime(pd.Series(ts, dtype=object), utc=True, format="mixed")
    return parsed.to_numpy(dtype="datetime64[us]").astype(np.int64)
