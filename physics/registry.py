"""The feature registry: the name, unit and meaning of every feature, under a version number.

The stream and training read feature columns from here, and every ``features`` row carries the
``FEATURE_VERSION`` that produced it, so a model trained on version N is never silently scored
with version N+1: ``check_compatible`` refuses, naming both versions.

Bump ``FEATURE_VERSION`` whenever a feature is added, removed, renamed or computed differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from physics.features import (
    DEFECT_BANDS,
    ENVELOPE_ORDERS,
    HARMONICS,
    N_SPECTRAL_BANDS,
    envelope_line_names,
)

__all__ = [
    "FEATURE_VERSION",
    "FeatureSpec",
    "FEATURES",
    "feature_names",
    "feature_spec",
    "check_compatible",
    "FeatureVersionError",
]

FEATURE_VERSION = 4
"""2: vibration features; 3: adds the process-window features of scalar sensors; 4: adds the
defect lines, energy share and spectral kurtosis of fixed demodulation bands (``band<k>_*``),
and each frame's envelope level is taken up to its own highest line (not the batch's)."""

PROCESS_WINDOW_S = 30.0
"""Process features of a scalar sensor summarise its last 30 s of readings."""


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column: its name, unit, and the signal it is computed from."""

    name: str
    unit: str
    source: str  # "vibration" (per frame) or "process" (per scalar sensor window)
    description: str
    role: str = "symptom"
    """``symptom``: a sign that something changed, watched by the online detector;
    ``diagnosis``: read by the fault classifier to tell which fault and how large, not by the
    detector (whose score, and the thresholds set for it, stay what they were)."""


class FeatureVersionError(ValueError):
    """A model and the data it is asked to score were built with different feature versions."""


def _envelope_specs() -> list[FeatureSpec]:
    out = []
    for order in ENVELOPE_ORDERS:
        for h in range(1, (1 if order in ("ftf", "shaft") else HARMONICS) + 1):
            out.append(
                FeatureSpec(
                    f"env_{order}_{h}",
                    "1",
                    "vibration",
                    f"envelope spectrum at {h}x {order.upper()} (shaft orders), over the median level",
                )
            )
    return out


def _defect_band_specs() -> list[FeatureSpec]:
    out = []
    for b in range(DEFECT_BANDS):
        where = f"fixed band {b} of {DEFECT_BANDS}"
        for order, h in envelope_line_names():
            out.append(
                FeatureSpec(
                    f"band{b}_env_{order}_{h}",
                    "1",
                    "vibration",
                    f"log of the envelope spectrum at {h}x {order.upper()} (shaft orders) over "
                    f"the median level, demodulating {where}",
                    "diagnosis",
                )
            )
        out.append(
            FeatureSpec(
                f"band{b}_share",
                "1",
                "vibration",
                f"log share of the frame's energy in {where}",
                "diagnosis",
            )
        )
        out.append(
            FeatureSpec(
                f"band{b}_sk", "1", "vibration", f"mean spectral kurtosis in {where}", "diagnosis"
            )
        )
    return out


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("vib_rms", "g", "vibration", "root mean square of the acceleration frame"),
    FeatureSpec("vib_peak", "g", "vibration", "largest absolute acceleration in the frame"),
    FeatureSpec("vib_crest", "1", "vibration", "crest factor: peak / RMS"),
    FeatureSpec("vib_kurtosis", "1", "vibration", "excess kurtosis (0 for Gaussian noise)"),
    FeatureSpec("vib_skewness", "1", "vibration", "skewness of the acceleration"),
    *[
        FeatureSpec(
            f"vib_band_{b}",
            "1",
            "vibration",
            f"share of power in spectral band {b} of {N_SPECTRAL_BANDS}",
        )
        for b in range(N_SPECTRAL_BANDS)
    ],
    FeatureSpec(
        "sk_max", "1", "vibration", "largest spectral kurtosis (impulsiveness of the best band)"
    ),
    FeatureSpec(
        "demod_centre_hz",
        "Hz",
        "vibration",
        "centre of the demodulation band chosen by spectral kurtosis",
    ),
    *_envelope_specs(),
    FeatureSpec(
        "vib_speed_ok",
        "1",
        "vibration",
        "1 if shaft speed was known, else 0 (envelope features NaN)",
    ),
    *_defect_band_specs(),
    FeatureSpec("proc_level", "sensor unit", "process", "mean of the sensor's last 30 s"),
    FeatureSpec("proc_slope", "sensor unit/reading", "process", "least-squares slope over 30 s"),
    FeatureSpec("proc_std", "sensor unit", "process", "standard deviation over the last 30 s"),
)

_BY_NAME = {f.name: f for f in FEATURES}


def feature_names(source: str | None = None, role: str | None = None) -> list[str]:
    """Names of the current feature columns, in table order (optionally of one source, one
    role: ``symptom`` or ``diagnosis``)."""
    return [
        f.name
        for f in FEATURES
        if (source is None or f.source == source) and (role is None or f.role == role)
    ]


def feature_spec(name: str) -> FeatureSpec:
    """The spec of feature ``name``; ``KeyError`` names the unknown feature."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}; known: {', '.join(_BY_NAME)}") from None


def check_compatible(
    model_feature_version: int, data_feature_version: int = FEATURE_VERSION
) -> None:
    """Refuse to score data of one feature version with a model trained on another.

    >>> check_compatible(FEATURE_VERSION)
    >>> try:
    ...     check_compatible(1, 2)
    ... except FeatureVersionError as err:
    ...     print(err)
    model was trained on feature_version 1 but the data has feature_version 2; retrain the model or recompute the features
    """
    if int(model_feature_version) != int(data_feature_version):
        raise FeatureVersionError(
            f"model was trained on feature_version {model_feature_version} but the data has "
            f"feature_version {data_feature_version}; retrain the model or recompute the features"
        )
