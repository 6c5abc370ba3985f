"""What one sensor reports and which values are plausible (``SensorContract``), and the
physical relationships between sensors of one asset that calibration relies on.

These are the plant model's resolved values: a plant file (``plant.load_plant``) declares them
per asset; ``expectations`` derives the stream checks and the batch suites from them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SensorContract", "Relationship"]


@dataclass(frozen=True)
class SensorContract:
    """What a sensor reports and which values are physically plausible.

    ``sample_rate_hz`` is the nominal rate; high-rate sensors (``frames=True``) arrive as frames
    of samples and must match it within ``rate_tolerance``.  ``max_rate_of_change`` is in units
    per second.  ``max_gap_s`` and ``max_null_rate`` bound missingness.  A value unchanged for
    ``stuck_after_s`` is a stuck sensor (None: the sensor may legitimately sit still, e.g. a
    quantised flow meter).  ``resolution`` is the sensor's quantum (the smallest step it reports),
    used as the floor of the spike detector's scale.  ``max_spike_rate`` bounds the share of
    readings the Hampel filter may flag, ``max_clock_error_ppm`` the sample clock's rate error,
    and ``max_psi`` the population stability index against a reference window.
    ``min_completeness`` is the least share of expected readings (from the nominal rate) that
    must arrive.  The stream accepts readings up to ``allowed_lateness_s`` older than the newest
    one seen for the sensor (event time); older ones are dead-lettered as ``late``.
    ``watched_as`` is what the process anomaly detector sees of a scalar sensor: ``auto`` (the
    default: the detector decides from the asset's own warm-up whether the sensor is a slow
    state, see ``dataplane.scoring.RobustMahalanobis``), or, declared in the plant with its
    physical reason (``watched_as_reason``), its 30 s ``level`` or its 30 s ``slope`` (a slow
    state whose level is context and whose rate of change is the symptom).
    ``window_every_s`` is the stream's cadence for the sensor's process window (one
    ``features`` row per cadence of event time, whatever the message rate; default 1 s, and at
    least one sample period).
    """

    sensor_id: str
    kind: str
    unit: str
    low: float
    high: float
    sample_rate_hz: float
    frames: bool = False
    rate_tolerance: float = 0.01
    max_gap_s: float = 10.0
    max_null_rate: float = 0.01
    max_rate_of_change: float | None = None
    min_frame_samples: int = 1
    stuck_after_s: float | None = 60.0
    resolution: float = 0.0
    max_spike_rate: float = 0.001
    max_clock_error_ppm: float = 50.0
    max_psi: float = 0.25
    min_completeness: float = 0.98
    allowed_lateness_s: float = 30.0
    watched_as: str = "auto"
    window_every_s: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"{self.sensor_id}: need low < high, got {self.low}, {self.high}")
        if self.window_every_s is not None and not self.window_every_s > 0:
            raise ValueError(
                f"{self.sensor_id}: window_every_s must be positive, got {self.window_every_s}"
            )
        if self.watched_as not in ("auto", "level", "slope"):
            raise ValueError(
                f"{self.sensor_id}: watched_as must be 'auto', 'level' or 'slope', "
                f"got {self.watched_as!r}"
            )


@dataclass(frozen=True)
class Relationship:
    """A physical relationship: ``target`` is a smooth function of ``inputs`` on one asset.

    Fitted on a reference period, it predicts what the target sensor should read; the measured
    value against the prediction gives the target's calibration (offset, gain) and its drift.
    """

    target: str
    inputs: tuple[str, ...]
    description: str
