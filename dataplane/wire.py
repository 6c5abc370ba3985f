"""Wire formats of the data plane, and their decoding: one message, or a whole micro-batch of
messages into one set of arrays.

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

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_ID_CHARS",
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
    "decode",
    "Decoded",
    "decode_batch",
    "TS_MIN",
    "TS_MAX",
]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_ID_CHARS = 200
FRAME_MAGIC = b"PPF1"
ARROW_MAGIC = b"PPA1"
_HEADER = struct.Struct("<4sHHqdI")
_NUMBER_TYPES = {int, float, type(None)}
# plausible event times: 1990-01-01 .. 2100-01-01, in microseconds
TS_MIN, TS_MAX = 631_152_000_000_000, 4_102_444_800_000_000


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
        _HEADER.pack(FRAME_MAGIC, len(a), len(s), ts_start_us, sample_rate_hz, data.size)
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


# -- one message ------------------------------------------------------------------------------
def decode(payload: bytes) -> ScalarBatch | Frame:
    """Decode one single-sensor payload; ``PayloadError`` says why it is unusable.  (The stream
    decodes whole batches with ``decode_batch``; this is its slow path and the reference.)"""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise PayloadError("oversized", f"{len(payload)} bytes > limit of {MAX_MESSAGE_BYTES}")
    if payload[:4] == FRAME_MAGIC:
        return _decode_frame(payload)
    body = _load_json(payload)
    if not isinstance(body, dict):
        raise PayloadError("malformed", f"expected a JSON object, got {type(body).__name__}")
    if "values" in body and "sensor_id" not in body:
        raise PayloadError("malformed", "a multi-sensor message: decode it with decode_batch")
    missing = [k for k in ("asset_id", "sensor_id", "ts", "value") if k not in body]
    if missing:
        raise PayloadError(
            "malformed",
            f"missing field(s) {', '.join(missing)}",
            _clean_id(body.get("asset_id")),
            _clean_id(body.get("sensor_id")),
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
        _timestamps(ts_l, asset_id, sensor_id),
        _values(val_l, asset_id, sensor_id),
    )


def _load_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:  # also invalid UTF-8, lone surrogates, depth > 1024
        if b"NaN" not in payload and b"Infinity" not in payload:
            raise PayloadError("malformed", f"not JSON: {exc}") from None
        try:  # NaN/Infinity literals (what Python's json.dumps writes): the values are rejected
            return json.loads(payload)  # one by one as non_finite, not the whole message
        except (ValueError, RecursionError) as exc2:  # bad JSON, ints over 4,300 digits, depth
            raise PayloadError("malformed", f"not JSON: {str(exc2)[:200]}") from None


def _clean_id(x: Any) -> str | None:
    """``x`` if it is usable as an asset or sensor id: non-empty text of at most
    ``MAX_ID_CHARS`` printable characters (no control characters, no lone surrogates)."""
    if type(x) is str and 0 < len(x) <= MAX_ID_CHARS and x.isprintable():
        return x
    return None


def _ids(asset_id: Any, sensor_id: Any) -> tuple[str, str]:
    a, s = _clean_id(asset_id), _clean_id(sensor_id)
    if a is None or s is None:
        raise PayloadError(
            "wrong_type",
            f"asset_id and sensor_id must be non-empty printable strings of at most "
            f"{MAX_ID_CHARS} characters",
            a,
            s,
        )
    return a, s


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
    if _clean_id(asset_id) is None or _clean_id(sensor_id) is None:
        raise PayloadError("malformed", "frame without a usable asset_id or sensor_id")
    if not TS_MIN <= ts < TS_MAX:
        raise PayloadError(
            "bad_timestamp", f"frame start {ts} us is outside 1990..2100", asset_id, sensor_id
        )
    samples = np.frombuffer(payload, dtype="<f4", count=n, offset=end_ids)
    return Frame(asset_id, sensor_id, ts, rate, samples)


def _timestamps(ts: list[Any], asset_id: str, sensor_id: str) -> NDArray[np.int64]:
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
        parsed = pd.to_datetime(pd.Series(ts, dtype=object), utc=True, format="mixed")
        return parsed.to_numpy(dtype="datetime64[us]").astype(np.int64)
    except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        raise PayloadError(
            "bad_timestamp", f"unusable timestamp: {str(exc)[:200]}", asset_id, sensor_id
        ) from None


def _values(values: list[Any], asset_id: str, sensor_id: str) -> NDArray[np.float64]:
    """Numbers become float64, null becomes NaN (rejected later as non_finite); anything else
    (strings, booleans, objects) makes the whole message ``wrong_type``, and an integer too large
    for a float ``out_of_range``."""
    if not set(map(type, values)) <= _NUMBER_TYPES:  # one C-level pass, no Python loop body
        raise PayloadError("wrong_type", "value must be a number or null", asset_id, sensor_id)
    try:
        return np.array(values, dtype=np.float64)  # None -> nan
    except OverflowError:
        raise PayloadError(
            "out_of_range", "a value is too large for a 64-bit float", asset_id, sensor_id
        ) from None


# -- a whole batch ----------------------------------------------------------------------------
@dataclass
class Decoded:
    """A micro-batch decoded into arrays.

    Scalar readings come in *groups*: one group per (message, sensor), with its asset and
    sensor (codes into the batch's ``assets`` and ``sensors`` names) and message index;
    ``group`` gives each reading's group.  Frames and whole rejected messages are listed with
    their message index.  ``messages`` is the batch itself (offsets, arrival times, raw
    payloads for dead letters)."""

    messages: list[Message]
    assets: list[str] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    g_a: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    g_s: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    g_msg: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    group: NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    ts: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    value: NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    frames: list[tuple[int, Frame]] = field(default_factory=list)
    # (message index, reason, detail, asset_id, sensor_id, raw or None for the whole payload)
    rejects: list[tuple[int, str, str, str | None, str | None, bytes | None]] = field(
        default_factory=list
    )
    shard: str = "0"  # which keyed piece of its batch this is (``step.route``)

    @property
    def n_readings(self) -> int:
        return int(self.ts.size)

    @property
    def n_groups(self) -> int:
        return int(self.g_msg.size)

    def group_names(self, g: int) -> tuple[str, str]:
        return self.assets[self.g_a[g]], self.sensors[self.g_s[g]]


class _Builder:
    """Accumulates groups; per message O(1) Python work (dictionary look-ups and appends),
    arrays built once.

    Readings of scalar and list messages gather in Python lists (converted by numpy in one
    call each); array groups (Arrow payloads, bulk-decoded batches) are kept as arrays."""

    def __init__(self, messages: list[Message]):
        self.out = Decoded(messages)
        self.a_index: dict[str, int] = {}
        self.s_index: dict[str, int] = {}
        self.g_a: list[int] = []
        self.g_s: list[int] = []
        self.g_msg: list[int] = []
        self.ts: list[Any] = []
        self.values: list[Any] = []
        self.counts: list[int] = []
        self.pending_from = 0  # first group whose readings are still in the Python lists
        self.chunks: list[tuple[NDArray[np.int64], NDArray[np.float64]]] = []
        self.g_chunks: list[tuple[NDArray, NDArray, NDArray, NDArray]] = []

    def code(self, index: dict[str, int], names: list[str], name: str) -> int:
        c = index.get(name)
        if c is None:
            c = index[name] = len(names)
            names.append(name)
        return c

    def add(self, i: int, asset: str, sensor: str, ts: Any, value: Any, n: int) -> None:
        a = self.a_index.get(asset)
        if a is None:
            a = self.code(self.a_index, self.out.assets, asset)
        s = self.s_index.get(sensor)
        if s is None:
            s = self.code(self.s_index, self.out.sensors, sensor)
        self.g_a.append(a)
        self.g_s.append(s)
        self.g_msg.append(i)
        self.counts.append(n)
        if n == 1 and type(ts) is not list:
            self.ts.append(ts)
            self.values.append(value)
        else:
            self.ts.extend(ts)
            self.values.extend(value)

    def add_arrays(self, i: int, asset: str, sensor: str, ts: NDArray, values: NDArray) -> None:
        self._flush()
        self.g_a.append(self.code(self.a_index, self.out.assets, asset))
        self.g_s.append(self.code(self.s_index, self.out.sensors, sensor))
        self.g_msg.append(i)
        self.counts.append(ts.size)
        self.chunks.append((ts.astype(np.int64, copy=False), values.astype(np.float64)))
        self.pending_from = len(self.counts)

    def add_groups(
        self,
        g_a: NDArray,
        g_s: NDArray,
        g_msg: NDArray,
        counts: NDArray,
        ts: NDArray[np.int64],
        values: NDArray[np.float64],
    ) -> None:
        """Many groups at once (already coded against this builder's names)."""
        self._flush()
        self._close_lists()
        self.g_chunks.append((g_a, g_s, g_msg, counts))
        self.chunks.append((ts, values))

    def reject(
        self,
        i: int,
        reason: str,
        detail: str,
        asset: str | None = None,
        sensor: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.out.rejects.append((i, reason, detail, asset, sensor, raw))

    def _close_lists(self) -> None:
        if self.g_msg:
            self.g_chunks.append(
                (
                    np.array(self.g_a, np.int32),
                    np.array(self.g_s, np.int32),
                    np.array(self.g_msg, np.int32),
                    np.array(self.counts, np.int64),
                )
            )
            self.g_a, self.g_s, self.g_msg, self.counts = [], [], [], []
            self.pending_from = 0

    def _flush(self) -> None:
        if not self.ts:
            self.pending_from = len(self.counts)
            return
        try:
            self.chunks.append(
                (np.array(self.ts, dtype=np.int64), np.array(self.values, dtype=np.float64))
            )
        except (OverflowError, TypeError, ValueError):
            self._flush_carefully()
        self.ts, self.values = [], []
        self.pending_from = len(self.counts)

    def _flush_carefully(self) -> None:
        """Some group holds a number numpy cannot take (an int beyond 64 bits): convert group
        by group; such a group keeps no readings and is rejected alone."""
        o, start = self.out, 0
        for g in range(self.pending_from, len(self.counts)):
            n = self.counts[g]
            ts_l, v_l = self.ts[start : start + n], self.values[start : start + n]
            start += n
            try:
                self.chunks.append(
                    (np.array(ts_l, dtype=np.int64), np.array(v_l, dtype=np.float64))
                )
            except (OverflowError, TypeError, ValueError):
                asset, sensor = o.assets[self.g_a[g]], o.sensors[self.g_s[g]]
                raw = orjson.dumps(
                    {
                        "asset_id": asset,
                        "sensor_id": sensor,
                        "ts": str(ts_l)[:200],
                        "value": str(v_l)[:200],
                    }
                )
                self.reject(
                    self.g_msg[g],
                    "out_of_range",
                    "a timestamp or value does not fit 64 bits",
                    asset,
                    sensor,
                    raw,
                )
                self.counts[g] = 0  # an empty group: nothing of it goes further

    def finish(self) -> Decoded:
        self._flush()
        self._close_lists()
        o = self.out
        if self.chunks:
            o.ts = np.concatenate([c[0] for c in self.chunks])
            o.value = np.concatenate([c[1] for c in self.chunks])
        if self.g_chunks:
            o.g_a = np.concatenate([c[0] for c in self.g_chunks]).astype(np.int32, copy=False)
            o.g_s = np.concatenate([c[1] for c in self.g_chunks]).astype(np.int32, copy=False)
            o.g_msg = np.concatenate([c[2] for c in self.g_chunks]).astype(np.int32, copy=False)
            counts = np.concatenate([c[3] for c in self.g_chunks])
            o.group = np.repeat(np.arange(counts.size, dtype=np.int32), counts)
        return o


def decode_batch(messages: list[Message]) -> Decoded:
    """Decode every message of a micro-batch into one ``Decoded``; a message whose payload
    speaks for another asset than its channel's (``Message.channel_asset``) is rejected whole
    as ``asset_mismatch``."""
    d = _decode_all(messages)
    if any(m.channel_asset is not None for m in messages):
        d = _hold_to_channel(d)
    return d


def _hold_to_channel(d: Decoded) -> Decoded:
    """``d`` without the messages that carry readings or frames of an asset other than their
    channel's, each of those as one whole-payload reject."""
    code = {name: i for i, name in enumerate(d.assets)}
    bound = np.array(
        [-1 if m.channel_asset is None else code.get(m.channel_asset, -2) for m in d.messages],
        np.int32,
    )
    bad_g = (bound[d.g_msg] != -1) & (bound[d.g_msg] != d.g_a) if d.n_groups else np.zeros(0, bool)
    found: dict[int, str] = {
        int(i): d.assets[d.g_a[g]]
        for g, i in zip(np.flatnonzero(bad_g), d.g_msg[bad_g], strict=True)
    }
    for i, f in d.frames:
        if d.messages[i].channel_asset not in (None, f.asset_id):
            found.setdefault(i, f.asset_id)
    if not found:
        return d
    gone = np.zeros(len(d.messages), bool)
    gone[list(found)] = True
    keep_g = ~gone[d.g_msg] if d.n_groups else np.zeros(0, bool)
    new_group = np.cumsum(keep_g, dtype=np.int32) - 1
    keep_r = keep_g[d.group] if d.n_readings else np.zeros(0, bool)
    d.group, d.ts, d.value = new_group[d.group[keep_r]], d.ts[keep_r], d.value[keep_r]
    d.g_a, d.g_s, d.g_msg = d.g_a[keep_g], d.g_s[keep_g], d.g_msg[keep_g]
    d.frames = [(i, f) for i, f in d.frames if not gone[i]]
    d.rejects = [r for r in d.rejects if not gone[r[0]]]
    for i, other in sorted(found.items()):
        bound_to = d.messages[i].channel_asset
        d.rejects.append(
            (
                i,
                "asset_mismatch",
                f"the payload has readings of asset {other!r} but came on the channel "
                f"of asset {bound_to!r}: a client may send only its own assets' "
                f"readings, each on its asset's topic",
                bound_to,
                None,
                None,
            )
        )
    return d


def _decode_all(messages: list[Message]) -> Decoded:
    """Decode every message of a micro-batch into one ``Decoded``.

    A batch of JSON objects is parsed in one call; when every message has the same common
    shape (one reading each, or one multi-sensor row each with the same tags) the whole batch
    becomes arrays in a few C-level passes.  Otherwise each message takes a fast path of a few
    dictionary look-ups and appends, and anything unusual goes through ``decode``, whose
    ``PayloadError`` becomes a reject.
    """
    b = _Builder(messages)
    json_at = [
        i
        for i, m in enumerate(messages)
        if m.payload[:1] == b"{" and m.set_aside is None and len(m.payload) <= MAX_MESSAGE_BYTES
    ]
    docs = _bulk_json([messages[i].payload for i in json_at]) if json_at else None
    doc_of: dict[int, Any] = {}
    if docs is not None:
        if _bulk_single(b, docs, json_at) or _bulk_multi(b, docs, json_at):
            if len(json_at) == len(messages):
                return b.finish()
            done = set(json_at)
            rest = [i for i in range(len(messages)) if i not in done]
        else:
            doc_of = dict(zip(json_at, docs, strict=True))
            rest = range(len(messages))
    else:
        rest = range(len(messages))
    for i in rest:
        m = messages[i]
        if m.set_aside is not None:
            b.reject(i, *m.set_aside)
            continue
        p = m.payload
        if len(p) > MAX_MESSAGE_BYTES:
            b.reject(i, "oversized", f"{len(p)} bytes > limit of {MAX_MESSAGE_BYTES}")
            continue
        head = p[:4]
        try:
            if head == FRAME_MAGIC:
                b.out.frames.append((i, _decode_frame(p)))
            elif head == ARROW_MAGIC:
                _decode_arrow(b, i, p)
            else:
                _decode_json_fast(b, i, p, doc_of.get(i))
        except PayloadError as exc:
            b.reject(i, exc.reason, exc.detail, exc.asset_id, exc.sensor_id)
    return b.finish()


def _bulk_json(payloads: list[bytes]) -> list[Any] | None:
    """The payloads (each starting with ``{``) parsed by one ``orjson.loads`` of their JSON
    array, when each is one JSON object (else None: message by message).  A payload that is not
    one object cannot hide in the array: the array must have one object per payload."""
    if sum(map(len, payloads)) > 4 * MAX_MESSAGE_BYTES:
        return None
    try:
        docs = orjson.loads(b"[" + b",".join(payloads) + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(docs) != len(payloads) or set(map(type, docs)) != {dict}:
        return None
    return docs


def _ids_ok(names: Any) -> bool:
    return all(_clean_id(x) is not None for x in names)


def _bulk_single(b: _Builder, docs: list[dict], at: list[int]) -> bool:
    """The whole batch when every message is one reading (``ts`` an integer)."""
    if set(map(len, docs)) != {4}:
        return False
    assets = [d.get("asset_id") for d in docs]
    sensors = [d.get("sensor_id") for d in docs]
    ts = [d.get("ts") for d in docs]
    values = [d.get("value") for d in docs]
    if (
        set(map(type, ts)) != {int}
        or not set(map(type, values)) <= _NUMBER_TYPES
        or set(map(type, assets)) != {str}
        or set(map(type, sensors)) != {str}
    ):
        return False
    a_names, s_names = dict.fromkeys(assets), dict.fromkeys(sensors)
    if not (_ids_ok(a_names) and _ids_ok(s_names)):
        return False
    try:
        ts_arr, v_arr = np.array(ts, np.int64), np.array(values, np.float64)
    except (OverflowError, ValueError):
        return False
    a_idx = {a: b.code(b.a_index, b.out.assets, a) for a in a_names}
    s_idx = {s: b.code(b.s_index, b.out.sensors, s) for s in s_names}
    n = len(docs)
    b.add_groups(
        np.array([a_idx[a] for a in assets], np.int32),
        np.array([s_idx[s] for s in sensors], np.int32),
        np.array(at, np.int32),
        np.ones(n, np.int64),
        ts_arr,
        v_arr,
    )
    return True


def _bulk_multi(b: _Builder, docs: list[dict], at: list[int]) -> bool:
    """The whole batch when every message is one multi-sensor row (``ts`` an integer) with
    the same tags in the same order: a (messages x tags) matrix of readings."""
    if set(map(len, docs)) != {3}:
        return False
    rows = [d.get("values") for d in docs]
    if set(map(type, rows)) != {dict}:
        return False
    tags = {tuple(r) for r in rows}
    if len(tags) != 1:
        return False
    (tag_names,) = tags
    assets = [d.get("asset_id") for d in docs]
    ts = [d.get("ts") for d in docs]
    if (
        not tag_names
        or set(map(type, ts)) != {int}
        or set(map(type, assets)) != {str}
        or not _ids_ok(tag_names)
    ):
        return False
    a_names = dict.fromkeys(assets)
    if not _ids_ok(a_names):
        return False
    flat = [v for r in rows for v in r.values()]
    if not set(map(type, flat)) <= _NUMBER_TYPES:
        return False
    try:
        values = np.array(flat, np.float64)
        ts_arr = np.array(ts, np.int64)
    except (OverflowError, ValueError):
        return False
    a_idx = {a: b.code(b.a_index, b.out.assets, a) for a in a_names}
    s_codes = np.array([b.code(b.s_index, b.out.sensors, t) for t in tag_names], np.int32)
    n, k = len(docs), len(tag_names)
    a_codes = np.array([a_idx[a] for a in assets], np.int32)
    b.add_groups(
        np.repeat(a_codes, k),
        np.tile(s_codes, n),
        np.repeat(np.array(at, np.int32), k),
        np.ones(n * k, np.int64),
        np.repeat(ts_arr, k),
        values,
    )
    return True


def _decode_json_fast(b: _Builder, i: int, p: bytes, d: Any = None) -> None:
    if d is None:
        try:
            d = orjson.loads(p)
        except orjson.JSONDecodeError:
            d = None
    if type(d) is dict:
        if "values" in d and "sensor_id" not in d:
            _multi(b, i, d)
            return
        if len(d) == 4:
            a, s, ts, v = d.get("asset_id"), d.get("sensor_id"), d.get("ts"), d.get("value")
            ta, tv = type(ts), type(v)
            if (
                type(a) is str
                and type(s) is str
                and 0 < len(a) <= MAX_ID_CHARS
                and 0 < len(s) <= MAX_ID_CHARS
                and a.isprintable()
                and s.isprintable()
            ):
                if ta is int and (tv is float or tv is int):
                    b.add(i, a, s, ts, v, 1)
                    return
                if (
                    ta is list
                    and tv is list
                    and 0 < len(ts) == len(v)
                    and set(map(type, ts)) == {int}
                    and set(map(type, v)) <= _NUMBER_TYPES
                ):
                    b.add(i, a, s, ts, v, len(ts))
                    return
    sb = decode(p)  # the careful path: raises PayloadError with the reason
    if isinstance(sb, Frame):  # pragma: no cover - frames were routed by their magic
        b.out.frames.append((i, sb))
    else:
        b.add_arrays(i, sb.asset_id, sb.sensor_id, sb.ts_us, sb.values)


def _multi(b: _Builder, i: int, d: dict) -> None:
    """A multi-sensor message: each tag is a group; a bad tag is rejected alone."""
    asset = _clean_id(d.get("asset_id"))
    if asset is None:
        raise PayloadError("wrong_type", "asset_id must be a non-empty printable string")
    values, ts = d.get("values"), d.get("ts")
    if type(values) is not dict:
        raise PayloadError("malformed", "values must be an object of tag: value(s)", asset)
    if not values:
        raise PayloadError("empty_message", "a multi-sensor message with no values", asset)
    many = type(ts) is list
    ts_arr = _timestamps(ts if many else [ts], asset, "*")
    if many and ts_arr.size == 0:
        raise PayloadError("empty_message", "a multi-sensor message with no timestamps", asset)
    for tag, v in values.items():
        sensor = _clean_id(tag)
        problem = None
        if sensor is None:
            problem = ("wrong_type", "a tag must be a non-empty printable string")
        elif many:
            if type(v) is not list or len(v) != ts_arr.size:
                problem = ("malformed", f"tag {tag!r}: expected a list of {ts_arr.size} values")
            elif not set(map(type, v)) <= _NUMBER_TYPES:
                problem = ("wrong_type", f"tag {tag!r}: values must be numbers or null")
        elif type(v) not in _NUMBER_TYPES:
            problem = ("wrong_type", f"tag {tag!r}: value must be a number or null")
        if problem is not None:
            raw = orjson.dumps(
                {"asset_id": asset, "sensor_id": str(sensor), "ts": ts, "value": v}, default=str
            )
            b.reject(i, *problem, asset, sensor, raw)
            continue
        if many:
            b.add(i, asset, sensor, ts_arr.tolist(), v, ts_arr.size)
        else:
            b.add(i, asset, sensor, int(ts_arr[0]), v, 1)


def _decode_arrow(b: _Builder, i: int, p: bytes) -> None:
    try:
        table = pa.ipc.open_stream(pa.py_buffer(p)[4:]).read_all()
        table.validate(full=True)  # untrusted bytes: offsets, lengths, UTF-8 (Arrow reads lazily)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise PayloadError("malformed", f"not an Arrow IPC stream: {str(exc)[:200]}") from None
    missing = [c for c in ("asset_id", "sensor_id", "ts", "value") if c not in table.column_names]
    if missing:
        raise PayloadError("malformed", f"Arrow payload lacks column(s) {', '.join(missing)}")
    if table.num_rows == 0:
        raise PayloadError("empty_message", "an Arrow payload with no rows")
    try:
        asset = table.column("asset_id").cast(pa.string())
        sensor = table.column("sensor_id").cast(pa.string())
        ts_col = table.column("ts")
        if pa.types.is_timestamp(ts_col.type):
            ts_col = ts_col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        ts = np.asarray(ts_col.cast(pa.int64()), dtype=np.int64)
        values = np.asarray(
            table.column("value").cast(pa.float64()).fill_null(np.nan), dtype=np.float64
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise PayloadError("wrong_type", f"Arrow payload column types: {str(exc)[:200]}") from None
    if asset.null_count or sensor.null_count or ts_col.null_count:
        raise PayloadError("malformed", "Arrow payload has null asset_id, sensor_id or ts")
    a_codes = pc.dictionary_encode(asset).combine_chunks()
    s_codes = pc.dictionary_encode(sensor).combine_chunks()
    a_idx = np.asarray(a_codes.indices, np.int64)
    s_idx = np.asarray(s_codes.indices, np.int64)
    pair = a_idx * len(s_codes.dictionary) + s_idx
    uniq, inverse = np.unique(pair, return_inverse=True)
    a_names, s_names = a_codes.dictionary.to_pylist(), s_codes.dictionary.to_pylist()
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(uniq.size + 1))
    for g, key in enumerate(uniq.tolist()):
        a, s = a_names[key // len(s_names)], s_names[key % len(s_names)]
        rows = order[bounds[g] : bounds[g + 1]]
        if _clean_id(a) is None or _clean_id(s) is None:
            b.reject(
                i,
                "wrong_type",
                "asset_id and sensor_id must be printable strings",
                _clean_id(a),
                _clean_id(s),
                orjson.dumps({"asset_id": repr(a), "sensor_id": repr(s), "rows": rows.size}),
            )
            continue
        b.add_arrays(i, a, s, ts[rows], values[rows])
