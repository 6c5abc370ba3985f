"""Resources of the control plane: the lake, the MLflow store and the reference data sets, one
dictionary per deployment (as in Dagster's own examples).

``local`` (the default: ``plantpulse up``, ``dagster dev``) needs no configuration: a field left
unset means the state directory's default, resolved by ``lake.Settings`` where the resource is
used (the run or the sensor evaluation), so ``PLANTPULSE_HOME``, ``PLANTPULSE_LAKE``,
``MLFLOW_TRACKING_URI`` ... apply as they do to the stream.  ``container`` (the compose
deployment, ``PLANTPULSE_DEPLOYMENT=container``) binds what a deployment must set to
``dg.EnvVar``: a run launched without ``PLANTPULSE_LAKE`` or ``MLFLOW_TRACKING_URI`` fails at
launch, naming the variable, instead of writing to a lake inside the container.  Nothing is read
from the environment when this module is imported, except which dictionary to use.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from mlflow.tracking import MlflowClient

from lake import Lake, Settings
from models.registry import client as registry_client

__all__ = [
    "LakeResource",
    "MLflowResource",
    "DatasetsResource",
    "RESOURCES",
    "DEPLOYMENT_VARIABLE",
    "resources_for",
]

DEPLOYMENT_VARIABLE = "PLANTPULSE_DEPLOYMENT"
"""Environment variable naming the deployment whose resources the code location uses."""


class LakeResource(dg.ConfigurableResource):
    """The Delta lake root: a local directory or an object-store URI (default: the state
    directory's lake, ``PLANTPULSE_LAKE`` else ``$PLANTPULSE_HOME/lake``)."""

    uri: str | None = None

    def lake(self) -> Lake:
        return Lake(self.uri or Settings.from_env().lake_uri)


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and model registry (default: ``MLFLOW_TRACKING_URI``, else a local SQLite
    store in the state directory).  ``artifact_root`` is where new experiments keep their
    artifacts: by default the state directory's folder with a local store, and the tracking
    server's own artifact store with a remote one."""

    tracking_uri: str | None = None
    artifact_root: str | None = None

    def _tracking_uri(self) -> str:
        return self.tracking_uri or Settings.from_env().mlflow_tracking_uri

    def client(self) -> MlflowClient:
        return registry_client(self._tracking_uri())

    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``, created with its artifacts under ``artifact_root`` if new."""
        client = self.client()
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        root = self.artifact_root
        if root is None and self._tracking_uri().startswith(("http://", "https://")):
            return client.create_experiment(name)  # the tracking server's artifact store
        location = Path(root or Settings.from_env().mlflow_artifact_root) / name
        location.mkdir(parents=True, exist_ok=True)
        return client.create_experiment(name, artifact_location=location.as_uri())


class DatasetsResource(dg.ConfigurableResource):
    """The reference data sets (C-MAPSS, CWRU, SKAB, NAB), laid out as in their README (default:
    ``PLANTPULSE_DATA``, else ``../shared/data`` beside the checkout)."""

    path: str | None = None

    def root(self) -> str:
        return self.path or Settings.from_env().data_dir


RESOURCES: dict[str, dict[str, dg.ConfigurableResource]] = {
    "local": {"lake": LakeResource(), "mlflow": MLflowResource(), "datasets": DatasetsResource()},
    "container": {
        "lake": LakeResource(uri=dg.EnvVar("PLANTPULSE_LAKE")),
        "mlflow": MLflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")),
        "datasets": DatasetsResource(),
    },
}
"""The resources of each deployment."""


def resources_for(deployment: str | None) -> dict[str, dg.ConfigurableResource]:
    """The resources of ``deployment`` (None or empty: ``local``); ``ValueError`` names the
    known ones."""
    name = deployment or "local"
    if name not in RESOURCES:
        raise ValueError(
            f"{DEPLOYMENT_VARIABLE}={name!r} is not a deployment; known: {', '.join(RESOURCES)}"
        )
    return RESOURCES[name]
