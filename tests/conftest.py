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

import dagster as dg  # noqa: E402
import pandas as pd  # noqa: E402
from bytewax.testing import run_main  # noqa: E402

from bytewax_flows.sources import SimulatorSource  # noqa: E402
from bytewax_flows.telemetry import get_flow  # noqa: E402
from dagster_project.definitions import defs  # noqa: E402
from dagster_project.resources import (  # noqa: E402
    DatasetsResource,
    LakeResource,
    MLflowResource,
)
from lake import Lake, Settings  # noqa: E402
from physics.simulator import default_fleet  # noqa: E402

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


# -- a trained plant: shared by the model and serving tests ----------------------------------
ENVELOPE = [
    f"{band}env_{k}_{i}"
    for band in ("", "band0_", "band1_", "band2_")
    for k in ("bpfo", "bpfi", "bsf2")
    for i in (1, 2, 3)
]
"""The defect lines, in the SK band and the fixed bands: a classifier without them is weak."""


@pytest.fixture(scope="session")
def plant(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Six pumps (two healthy, two outer-race, two inner-race faults) streamed for 5 minutes."""
    lake = Lake(tmp_path_factory.mktemp("plant") / "lake")
    fleet = default_fleet(
        6, seed=3, start_us=T0_US, outer_race_at_s=60, inner_race_at_s=120, time_to_failure_s=400
    )
    run_main(get_flow(SimulatorSource(fleet, n_chunks=300), lake.uri))
    lake.append("maintenance_events", pd.DataFrame(fleet.ground_truth()))
    return {"lake": lake}


@pytest.fixture(scope="module")
def mlops(plant: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The trained plant's lake with a fresh MLflow store (one per test module)."""
    root = tmp_path_factory.mktemp("mlflow")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    resources = {
        "lake": LakeResource(uri=plant["lake"].uri),
        "mlflow": MLflowResource(tracking_uri=tracking, artifact_root=str(root / "artifacts")),
        "datasets": DatasetsResource(path=Settings.from_env().data_dir),
    }
    return {"lake": plant["lake"], "tracking": tracking, "resources": resources, "root": root}


def retrain(plant: dict, job: str = "retrain_fault_classifier", **training) -> dict:
    candidate = "fault_candidate" if job == "retrain_fault_classifier" else "rul_candidate"
    result = defs.resolve_job_def(job).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources=plant["resources"],
        run_config={"ops": {candidate: {"config": training}}},
    )
    assert result.success
    return {
        e.materialization.asset_key.to_user_string(): {
            k: v.value for k, v in e.materialization.metadata.items()
        }
        for e in result.get_asset_materialization_events()
    }
