"""The telemetry dataflow under bytewax.testing, writing real Delta tables."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main

from bytewax_flows.payloads import Message, encode_frame
from bytewax_flows.routing import SHARDS
from bytewax_flows.sinks import (
    STREAM_OUTPUTS,
    DeltaSink,
    SinkRows,
    durable_offsets,
    progress_rows,
    sink_key,
)
from bytewax_flows.sources import SimulatorSource
from bytewax_flows.telemetry import build_flow, get_flow
from lake import Lake, table_spec
from physics.simulator import default_fleet
from tests.conftest import T0_US


def msg(offset: int, payload: bytes | dict, source: str = "test") -> Message:
    body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    return Message(source, offset, T0_US, body)


def reading(sensor_id: str, ts, value, asset_id: str = "pump-01") -> dict:
    return {"asset_id": asset_id, "sensor_id": sensor_id, "ts": ts, "value": value}


def run(lake: Lake, messages: list[Message]) -> None:
    run_main(get_flow(TestingSource(messages), lake.uri))


def dead(lake: Lake) -> pd.DataFrame:
    return lake.read("dead_letter").sort_values(["source", "reason"]).reset_index(drop=True)


def test_valid_readings_land_in_readings(lake: Lake):
    ts = [T0_US + i * 100_000 for i in range(10)]
    run(lake, [msg(0, reading("motor_current", ts, list(np.linspace(20, 21, 10))))])
    df = lake.read("readings").sort_values("ts")
    assert len(df) == 10 and not lake.exists("dead_letter")
    assert df["value"].iloc[-1] == pytest.approx(21.0)
    assert (df["quality"] == "good").all() and (df["raw_value"] == df["value"]).all()


def test_every_branch_ends_in_exactly_one_table(lake: Lake):
    t = T0_US
    messages = [
        msg(0, b"{not json"),  # malformed
        msg(1, reading("oil_colour", t, 1.0)),  # unknown sensor: landed, schema on read
        msg(
            2,
            reading(
                "bearing_temp",
                [t, t + 1_000_000, t + 2_000_000, t + 3_000_000],
                [40.0, 900.0, None, 41.0],
            ),
        ),  # ok, out_of_range, non_finite, ok
        msg(
            3,
            reading(  # duplicate, out of order but within the lateness (accepted), ok, late
                "bearing_temp",
                [t + 3_000_000, t + 1_500_000, t + 4_000_000, t - 60_000_000],
                [42.0, 43.0, 44.0, 45.0],
            ),
        ),
        msg(4, reading("bearing_temp", t + 5_000_000, "warm")),  # wrong type
        msg(5, encode_frame("pump-01", "vib_de", t, 8_000.0, np.zeros(2048))),  # wrong rate
        msg(6, encode_frame("pump-01", "vib_de", t, 12_000.0, np.full(2048, np.nan))),  # NaN
        msg(7, encode_frame("pump-01", "vib_de", t, 12_000.0, np.zeros(0))),  # empty
        msg(
            8,
            encode_frame(
                "pump-01", "vib_de", t, 12_000.0, np.random.default_rng(0).normal(size=2048)
            ),
        ),
        msg(
            9, encode_frame("pump-01", "vib_de", t, 12_000.0, np.ones(2048))
        ),  # same start: duplicate
        msg(10, reading("vib_de", t, 1.0)),  # scalar reading for a frame sensor
        msg(11, encode_frame("pump-01", "vib_de", t + 10**6, 12_000.0, np.zeros(100))),  # too short
    ]
    run(lake, messages)
    reasons = dead(lake)["reason"].value_counts().to_dict()
    assert reasons == {
        "malformed": 1,
        "out_of_range": 1,
        "non_finite": 2,
        "duplicate": 2,
        "late": 1,
        "wrong_type": 2,
        "bad_sample_rate": 1,
        "empty_frame": 1,
        "short_frame": 1,
    }
    readings = lake.read("readings").sort_values("ts")
    assert readings["value"].tolist() == [40.0, 43.0, 41.0, 44.0]  # sorted by event time
    all_features = lake.read("features")
    features = all_features[all_features["sensor_id"] == "vib_de"]
    assert len(features) == 1 and features["vib_rms"].iloc[0] == pytest.approx(1.0, abs=0.1)
    process = all_features[all_features["sensor_id"] != "vib_de"]
    # one process window per 1 s cadence bucket with accepted readings, once event time has
    # reached its last expected reading (a 1 Hz sensor: its one reading): 0 s, 3 s and 4 s;
    # the out-of-order 1.5 s reading is accepted but its bucket had passed (it joins the window
    # of 4 s: the mean of 40, 41, 43 and 44)
    assert sorted(process["window_end"]) == [
        pd.Timestamp(t, unit="us", tz="UTC") + pd.Timedelta(seconds=s) for s in (0, 3, 4)
    ]
    assert process.sort_values("window_end")["proc_level"].tolist() == [40.0, 40.5, 42.0]
    assert process["proc_level"].notna().all() and process["vib_rms"].isna().all()
    assert lake.count("frames") == 1  # the first accepted frame is kept as a sample
    total_inputs = 1 + 1 + 4 + 4 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1  # readings or whole messages
    unknown = lake.read("unknown_readings")
    assert unknown[["sensor_id", "value"]].values.tolist() == [["oil_colour", 1.0]]
    assert len(readings) + len(features) + len(dead(lake)) + len(unknown) == total_inputs


def test_dead_letter_keeps_raw_payload_of_each_rejected_reading(lake: Lake):
    run(lake, [msg(0, reading("bearing_temp", [T0_US, T0_US + 1], [40.0, 1e9]))])
    row = dead(lake).iloc[0]
    assert row["reason"] == "out_of_range" and "outside [-40, 200]" in row["detail"]
    assert json.loads(row["raw"]) == reading("bearing_temp", T0_US + 1, 1e9)
    assert (row["asset_id"], row["sensor_id"], row["source"]) == ("pump-01", "bearing_temp", "test")


def test_replaying_the_same_messages_adds_no_rows(lake: Lake):
    messages = [msg(i, reading("motor_current", T0_US + i * 100_000, 20.0 + i)) for i in range(20)]
    messages.append(msg(20, b"garbage"))
    run(lake, messages)
    run(lake, messages)  # e.g. a source rewound after a crash
    assert lake.count("readings") == 20 and lake.count("dead_letter") == 1
    run(lake, [*messages, msg(21, reading("motor_current", T0_US + 10**8, 1.0))])
    assert lake.count("readings") == 21


def test_sink_commits_by_age_in_several_batches(lake: Lake):
    messages = [msg(i, reading("motor_current", T0_US + i * 100_000, 20.0)) for i in range(30)]
    run_main(build_flow(TestingSource(messages), DeltaSink(lake.uri, max_age_s=0.0)))
    assert lake.count("readings") == 30
    assert len(lake.history("readings")) > 3  # several commits (plus the create), not one


def test_simulator_source_through_the_flow(lake: Lake):
    sim = default_fleet()
    run_main(get_flow(SimulatorSource(sim, n_chunks=5), lake.uri))
    per_asset = lake.read("readings").groupby("asset_id").size().to_dict()
    assert per_asset == {"pump-01": 155, "pump-02": 155, "pump-03": 155}  # 31 readings/s x 5 s
    sensors = lake.read("features").groupby("sensor_id").size().to_dict()
    assert sensors.pop("vib_de") == 15  # one vibration window per frame
    assert set(sensors.values()) == {15}  # one process window per scalar message
    assert not lake.exists("dead_letter")


@pytest.mark.parametrize("epoch_s", [0, 3600], ids=["snapshot-every-batch", "replay-everything"])
def test_crash_and_resume_matches_an_uninterrupted_run(tmp_path: Path, epoch_s: int):
    """The sink commits eagerly (before the epoch's snapshot), so a resume re-sends rows that are
    already in Delta; the offset-keyed commits must drop exactly those."""
    t = T0_US
    bodies: list[bytes | dict] = [
        reading(
            "motor_current",
            [t + i * 1_000_000 + k * 100_000 for k in range(10)],
            [20.0 + k for k in range(10)],
        )
        for i in range(30)
    ]
    bodies.insert(12, b"bad")
    messages = [msg(i, body) for i, body in enumerate(bodies)]

    reference = Lake(tmp_path / "reference")
    run_main(get_flow(TestingSource(messages, batch_size=3), reference.uri))

    crashed = Lake(tmp_path / "crashed")
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    config = RecoveryConfig(str(recovery))
    with_abort = [*messages[:20], TestingSource.ABORT(), *messages[20:]]

    # the first execution stops abruptly at ABORT, as a killed worker would
    def execute() -> None:
        run_main(
            build_flow(
                TestingSource(with_abort, batch_size=3), DeltaSink(crashed.uri, max_age_s=0.0)
            ),
            epoch_interval=timedelta(seconds=epoch_s),
            recovery_config=config,
        )

    execute()
    partial = crashed.count("readings")
    assert 0 < partial < reference.count("readings")
    execute()

    for table in ("readings", "dead_letter"):
        cols = (
            ["asset_id", "sensor_id", "ts", "value"]
            if table == "readings"
            else ["source", "raw", "reason"]
        )
        a = reference.read(table, columns=cols).sort_values(cols[:3]).reset_index(drop=True)
        b = crashed.read(table, columns=cols).sort_values(cols[:3]).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)


def test_a_later_simulation_of_the_same_machines_lands_in_full(tmp_path):
    """Offsets follow event time, so a second run (a day later) is not taken for a replay."""
    lake = Lake(tmp_path / "lake")
    counts = []
    for start in (T0_US, T0_US + 86_400_000_000):
        fleet = default_fleet(1, start_us=start)
        run_main(get_flow(SimulatorSource(fleet, n_chunks=3), lake.uri))
        counts.append((lake.count("readings"), lake.count("scores")))
    assert counts[1] == (2 * counts[0][0], 2 * counts[0][1]) and counts[0][1] == 3


def _rejected(source: str, offset: int) -> SinkRows:
    schema = table_spec("dead_letter").input_schema
    row = {
        "received_ts": T0_US + offset,
        "source": source,
        "raw": b"x%d" % offset,
        "reason": "malformed",
        "detail": "test",
        "asset_id": None,
        "sensor_id": None,
    }
    rows = pa.table({f.name: pa.array([row[f.name]], f.type) for f in schema}, schema=schema)
    return SinkRows("dead_letter", source, offset, rows)


def test_sink_writes_late_items_of_a_source_and_drops_only_replays(lake: Lake):
    """One source's items reach a table along several paths (with several workers, from
    several workers), so a lower offset can arrive after a higher one was committed: it is new
    and is written.  After a restart, what is at or below the recorded offset is a replay."""
    sink = DeltaSink(lake.uri, max_rows=1)  # every batch is its own commit
    part = sink.build_part("lake", "dead_letter", None)
    part.write_batch([_rejected("mqtt:w0", 5)])
    part.write_batch([_rejected("mqtt:w0", 3)])  # arrived late, along a slower path
    part.write_batch([_rejected("mqtt:w0", 4), _rejected("mqtt:w1", 1)])
    assert sorted(lake.read("dead_letter")["raw"]) == [b"x1", b"x3", b"x4", b"x5"]
    assert lake.committed_version("dead_letter", "telemetry:mqtt:w0") == 5  # never goes back
    resumed = sink.build_part("lake", "dead_letter", None)  # a restart replays from 3 on
    resumed.write_batch([_rejected("mqtt:w0", o) for o in (3, 4, 5, 6)])
    assert sorted(lake.read("dead_letter")["raw"]) == [b"x1", b"x3", b"x4", b"x5", b"x6"]


def test_a_source_is_durable_up_to_the_smallest_mark_over_every_stream_table(lake: Lake):
    sink = DeltaSink(lake.uri, writers=2)
    parts = {
        key: sink.build_part("lake", key, None)
        for key in sink.list_parts()
        if key.partition("#")[0] in STREAM_OUTPUTS
    }
    assert len(parts) == 2 * len(STREAM_OUTPUTS)  # every table has two writers
    assert durable_offsets(lake, ["a"], writers=2) == {"a": None}  # no table yet
    for offset in (3, 7):
        for key, item in progress_rows("a", offset, writers=2):
            parts[key].write_batch([item])
    for key, item in progress_rows("b", 9, writers=2):
        if key != "alerts#001":  # b's mark has not reached one writer of one table
            parts[key].write_batch([item])
    for part in parts.values():
        part.snapshot()
    assert durable_offsets(lake, ["a", "b", "c"], writers=2) == {"a": 7, "b": None, "c": None}
    # a reader counting one writer less would take b for durable: each writer's mark counts
    assert durable_offsets(lake, ["b"], writers=1) == {"b": 9}


def _readings_item(source: str, offsets: list[int]) -> SinkRows:
    n = len(offsets)
    ts = pa.array([T0_US + o for o in offsets], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    rows = pa.table(
        {
            "asset_id": ["a"] * n,
            "sensor_id": ["s"] * n,
            "ts": ts,
            "value": [float(o) for o in offsets],
            "raw_value": [float(o) for o in offsets],
            "quality": ["good"] * n,
            "ingest_ts": ts,
        },
        schema=table_spec("readings").input_schema,
    )
    return SinkRows("readings", source, np.array(offsets), rows)


@pytest.mark.parametrize("per_path", [False, True], ids=["one-key-per-source", "one-key-per-path"])
def test_a_crash_between_two_paths_commits_loses_nothing_only_with_per_path_keys(
    lake: Lake, per_path: bool
):
    """Issue 13.5, proven: one source's rows reach a table along two shards.  Shard 0 commits
    offsets 5..9 eagerly; shard 1's offsets 0..4 are still in flight when the worker dies; the
    restart replays both.  Keyed by source alone, 0..4 sit below the recorded 9 and are dropped
    as replays (lost); keyed by source and path (what ``dataplane.rows`` does), they are not."""
    name = (lambda k: f"mqtt:w0#{k}") if per_path else (lambda k: "mqtt:w0")
    sink = DeltaSink(lake.uri, max_rows=1)
    before = sink.build_part("lake", "readings", None)
    before.write_batch([_readings_item(name(0), [5, 6, 7, 8, 9])])  # committed, then the crash
    after = sink.build_part("lake", "readings", None)  # the restart replays the epoch
    after.write_batch([_readings_item(name(0), [5, 6, 7, 8, 9])])
    after.write_batch([_readings_item(name(1), [0, 1, 2, 3, 4])])
    got = sorted(lake.read("readings")["value"].astype(int))
    if per_path:
        assert got == list(range(10))
    else:
        assert got == [5, 6, 7, 8, 9]  # the loss the per-path keys prevent


def test_shards_crash_and_resume_match_an_uninterrupted_run(tmp_path: Path):
    """Several assets in one batch on several shards, eager commits, a crash mid-stream."""
    from dataplane.wire import Batch

    def batch(k: int) -> Batch:
        return Batch(
            [
                msg(
                    k * 10 + j,
                    reading(
                        "motor_current",
                        T0_US + k * 1_000_000 + j,
                        20.0 + j,
                        asset_id=f"pump-0{j % 6 + 1}",
                    ),
                )
                for j in range(10)
            ]
        )

    items = [batch(k) for k in range(12)]
    reference = Lake(tmp_path / "reference")
    run_main(build_flow(TestingSource(items), DeltaSink(reference.uri), shards=4))
    crashed = Lake(tmp_path / "crashed")
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    with_abort = [*items[:7], TestingSource.ABORT(), *items[7:]]  # aborts the first run only
    for _ in range(2):
        run_main(
            build_flow(TestingSource(with_abort), DeltaSink(crashed.uri, max_rows=1), shards=4),
            epoch_interval=timedelta(seconds=3600),
            recovery_config=RecoveryConfig(str(recovery)),
        )
    cols = ["asset_id", "sensor_id", "ts", "value"]
    a = reference.read("readings", columns=cols).sort_values(cols).reset_index(drop=True)
    b = crashed.read("readings", columns=cols).sort_values(cols).reset_index(drop=True)
    assert len(a) == 120
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_each_shard_writes_its_rows_on_its_own_worker(lake: Lake, workers: int):
    """Bytewax puts sink partition i (of the sorted names) on worker i % workers, and shard s's
    state on worker s % workers (``bytewax_flows.routing``): every table's rows of shard s go
    to a writer on that same worker, so no table is written by one worker for all."""
    sink = DeltaSink(lake.uri)
    for table in STREAM_OUTPUTS:
        placed = {sink.part_fn(sink_key(table, s)) % workers for s in range(SHARDS)}
        assert placed == set(range(min(workers, SHARDS)))
        for s in range(SHARDS):
            assert sink.part_fn(sink_key(table, s)) % workers == s % workers


def test_snapshots_are_built_only_where_recovery_keeps_them():
    """``python -m bytewax.run`` without ``-r`` throws every snapshot away: the shard's state
    (1.4 CPU s to pickle at the plant's shape) is then not built; every other way keeps it."""
    from bytewax_flows.telemetry import keeps_snapshots

    assert not keeps_snapshots(["bytewax_flows.telemetry:flow", "-s", "10"], "bytewax.run")
    assert keeps_snapshots(["flow", "-r", "/tmp/rec", "-s", "2", "-b", "0"], "bytewax.run")
    assert keeps_snapshots(["flow", "--recovery-directory=/tmp/rec"], "bytewax.run")
    assert keeps_snapshots(["flow"], "pytest")  # run_main / cluster_main in a test
