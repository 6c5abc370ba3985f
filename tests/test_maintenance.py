"""Lake maintenance on real Delta tables: compaction, vacuum and per-table retention."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa

from dagster_project.assets.maintenance import lake_compaction, lake_vacuum
from dagster_project.definitions import defs
from dagster_project.resources import LakeResource
from lake import Lake, table_spec
from lake.maintenance import compact, expire, maintain, partition_files, vacuum
from tests.conftest import T0_US, readings_rows

DAY_US = 86_400 * 1_000_000
NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)


def _ts(values_us: list[int]) -> pa.Array:
    return pa.array(values_us, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def frames_rows(t0_us: int, n: int = 2, samples: int = 64) -> dict:
    ts = _ts([t0_us + i * 1_000_000 for i in range(n)])
    rng = np.random.default_rng(0)
    return {
        "asset_id": ["pump-01"] * n,
        "sensor_id": ["vibration_de"] * n,
        "ts_start": ts,
        "sample_rate_hz": [10_000.0] * n,
        "n_samples": pa.array([samples] * n, pa.int32()),
        "samples": pa.array(
            [rng.normal(size=samples).astype(np.float32) for _ in range(n)], pa.list_(pa.float32())
        ),
        "retained_because": ["sampled"] * n,
    }


def features_rows(t0_us: int, n: int = 2) -> dict:
    spec = table_spec("features")
    start = _ts([t0_us + i * 1_000_000 for i in range(n)])
    end = _ts([t0_us + (i + 1) * 1_000_000 for i in range(n)])
    rows: dict = {
        "asset_id": ["pump-01"] * n,
        "sensor_id": ["vibration_de"] * n,
        "window_start": start,
        "window_end": end,
        "feature_version": pa.array([1] * n, pa.int32()),
        "n_samples": pa.array([10_000] * n, pa.int64()),
    }
    for f in spec.input_schema:
        if f.name not in rows:
            rows[f.name] = pa.array([1.0] * n, pa.float64())
    return rows


def _many_small_commits(lake: Lake, n: int = 6) -> None:
    for i in range(n):  # two days, several small files in each
        lake.append(
            "readings",
            readings_rows(3, t0_us=T0_US + (i % 2) * DAY_US + i * 10_000_000, value=float(i)),
        )


def test_catalogue_keeps_raw_frames_shorter_than_features_and_labels_for_ever():
    frames, features = table_spec("frames"), table_spec("features")
    assert frames.retention_days is not None and features.retention_days is not None
    assert frames.retention_days < features.retention_days
    assert frames.vacuum_hours <= features.vacuum_hours
    assert table_spec("maintenance_events").retention_days is None  # labels are never dropped
    assert table_spec("model_decisions").retention_days is None  # nor the gate's evidence
    for name in ("readings", "features", "frames", "scores"):
        assert table_spec(name).z_order[0] == "asset_id"


def test_compaction_leaves_fewer_files_and_the_same_rows(lake: Lake):
    _many_small_commits(lake)
    before = partition_files(lake, "readings")
    rows_before = lake.read("readings").sort_values(["ts", "value"]).reset_index(drop=True)
    assert sum(before.values()) == 6

    done = compact(lake, "readings", now=NOW)  # both days are closed: Z-ordered

    after = partition_files(lake, "readings")
    assert sorted(done) == sorted(before)
    assert after == {d: 1 for d in before}
    rows_after = lake.read("readings").sort_values(["ts", "value"]).reset_index(drop=True)
    assert rows_after.equals(rows_before)
    assert lake.history("readings", limit=1)[0]["operation"] == "OPTIMIZE"
    # Nothing left to do: a second pass commits nothing.
    version = lake.table("readings").version()
    assert compact(lake, "readings", now=NOW) == []
    assert lake.table("readings").version() == version


def test_vacuum_removes_only_files_out_of_the_table_for_longer_than_retention(lake: Lake):
    _many_small_commits(lake)
    compact(lake, "readings", now=NOW)
    root = Path(lake.table_uri("readings"))
    live = {Path(p).name for p in lake.table("readings").file_uris()}

    assert vacuum(lake, "readings") == []  # just removed: inside the declared 168 h window
    assert vacuum(lake, "readings", retention_hours=1) == []

    removed = vacuum(lake, "readings", retention_hours=0)
    assert len(removed) == 6  # exactly the six compacted-away small files
    on_disk = {p.name for p in root.rglob("*.parquet")}
    assert on_disk == live
    assert lake.count("readings") == 18
    # Time travel to before the compaction is gone with its files; the current version reads.
    assert lake.read("readings")["value"].notna().all()


def test_retention_is_honoured_per_table(lake: Lake):
    old_us = NOW_US - 30 * DAY_US  # older than the frames' retention, younger than features'
    new_us = NOW_US - 1 * DAY_US
    for t in (old_us, new_us):
        lake.append("frames", frames_rows(t))
        lake.append("features", features_rows(t))

    old_day = (NOW - dt.timedelta(days=30)).date().isoformat()
    assert expire(lake, "frames", now=NOW) == [old_day]
    assert expire(lake, "features", now=NOW) == []

    frames = lake.read("frames")
    assert len(frames) == 2 and (frames["ts_start"] >= NOW - dt.timedelta(days=14)).all()
    assert len(lake.read("features")) == 4
    # Expiry drops whole files (no rewrite): the old partition's files are tombstoned.
    assert lake.history("frames", limit=1)[0]["operation"] == "DELETE"


def test_expire_keeps_partitions_on_the_retention_boundary(lake: Lake):
    days = table_spec("frames").retention_days
    assert days is not None
    lake.append("frames", frames_rows(NOW_US - days * DAY_US))
    assert expire(lake, "frames", now=NOW) == []
    assert lake.count("frames") == 2


def test_maintenance_assets_materialise_on_a_real_lake(lake: Lake):
    _many_small_commits(lake)
    lake.append("frames", frames_rows(T0_US))
    result = dg.materialize(
        [lake_compaction, lake_vacuum], resources={"lake": LakeResource(uri=lake.uri)}
    )
    assert result.success
    compaction = result.asset_materializations_for_node("lake_compaction")[0]
    assert compaction.metadata["files_before"].value == 7
    assert compaction.metadata["files_after"].value < 7
    assert lake.count("readings") == 18
    # The frames of 2026-01-01 are long past their 14-day retention: expired by the pass.
    assert lake.count("frames") == 0


def test_maintenance_is_scheduled_in_the_definitions():
    job = defs.resolve_job_def("lake_maintenance")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} >= {
        "lake_compaction",
        "lake_vacuum",
    }
    schedule = defs.resolve_schedule_def("lake_maintenance_schedule")
    assert schedule.job_name == "lake_maintenance"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_maintain_reports_every_existing_table(lake: Lake):
    _many_small_commits(lake, 4)
    reports = maintain(lake, now=NOW, vacuum_tables=False)
    assert [r.table for r in reports] == ["readings"]
    assert reports[0].files_before == 4 and reports[0].files_after == 2
    assert reports[0].as_row()["compacted_partitions"] == 2


def test_frames_are_stored_no_larger_than_raw_float32_also_after_compaction(lake: Lake):
    """Parquet's default dictionary attempt on distinct floats stored 1.5x the raw samples."""
    import pyarrow.parquet as pq

    samples = 12_000
    for i in range(2):
        lake.append("frames", frames_rows(T0_US + i * 10_000_000, n=3, samples=samples))
    raw = 2 * 3 * samples * 4

    def stored() -> tuple[int, set[str]]:
        files = [Path(u) for u in lake.table("frames").file_uris()]
        encodings = {
            e for f in files for e in pq.ParquetFile(f).metadata.row_group(0).column(5).encodings
        }
        return sum(f.stat().st_size for f in files), encodings

    size, encodings = stored()
    assert size < raw and "RLE_DICTIONARY" not in encodings
    compact(lake, "frames", now=NOW)
    size, encodings = stored()
    assert len(lake.table("frames").file_uris()) == 1
    assert size < raw and "RLE_DICTIONARY" not in encodings
