"""The MLflow model registry as both planes use it: log a candidate, load a version, follow the
``champion`` alias.

A registered version carries everything a consumer needs, as version tags: ``task``
(``classifier`` or ``regressor``), ``feature_version``, ``classes`` (JSON, classifiers),
``slice_by`` (JSON) and ``training_validated``.  The model file is XGBoost's own UBJSON format
(``mlflow.xgboost``), never a pickle; its input names are in the MLflow signature and in the
booster.  What a served model needs besides the booster (the RUL model's health indicator,
prior and interval) is JSON under ``served/``.  The run also keeps the holdout it was evaluated on (``holdout/holdout.parquet``), so
the gate can compare any two versions on the same rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from physics.registry import FEATURE_VERSION, FeatureVersionError, check_compatible

__all__ = [
    "CHAMPION",
    "FAULT_MODEL",
    "RUL_MODEL",
    "ModelNotFoundError",
    "LoadedModel",
    "ChampionWatcher",
    "client",
    "champion_version",
    "log_candidate",
    "load_version",
    "load_holdout",
]

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in service logs

CHAMPION = "champion"
FAULT_MODEL = "plantpulse-fault-classifier"
RUL_MODEL = "plantpulse-rul"
RETRAIN_JOBS = {FAULT_MODEL: "retrain_fault_classifier", RUL_MODEL: "retrain_rul"}
"""The Dagster job that trains each model (named in the error when a model has no version)."""


class ModelNotFoundError(LookupError):
    """A model name, version or alias the registry does not have (the message says which)."""


def client(tracking_uri: str) -> MlflowClient:
    """Tracking and registry client for ``tracking_uri``; a local SQLite store's directory is
    created if missing (the one place that does so)."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def champion_version(c: MlflowClient, name: str) -> ModelVersion | None:
    """The version under the ``champion`` alias, or None when there is none (yet)."""
    try:
        return c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def log_candidate(
    tracking_uri: str,
    experiment_id: str,
    name: str,
    model: xgb.XGBModel,
    *,
    task: str,
    x_example: pd.DataFrame,
    holdout: pd.DataFrame,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    figures: dict[str, Any] | None = None,
    served: dict[str, dict[str, Any]] | None = None,
) -> ModelVersion:
    """Log ``model`` with its signature, input example, parameters, metrics, figures and holdout
    to a new run of ``experiment_id``, and register it as a new version of ``name``.
    ``served`` are JSON documents the served model needs besides the regressor (file name:
    content, logged under ``served/``; ``LoadedModel.extras`` has them back).

    Only the explicit client is used (MLflow's fluent API would set ``MLFLOW_TRACKING_URI`` for
    the whole process as a side effect)."""
    c = client(tracking_uri)
    version_tags = {"task": task, "feature_version": str(FEATURE_VERSION), **tags}
    run = c.create_run(experiment_id, run_name=f"{name}-candidate", tags=version_tags)
    run_id = run.info.run_id
    try:
        for k, v in params.items():
            c.log_param(run_id, k, v)
        for k, v in metrics.items():
            c.log_metric(run_id, k, float(v))
        for filename, fig in (figures or {}).items():
            c.log_figure(run_id, fig, f"plots/{filename}")
        with tempfile.TemporaryDirectory() as tmp:
            holdout.to_parquet(Path(tmp) / "holdout.parquet")
            c.log_artifact(run_id, str(Path(tmp) / "holdout.parquet"), "holdout")
            if served:
                (Path(tmp) / "served").mkdir()
                for filename, doc in served.items():
                    (Path(tmp) / "served" / filename).write_text(json.dumps(doc))
                c.log_artifacts(run_id, str(Path(tmp) / "served"), "served")
            example = x_example.head(5)
            mlflow.xgboost.save_model(
                model,
                Path(tmp) / "model",
                signature=infer_signature(example, model.predict(example)),
                input_example=example,
                pip_requirements=[f"xgboost=={xgb.__version__}"],
                model_format="ubj",
            )
            c.log_artifacts(run_id, str(Path(tmp) / "model"), "model")
    except Exception:
        c.set_terminated(run_id, "FAILED")
        raise
    c.set_terminated(run_id, "FINISHED")
    with contextlib.suppress(MlflowException):  # already registered
        c.create_registered_model(name, description=f"PlantPulse {task}; alias `champion` serves")
    source = f"{run.info.artifact_uri}/model"
    return c.create_model_version(name, source, run_id=run_id, tags=version_tags)


@dataclass
class LoadedModel:
    """One registered version, ready to predict and explain."""

    name: str
    version: str
    model: xgb.XGBModel
    task: str
    features: list[str]
    feature_version: int
    classes: list[str] | None
    tags: dict[str, str]
    extras: dict[str, Any] = field(default_factory=dict)  # served/*.json, by stem

    def fault_probability(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For a classifier: P(not ``normal``) per row of the feature matrix ``x`` (columns in
        ``self.features`` order) and the class probabilities (rows x classes)."""
        proba = self.model.predict_proba(x)
        classes = self.classes or []
        normal = proba[:, classes.index("normal")] if "normal" in classes else np.zeros(len(x))
        return 1.0 - normal, proba

    def contributions(self, x: np.ndarray, klass: int | None = None) -> np.ndarray:
        """XGBoost's SHAP contributions of each feature (bias dropped) for each row of ``x``,
        for class ``klass`` of a multi-class model."""
        contribs = self.model.get_booster().predict(
            xgb.DMatrix(x, feature_names=self.features), pred_contribs=True
        )
        if contribs.ndim == 3:  # (rows, classes, features + 1)
            contribs = contribs[:, klass or 0, :]
        return contribs[:, :-1]


def _not_found(name: str, what: str) -> ModelNotFoundError:
    job = RETRAIN_JOBS.get(name, "retrain_fault_classifier or retrain_rul")
    return ModelNotFoundError(
        f"model {name!r} has no {what}; train one with the Dagster job "
        f"{job} (or `plantpulse status` to see what is registered)"
    )


def load_version(tracking_uri: str, name: str, version: str | None = None) -> LoadedModel:
    """Version ``version`` of ``name`` (default: the champion)."""
    c = client(tracking_uri)
    if version is None:
        mv = champion_version(c, name)
        if mv is None:
            raise _not_found(name, "champion")
    else:
        try:
            mv = c.get_model_version(name, str(version))
        except MlflowException:
            raise _not_found(name, f"version {version}") from None
    run_id = _run_of(mv, name)
    extras: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = c.download_artifacts(run_id, "model", tmp)
        model = mlflow.xgboost.load_model(local)
        if any(a.path == "served" for a in c.list_artifacts(run_id)):
            for path in Path(c.download_artifacts(run_id, "served", tmp)).glob("*.json"):
                extras[path.stem] = json.loads(path.read_text())
    tags = dict(mv.tags)
    return LoadedModel(
        name=name,
        version=str(mv.version),
        model=model,
        task=tags.get("task", "classifier"),
        features=list(model.get_booster().feature_names or []),
        feature_version=int(tags.get("feature_version", -1)),
        classes=json.loads(tags["classes"]) if "classes" in tags else None,
        tags=tags,
        extras=extras,
    )


def load_holdout(tracking_uri: str, name: str, version: str) -> pd.DataFrame:
    """The holdout version ``version`` of ``name`` was logged with."""
    c = client(tracking_uri)
    run_id = _run_of(c.get_model_version(name, str(version)), name)
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_parquet(c.download_artifacts(run_id, "holdout/holdout.parquet", tmp))


def _run_of(mv: ModelVersion, name: str) -> str:
    """The run that logged version ``mv`` (every version ``log_candidate`` registers has one)."""
    if not mv.run_id:
        raise ModelNotFoundError(f"version {mv.version} of {name!r} was not logged by a run")
    return str(mv.run_id)


class ChampionWatcher:
    """The current champion of ``name`` for a long-running consumer (the stream): checks the
    alias every ``refresh_s`` and loads the new version when it moves, without a restart.
    A version whose feature_version does not match the features being computed is refused
    (logged) and the previous one kept; so is a registry that cannot be reached."""

    def __init__(self, tracking_uri: str, name: str = FAULT_MODEL, refresh_s: float = 5.0):
        self.tracking_uri, self.name, self.refresh_s = tracking_uri, name, refresh_s
        self._checked = -float("inf")
        self._model: LoadedModel | None = None

    def get(self) -> LoadedModel | None:
        now = time.monotonic()
        if now - self._checked >= self.refresh_s:
            self._checked = now
            self._refresh()
        return self._model

    def _refresh(self) -> None:
        try:
            mv = champion_version(client(self.tracking_uri), self.name)
            if mv is None or (self._model is not None and self._model.version == str(mv.version)):
                return
            loaded = load_version(self.tracking_uri, self.name, str(mv.version))
            check_compatible(loaded.feature_version)
        except FeatureVersionError as exc:
            log.error("not serving %s: %s", self.name, exc)
            return
        except Exception as exc:  # noqa: BLE001 - the registry must never stop the stream
            log.warning("model registry unusable, keeping %s: %s", self._model_label(), exc)
            return
        log.info(
            "now serving %s version %s (was %s)", self.name, loaded.version, self._model_label()
        )
        self._model = loaded

    def _model_label(self) -> str:
        return f"version {self._model.version}" if self._model else "none"
