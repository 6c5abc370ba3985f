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

An object-store lake (``PLANTPULSE_LAKE=s3://bucket/lake``) takes its delta-rs storage options
from the standard ``AWS_*`` variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``, ...) plus any JSON object in
``PLANTPULSE_LAKE_OPTIONS``.  Commits to S3 are made safe for concurrent writers by S3's
conditional writes (``If-None-Match: *``), which delta-rs 1.x uses when ``conditional_put`` is
``etag``: that is the default here unless a locking provider or unsafe renames are configured.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "is_remote_uri", "storage_options", "SettingsError"]

_PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout this package runs from; the reference data sit beside it in ``../shared/data``."""


def is_remote_uri(location: str) -> bool:
    """True for object-store URIs such as ``s3://bucket/lake`` (anything with a scheme but file)."""
    return "://" in location and not location.startswith("file://")


class SettingsError(ValueError):
    """A configuration variable with a value that cannot be used; the message names it."""


_AWS_PREFIXES = ("AWS_",)
_SAFE_COMMIT_KEYS = (
    "conditional_put",
    "aws_conditional_put",
    "AWS_CONDITIONAL_PUT",
    "AWS_S3_LOCKING_PROVIDER",
    "AWS_S3_ALLOW_UNSAFE_RENAME",
)


def storage_options(lake_uri: str, env: dict[str, str] | None = None) -> dict[str, str] | None:
    """The delta-rs storage options for ``lake_uri``: None for a local lake; for ``s3://`` the
    ``AWS_*`` variables of ``env`` (default ``os.environ``), then ``PLANTPULSE_LAKE_OPTIONS``
    (a JSON object) on top, and ``conditional_put=etag`` unless another commit protocol is set.

    >>> storage_options("/tmp/lake") is None
    True
    >>> storage_options("s3://b/lake", {"AWS_REGION": "eu-west-1", "HOME": "/root"})
    {'AWS_REGION': 'eu-west-1', 'conditional_put': 'etag'}
    """
    if not is_remote_uri(lake_uri):
        return None
    env = dict(os.environ if env is None else env)
    options = {k: v for k, v in env.items() if k.startswith(_AWS_PREFIXES) and v}
    extra = env.get("PLANTPULSE_LAKE_OPTIONS")
    if extra:
        try:
            parsed = json.loads(extra)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"PLANTPULSE_LAKE_OPTIONS is not valid JSON ({exc})") from None
        if not isinstance(parsed, dict):
            raise SettingsError("PLANTPULSE_LAKE_OPTIONS must be a JSON object of strings")
        options.update({str(k): str(v) for k, v in parsed.items()})
    if lake_uri.startswith(("s3://", "s3a://")) and not any(
        k in options for k in _SAFE_COMMIT_KEYS
    ):
        options["conditional_put"] = "etag"
    return options


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
