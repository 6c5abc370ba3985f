"""The lake on object storage: a real S3 API (moto's server, started here on a loopback port)
under the Lake, the stream, the Dagster assets and the CLI, with concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pytest
from bytewax.testing import run_main

from bytewax_flows.sources import SimulatorSource
from bytewax_flows.telemetry import get_flow
from dagster_project.assets.maintenance import lake_compaction, lake_vacuum
from dagster_project.assets.readings import sensor_daily_stats
from dagster_project.resources import LakeResource
from lake import Lake, LakeError
from lake.maintenance import compact, partition_files
from lake.settings import storage_options
from physics.simulator import default_fleet
from tests.conftest import REPO, T0_US, readings_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port; yields the AWS_* environment that reaches it."""
    from bench.scale import moto_s3

    with moto_s3(tmp_path_factory.mktemp("moto") / "moto.log") as env:
        yield env


@pytest.fixture
def s3_lake(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Lake:
    """A fresh bucket per test, and the environment every component reads (AWS_*)."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PLANTPULSE_LAKE_OPTIONS", raising=False)
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    return Lake(f"s3://{bucket}/lake")


def _objects(lake: Lake) -> list[str]:
    bucket, _, prefix = lake.uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_storage_options_come_from_the_environment_with_safe_s3_commits(s3_lake: Lake):
    opts = s3_lake.storage_options
    assert opts is not None
    assert opts["AWS_ENDPOINT_URL"] == os.environ["AWS_ENDPOINT_URL"]
    assert opts["conditional_put"] == "etag"  # S3 If-None-Match: * for every commit
    # An operator's explicit choice wins (a locking provider, or unsafe renames on purpose).
    chosen = storage_options("s3://b/l", {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"})
    assert chosen == {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}


def test_bad_lake_options_are_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PLANTPULSE_LAKE_OPTIONS", "{not json")
    with pytest.raises(LakeError, match="PLANTPULSE_LAKE_OPTIONS is not valid JSON"):
        Lake("s3://bucket/lake")


def test_read_write_and_idempotent_append_on_s3(s3_lake: Lake):
    rows = readings_rows(5)
    assert s3_lake.append("readings", rows, idempotency_key=("mqtt:0", 1))
    assert not s3_lake.append("readings", rows, idempotency_key=("mqtt:0", 1))  # a replay
    assert s3_lake.append(
        "readings", readings_rows(3, t0_us=T0_US + 10_000_000), idempotency_key=("mqtt:0", 2)
    )
    assert s3_lake.count("readings") == 8
    again = Lake(s3_lake.uri)  # a second process's view of the same bucket
    assert again.committed_version("readings", "mqtt:0") == 2
    day = again.read("readings", filters=[("asset_id", "=", "pump-01")])
    assert sorted(day["value"]) == sorted(
        [40.0 + i for i in range(5)] + [40.0 + i for i in range(3)]
    )
    assert any(k.endswith("_delta_log/00000000000000000002.json") for k in _objects(s3_lake))


def test_stream_writes_to_s3_and_a_rerun_duplicates_nothing(s3_lake: Lake):
    fleet = default_fleet(2, seed=5, start_us=T0_US)
    run_main(get_flow(SimulatorSource(fleet, n_chunks=4), s3_lake.uri))
    first = {t: s3_lake.count(t) for t in ("readings", "features", "scores")}
    assert first["readings"] > 0 and first["features"] > 0 and first["scores"] > 0
    run_main(
        get_flow(SimulatorSource(default_fleet(2, seed=5, start_us=T0_US), n_chunks=4), s3_lake.uri)
    )
    assert {t: s3_lake.count(t) for t in first} == first


def test_dagster_assets_materialise_against_s3(s3_lake: Lake):
    for i in range(3):
        s3_lake.append("readings", readings_rows(4, t0_us=T0_US + i * 60_000_000))
    resources = {"lake": LakeResource(uri=s3_lake.uri)}
    day = dg.materialize([sensor_daily_stats], resources=resources, partition_key="2026-01-01")
    assert day.success
    stats = s3_lake.read("sensor_daily_stats")
    assert stats["n_readings"].tolist() == [12]
    upkeep = dg.materialize([lake_compaction, lake_vacuum], resources=resources)
    assert upkeep.success
    assert partition_files(s3_lake, "readings") == {"2026-01-01": 1}
    assert s3_lake.count("readings") == 12


def test_cli_status_reads_the_s3_lake(s3_lake: Lake, tmp_path: Path):
    s3_lake.append("readings", readings_rows(7))
    env = {**os.environ, "PLANTPULSE_LAKE": s3_lake.uri, "PLANTPULSE_HOME": str(tmp_path)}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "plantpulse"), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    status = json.loads(out.stdout)
    assert status["lake"] == s3_lake.uri
    rows = {t["table"]: t["rows"] for t in status["tables"]}
    assert rows["readings"] == 7


_APPEND_LOOP = """
import sys
from lake import Lake
from tests.conftest import T0_US, readings_rows
lake = Lake(sys.argv[1])
for i in range(int(sys.argv[2])):
    lake.append("readings", readings_rows(10, t0_us=T0_US + i * 10_000_000, value=1000.0 * i),
                idempotency_key=("writer", i))
print("done")
"""


def test_an_append_loop_and_compaction_at_the_same_time_lose_no_commit(s3_lake: Lake):
    """Two processes commit to one table through S3 conditional puts: every batch of the
    appending process and every compaction lands, none overwrites another's commit."""
    s3_lake.create_tables(["readings"])
    n = 20
    writer = subprocess.Popen(
        [sys.executable, "-c", _APPEND_LOOP, s3_lake.uri, str(n)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    compactions = 0
    while writer.poll() is None:
        if sum(partition_files(s3_lake, "readings").values()) >= 2:
            compactions += len(compact(s3_lake, "readings"))
        time.sleep(0.2)
    out, err = writer.communicate()
    assert writer.returncode == 0 and out.strip() == "done", err[-3000:]
    compactions += len(compact(s3_lake, "readings"))

    fresh = Lake(s3_lake.uri)
    values = fresh.read("readings")["value"]
    assert len(values) == 10 * n  # nothing lost, nothing doubled
    assert sorted(values) == sorted(1000.0 * i + k for i in range(n) for k in range(10))
    assert fresh.committed_version("readings", "writer") == n - 1
    ops = [h["operation"] for h in fresh.history("readings")]
    assert ops.count("WRITE") == n and ops.count("OPTIMIZE") == compactions >= 1
    versions = sorted(
        int(Path(k).stem) for k in _objects(fresh) if k.endswith(".json") and "_delta_log/" in k
    )
    assert versions == list(range(len(versions)))  # one commit file per version, no gaps
