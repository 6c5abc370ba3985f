"""The engine-agnostic core (``dataplane``) on its own, without Bytewax: micro-batches of many
messages, batch boundaries, plant-shaped wire formats and hostile payloads."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dataplane.rows import SinkRows
from dataplane.step import ShardState, route, run_batch
from dataplane.wire import (
    Batch,
    Message,
    decode_batch,
    encode_arrow,
    encode_frame,
    encode_multi,
    encode_scalars,
)
from physics.simulator import default_fleet
from tests.conftest import T0_US


def _msgs(payloads: list[bytes], source: str = "t") -> list[Message]:
    return [Message(source, i, T0_US, p) for i, p in enumerate(payloads)]


def _run(messages: list[Message], batch: int) -> dict[str, pd.DataFrame]:
    """The stream over ``messages`` in micro-batches of ``batch``: every table's rows."""
    state, tables = None, {}
    for k in range(0, len(messages), batch):
        state, rows = run_batch(state, Batch(messages[k : k + batch]))
        for r in rows:
            tables.setdefault(r.table, []).append(r.rows)
    return {t: pa.concat_tables(v).to_pandas() for t, v in tables.items()}


def _key(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return df[cols].sort_values(cols).reset_index(drop=True)


def _one_reading_messages(
    n_assets: int = 4, seconds: int = 35, frames: bool = False
) -> list[Message]:
    """A tag-per-message gateway: every reading of a 10 Hz fleet in its own message, in
    event-time order across assets (and, with ``frames``, each asset's vibration frame after
    its second)."""
    sim = default_fleet(n_assets, seed=1, start_us=T0_US)
    out = []
    for k in range(seconds):
        per_second, vib = [], []
        for asset in sim.asset_ids:
            chunk = sim.chunk(asset, k)
            for sensor, (ts, v) in chunk.scalars.items():
                per_second += [
                    (int(t), asset, sensor, float(x)) for t, x in zip(ts, v, strict=True)
                ]
            vib += [encode_frame(asset, s, t0, rate, x) for s, t0, rate, x in chunk.frames]
        for t, asset, sensor, x in sorted(per_second):
            out.append(orjson_reading(asset, sensor, t, x))
        if frames:
            out += vib
    return _msgs(out)


def orjson_reading(asset: str, sensor: str, ts: int, value: float) -> bytes:
    return json.dumps({"asset_id": asset, "sensor_id": sensor, "ts": ts, "value": value}).encode()


def test_batch_size_does_not_change_any_table():
    """The same messages cut into micro-batches of 1, 7 or 5,000 give the same readings, the
    same process windows and the same scores (a second of a sensor split across batches)."""
    messages = _one_reading_messages(frames=True)
    runs = {b: _run(messages, b) for b in (5_000, 7, 1)}
    for b in (7, 1):
        for table, cols in (
            ("readings", ["asset_id", "sensor_id", "ts", "value"]),
            ("features", ["asset_id", "sensor_id", "window_end", "n_samples", "proc_level"]),
            ("scores", ["asset_id", "window_end", "anomaly_score"]),
        ):
            a, c = _key(runs[5_000][table], cols), _key(runs[b][table], cols)
            pd.testing.assert_frame_equal(a, c, check_exact=False, rtol=1e-9)
    big = runs[5_000]
    assert len(big["readings"]) == len(messages) - 4 * 35
    # one features row per series and closed second, not one per message: 4 assets x 4 scalar
    # sensors x 35 s (the last second's bucket closes with its tenth reading), plus a row per
    # vibration frame
    assert len(big["features"]) == 4 * 4 * 35 + 4 * 35
    assert len(big["scores"]) == 4 * 35
    assert "dead_letter" not in big


def test_many_assets_in_one_batch_keep_their_own_state():
    messages = _one_reading_messages(n_assets=12, seconds=3)
    state, rows = run_batch(None, Batch(messages))
    readings = next(r for r in rows if r.table == "readings").rows.to_pandas()
    assert readings.groupby("asset_id").size().to_dict() == {
        f"pump-{i:02d}": 3 * 31 for i in range(1, 13)
    }
    assert len(state.assets) == 12 and state.n == 12 * 4


def test_late_and_duplicate_readings_inside_one_batch():
    t = T0_US
    body = [
        orjson_reading("pump-01", "bearing_temp", ts, v)
        for ts, v in [
            (t + 5_000_000, 40.0),
            (t + 5_000_000, 41.0),
            (t + 4_000_000, 42.0),
            (t - 60_000_000, 43.0),
            (t + 6_000_000, 44.0),
            (t + 4_000_000, 45.0),
        ]
    ]
    _, rows = run_batch(None, Batch(_msgs(body)))
    tables = {r.table: r for r in rows}
    readings = tables["readings"].rows.to_pandas()
    assert readings["value"].tolist() == [40.0, 42.0, 44.0]
    dead = tables["dead_letter"].rows.to_pandas()
    assert dead["reason"].tolist() == ["duplicate", "late", "duplicate"]
    assert [json.loads(r)["value"] for r in dead["raw"]] == [41.0, 43.0, 45.0]
    # each row is stamped with its own message's offset (the sink's exactly-once key)
    assert tables["dead_letter"].offset.tolist() == [1, 3, 5]
    assert tables["readings"].offset.tolist() == [0, 2, 4]


def test_a_malformed_message_in_the_middle_of_a_good_batch():
    good = [
        orjson_reading("pump-01", "motor_current", T0_US + i * 100_000, 20.0 + i) for i in range(10)
    ]
    messages = _msgs([*good[:5], b'{"asset_id": "pump-01", ', *good[5:]])
    _, rows = run_batch(None, Batch(messages))
    tables = {r.table: r for r in rows}
    assert tables["readings"].rows.num_rows == 10
    assert tables["readings"].offset.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    dead = tables["dead_letter"]
    assert dead.rows.column("reason").to_pylist() == ["malformed"]
    assert dead.offset.tolist() == [5] and dead.rows.column("raw")[0].as_py() == messages[5].payload


def test_multi_sensor_and_arrow_payloads_decode_to_the_same_readings():
    ts = [T0_US, T0_US + 100_000]
    multi = encode_multi(
        "pump-01", ts, {"motor_current": [21.0, 22.0], "discharge_pressure": [5.0, 5.5]}
    )
    single = encode_multi(
        "pump-01", T0_US + 200_000, {"motor_current": 23.0, "discharge_pressure": 6.0}
    )
    arrow = encode_arrow(
        ["pump-01", "pump-02", "pump-01"],
        ["motor_current"] * 3,
        [T0_US + 300_000, T0_US, T0_US + 400_000],
        [24.0, 1.0, 25.0],
    )
    d = decode_batch(_msgs([multi, single, arrow]))
    assert not d.rejects
    names = [d.group_names(g) for g in d.group.tolist()]
    got = sorted(
        (a, s, t, v) for (a, s), t, v in zip(names, d.ts.tolist(), d.value.tolist(), strict=True)
    )
    assert got == sorted(
        [
            ("pump-01", "motor_current", ts[0], 21.0),
            ("pump-01", "motor_current", ts[1], 22.0),
            ("pump-01", "discharge_pressure", ts[0], 5.0),
            ("pump-01", "discharge_pressure", ts[1], 5.5),
            ("pump-01", "motor_current", T0_US + 200_000, 23.0),
            ("pump-01", "discharge_pressure", T0_US + 200_000, 6.0),
            ("pump-01", "motor_current", T0_US + 300_000, 24.0),
            ("pump-02", "motor_current", T0_US, 1.0),
            ("pump-01", "motor_current", T0_US + 400_000, 25.0),
        ]
    )


def test_one_bad_tag_of_a_multi_sensor_message_is_rejected_alone():
    payload = json.dumps(
        {
            "asset_id": "pump-01",
            "ts": T0_US,
            "values": {"motor_current": 21.0, "discharge_pressure": "high", "oil_colour": 3.0},
        }
    ).encode()
    _, rows = run_batch(None, Batch(_msgs([payload])))
    tables = {r.table: r.rows.to_pandas() for r in rows}
    assert tables["readings"]["sensor_id"].tolist() == ["motor_current"]
    dead = tables["dead_letter"]
    assert dead["reason"].tolist() == ["wrong_type"]
    assert json.loads(dead["raw"].iloc[0])["sensor_id"] == "discharge_pressure"
    # the undeclared tag is kept (schema on read) with its own part of the message
    unknown = tables["unknown_readings"]
    assert unknown[["sensor_id", "value"]].values.tolist() == [["oil_colour", 3.0]]
    assert json.loads(unknown["raw"].iloc[0]) == {
        "asset_id": "pump-01",
        "sensor_id": "oil_colour",
        "ts": [T0_US],
        "value": [3.0],
    }


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 5000 + b"]" * 5000, "malformed"),  # deeper than any JSON decoder's recursion
        (
            b'{"asset_id": "a", "sensor_id": "motor_current", "ts": 1, "value": NaN, "x": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}",
            "malformed",
        ),  # the NaN fallback decoder too
        (
            b'{"asset_id": "pump-01", "sensor_id": "motor_current", "ts": 1767225600000000, '
            b'"value": ' + b"9" * 5000 + b"}",
            "malformed",
        ),  # an int beyond a float
        (
            b'{"asset_id": "pump-01", "sensor_id": "motor_current", "ts": '
            + b"1" * 5000
            + b', "value": 1.0}',
            "malformed",
        ),  # beyond a float, in ts
        (
            b'{"asset_id": "pump-01", "sensor_id": "motor_current", "ts": 18446744073709551615, '
            b'"value": 1.0}',
            "out_of_range",
        ),  # beyond int64, within JSON's uint64
        (
            b'{"asset_id": "pump-01", "sensor_id": "motor_current", "ts": ['
            + b"1" * 30
            + b'], "value": [NaN]}',
            "bad_timestamp",
        ),
        (
            b'{"asset_id": "\\ud800", "sensor_id": "motor_current", "ts": 1767225600000000, '
            b'"value": 1.0}',
            "malformed",
        ),  # a lone surrogate
        (
            b'{"asset_id": "pump\\u0000", "sensor_id": "motor_current", "ts": 1767225600000000, '
            b'"value": 1.0}',
            "wrong_type",
        ),  # a control character in an id
        (
            json.dumps(
                {
                    "asset_id": "\ud800x",
                    "sensor_id": "motor_current",
                    "ts": [T0_US],
                    "value": [float("nan")],
                }
            ).encode(),
            "wrong_type",
        ),  # surrogate via NaN path
        (
            b'{"asset_id": "pump-01", "sensor_id": "motor_current", "ts": [], "value": []}',
            "empty_message",
        ),
        (b'{"asset_id": "pump-01", "ts": [], "values": {"motor_current": []}}', "empty_message"),
        (
            b'{"asset_id": "pump-01", "sensor_id": "motor_current", "ts": 12, "value": 1.0}',
            "bad_timestamp",
        ),
        (b"PPA1" + b"\x00" * 40, "malformed"),
    ],
)
def test_hostile_payloads_become_dead_letters_with_a_reason(payload: bytes, reason: str):
    _, rows = run_batch(None, Batch(_msgs([payload])))
    tables = {r.table: r.rows.to_pandas() for r in rows}
    assert set(tables) == {"dead_letter"}
    assert tables["dead_letter"]["reason"].tolist() == [reason]
    assert tables["dead_letter"]["detail"].iloc[0]


def test_a_million_digit_timestamp_is_rejected_quickly():
    payload = (
        b'{"asset_id": "pump-01", "sensor_id": "motor_current", "ts": '
        + b"7" * 1_000_000
        + b', "value": 1.0}'
    )
    started = time.perf_counter()
    _, rows = run_batch(None, Batch(_msgs([payload])))
    assert time.perf_counter() - started < 5.0
    assert [r.table for r in rows] == ["dead_letter"]


def test_frames_and_scalars_of_one_asset_in_one_batch():
    sim = default_fleet(1, start_us=T0_US)
    payloads = []
    for k in range(3):
        chunk = sim.chunk("pump-01", k)
        payloads += [encode_scalars("pump-01", s, ts, v) for s, (ts, v) in chunk.scalars.items()]
        payloads += [encode_frame("pump-01", s, t0, rate, x) for s, t0, rate, x in chunk.frames]
    _, rows = run_batch(None, Batch(_msgs(payloads)))
    tables = {r.table: r.rows.to_pandas() for r in rows}
    vib = tables["features"][tables["features"]["sensor_id"] == "vib_de"]
    assert len(vib) == 3 and vib["env_bpfo_1"].notna().all()  # the shaft speed was known
    assert len(tables["scores"]) == 3 and len(tables["frames"]) == 1


def test_route_splits_by_asset_and_keeps_every_message_once():
    messages = _one_reading_messages(n_assets=8, seconds=1)
    messages.insert(3, Message("t", 10_000, T0_US, b"garbage"))
    pieces = route(Batch(messages), n_shards=4)
    assert 1 < len(pieces) <= 4
    offsets = sorted(m.offset for _, d in pieces for m in d.messages)
    assert offsets == sorted(m.offset for m in messages)
    per_shard_assets = [{d.assets[a] for a in d.g_a.tolist()} for _, d in pieces]
    assert sum(len(a) for a in per_shard_assets) == 8  # each asset in exactly one shard


def test_state_survives_pickling_mid_stream():
    import pickle

    messages = _one_reading_messages(n_assets=2, seconds=35, frames=True)
    whole = _run(messages, 500)
    state, tables = None, {}
    for k in range(0, len(messages), 500):
        state, rows = run_batch(state, Batch(messages[k : k + 500]))
        state = pickle.loads(pickle.dumps(state))  # what a recovery snapshot does
        for r in rows:
            tables.setdefault(r.table, []).append(r.rows)
    resumed = {t: pa.concat_tables(v).to_pandas() for t, v in tables.items()}
    cols = ["asset_id", "window_end", "anomaly_score"]
    pd.testing.assert_frame_equal(_key(whole["scores"], cols), _key(resumed["scores"], cols))
    assert isinstance(state, ShardState)


def test_sink_rows_split_by_source():
    rows = pa.table({"x": [1, 2, 3]})
    item = SinkRows(
        "t", ("a", "b"), np.array([5, 6, 7]), rows, source_index=np.array([0, 1, 0], np.int32)
    )
    parts = {s: (o.tolist(), None if t is None else t.tolist()) for s, o, t in item.parts()}
    assert parts == {"a": ([5, 7], [0, 2]), "b": ([6], [1])}


def test_an_arrow_payload_with_invalid_utf8_is_malformed_not_a_crash():
    """Found by bench.reliability's fuzzer: Arrow reads untrusted IPC bytes lazily, so a bad
    id only blew up (or crashed the process) when read; the payload is validated in full."""
    good = encode_arrow("pump-01", "motor_current", [T0_US], [1.0])
    bad = good.replace(b"pump-01", b"pu\xc1p-01")
    d = decode_batch(_msgs([bad, good]))
    assert [r[1] for r in d.rejects] == ["malformed"] and d.n_readings == 1


@pytest.mark.parametrize("multi", [False, True])
def test_a_message_off_its_channels_asset_is_rejected_whole(multi: bool):
    """Messages bound to a channel's asset (an MQTT topic): the one whose payload speaks for
    another asset is one ``asset_mismatch`` reject, the rest decode as without the binding,
    whether the batch takes the bulk path (same shape throughout) or not."""

    def payload(asset: str, k: int) -> bytes:
        if multi:
            return json.dumps(
                {"asset_id": asset, "ts": T0_US + k, "values": {"a": float(k), "b": 2.0 * k}}
            ).encode()
        return json.dumps(
            {"asset_id": asset, "sensor_id": "a", "ts": T0_US + k, "value": float(k)}
        ).encode()

    claimed = ["pump-01", "pump-01", "pump-02", "pump-01", "pump-01"]
    plain = [Message("s", k, 0, payload(a, k)) for k, a in enumerate(claimed)]
    bound = [
        Message("s", k, 0, payload(a, k), channel_asset="pump-01") for k, a in enumerate(claimed)
    ]
    free, held = decode_batch(plain), decode_batch(bound)
    assert free.n_readings == (10 if multi else 5) and not free.rejects
    assert [r[:2] for r in held.rejects] == [(2, "asset_mismatch")]
    assert held.rejects[0][3] == "pump-01" and "'pump-02'" in held.rejects[0][2]
    keep = np.array([free.g_msg[g] != 2 for g in free.group])
    assert held.ts.tolist() == free.ts[keep].tolist()
    assert held.value.tolist() == free.value[keep].tolist()
    assert {held.group_names(g)[0] for g in held.group} == {"pump-01"}
    assert sorted(set(held.g_msg.tolist())) == [0, 1, 3, 4]
