"""The wire formats of the data plane: the messages a source hands the stream, the four payload
shapes they carry, and their encoders (the decoders are ``dataplane.decode`` for one message
and ``dataplane.batch_decode`` for a micro-batch).

Four payload shapes, all decoded into the same columnar batch:

1. **One sensor, JSON** - one reading or a batch (``ts`` integer microseconds since the Unix
   epoch, UTC, or ISO-8601 strings with a zone)::

    {"asset_id": "pump-01", "sensor_id": "bearing_temp", "ts": 1767225600000000, "value": 41.2}
    {"asset_id": "pump-01", "sensor_id": "motor_current",
     "ts": [1767225600000000, 1767225600100000], "value": [21.5, 21.7]}

2. **Multi-sensor, JSON** - what gateways send: one asset (or device), many tags, one timestamp
   or one per row::

    {"asset_id": "pump-01", "ts": 1767225600000000,
     "values": {"bearing_temp": 41.2, "motor_current": 21.5}}
    {"asset_id": "pump-01", "ts": [1767225600000000, 1767225600100000],
     "values": {"bearing_temp": [41.2, 41.3], "motor_current": [21.5, 21.6]}}

   A tag whose value has the wrong type or length is rejected alone; the others go on.

3. **Vibration frame, binary** (little-endian): a 28-byte header ``b"PPF1", len(asset_id): u16,
   len(sensor_id): u16, ts_start_us: i64, sample_rate_hz: f64, n_samples: u32``, the two UTF-8
   ids, then ``n_samples`` float32 samples.

4. **Arrow IPC stream, bulk** - ``b"PPA1"`` then an Arrow IPC *stream* with the columns
   ``asset_id`` (string), ``sensor_id`` (string), ``ts`` (int64 microseconds or a timestamp) and
   ``value`` (a number), any number of rows and assets.

Every unusable payload becomes a ``PayloadError`` with a dead-letter reason code (never another
exception): not JSON, nested too deep, numbers too large, ids that are not clean text, empty
batches, oversized messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from numpy.typing import NDArray

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_ID_CHARS",
    "FRAME_MAGIC",
    "ARROW_MAGIC",
    "FRAME_HEADER",
    "NUMBER_TYPES",
    "TS_MIN",
    "TS_MAX",
    "Message",
    "Progress",
    "Batch",
    "as_batch",
    "ScalarBatch",
    "Frame",
    "PayloadError",
    "encode_scalars",
    "encode_multi",
    "encode_frame",
    "encode_arrow",
]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_ID_CHARS = 200
FRAME_MAGIC = b"PPF1"
ARROW_MAGIC = b"PPA1"
FRAME_HEADER = struct.Struct("<4sHHqdI")
NUMBER_TYPES = {int, float, type(None)}
# plausible event times: 1990-01-01 .. 2100-01-01, in microseconds
TS_MIN, TS_MAX = 631_152_000_000_000, 4_102_444_800_000_000


@dataclass(slots=True)
class Message:
    """One raw input: where it came from, its position there, and the bytes.  (Not frozen: a
    source makes one per message, and a frozen dataclass costs four times as much to build -
    1.9 against 0.4 µs here; nothing changes a message once made.)"""

    source: str
    offset: int
    received_us: int
    payload: bytes
    # (reason, detail) when the source sets it aside unprocessed (load shedding, a numbered
    # message out of sequence): it goes to dead_letter with its payload
    set_aside: tuple[str, str] | None = None
    # the asset the channel it came by is bound to (an MQTT topic ``plantpulse/<asset>/...``,
    # which the broker's ACL lets only that asset's publishers write): every reading and frame
    # in the payload must be of this asset, else the whole message is dead-lettered
    channel_asset: str | None = None


@dataclass(frozen=True)
class Progress:
    """A source's mark that it has emitted everything up to ``offset``: sent to every table the
    stream writes, whose sink records it as durable at its next snapshot (by then each row of
    those messages is committed).  Sources that must acknowledge input (MQTT) wait for it."""

    source: str
    offset: int


@dataclass(frozen=True)
class Batch:
    """What a source received together: the unit of work of the stream."""

    messages: list[Message]
    progress: list[Progress] = field(default_factory=list)


def as_batch(item: Batch | Message | Progress | list) -> Batch:
    """Normalise a source's item (a ``Batch``, a list of messages and marks, or one of either)."""
    if isinstance(item, Batch):
        return item
    if isinstance(item, Message):
        return Batch([item])
    if isinstance(item, Progress):
        return Batch([], [item])
    return Batch(
        [m for m in item if isinstance(m, Message)], [m for m in item if isinstance(m, Progress)]
    )


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


# -- encoders ---------------------------------------------------------------------------------
def _finite_or_none(values: Any) -> list[float | None]:
    return [v if np.isfinite(v) else None for v in np.asarray(values, np.float64).tolist()]


def encode_scalars(asset_id: str, sensor_id: str, ts_us: Any, values: Any) -> bytes:
    """JSON batch payload for one sensor.  NaN/inf are sent as null (JSON has neither)."""
    body = {
        "asset_id": asset_id,
        "sensor_id": sensor_id,
        "ts": np.asarray(ts_us, np.int64).tolist(),
        "value": _finite_or_none(values),
    }
    return orjson.dumps(body)


def encode_multi(asset_id: str, ts_us: Any, values: dict[str, Any]) -> bytes:
    """Multi-sensor JSON payload: one asset, many tags, one timestamp (scalars) or many."""
    if np.ndim(ts_us) == 0:
        body = {
            "asset_id": asset_id,
            "ts": int(ts_us),
            "values": {k: _finite_or_none([v])[0] for k, v in values.items()},
        }
    else:
        body = {
            "asset_id": asset_id,
            "ts": np.asarray(ts_us, np.int64).tolist(),
            "values": {k: _finite_or_none(v) for k, v in values.items()},
        }
    return orjson.dumps(body)


def encode_frame(
    asset_id: str, sensor_id: str, ts_start_us: int, sample_rate_hz: float, samples: Any
) -> bytes:
    a, s = asset_id.encode(), sensor_id.encode()
    data = np.ascontiguousarray(samples, dtype="<f4")
    return (
        FRAME_HEADER.pack(FRAME_MAGIC, len(a), len(s), ts_start_us, sample_rate_hz, data.size)
        + a
        + s
        + data.tobytes()
    )


def encode_arrow(asset_id: Any, sensor_id: Any, ts_us: Any, values: Any) -> bytes:
    """Arrow IPC stream payload of readings (columns as arrays, or scalars repeated)."""
    n = int(np.size(values))
    table = pa.table(
        {
            "asset_id": pa.array(np.broadcast_to(np.asarray(asset_id, object), n), pa.string()),
            "sensor_id": pa.array(np.broadcast_to(np.asarray(sensor_id, object), n), pa.string()),
            "ts": pa.array(np.broadcast_to(np.asarray(ts_us, np.int64), n)),
            "value": pa.array(np.broadcast_to(np.asarray(values, np.float64), n)),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return ARROW_MAGIC + sink.getvalue().to_pybytes()
