"""Where PlantPulse keeps its runtime state, read from environment variables.

Everything the pipeline writes at run time (Delta tables, the MLflow store, DAGSTER_HOME,
Bytewax recovery snapshots) lives under one state directory, ``.plantpulse/`` in the current
directory by default.  Every location can be overridden on its own:

=========================  ==============================================  =====================
variable                   meaning                                         default
=========================  ==============================================  =====================
``PLANTPULSE_HOME``        the state directory                             ``./.plantpulse``
``PLANTPULSE_LAKE``        lake root: a local path or an object-store URI  ``$HOME/lake``
``MLFLOW_TRACKING_URI``    MLflow tracking and registry store              ``sqlite:///$HOME/mlflow/mlflow.db``
``PLANTPULSE_ARTIFACTS``   MLflow artifact root                            ``$HOME/mlflow/artifacts``
``DAGSTER_HOME``           Dagster instance directory                      ``$HOME/dagster``
``PLANTPULSE_RECOVERY``    Bytewax recovery directory                      ``$HOME/recovery``
``PLANTPULSE_DATA``        the reference data sets                         ``<project>/../shared/data``
=========================  ==============================================  =====================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "is_remote_uri"]

_PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout this package runs from; the reference data sit beside it in ``../shared/data``."""


def is_remote_uri(location: str) -> bool:
    """True for object-store URIs such as ``s3://bucket/lake`` (anything with a scheme but file)."""
    return "://" in location and not location.startswith("file://")


def _absolute(location: str) -> str:
    if is_remote_uri(location):
        return location
    if location.startswith("file://"):
        location = location[len("file://") :]
    return str(Path(location).expanduser().resolve())


@dataclass(frozen=True)
class Settings:
    """Resolved locations of every piece of runtime state."""

    home: str
    lake_uri: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    dagster_home: str
    recovery_dir: str
    data_dir: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``), filling in local defaults."""
        env = dict(os.environ if env is None else env)
        home = _absolute(env.get("PLANTPULSE_HOME") or ".plantpulse")
        mlflow_dir = Path(home) / "mlflow"
        return cls(
            home=home,
            lake_uri=_absolute(env.get("PLANTPULSE_LAKE") or str(Path(home) / "lake")),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            mlflow_artifact_root=_absolute(
                env.get("PLANTPULSE_ARTIFACTS") or str(mlflow_dir / "artifacts")
            ),
            dagster_home=_absolute(env.get("DAGSTER_HOME") or str(Path(home) / "dagster")),
            recovery_dir=_absolute(env.get("PLANTPULSE_RECOVERY") or str(Path(home) / "recovery")),
            data_dir=_absolute(
                env.get("PLANTPULSE_DATA") or str(_PROJECT_ROOT.parent / "shared" / "data")
            ),
        )

    def as_env(self) -> dict[str, str]:
        """The same settings as environment variables, for child processes."""
        return {
            "PLANTPULSE_HOME": self.home,
            "PLANTPULSE_LAKE": self.lake_uri,
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            "PLANTPULSE_ARTIFACTS": self.mlflow_artifact_root,
            "DAGSTER_HOME": self.dagster_home,
            "PLANTPULSE_RECOVERY": self.recovery_dir,
            "PLANTPULSE_DATA": self.data_dir,
        }
