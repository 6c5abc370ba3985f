"""Sensor contracts, declared once: what every known sensor measures and what is plausible.

The stream's vectorised checks (``expectations.checks``) and the batch validation suites are
both derived from these declarations, so the two planes cannot disagree about what is valid.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SensorContract", "SENSORS", "contract_for", "UnknownSensorError"]


class UnknownSensorError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class SensorContract:
    """What a sensor reports and which values are physically plausible.

    ``sample_rate_hz`` is the nominal rate; high-rate sensors (``frames=True``) arrive as frames
    of samples and must match it within ``rate_tolerance``.  ``max_rate_of_change`` is in units
    per second.  ``max_gap_s`` and ``max_null_rate`` bound missingness.
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
    description: str = ""

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"{self.sensor_id}: need low < high, got {self.low}, {self.high}")


_CONTRACTS = (
    SensorContract(
        "bearing_temp",
        "temperature",
        "degC",
        -40.0,
        200.0,
        1.0,
        max_rate_of_change=5.0,
        description="bearing housing temperature",
    ),
    SensorContract(
        "discharge_pressure",
        "pressure",
        "bar",
        0.0,
        40.0,
        10.0,
        max_rate_of_change=20.0,
        description="pump discharge pressure",
    ),
    SensorContract(
        "motor_current",
        "current",
        "A",
        0.0,
        400.0,
        10.0,
        max_rate_of_change=200.0,
        description="motor phase current, RMS",
    ),
    SensorContract(
        "shaft_speed",
        "speed",
        "rpm",
        0.0,
        20_000.0,
        10.0,
        max_rate_of_change=2_000.0,
        description="shaft speed from the tachometer",
    ),
    SensorContract(
        "vib_de",
        "vibration",
        "g",
        -500.0,
        500.0,
        12_000.0,
        frames=True,
        max_gap_s=5.0,
        min_frame_samples=1024,
        description="drive-end accelerometer",
    ),
)

SENSORS: dict[str, SensorContract] = {c.sensor_id: c for c in _CONTRACTS}


def contract_for(sensor_id: str) -> SensorContract:
    """The contract of ``sensor_id``; ``UnknownSensorError`` if none is declared."""
    try:
        return SENSORS[sensor_id]
    except KeyError:
        raise UnknownSensorError(f"unknown sensor {sensor_id!r}") from None
