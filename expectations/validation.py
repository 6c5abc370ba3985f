"""Validation of a partition of readings: the GX contract suite, the time-series checks GX does
not offer (``expectations.series``) and calibration from physical relationships
(``expectations.calibration``), gathered in one ``ValidationReport`` (``expectations.outcomes``).

Every check yields an ``Outcome`` that says which asset and sensor, since when, how bad (the
observed numbers against the contract's limit) and what to do, in words an operator can act on.
Completeness and gaps are judged on the span of the period the stream has covered
(``expectations.series.Period``), so a day in progress is judged on its elapsed part.

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

import numpy as np
import pandas as pd

from expectations.calibration import (
    COVERED_SHARE,
    RelationshipModel,
    estimate_calibration,
    fit_relationship,
    relationship_outcomes,
    wide_per_second,
)
from expectations.contracts import SENSORS
from expectations.outcomes import (
    ACTIONS,
    CalibrationEstimate,
    Outcome,
    ValidationReport,
    gx_outcomes,
)
from expectations.series import Period, psi, series_checks
from expectations.suites import readings_expectations, run_suite

__all__ = [
    "Outcome",
    "CalibrationEstimate",
    "ValidationReport",
    "Period",
    "series_checks",
    "psi",
    "RelationshipModel",
    "wide_per_second",
    "fit_relationship",
    "estimate_calibration",
    "validate_readings",
    "gx_outcomes",
    "ACTIONS",
    "COVERED_SHARE",
]


def _us(ts: pd.Timestamp) -> int:
    return int(ts.value // 1000)


def validate_readings(
    readings: pd.DataFrame,
    *,
    dead_letter: pd.DataFrame | None = None,
    reference: pd.DataFrame | None = None,
    period: Period | None = None,
    end: pd.Timestamp | None = None,
    run_gx: bool = True,
    calibration_window_s: float = 2 * 3600.0,
) -> ValidationReport:
    """Validate a partition of ``readings`` (the table's columns).

    ``dead_letter`` (same window) supplies the NaN/null counts; ``reference`` (readings of a
    known-good window) the distributions and the relationships for calibration.  ``period``
    (the partition's day and what the lake holds around it) says which span each series is
    judged on for completeness and gaps; without it, from the series' first reading to its
    asset's newest.  ``end`` forces the end of that span for every asset (a window that must be
    covered to ``end``, whatever arrived).  A series the period says reported before it but
    that has no reading in it, on an asset that does report, is silent for the whole span.
    The calibration check judges the whole window; the corrections in ``report.calibrations``
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
    empty = np.empty(0, dtype=np.int64)
    for asset_id, asset_rows in readings.groupby("asset_id", observed=True):
        asset = str(asset_id)
        newest = _us(end) if end is not None else _us(asset_rows["ts"].max())
        ref_asset = reference[reference["asset_id"] == asset_id] if reference is not None else None
        ref_span = (
            (ref_asset["ts"].max() - ref_asset["ts"].min()).total_seconds()
            if ref_asset is not None and len(ref_asset)
            else None
        )
        series = {str(s): rows for s, rows in asset_rows.groupby("sensor_id", observed=True)}
        silent = (
            sorted(s for a, s in period.first_seen if a == asset and s not in series)
            if period is not None
            else []
        )
        for sensor_id in [*series, *silent]:
            contract = SENSORS.get(sensor_id)
            if contract is None:
                continue  # the GX in-set expectation reports undeclared sensors
            rows = series.get(sensor_id)
            ts = (
                rows["ts"].to_numpy("datetime64[us]").astype(np.int64)
                if rows is not None
                else empty
            )
            first = int(ts.min()) if ts.size else newest
            start_us, end_us = (
                period.span_us(asset, sensor_id, first, newest) if period else (first, newest)
            )
            if end is not None:
                end_us = newest
            ref_values = None
            if ref_asset is not None:
                ref_values = ref_asset.loc[ref_asset["sensor_id"] == sensor_id, "value"].to_numpy(
                    np.float64
                )
            report.outcomes += series_checks(
                asset,
                contract,
                ts,
                rows["value"].to_numpy(np.float64) if rows is not None else np.empty(0),
                start_us=start_us,
                end_us=end_us,
                rejected_non_finite=rejected.get((asset, sensor_id), 0),
                reference=ref_values,
                reference_span_s=ref_span,
            )
        if ref_asset is not None and len(ref_asset):
            outcomes, calibrations = relationship_outcomes(
                asset, asset_rows, ref_asset, calibration_window_s
            )
            report.outcomes += outcomes
            report.calibrations += calibrations
    return report


def _non_finite_counts(dead_letter: pd.DataFrame | None) -> dict[tuple[str, str], int]:
    if dead_letter is None or dead_letter.empty:
        return {}
    bad = dead_letter[dead_letter["reason"] == "non_finite"]
    return {
        (str(a), str(s)): int(n)
        for (a, s), n in bad.groupby(["asset_id", "sensor_id"]).size().items()
    }
