"""Decoding a whole micro-batch into one ``Decoded``: a batch of JSON objects parsed in one
call and, when every message has the same common shape, turned into arrays in a few C-level
passes; anything else message by message, the unusual through ``dataplane.decode``, whose
``PayloadError`` becomes a reject.  Readings of another asset than their channel's are held
back whole as ``asset_mismatch``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from dataplane.columns import Builder, Decoded
from dataplane.decode import clean_id, decode, decode_frame, timestamps
from dataplane.formats import (
    ARROW_MAGIC,
    FRAME_MAGIC,
    MAX_ID_CHARS,
    MAX_MESSAGE_BYTES,
    NUMBER_TYPES,
    Frame,
    Message,
    PayloadError,
)

__all__ = ["decode_batch"]


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
    b = Builder(messages)
    json_at = [
        i
        for i, m in enumerate(messages)
        if m.payload[:1] == b"{" and m.set_aside is None and len(m.payload) <= MAX_MESSAGE_BYTES
    ]
    docs = _bulk_json([messages[i].payload for i in json_at]) if json_at else None
    doc_of: dict[int, Any] = {}
    rest: Iterable[int]
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
                b.out.frames.append((i, decode_frame(p)))
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
    return all(clean_id(x) is not None for x in names)


def _bulk_single(b: Builder, docs: list[dict], at: list[int]) -> bool:
    """The whole batch when every message is one reading (``ts`` an integer)."""
    if set(map(len, docs)) != {4}:
        return False
    # untrusted JSON: anything until the type checks below
    assets: list[Any] = [d.get("asset_id") for d in docs]
    sensors: list[Any] = [d.get("sensor_id") for d in docs]
    ts: list[Any] = [d.get("ts") for d in docs]
    values: list[Any] = [d.get("value") for d in docs]
    if (
        set(map(type, ts)) != {int}
        or not set(map(type, values)) <= NUMBER_TYPES
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


def _bulk_multi(b: Builder, docs: list[dict], at: list[int]) -> bool:
    """The whole batch when every message is one multi-sensor row (``ts`` an integer) with
    the same tags in the same order: a (messages x tags) matrix of readings."""
    if set(map(len, docs)) != {3}:
        return False
    rows: list[Any] = [d.get("values") for d in docs]
    if set(map(type, rows)) != {dict}:
        return False
    tags = {tuple(r) for r in rows}
    if len(tags) != 1:
        return False
    (tag_names,) = tags
    assets: list[Any] = [d.get("asset_id") for d in docs]
    ts: list[Any] = [d.get("ts") for d in docs]
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
    if not set(map(type, flat)) <= NUMBER_TYPES:
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


def _decode_json_fast(b: Builder, i: int, p: bytes, d: Any = None) -> None:
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
            a, s = d.get("asset_id"), d.get("sensor_id")
            ts: Any = d.get("ts")
            v: Any = d.get("value")
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
                    and set(map(type, v)) <= NUMBER_TYPES
                ):
                    b.add(i, a, s, ts, v, len(ts))
                    return
    sb = decode(p)  # the careful path: raises PayloadError with the reason
    if isinstance(sb, Frame):  # pragma: no cover - frames were routed by their magic
        b.out.frames.append((i, sb))
    else:
        b.add_arrays(i, sb.asset_id, sb.sensor_id, sb.ts_us, sb.values)


def _multi(b: Builder, i: int, d: dict) -> None:
    """A multi-sensor message: each tag is a group; a bad tag is rejected alone."""
    asset = clean_id(d.get("asset_id"))
    if asset is None:
        raise PayloadError("wrong_type", "asset_id must be a non-empty printable string")
    values: Any = d.get("values")
    ts: Any = d.get("ts")
    if type(values) is not dict:
        raise PayloadError("malformed", "values must be an object of tag: value(s)", asset)
    if not values:
        raise PayloadError("empty_message", "a multi-sensor message with no values", asset)
    many = type(ts) is list
    ts_arr = timestamps(ts if many else [ts], asset, "*")
    if many and ts_arr.size == 0:
        raise PayloadError("empty_message", "a multi-sensor message with no timestamps", asset)
    for tag, v in values.items():
        sensor = clean_id(tag)
        problem = None
        if sensor is None:
            raw = orjson.dumps(
                {"asset_id": asset, "sensor_id": str(sensor), "ts": ts, "value": v}, default=str
            )
            b.reject(
                i, "wrong_type", "a tag must be a non-empty printable string", asset, None, raw
            )
            continue
        if many:
            if type(v) is not list or len(v) != ts_arr.size:
                problem = ("malformed", f"tag {tag!r}: expected a list of {ts_arr.size} values")
            elif not set(map(type, v)) <= NUMBER_TYPES:
                problem = ("wrong_type", f"tag {tag!r}: values must be numbers or null")
        elif type(v) not in NUMBER_TYPES:
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


def _decode_arrow(b: Builder, i: int, p: bytes) -> None:
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
        if clean_id(a) is None or clean_id(s) is None:
            b.reject(
                i,
                "wrong_type",
                "asset_id and sensor_id must be printable strings",
                clean_id(a),
                clean_id(s),
                orjson.dumps({"asset_id": repr(a), "sensor_id": repr(s), "rows": rows.size}),
            )
            continue
        b.add_arrays(i, a, s, ts[rows], values[rows])
