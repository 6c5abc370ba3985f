"""Wire formats: round trips, and every malformed shape gets a reason code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bytewax_flows.payloads import (
    MAX_MESSAGE_BYTES,
    Frame,
    PayloadError,
    ScalarBatch,
    decode,
    encode_frame,
    encode_scalars,
)
from tests.conftest import T0_US


def test_scalar_batch_round_trip_with_nan_as_null():
    ts = np.array([T0_US, T0_US + 100_000])
    got = decode(encode_scalars("pump-01", "motor_current", ts, [21.5, np.nan]))
    assert isinstance(got, ScalarBatch)
    assert (got.asset_id, got.sensor_id) == ("pump-01", "motor_current")
    assert got.ts_us.tolist() == ts.tolist()
    assert got.values[0] == 21.5 and np.isnan(got.values[1])


def test_single_reading_with_iso_timestamp():
    payload = json.dumps(
        {
            "asset_id": "a",
            "sensor_id": "bearing_temp",
            "ts": "2026-01-01T01:00:00+01:00",
            "value": 3,
        }
    ).encode()
    got = decode(payload)
    assert got.ts_us.tolist() == [T0_US] and got.values.tolist() == [3.0]


def test_frame_round_trip_is_float32_and_exact():
    x = np.random.default_rng(1).normal(size=12_000).astype(np.float32)
    got = decode(encode_frame("pump-02", "vib_de", T0_US, 12_000.0, x))
    assert isinstance(got, Frame)
    assert got.sample_rate_hz == 12_000.0 and got.ts_start_us == T0_US
    assert np.array_equal(got.samples, x)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "malformed"),
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'{"asset_id": "a", "sensor_id": "s", "ts": 1}', "malformed"),
        (b'{"asset_id": "a", "sensor_id": "s", "ts": [1, 2], "value": [1]}', "malformed"),
        (b'{"asset_id": "a", "sensor_id": "s", "ts": [1767225600000000], "value": 1}', "malformed"),
        (b'{"asset_id": 7, "sensor_id": "s", "ts": 1767225600000000, "value": 1}', "wrong_type"),
        (
            b'{"asset_id": "a", "sensor_id": "s", "ts": 1767225600000000, "value": "12"}',
            "wrong_type",
        ),
        (
            b'{"asset_id": "a", "sensor_id": "s", "ts": 1767225600000000, "value": true}',
            "wrong_type",
        ),
        (b'{"asset_id": "a", "sensor_id": "s", "ts": "yesterday", "value": 1}', "bad_timestamp"),
        (b'{"asset_id": "a", "sensor_id": "s", "ts": 1.5, "value": 1}', "bad_timestamp"),
        (
            b'{"asset_id": "a", "sensor_id": "s", "ts": [1767225600000000, "2026-01-01T00:00:01Z"], "value": [1, 2]}',
            "bad_timestamp",
        ),
        (
            b'{"asset_id": "a", "sensor_id": "s", "ts": [1767225600000000, 1767225600000001], "value": [1, "2"]}',
            "wrong_type",
        ),
        (b"PPF1\x00", "malformed"),
        (encode_frame("a", "vib_de", T0_US, 12_000.0, np.zeros(10))[:-4], "malformed"),
        (encode_frame("a", "vib_de", 5, 12_000.0, np.zeros(10)), "bad_timestamp"),
        (b"x" * (MAX_MESSAGE_BYTES + 1), "oversized"),
    ],
)
def test_bad_payloads_raise_with_reason(payload: bytes, reason: str):
    with pytest.raises(PayloadError) as err:
        decode(payload)
    assert err.value.reason == reason
    assert err.value.detail


def test_nan_literals_from_python_json_reject_only_those_values():
    """``json.dumps`` writes NaN as a bare literal (not JSON); the fast decoder refuses it, so
    the standard one takes over and only the NaN becomes a rejected value."""
    body = json.dumps(
        {
            "asset_id": "p",
            "sensor_id": "motor_current",
            "ts": [T0_US, T0_US + 1],
            "value": [1.5, float("nan")],
        }
    ).encode()
    assert b"NaN" in body
    batch = decode(body)
    assert batch.values[0] == 1.5 and np.isnan(batch.values[1])
    with pytest.raises(PayloadError, match="not JSON"):
        decode(b'{"asset_id": "p", ')
