"""A deterministic fleet of rotating machines (motor-driven pumps) with injectable faults.

Each machine has a drive-end accelerometer sampled at kHz rates (delivered as frames) and slow
process sensors (bearing temperature, discharge pressure, motor current, shaft speed).  Bearing
defects are simulated physically: an impulse at every pass of a rolling element over the
defect excites a structural resonance that rings down, the impulse rate follows the bearing's
defect frequency at the current shaft speed, and the amplitude grows with degradation until
failure, so the remaining useful life (RUL) is known exactly.

Chunk ``k`` of machine ``m`` is a pure function of ``(seed, m, k)``: any chunk can be
regenerated on its own, which is what a resumable stream source needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.signal import oaconvolve

from physics.bearing import SKF_6205, BearingGeometry, defect_orders
from physics.sensor_models import gain_drift, offset_gain, spikes, stuck

__all__ = ["MachineSpec", "Fault", "Chunk", "FleetSimulator", "default_fleet", "SCALAR_RATES_HZ"]

BearingFaultKind = Literal["outer_race", "inner_race", "ball"]
SensorFaultKind = Literal[
    "sensor_offset",
    "sensor_gain_drift",
    "sensor_stuck",
    "sensor_dropout",
    "sensor_spikes",
    "sensor_clock_skew",
    "sensor_nan_bursts",
]

SCALAR_RATES_HZ: dict[str, float] = {
    "bearing_temp": 1.0,
    "discharge_pressure": 10.0,
    "motor_current": 10.0,
    "shaft_speed": 10.0,
}
"""Process sensors of every simulated machine and their sample rates."""

VIBRATION_SENSOR = "vib_de"

SENSOR_NOISE: dict[str, float] = {
    "bearing_temp": 0.1,
    "discharge_pressure": 0.02,
    "motor_current": 0.15,
    "shaft_speed": 1.5,
}
"""Standard deviation of each process sensor's measurement noise, in its unit."""


@dataclass(frozen=True)
class MachineSpec:
    """One simulated machine.  ``speed_levels`` are variable-speed-drive setpoints (fractions of
    ``rpm``) that the drive steps through, one every ``speed_period_s``; ``(1.0,)`` is a
    fixed-speed machine."""

    asset_id: str
    rpm: float = 1797.0
    speed_levels: tuple[float, ...] = (1.0,)
    speed_period_s: float = 1800.0
    bearing: BearingGeometry = SKF_6205
    resonance_hz: float = 3200.0
    vib_rate_hz: float = 12_000.0
    noise_g: float = 0.04


@dataclass(frozen=True)
class Fault:
    """A fault injected at ``start_s`` seconds after the simulation start.

    Bearing faults grow from nothing to failure over ``time_to_failure_s``; sensor faults
    change what ``sensor_id`` reports.  ``magnitude`` is: the offset in sensor units
    (``sensor_offset``), the gain drift per day (``sensor_gain_drift``), the share of readings
    lost (``sensor_dropout``), the share of readings spiked (``sensor_spikes``, by 10 robust
    sigmas of the sensor), the share of time in 10-second NaN bursts (``sensor_nan_bursts``),
    or the clock rate error in ppm (``sensor_clock_skew``).
    """

    asset_id: str
    kind: BearingFaultKind | SensorFaultKind
    start_s: float
    time_to_failure_s: float = 6 * 3600.0
    sensor_id: str | None = None
    magnitude: float = 0.0

    @property
    def is_bearing(self) -> bool:
        return self.kind in ("outer_race", "inner_race", "ball")

    def severity(self, t_s: NDArray[np.float64] | float) -> NDArray[np.float64]:
        """Degradation from 0 (healthy) to 1 (failed), convex in time like real spalls."""
        u = np.clip((np.asarray(t_s, np.float64) - self.start_s) / self.time_to_failure_s, 0, 1)
        return np.expm1(3.0 * u) / math.expm1(3.0)


@dataclass
class Chunk:
    """``duration_s`` seconds of one machine's telemetry starting at ``start_us``."""

    asset_id: str
    index: int
    start_us: int
    duration_s: float
    scalars: dict[str, tuple[NDArray[np.int64], NDArray[np.float64]]] = field(default_factory=dict)
    frames: list[tuple[str, int, float, NDArray[np.float32]]] = field(default_factory=list)


class FleetSimulator:
    """Generates telemetry chunks for a fleet, deterministically from ``seed``."""

    def __init__(
        self,
        machines: list[MachineSpec],
        faults: list[Fault] | None = None,
        *,
        seed: int = 0,
        start_us: int = 1_767_225_600_000_000,  # 2026-01-01T00:00:00Z
        chunk_s: float = 1.0,
    ):
        ids = [m.asset_id for m in machines]
        if len(set(ids)) != len(ids):
            raise ValueError(f"asset ids must be unique, got {ids}")
        self.machines = {m.asset_id: m for m in machines}
        self.faults = list(faults or [])
        unknown = {f.asset_id for f in self.faults} - set(ids)
        if unknown:
            raise ValueError(f"faults name unknown asset(s) {sorted(unknown)}")
        self.seed, self.start_us, self.chunk_s = seed, start_us, chunk_s

    @property
    def asset_ids(self) -> list[str]:
        return list(self.machines)

    def starting_at(self, start_us: int) -> FleetSimulator:
        """The same fleet and faults with the simulation clock starting at ``start_us``."""
        if start_us == self.start_us:
            return self
        return FleetSimulator(
            list(self.machines.values()),
            self.faults,
            seed=self.seed,
            start_us=start_us,
            chunk_s=self.chunk_s,
        )

    # -- operating point -----------------------------------------------------------------
    def load(self, asset_index: int, t_s: NDArray[np.float64]) -> NDArray[np.float64]:
        """Load fraction: a level that changes every 20 minutes, deterministic from the seed."""
        segment = np.floor(t_s / 1200.0).astype(np.int64)
        levels = (np.sin(segment * 12.9898 + asset_index * 78.233 + self.seed) * 43758.5453) % 1.0
        return 0.4 + 0.5 * levels

    def shaft_rpm(self, asset_id: str, t_s: NDArray[np.float64]) -> NDArray[np.float64]:
        """Shaft speed: the drive's setpoint, less induction-motor slip that grows with load."""
        m = self.machines[asset_id]
        a = self.asset_ids.index(asset_id)
        levels = np.asarray(m.speed_levels, dtype=np.float64)
        setpoint = levels[np.floor(t_s / m.speed_period_s).astype(np.int64) % levels.size]
        return m.rpm * setpoint * (1.0 - 0.015 * (self.load(a, t_s) - 0.4))

    def _bearing_severity(self, asset_id: str, t_s: NDArray[np.float64]) -> NDArray[np.float64]:
        out = np.zeros_like(t_s)
        for f in self.faults:
            if f.asset_id == asset_id and f.is_bearing:
                out = np.maximum(out, f.severity(t_s))
        return out

    # -- one chunk -----------------------------------------------------------------------
    def chunk(self, asset_id: str, index: int) -> Chunk:
        m = self.machines[asset_id]
        a = self.asset_ids.index(asset_id)
        rng = np.random.default_rng([self.seed, a, index])
        t0 = index * self.chunk_s
        chunk = Chunk(asset_id, index, self.start_us + round(t0 * 1e6), self.chunk_s)
        mid = np.array([t0 + self.chunk_s / 2])
        severity = float(self._bearing_severity(asset_id, mid)[0])
        rpm = float(self.shaft_rpm(asset_id, mid)[0])

        chunk.scalars = self._process_sensors(asset_id, t0, self.chunk_s, rng)

        samples = self._vibration(m, rng, t0, rpm, severity)
        chunk.frames.append((VIBRATION_SENSOR, chunk.start_us, m.vib_rate_hz, samples))
        return chunk

    def scalar_window(
        self, asset_id: str, start_s: float, duration_s: float
    ) -> dict[str, tuple[NDArray[np.int64], NDArray[np.float64]]]:
        """The process sensors of ``asset_id`` over a long window at once (no vibration): the same
        physics and faults as ``chunk``, with noise drawn for the whole window."""
        rng = np.random.default_rng(
            [self.seed, self.asset_ids.index(asset_id), 1 << 40, round(start_s * 1000)]
        )
        return self._process_sensors(asset_id, start_s, duration_s, rng)

    def _process_sensors(
        self, asset_id: str, t0: float, duration_s: float, rng: np.random.Generator
    ) -> dict[str, tuple[NDArray[np.int64], NDArray[np.float64]]]:
        m = self.machines[asset_id]
        a = self.asset_ids.index(asset_id)
        out = {}
        for sensor_id, rate in SCALAR_RATES_HZ.items():
            n = max(1, round(duration_s * rate))
            t = t0 + np.arange(n) / rate
            ts = self.start_us + np.round(t * 1e6).astype(np.int64)
            lt = self.load(a, t)
            speed = self.shaft_rpm(asset_id, t) * (1 + 0.001 * np.sin(2 * np.pi * t / 97))
            sev = self._bearing_severity(asset_id, t)
            noise = rng.normal(0, SENSOR_NOISE[sensor_id], n)
            if sensor_id == "shaft_speed":
                v = speed + noise
            elif sensor_id == "motor_current":
                v = 8.0 + 30.0 * lt * (speed / m.rpm) + 2.0 * sev + noise
            elif sensor_id == "discharge_pressure":
                v = 6.0 * (speed / m.rpm) ** 2 * (0.7 + 0.3 * lt) + noise
            else:  # bearing_temp: ambient (held at 30 degC) + load heating + friction of a failing bearing
                v = 30.0 + 25.0 * lt + 20.0 * sev + noise
            out[sensor_id] = self._sensor_faults(asset_id, sensor_id, t, ts, v, rng)
        return out

    def _sensor_faults(
        self,
        asset_id: str,
        sensor_id: str,
        t: NDArray[np.float64],
        ts: NDArray[np.int64],
        v: NDArray[np.float64],
        rng: np.random.Generator,
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        keep = np.ones(v.size, dtype=bool)
        for f in self.faults:
            if f.asset_id != asset_id or f.sensor_id != sensor_id:
                continue
            active = t >= f.start_s
            if f.kind == "sensor_offset":
                v = np.where(active, offset_gain(v, offset=f.magnitude), v)
            elif f.kind == "sensor_gain_drift":
                v = gain_drift(v, t, f.start_s, f.magnitude)
            elif f.kind == "sensor_stuck":
                v = stuck(v, t, f.start_s)
            elif f.kind == "sensor_dropout":
                keep &= ~(active & (rng.random(v.size) < f.magnitude))
            elif f.kind == "sensor_spikes":
                spiked = spikes(
                    v, f.magnitude, 10.0 * SENSOR_NOISE[sensor_id] + 0.05 * np.abs(v).mean(), rng
                )
                v = np.where(active, spiked, v)
            elif f.kind == "sensor_nan_bursts":  # 10-second bursts covering `magnitude` of the time
                burst = np.floor(t / 10.0).astype(np.int64)
                hit = (np.sin(burst * 91.7 + self.seed) * 43758.5453) % 1.0 < f.magnitude
                v = np.where(active & hit, np.nan, v)
            elif f.kind == "sensor_clock_skew":
                drift = np.round(np.clip(t - f.start_s, 0, None) * f.magnitude).astype(
                    np.int64
                )  # us
                ts = ts + drift
        return ts[keep], v[keep]

    def _vibration(
        self, m: MachineSpec, rng: np.random.Generator, t0: float, rpm: float, severity: float
    ) -> NDArray[np.float32]:
        n = round(self.chunk_s * m.vib_rate_hz)
        t = t0 + np.arange(n) / m.vib_rate_hz
        f_shaft = rpm / 60.0
        x = 0.05 * np.sin(2 * np.pi * f_shaft * t) + 0.02 * np.sin(4 * np.pi * f_shaft * t + 0.3)
        x += rng.normal(0.0, m.noise_g, n)
        for f in self.faults:
            if f.asset_id == m.asset_id and f.is_bearing and severity > 0:
                x += self._defect_response(m, f, rng, t, f_shaft, float(f.severity(t[n // 2])))
        return x.astype(np.float32)

    @staticmethod
    def _defect_response(
        m: MachineSpec,
        f: Fault,
        rng: np.random.Generator,
        t: NDArray[np.float64],
        f_shaft: float,
        severity: float,
    ) -> NDArray[np.float64]:
        """Impulses at the defect frequency, each ringing the structural resonance down."""
        orders = defect_orders(m.bearing)
        rate = {"outer_race": orders.bpfo, "inner_race": orders.bpfi, "ball": 2 * orders.bsf}[
            f.kind
        ] * f_shaft
        period = 1.0 / rate
        first = math.ceil(t[0] / period)
        k = np.arange(first, first + int((t[-1] - t[0]) / period) + 1)
        times = k * period + rng.normal(0.0, 0.01 * period, k.size)  # slip jitter
        idx = np.round((times - t[0]) * m.vib_rate_hz).astype(np.int64)
        keep = (idx >= 0) & (idx < t.size)
        amp = np.full(k.size, 1.5 * severity + 0.05)
        if f.kind == "inner_race":  # the defect rotates through the load zone once per rev
            amp *= 0.6 + 0.4 * np.cos(2 * np.pi * f_shaft * times)
        elif f.kind == "ball":  # the ball carries the defect around with the cage
            amp *= 0.6 + 0.4 * np.cos(2 * np.pi * orders.ftf * f_shaft * times)
        train = np.zeros(t.size)
        np.add.at(train, idx[keep], amp[keep])
        tau = np.arange(int(0.004 * m.vib_rate_hz)) / m.vib_rate_hz
        ring = np.exp(-tau / 0.0006) * np.sin(2 * np.pi * m.resonance_hz * tau)
        return oaconvolve(train, ring)[: t.size]

    # -- ground truth --------------------------------------------------------------------
    def ground_truth(self) -> list[dict[str, object]]:
        """The injected faults as ``maintenance_events`` rows (onset and, for bearings, failure)."""
        rows: list[dict[str, object]] = []
        for f in self.faults:
            component = f"bearing_{f.kind}" if f.is_bearing else f"{f.sensor_id}_sensor"
            onset = self.start_us + round(f.start_s * 1e6)
            rows.append(
                dict(
                    asset_id=f.asset_id,
                    ts=onset,
                    kind="fault_injected",
                    component=component,
                    detail=f"{f.kind} magnitude={f.magnitude}",
                    source="simulator",
                )
            )
            if f.is_bearing:
                rows.append(
                    dict(
                        asset_id=f.asset_id,
                        ts=onset + round(f.time_to_failure_s * 1e6),
                        kind="failure",
                        component=component,
                        detail=f"{f.kind} spall",
                        source="simulator",
                    )
                )
        return rows

    def labels(
        self, asset_id: str, t_s: NDArray[np.float64]
    ) -> dict[str, NDArray[np.float64] | NDArray[np.str_]]:
        """Ground truth at times ``t_s`` (seconds from start): the bearing condition
        (``normal``/``outer_race``/...), its severity 0..1, and RUL in seconds (inf if none)."""
        t = np.asarray(t_s, dtype=np.float64)
        condition = np.full(t.shape, "normal", dtype=object)
        severity = np.zeros(t.shape)
        rul = np.full(t.shape, np.inf)
        for f in self.faults:
            if f.asset_id == asset_id and f.is_bearing:
                active = t >= f.start_s
                condition[active] = f.kind
                severity = np.maximum(severity, f.severity(t))
                rul = np.minimum(rul, f.start_s + f.time_to_failure_s - t)
        return {"condition": condition.astype(str), "severity": severity, "rul_s": rul}

    def rul_s(self, asset_id: str, t_s: float) -> float | None:
        """Seconds until the earliest bearing failure of ``asset_id`` (None if none is coming)."""
        ends = [
            f.start_s + f.time_to_failure_s
            for f in self.faults
            if f.asset_id == asset_id and f.is_bearing
        ]
        return min(ends) - t_s if ends else None


def default_fleet(
    n_machines: int = 3,
    seed: int = 0,
    start_us: int | None = None,
    outer_race_at_s: float | None = 600.0,
    inner_race_at_s: float | None = 1200.0,
    time_to_failure_s: float = 7200.0,
) -> FleetSimulator:
    """The demo fleet: ``pump-01`` healthy, ``pump-02`` develops an outer-race defect after
    10 minutes (failing after 2 hours), ``pump-03`` runs on a variable-speed drive (100, 80, 90 %
    of 1747 rpm, 30 minutes each) and develops an inner-race defect after 20 minutes.  Larger
    fleets repeat the pattern (pump-04 like pump-01, ...), so every kind of history appears on
    more than one machine.  A fault time of None leaves those machines healthy."""
    machines = [
        MachineSpec(
            f"pump-{i + 1:02d}",
            rpm=1797.0 - 25.0 * (i % 3),
            speed_levels=(1.0, 0.8, 0.9) if i % 3 == 2 else (1.0,),
        )
        for i in range(n_machines)
    ]
    kinds: dict[int, tuple[BearingFaultKind, float | None]] = {
        1: ("outer_race", outer_race_at_s),
        2: ("inner_race", inner_race_at_s),
    }
    faults = [
        Fault(m.asset_id, kind, start_s=at_s, time_to_failure_s=time_to_failure_s)
        for i, m in enumerate(machines)
        if i % 3 in kinds
        for kind, at_s in [kinds[i % 3]]
        if at_s is not None
    ]
    kwargs = {} if start_us is None else {"start_us": start_us}
    return FleetSimulator(machines, faults, seed=seed, **kwargs)
