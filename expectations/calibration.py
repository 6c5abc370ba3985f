"""Calibration from physical relationships: a sensor's offset, gain and gain drift against what
its neighbours on the same asset say it should read.

A relationship (``target ≈ quadratic(inputs)``, declared in the plant file) is fitted on a
known-good reference window; on the window under validation the target's raw readings are
regressed on the prediction.  The check fails beyond 1 % gain, 1 %/day drift (once the window is
long enough to estimate a rate) or 2 sigma offset; a target whose input also disagrees is only a
suspect (warning).  The estimates are what the ``sensor_calibration`` asset writes for the
stream to apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from expectations.contracts import RELATIONSHIPS, Relationship
from expectations.outcomes import CalibrationEstimate, Outcome

__all__ = [
    "RelationshipModel",
    "wide_per_second",
    "fit_relationship",
    "estimate_calibration",
    "calibration_outcome",
    "relationship_outcomes",
    "COVERED_SHARE",
    "GAIN_TOLERANCE",
    "OFFSET_SIGMAS",
    "DRIFT_TOLERANCE_PER_DAY",
]

GAIN_TOLERANCE = 0.01
OFFSET_SIGMAS = 2.0
IDENTIFIABLE_SIGMAS = 20.0  # predicted range (5-95 %) needed to separate gain from offset
DRIFT_TOLERANCE_PER_DAY = 0.01  # gain drift rate that fails the check ...
DRIFT_MIN_WINDOW_S = 4 * 3600.0  # ... once the window is long enough to estimate a rate
DAY_S = 86_400.0


COVERED_SHARE = 0.5
"""Share of a window's rows whose relationship inputs must lie inside the reference's range for
its calibration to be judged."""


@dataclass(frozen=True)
class RelationshipModel:
    relationship: Relationship
    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    coef: NDArray[np.float64]
    residual_sigma: float
    low: NDArray[np.float64] | None = None  # the reference's range of each input
    high: NDArray[np.float64] | None = None

    def covers(self, current: pd.DataFrame, share: float = COVERED_SHARE) -> bool:
        """Whether ``share`` of the current window's rows lie inside the reference's range of
        every input: a quadratic fitted on one operating point says nothing about another, so
        judging a sensor there would be extrapolation, not calibration."""
        if self.low is None or self.high is None:
            return True
        x = current[list(self.relationship.inputs)].dropna().to_numpy(np.float64)
        if not len(x):
            return False
        inside = ((x >= self.low) & (x <= self.high)).all(axis=1)
        return bool(inside.mean() >= share)


def _design(
    x: NDArray[np.float64], mean: NDArray[np.float64], std: NDArray[np.float64]
) -> NDArray[np.float64]:
    z = (x - mean) / std
    cols = [np.ones(len(z)), *z.T, *(z**2).T]
    cols += [z[:, i] * z[:, j] for i in range(z.shape[1]) for j in range(i + 1, z.shape[1])]
    return np.column_stack(cols)


def wide_per_second(readings: pd.DataFrame, column: str = "value") -> pd.DataFrame:
    """One row per second and sensor column (mean of that second), for one asset."""
    sec = readings["ts"].dt.floor("1s")
    return (
        readings.assign(sec=sec)
        .groupby(["sec", "sensor_id"], observed=True)[column]
        .mean()
        .unstack("sensor_id")
    )


def fit_relationship(reference: pd.DataFrame, rel: Relationship) -> RelationshipModel | None:
    """Fit ``target ≈ quadratic(inputs)`` on a reference window (wide, per second)."""
    cols = [*rel.inputs, rel.target]
    if any(c not in reference.columns for c in cols):
        return None
    data = reference[cols].dropna()
    if len(data) < 60:
        return None
    x = data[list(rel.inputs)].to_numpy(np.float64)
    mean, std = x.mean(axis=0), np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    design = _design(x, mean, std)
    coef, *_ = np.linalg.lstsq(design, data[rel.target].to_numpy(np.float64), rcond=None)
    resid = data[rel.target].to_numpy() - design @ coef
    return RelationshipModel(rel, mean, std, coef, float(resid.std()), x.min(axis=0), x.max(axis=0))


def estimate_calibration(
    model: RelationshipModel, current: pd.DataFrame, asset_id: str, raw: pd.Series | None = None
) -> CalibrationEstimate | None:
    """Fit ``raw = (a + b*days) * predicted + offset`` on the current window.

    ``predicted`` is what the target should read given its inputs; the gain at the window's end
    is ``a + b*days_end``.  ``raw`` (per second) defaults to the target column of ``current``.
    """
    rel = model.relationship
    target = (raw if raw is not None else current[rel.target]).rename("target")
    data = pd.concat([current[list(rel.inputs)], target], axis=1).dropna()
    if len(data) < 60:
        return None
    predicted = (
        _design(data[list(rel.inputs)].to_numpy(np.float64), model.mean, model.std) @ model.coef
    )
    days = (data.index - data.index[0]).total_seconds().to_numpy() / DAY_S
    y = data["target"].to_numpy(np.float64)
    lo, hi = np.quantile(predicted, [0.05, 0.95])
    identifiable = (hi - lo) >= IDENTIFIABLE_SIGMAS * model.residual_sigma
    if identifiable:
        design = np.column_stack([predicted, days * predicted, np.ones(len(y))])
        (a, b, offset), *_ = np.linalg.lstsq(design, y, rcond=None)
    else:  # one operating point: only the mean disagreement is known, as an offset
        a, b, offset = 1.0, 0.0, float(np.mean(y - predicted))
    fitted = (a + b * days) * predicted + offset
    r2 = 1.0 - np.sum((y - fitted) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-12)
    return CalibrationEstimate(
        asset_id,
        rel.target,
        float(a + b * days[-1]),
        float(offset),
        float(b),
        float(np.clip(r2, 0.0, 1.0)),
        len(y),
        model.residual_sigma,
        f"physics_regression({'+'.join(rel.inputs)})",
        data.index[-1],
        bool(identifiable),
        float(days[-1] * DAY_S),
        float(np.mean(y - predicted)),
        float(np.mean(predicted)),
    )


def calibration_outcome(est: CalibrationEstimate) -> Outcome:
    offset_limit = OFFSET_SIGMAS * est.residual_sigma
    observed = {
        "gain": round(est.gain, 5),
        "offset": round(est.offset, 4),
        "drift_per_day": round(est.drift_per_day, 5),
        "mean_disagreement": round(est.mean_disagreement, 4),
        "identifiable": est.identifiable,
        "confidence": round(est.confidence, 4),
        "gain_limit": GAIN_TOLERANCE,
        "offset_limit": round(offset_limit, 4),
        "method": est.method,
    }
    if est.identifiable:
        drifting = (
            est.window_s >= DRIFT_MIN_WINDOW_S and abs(est.drift_per_day) > DRIFT_TOLERANCE_PER_DAY
        )
        bad = abs(est.gain - 1.0) > GAIN_TOLERANCE or abs(est.offset) > offset_limit or drifting
        message = (
            f"reads {100 * (est.gain - 1):+.2f} % gain (drifting {100 * est.drift_per_day:+.2f} %/day) and "
            f"{est.offset:+.3g} offset against {est.method} (limits ±{100 * GAIN_TOLERANCE:g} %, "
            f"±{100 * DRIFT_TOLERANCE_PER_DAY:g} %/day, ±{offset_limit:.3g})"
        )
    else:
        limit = max(offset_limit, GAIN_TOLERANCE * abs(est.predicted_mean))
        bad = abs(est.mean_disagreement) > limit
        message = (
            f"disagrees with {est.method} by {est.mean_disagreement:+.3g} on average (limit ±{limit:.3g}); "
            "too little operating range in this window to tell gain from offset"
        )
    return Outcome("calibration", est.asset_id, est.sensor_id, not bad, observed, message=message)


def relationship_outcomes(
    asset_id: str,
    rows: pd.DataFrame,
    ref: pd.DataFrame,
    recent_s: float,
    relationships: tuple[Relationship, ...] = RELATIONSHIPS,
) -> tuple[list[Outcome], list[CalibrationEstimate]]:
    """The calibration check of every related sensor of one asset (``rows``: its readings,
    ``ref``: its reference window), and the estimates of the sensors now, from the last
    ``recent_s`` of the window.  A target whose input also disagrees is only a suspect
    (warning): the input is the likelier culprit."""
    wide_ref, wide = wide_per_second(ref, "raw_value"), wide_per_second(rows)
    raw = wide_per_second(rows, "raw_value")
    found: dict[str, Outcome] = {}
    calibrations: list[CalibrationEstimate] = []
    for rel in relationships:
        model = fit_relationship(wide_ref, rel)
        if model is None or rel.target not in wide.columns:
            continue
        if not model.covers(wide):
            found[rel.target] = Outcome(
                "calibration",
                asset_id,
                rel.target,
                False,
                {
                    "method": f"physics_regression({'+'.join(rel.inputs)})",
                    "covered_share_needed": COVERED_SHARE,
                },
                severity="warning",
                message=f"the reference window does not cover this window's operating range of "
                f"{', '.join(rel.inputs)}: {rel.target} not judged (a longer reference "
                f"is needed)",
            )
            continue
        est = estimate_calibration(model, wide, asset_id, raw=raw[rel.target])
        if est is None:
            continue
        found[rel.target] = calibration_outcome(est)
        recent = wide.index >= wide.index[-1] - pd.Timedelta(seconds=recent_s)
        now = estimate_calibration(model, wide[recent], asset_id, raw=raw[rel.target][recent])
        calibrations.append(now if now is not None else est)
    outcomes = []
    for rel in relationships:
        outcome = found.get(rel.target)
        if outcome is None:
            continue
        culprits = [i for i in rel.inputs if i in found and not found[i].success]
        if not outcome.success and culprits:
            outcome = Outcome(
                outcome.check,
                outcome.asset_id,
                outcome.sensor_id,
                False,
                outcome.observed,
                severity="warning",
                message=f"{outcome.message}; probably caused by {', '.join(culprits)}",
            )
        outcomes.append(outcome)
    return outcomes, calibrations
