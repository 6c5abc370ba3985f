"""What a validation says: one ``Outcome`` per check and sensor, with its evidence and the
operator's next step, and the ``CalibrationEstimate``s made on the way, gathered in a
``ValidationReport``.

Every check (``expectations.series``, ``expectations.calibration``, the GX suites) reports in
these terms: which asset and sensor, since when, how bad (the observed numbers against the
contract's limit) and what to do, in words an operator can act on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from expectations.suites import GxResult

__all__ = ["ACTIONS", "Outcome", "CalibrationEstimate", "ValidationReport", "gx_outcomes"]

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
    """``raw ≈ gain_now * true + offset`` for a sensor, from a physical relationship
    (``expectations.calibration.estimate_calibration``)."""

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
    """The outcomes of one validation, and the calibration estimates it made on the way."""

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
