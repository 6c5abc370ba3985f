"""Rolling-element bearing kinematics: defect frequencies from geometry and shaft speed."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "BearingGeometry",
    "DefectFrequencies",
    "SKF_6205",
    "defect_orders",
    "defect_frequencies",
]


@dataclass(frozen=True)
class BearingGeometry:
    """Geometry of a rolling-element bearing (diameters in any one unit, angle in degrees)."""

    n_balls: int
    ball_diameter: float
    pitch_diameter: float
    contact_angle_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.n_balls < 1:
            raise ValueError(f"n_balls must be >= 1, got {self.n_balls}")
        if not 0 < self.ball_diameter < self.pitch_diameter:
            raise ValueError(
                "need 0 < ball_diameter < pitch_diameter, got "
                f"{self.ball_diameter} and {self.pitch_diameter}"
            )


@dataclass(frozen=True)
class DefectFrequencies:
    """Defect frequencies, in the unit of the shaft speed given (orders if speed is 1)."""

    bpfo: float  # ball pass frequency, outer race
    bpfi: float  # ball pass frequency, inner race
    bsf: float  # ball spin frequency
    ftf: float  # fundamental train (cage) frequency

    def as_dict(self) -> dict[str, float]:
        return {"bpfo": self.bpfo, "bpfi": self.bpfi, "bsf": self.bsf, "ftf": self.ftf}


SKF_6205 = BearingGeometry(n_balls=9, ball_diameter=0.3126, pitch_diameter=1.537)
"""The CWRU drive-end bearing (SKF 6205-2RS JEM), diameters in inches."""


def defect_orders(g: BearingGeometry) -> DefectFrequencies:
    """Defect frequencies as multiples of shaft speed (outer race fixed, inner race rotating).

    >>> o = defect_orders(SKF_6205)
    >>> round(o.bpfo, 3), round(o.bpfi, 3), round(o.ftf, 4), round(o.bsf, 3)
    (3.585, 5.415, 0.3983, 2.357)
    """
    ratio = g.ball_diameter / g.pitch_diameter * math.cos(math.radians(g.contact_angle_deg))
    return DefectFrequencies(
        bpfo=g.n_balls / 2 * (1 - ratio),
        bpfi=g.n_balls / 2 * (1 + ratio),
        bsf=g.pitch_diameter / (2 * g.ball_diameter) * (1 - ratio**2),
        ftf=0.5 * (1 - ratio),
    )


def defect_frequencies(g: BearingGeometry, shaft_rpm: float) -> DefectFrequencies:
    """Defect frequencies in Hz at ``shaft_rpm``; a missing or non-positive speed is an error.

    >>> round(defect_frequencies(SKF_6205, 1797).bpfo, 1)
    107.4
    """
    if not (shaft_rpm > 0 and math.isfinite(shaft_rpm)):
        raise ValueError(f"shaft speed must be a positive number of rpm, got {shaft_rpm!r}")
    o, f_shaft = defect_orders(g), shaft_rpm / 60.0
    return DefectFrequencies(o.bpfo * f_shaft, o.bpfi * f_shaft, o.bsf * f_shaft, o.ftf * f_shaft)
