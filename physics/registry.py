"""The feature registry: the name, unit and meaning of every feature, under a version number.

The stream and training read feature columns from here, and every ``features`` row carries the
``FEATURE_VERSION`` that produced it, so a model trained on version N is never silently scored
with version N+1 (the scorer compares the model's recorded version with this one).

Bump ``FEATURE_VERSION`` whenever a feature is added, removed, renamed or computed differently.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FEATURE_VERSION", "FeatureSpec", "FEATURES", "feature_names", "feature_spec"]

FEATURE_VERSION = 1


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column: its name, unit, and the signal it is computed from."""

    name: str
    unit: str
    source: str  # "vibration" (per frame) or "process" (per scalar sensor window)
    description: str


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("vib_rms", "g", "vibration", "root mean square of the acceleration frame"),
    FeatureSpec("vib_peak", "g", "vibration", "largest absolute acceleration in the frame"),
    FeatureSpec("vib_crest", "1", "vibration", "crest factor: peak / RMS"),
    FeatureSpec("vib_kurtosis", "1", "vibration", "excess kurtosis (0 for Gaussian noise)"),
    FeatureSpec("vib_skewness", "1", "vibration", "skewness of the acceleration"),
)

_BY_NAME = {f.name: f for f in FEATURES}


def feature_names() -> list[str]:
    """Names of the current feature columns, in table order."""
    return [f.name for f in FEATURES]


def feature_spec(name: str) -> FeatureSpec:
    """The spec of feature ``name``; ``KeyError`` names the unknown feature."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}; known: {', '.join(_BY_NAME)}") from None
