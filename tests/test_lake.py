"""The lake: round trips, idempotent replay, schema errors, partitions, readers and SQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from lake import TABLES, Lake, LakeError, SchemaMismatchError, UnknownTableError, table_spec
from lake.settings import Settings
from lake.sql import SQLError, query
from tests.conftest import T0_US, readings_rows


def test_every_design_table_is_declared_with_a_utc_microsecond_schema():
    design = {
        "readings",
        "frames",
        "dead_letter",
        "features",
        "scores",
        "alerts",
        "drift_events",
        "validation_results",
        "calibration",
        "maintenance_events",
        "model_decisions",
    }
    assert design <= set(TABLES)
    for spec in TABLES.values():
        for field in spec.schema:
            if pa.types.is_timestamp(field.type):
                assert field.type == pa.timestamp("us", tz="UTC"), (spec.name, field.name)
        if spec.time_column:
            assert spec.partition_by == ("date",), spec.name


def test_round_trip_derives_the_date_partition(lake: Lake):
    assert lake.append(
        "readings", readings_rows(3, t0_us=T0_US - 1_000_000)
    )  # 23:59:59 the day before
    df = lake.read("readings").sort_values("ts")
    assert len(df) == 3
    assert df["date"].tolist() == [dt.date(2025, 12, 31), dt.date(2026, 1, 1), dt.date(2026, 1, 1)]
    assert df["value"].tolist() == [40.0, 41.0, 42.0]
    assert str(df["ts"].dtype) == "datetime64[us, UTC]"
    assert sorted(p["date"] for p in lake.table("readings").partitions()) == [
        "2025-12-31",
        "2026-01-01",
    ]


def test_replayed_batch_with_same_idempotency_key_adds_no_rows(lake: Lake):
    batch = readings_rows(4)
    assert lake.append("readings", batch, idempotency_key=("flow:sim:pump-01", 7)) is True
    assert lake.append("readings", batch, idempotency_key=("flow:sim:pump-01", 7)) is False
    assert lake.append("readings", batch, idempotency_key=("flow:sim:pump-01", 3)) is False
    assert lake.count("readings") == 4
    assert lake.committed_version("readings", "flow:sim:pump-01") == 7
    assert lake.append("readings", batch, idempotency_key=("flow:sim:pump-01", 8)) is True
    assert lake.append("readings", batch, idempotency_key=("other-app", 1)) is True
    assert lake.count("readings") == 12


def test_wrong_type_names_table_and_column(lake: Lake):
    bad = readings_rows(2)
    bad["value"] = ["hot", "cold"]
    with pytest.raises(
        SchemaMismatchError, match="table 'readings', column 'value': expected double"
    ):
        lake.append("readings", bad)
    assert not lake.exists("readings")


def test_missing_extra_and_null_columns_are_named(lake: Lake):
    missing = readings_rows(2)
    del missing["quality"]
    with pytest.raises(SchemaMismatchError, match="missing column.*quality"):
        lake.append("readings", missing)
    extra = {**readings_rows(2), "colour": ["red", "blue"]}
    with pytest.raises(SchemaMismatchError, match="colour are not in the declared schema"):
        lake.append("readings", extra)
    nulls = readings_rows(2)
    nulls["asset_id"] = [None, "pump-01"]
    with pytest.raises(SchemaMismatchError, match="column 'asset_id': 1 null value"):
        lake.append("readings", nulls)


def test_naive_and_nanosecond_timestamps_are_conformed_to_utc_us(lake: Lake):
    rows = readings_rows(2)
    rows["ts"] = pd.to_datetime(
        ["2026-01-01 00:00:00.000001999", "2026-01-01 00:00:01.000000000"]
    )  # naive, ns
    lake.append("readings", rows)
    assert lake.read("readings")["ts"].min() == pd.Timestamp("2026-01-01 00:00:00.000001", tz="UTC")


def test_unknown_table_lists_known_ones(lake: Lake):
    with pytest.raises(UnknownTableError, match="unknown table 'reading'; the lake has: readings"):
        lake.append("reading", readings_rows(1))
    with pytest.raises(UnknownTableError):
        lake.read("nope")


def test_unusable_lake_location_is_a_clear_error(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(LakeError, match="is not a writable directory.*PLANTPULSE_LAKE"):
        Lake(blocker / "lake").append("readings", readings_rows(1))


def test_reading_a_missing_table_gives_empty_typed_result(lake: Lake):
    df = lake.read("alerts")
    assert df.empty and list(df.columns) == table_spec("alerts").columns
    with pytest.raises(LakeError, match="has no data yet"):
        lake.table("alerts")


def test_filters_columns_and_time_travel(lake: Lake):
    lake.append("readings", readings_rows(3, asset_id="pump-01"))
    lake.append("readings", readings_rows(2, asset_id="pump-02"))
    got = lake.read(
        "readings", filters=[("asset_id", "=", "pump-02")], columns=["asset_id", "value"]
    )
    assert got["asset_id"].tolist() == ["pump-02", "pump-02"] and list(got.columns) == [
        "asset_id",
        "value",
    ]
    assert lake.read_arrow("readings", version=1).num_rows == 3  # version 0 is the empty table
    with pytest.raises(LakeError, match="no column"):
        lake.read("readings", columns=["nope"])


def test_replace_partition_reruns_are_safe_and_touch_only_that_day(lake: Lake):
    def stats(day: str, n: int) -> pd.DataFrame:
        ts = pd.Timestamp(day, tz="UTC")
        return pd.DataFrame(
            {
                "date": [dt.date.fromisoformat(day)] * n,
                "asset_id": [f"a{i}" for i in range(n)],
                "sensor_id": "s",
                "n_readings": 1,
                "mean": 1.0,
                "min": 1.0,
                "max": 1.0,
                "first_ts": ts,
                "last_ts": ts,
            }
        )

    lake.replace_partition("sensor_daily_stats", stats("2026-01-01", 2), date="2026-01-01")
    lake.replace_partition("sensor_daily_stats", stats("2026-01-02", 3), date="2026-01-02")
    lake.replace_partition("sensor_daily_stats", stats("2026-01-01", 4), date="2026-01-01")
    lake.replace_partition("sensor_daily_stats", stats("2026-01-01", 4), date="2026-01-01")
    counts = lake.read("sensor_daily_stats").groupby("date").size()
    assert counts.to_dict() == {dt.date(2026, 1, 1): 4, dt.date(2026, 1, 2): 3}
    with pytest.raises(LakeError, match="rows outside partition"):
        lake.replace_partition("sensor_daily_stats", stats("2026-01-03", 1), date="2026-01-01")


def test_sql_reads_every_table_and_cannot_write_or_escape(lake: Lake, tmp_path: Path):
    lake.append("readings", readings_rows(5))
    result = query(
        lake, "select asset_id, count(*) as n, max(value) as top from readings group by asset_id"
    )
    assert result.to_pylist() == [{"asset_id": "pump-01", "n": 5, "top": 44.0}]
    assert query(lake, "select count(*) as n from alerts").to_pylist() == [{"n": 0}]
    target = tmp_path / "leak.parquet"
    with pytest.raises(SQLError, match="disabled"):
        query(lake, f"copy readings to '{target}'")
    assert not target.exists()
    with pytest.raises(SQLError, match="disabled"):
        query(lake, "select * from read_csv('/etc/hostname')")
    with pytest.raises(SQLError, match="query failed: Parser Error"):
        query(lake, "selec 1")


def test_settings_default_under_state_dir_and_are_overridable(tmp_path: Path):
    s = Settings.from_env({"PLANTPULSE_HOME": str(tmp_path)})
    assert s.lake_uri == str(tmp_path / "lake")
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert s.dagster_home == str(tmp_path / "dagster")
    s2 = Settings.from_env(
        {"PLANTPULSE_HOME": str(tmp_path), "PLANTPULSE_LAKE": "s3://bucket/lake"}
    )
    assert s2.lake_uri == "s3://bucket/lake"
