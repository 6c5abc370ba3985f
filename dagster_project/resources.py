"""Resources of the control plane: the lake and the MLflow store, configured from the environment."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from mlflow.tracking import MlflowClient

from lake import Lake, Settings
from models.registry import client as registry_client

__all__ = ["LakeResource", "MLflowResource", "DatasetsResource", "default_resources"]


class LakeResource(dg.ConfigurableResource):
    """The Delta lake root (a local directory or an object-store URI)."""

    uri: str

    def lake(self) -> Lake:
        return Lake(self.uri)


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and model registry (a local SQLite store and artifact folder by default)."""

    tracking_uri: str
    artifact_root: str

    def client(self) -> MlflowClient:
        return registry_client(self.tracking_uri)

    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``, created with its artifacts under ``artifact_root`` if new."""
        client = self.client()
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = Path(self.artifact_root) / name
        location.mkdir(parents=True, exist_ok=True)
        return client.create_experiment(name, artifact_location=location.as_uri())


class DatasetsResource(dg.ConfigurableResource):
    """The reference data sets (C-MAPSS, CWRU, SKAB, NAB), laid out as in their README."""

    path: str


def default_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources for the local deployment, from ``PLANTPULSE_*`` / ``MLFLOW_*`` variables."""
    s = settings or Settings.from_env()
    return {
        "lake": LakeResource(uri=s.lake_uri),
        "mlflow": MLflowResource(
            tracking_uri=s.mlflow_tracking_uri, artifact_root=s.mlflow_artifact_root
        ),
        "datasets": DatasetsResource(path=s.data_dir),
    }
