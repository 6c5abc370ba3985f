"""Shared fixtures.  Every test runs against state in a temporary directory, never the repo's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before any project module reads its settings: the whole session's state goes to a temp dir.
_SESSION_HOME = tempfile.mkdtemp(prefix="plantpulse-test-")
os.environ["PLANTPULSE_HOME"] = _SESSION_HOME
for var in (
    "PLANTPULSE_LAKE",
    "MLFLOW_TRACKING_URI",
    "PLANTPULSE_ARTIFACTS",
    "DAGSTER_HOME",
    "PLANTPULSE_RECOVERY",
):
    os.environ.pop(var, None)

from lake import Lake  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")


def readings_rows(
    n: int = 5,
    *,
    asset_id: str = "pump-01",
    sensor_id: str = "bearing_temp",
    t0_us: int = T0_US,
    step_us: int = 1_000_000,
    value: float = 40.0,
) -> dict:
    """A valid ``readings`` batch of ``n`` rows."""
    import pyarrow as pa

    ts = pa.array([t0_us + i * step_us for i in range(n)], pa.int64()).cast(
        pa.timestamp("us", tz="UTC")
    )
    return {
        "asset_id": [asset_id] * n,
        "sensor_id": [sensor_id] * n,
        "ts": ts,
        "value": [value + i for i in range(n)],
        "raw_value": [value + i for i in range(n)],
        "quality": ["good"] * n,
        "ingest_ts": ts,
    }
