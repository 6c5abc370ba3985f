"""Validation of a partition of readings: the GX contract suite plus the time-series checks GX
does not offer, and calibration estimates from physical relationships.

Every check yields an ``Outcome`` that says which asset and sensor, since when, how bad (the
observed numbers against the contract's limit) and what to do, in words an operator can act on.

=====================  =============================================  ==========================
check                  catches                                        limit (from the contract)
=====================  =============================================  ==========================
gx:*                   schema, nulls, unknown sensors, out of range   columns, range, null rate
completeness           lost readings (dropout)                        ``min_completeness``
max_gap                a sensor gone silent                           ``max_gap_s``
null_rate              NaN/null bursts (dead-lettered by the stream)  ``max_null_rate``
stuck                  a flat-lined sensor                            ``stuck_after_s``
spikes                 isolated spikes                                ``max_spike_rate``
clock_rate             a sample clock running fast or slow            ``max_clock_error_ppm``
distribution_shift     PSI against a reference window                 ``max_psi``
calibration            offset/gain against a physical relationship    1 % gain, 2 sigma offset
=====================  =============================================  ==========================
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from expectations.contracts import RELATIONSHIPS, SENSORS, Relationship, SensorContract
from expectations.suites import GxResult, readings_expectations, run_suite
from physics.sensor_models import spike_mask, stuck_runs

__all__ = [
    "Outcome",
    "CalibrationEstimate",
    "ValidationReport",
    "series_checks",
    "psi",
    "fit_relationship",
    "estimate_calibration",
    "validate_readings",
    "gx_outcomes",
    "ACTIONS",
]

ACTIONS: dict[str, str] = {
    "gx": "values the contract forbids reached the table: check the sensor and the contract",
    "completeness": "readings are being lost: check the sensor's link and gateway",
    "max_gap": "the sensor went silent: check power and link",
    "null_rate": "the sensor sends NaN/null bursts: check its power supply and ADC",
    "stuck": "the sensor is flat-lined: reset or replace it",
    "spikes": "isolated spikes: check cabling and grounding (EMI); ignore if rare",
    "clock_rate": "the sample clock drifts: resynchronise the sensor or gateway clock (NTP)",
    "distribution_shift": "values moved away from the reference: confirm an operating change, else inspect",
    "calibration": "the sensor disagrees with the physics of its neighbours: recalibrate "
    "(a correction is estimated) or inspect the machine if the deviation is real",
}
GAIN_TOLERANCE = 0.01
OFFSET_SIGMAS = 2.0
IDENTIFIABLE_SIGMAS = 20.0  # predicted range (5-95 %) needed to separate gain from offset
DRIFT_TOLERANCE_PER_DAY = 0.01  # gain drift rate that fails the check ...
DRIFT_MIN_WINDOW_S = 4 * 3600.0  # ... once the window is long enough to estimate a rate
DAY_S = 86_400.0


@dataclass(frozen=True)
class Outcome:
    """One check on one sensor (or the whole partition) with the evidence."""

    check: str
    asset_id: str | None
    sensor_id: str | None
    success: bool
    observed: dict[str, Any]
    since: pd.Timestamp | None = None
    severity: str = "error"
    message: str = ""

    @property
    def action(self) -> str:
        return ACTIONS[self.check.split(":")[0]]

    def describe(self) -> str:
        """The operator's sentence: which asset/sensor, since when, how bad, what to do."""
        where = " ".join(x for x in (self.asset_id, self.sensor_id) if x) or "partition"
        since = f" since {self.since:%Y-%m-%d %H:%M:%S}Z" if self.since is not None else ""
        return f"{where}: {self.message}{since}. {self.action}."


@dataclass(frozen=True)
class CalibrationEstimate:
    """``raw ≈ gain_now * true + offset`` for a sensor, from a physical relationship."""

    asset_id: str
    sensor_id: str
    gain: float  # at the end of the window (with drift)
    offset: float
    drift_per_day: float
    confidence: float  # R^2 of the relationship on this window
    n: int
    residual_sigma: float  # of the relationship on the reference window
    method: str
    valid_from: pd.Timestamp
    identifiable: bool  # enough operating range to separate gain from offset
    window_s: float  # seconds the estimate covers
    mean_disagreement: float  # mean of raw - predicted over the window
    predicted_mean: float

    @property
    def correction(self) -> tuple[float, float]:
        """``(gain, offset)`` of the correction ``calibrated = gain * raw + offset``."""
        return 1.0 / self.gain, -self.offset / self.gain


@dataclass
class ValidationReport:
    outcomes: list[Outcome] = field(default_factory=list)
    calibrations: list[CalibrationEstimate] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def passed(self) -> bool:
        return not any(o.severity == "error" for o in self.failed)

    def rows(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{**asdict(o), "action": o.action, "description": o.describe()} for o in self.outcomes]
        )


# -- one sensor's series ---------------------------------------------------------------------


def psi(reference: NDArray[np.float64], current: NDArray[np.float64], bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (reference deciles).

    >>> rng = np.random.default_rng(0)
    >>> psi(rng.normal(0, 1, 5000), rng.normal(0, 1, 5000)) < 0.05
    True
    >>> psi(rng.normal(0, 1, 5000), rng.normal(1, 1, 5000)) > 0.25
    True
    """
    ref, cur = reference[np.isfinite(reference)], current[np.isfinite(current)]
    if ref.size < bins or cur.size < bins:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    q = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    p, q = np.clip(p, 1e-4, None), np.clip(q, 1e-4, None)
    return float(np.sum((q - p) * np.log(q / p)))


def _ts(us: int | float) -> pd.Timestamp:
    return pd.Timestamp(int(us), unit="us", tz="UTC")


def series_checks(
    asset_id: str,
    contract: SensorContract,
    ts_us: NDArray[np.int64],
    values: NDArray[np.float64],
    *,
    end_us: int | None = None,
    rejected_non_finite: int = 0,
    reference: NDArray[np.float64] | None = None,
    reference_span_s: float | None = None,
) -> list[Outcome]:
    """Time-series checks of one sensor's accepted readings (sorted by time).

    ``end_us`` is the end of the window the sensor should cover (default: its last reading);
    ``rejected_non_finite`` counts its NaN/null readings that the stream dead-lettered.
    The distribution is compared with ``reference`` only when this window spans at least half
    of ``reference_span_s`` (a short window sees fewer operating points than a long reference).
    """
    sid, out = contract.sensor_id, []
    n = ts_us.size
    if n == 0:
        return [
            Outcome(
                "completeness", asset_id, sid, False, {"received": 0}, message="no readings at all"
            )
        ]
    order = np.argsort(ts_us, kind="stable")
    ts_us, values = ts_us[order], values[order]
    end = max(int(end_us if end_us is not None else ts_us[-1]), int(ts_us[-1]))
    period_us = 1e6 / contract.sample_rate_hz

    expected = (end - ts_us[0]) / period_us + 1
    completeness = min(n / expected, 1.0) if expected > 0 else 1.0
    out.append(
        Outcome(
            "completeness",
            asset_id,
            sid,
            completeness >= contract.min_completeness,
            {
                "completeness": round(completeness, 4),
                "received": n,
                "expected": round(expected),
                "limit": contract.min_completeness,
            },
            message=f"{100 * (1 - completeness):.1f} % of expected readings missing "
            f"(limit {100 * (1 - contract.min_completeness):.1f} %)",
        )
    )

    gaps = np.diff(np.r_[ts_us, end])
    worst = int(np.argmax(gaps)) if gaps.size else 0
    max_gap_s = float(gaps[worst]) / 1e6 if gaps.size else 0.0
    out.append(
        Outcome(
            "max_gap",
            asset_id,
            sid,
            max_gap_s <= contract.max_gap_s,
            {"max_gap_s": round(max_gap_s, 3), "limit_s": contract.max_gap_s},
            since=_ts(ts_us[worst]) if max_gap_s > contract.max_gap_s else None,
            message=f"silent for {max_gap_s:.0f} s (limit {contract.max_gap_s:g} s)",
        )
    )

    null_rate = rejected_non_finite / (n + rejected_non_finite)
    out.append(
        Outcome(
            "null_rate",
            asset_id,
            sid,
            null_rate <= contract.max_null_rate,
            {
                "null_rate": round(null_rate, 5),
                "rejected": rejected_non_finite,
                "limit": contract.max_null_rate,
            },
            message=f"{100 * null_rate:.2f} % of readings were NaN/null (limit {100 * contract.max_null_rate:g} %)",
        )
    )

    if contract.stuck_after_s is not None:
        min_run = max(3, math.ceil(contract.stuck_after_s * contract.sample_rate_hz))
        flat = stuck_runs(values, min_run)
        stuck = bool(flat.any())
        first = int(np.argmax(flat)) if stuck else 0
        run_s = float(flat.sum()) / contract.sample_rate_hz
        out.append(
            Outcome(
                "stuck",
                asset_id,
                sid,
                not stuck,
                {
                    "stuck_readings": int(flat.sum()),
                    "stuck_value": float(values[first]) if stuck else None,
                    "limit_s": contract.stuck_after_s,
                },
                since=_ts(ts_us[first]) if stuck else None,
                message=f"unchanged at {values[first]:.6g} {contract.unit} for {run_s:.0f} s "
                f"(limit {contract.stuck_after_s:g} s)"
                if stuck
                else "not stuck",
            )
        )

    flagged = spike_mask(values, resolution=contract.resolution)
    rate = float(flagged.mean())
    spiky = rate > contract.max_spike_rate and int(flagged.sum()) >= 3
    out.append(
        Outcome(
            "spikes",
            asset_id,
            sid,
            not spiky,
            {
                "spike_rate": round(rate, 5),
                "spikes": int(flagged.sum()),
                "limit": contract.max_spike_rate,
            },
            since=_ts(ts_us[int(np.argmax(flagged))]) if spiky else None,
            message=f"{int(flagged.sum())} isolated spikes ({100 * rate:.2f} % of readings, "
            f"limit {100 * contract.max_spike_rate:g} %)",
        )
    )

    if n >= 10:
        ppm = (float(np.median(np.diff(ts_us))) / period_us - 1.0) * 1e6
        out.append(
            Outcome(
                "clock_rate",
                asset_id,
                sid,
                abs(ppm) <= contract.max_clock_error_ppm,
                {"clock_error_ppm": round(ppm, 1), "limit_ppm": contract.max_clock_error_ppm},
                message=f"sample clock off by {ppm:+.0f} ppm (limit ±{contract.max_clock_error_ppm:g} ppm)",
            )
        )

    span_s = (end - int(ts_us[0])) / 1e6
    comparable = reference_span_s is None or span_s >= 0.5 * reference_span_s
    if reference is not None and reference.size >= 100 and comparable:
        shift = psi(reference, values)
        out.append(
            Outcome(
                "distribution_shift",
                asset_id,
                sid,
                not shift > contract.max_psi,
                {"psi": round(shift, 4), "limit": contract.max_psi},
                severity="warning",
                message=f"PSI {shift:.2f} against the reference window (limit {contract.max_psi:g})",
            )
        )
    return out


# -- relationships and calibration -----------------------------------------------------------


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


def _calibration_outcome(est: CalibrationEstimate) -> Outcome:
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


# -- the whole partition ---------------------------------------------------------------------


def gx_outcomes(results: list[GxResult]) -> list[Outcome]:
    """GX expectation results as outcomes (check ``gx:<expectation>``), for any table."""
    out = []
    for r in results:
        short = r.expectation.removeprefix("expect_")
        bad = r.observed.get("unexpected_count")
        message = short.replace("_", " ") + (f": {bad} unexpected" if bad else "")
        out.append(
            Outcome(f"gx:{short}", None, r.sensor_id, r.success, r.observed, message=message)
        )
    return out


def validate_readings(
    readings: pd.DataFrame,
    *,
    dead_letter: pd.DataFrame | None = None,
    reference: pd.DataFrame | None = None,
    end: pd.Timestamp | None = None,
    run_gx: bool = True,
    calibration_window_s: float = 2 * 3600.0,
) -> ValidationReport:
    """Validate a partition of ``readings`` (the table's columns).

    ``dead_letter`` (same window) supplies the NaN/null counts; ``reference`` (readings of a
    known-good window) the distributions and the relationships for calibration; ``end`` the end
    of the window every sensor should cover (default: each asset's newest reading).  The
    calibration check judges the whole window; the corrections in ``report.calibrations``
    describe the sensor now, estimated from the last ``calibration_window_s`` (a fault that
    began mid-window must not blur the correction the stream will apply).
    """
    report = ValidationReport()
    readings = readings.assign(sensor_id=readings["sensor_id"].astype("category"))
    if run_gx and len(readings):
        present = sorted(map(str, readings["sensor_id"].unique()))
        report.outcomes += gx_outcomes(
            run_suite(readings, readings_expectations(present), name="readings")
        )
    rejected = _non_finite_counts(dead_letter)
    for asset_id, asset_rows in readings.groupby("asset_id", observed=True):
        asset_end = int(
            (end.value // 1000) if end is not None else asset_rows["ts"].max().value // 1000
        )
        ref_asset = reference[reference["asset_id"] == asset_id] if reference is not None else None
        ref_span = (
            (ref_asset["ts"].max() - ref_asset["ts"].min()).total_seconds()
            if ref_asset is not None and len(ref_asset)
            else None
        )
        for sensor_id, rows in asset_rows.groupby("sensor_id", observed=True):
            contract = SENSORS.get(str(sensor_id))
            if contract is None:
                continue  # the GX in-set expectation reports undeclared sensors
            ref_values = None
            if ref_asset is not None:
                ref_values = ref_asset.loc[ref_asset["sensor_id"] == sensor_id, "value"].to_numpy(
                    np.float64
                )
            report.outcomes += series_checks(
                str(asset_id),
                contract,
                rows["ts"].to_numpy("datetime64[us]").astype(np.int64),
                rows["value"].to_numpy(np.float64),
                end_us=asset_end,
                rejected_non_finite=rejected.get((str(asset_id), str(sensor_id)), 0),
                reference=ref_values,
                reference_span_s=ref_span,
            )
        if ref_asset is not None and len(ref_asset):
            _relationships(report, str(asset_id), asset_rows, ref_asset, calibration_window_s)
    return report


def _relationships(
    report: ValidationReport, asset_id: str, rows: pd.DataFrame, ref: pd.DataFrame, recent_s: float
) -> None:
    """Calibration of every related sensor; a target whose input also disagrees is only a
    suspect (warning): the input is the likelier culprit."""
    wide_ref, wide = wide_per_second(ref, "raw_value"), wide_per_second(rows)
    raw = wide_per_second(rows, "raw_value")
    found: dict[str, Outcome] = {}
    for rel in RELATIONSHIPS:
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
        found[rel.target] = _calibration_outcome(est)
        recent = wide.index >= wide.index[-1] - pd.Timedelta(seconds=recent_s)
        now = estimate_calibration(model, wide[recent], asset_id, raw=raw[rel.target][recent])
        report.calibrations.append(now if now is not None else est)
    for rel in RELATIONSHIPS:
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
        report.outcomes.append(outcome)


def _non_finite_counts(dead_letter: pd.DataFrame | None) -> dict[tuple[str, str], int]:
    if dead_letter is None or dead_letter.empty:
        return {}
    bad = dead_letter[dead_letter["reason"] == "non_finite"]
    return {
        (str(a), str(s)): int(n)
        for (a, s), n in bad.groupby(["asset_id", "sensor_id"]).size().items()
    }
