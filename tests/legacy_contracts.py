"""The sensor contracts and relationships as Python literals, as they were declared before the
plant files (``expectations/contracts.py`` until issue 14): ``tests/test_plant.py`` checks that
the default plant file reproduces them exactly."""

from plant.contract import Relationship, SensorContract

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

# C-MAPSS (Saxena et al. 2008): one snapshot per flight cycle, replayed at one cycle per hour.
_CMAPSS = {
    "setting1": ("altitude", "kft", -1.0, 50.0),
    "setting2": ("mach", "1", -0.1, 1.0),
    "setting3": ("throttle_resolver_angle", "deg", 0.0, 120.0),
    "s1": ("T2", "degR", 400.0, 700.0),
    "s2": ("T24", "degR", 400.0, 900.0),
    "s3": ("T30", "degR", 1000.0, 2000.0),
    "s4": ("T50", "degR", 1000.0, 2000.0),
    "s5": ("P2", "psia", 0.0, 50.0),
    "s6": ("P15", "psia", 0.0, 50.0),
    "s7": ("P30", "psia", 0.0, 1000.0),
    "s8": ("Nf", "rpm", 0.0, 5000.0),
    "s9": ("Nc", "rpm", 0.0, 15000.0),
    "s10": ("epr", "1", 0.0, 5.0),
    "s11": ("Ps30", "psia", 0.0, 100.0),
    "s12": ("phi", "pps/psi", 0.0, 1000.0),
    "s13": ("NRf", "rpm", 0.0, 5000.0),
    "s14": ("NRc", "rpm", 0.0, 15000.0),
    "s15": ("BPR", "1", 0.0, 20.0),
    "s16": ("farB", "1", 0.0, 1.0),
    "s17": ("htBleed", "1", 0.0, 1000.0),
    "s18": ("Nf_dmd", "rpm", 0.0, 5000.0),
    "s19": ("PCNfR_dmd", "rpm", 0.0, 200.0),
    "s20": ("W31", "lbm/s", 0.0, 100.0),
    "s21": ("W32", "lbm/s", 0.0, 100.0),
}
# SKAB water-pump test bed, nominally 1 Hz; its logger misses about 6 % of seconds, and the
# pressure and flow readings are coarsely quantised (last field: the sensor's resolution).
# What the process detector watches of each (level or slope) is decided per run from its own
# warm-up (dataplane.scoring.RobustMahalanobis), no longer declared: the former declaration
# (both temperatures by slope) had been chosen from valve1's false alarms.
_SKAB = {
    "accelerometer1_rms": ("vibration_rms", "g", 0.0, 50.0, 1e-6),
    "accelerometer2_rms": ("vibration_rms", "g", 0.0, 50.0, 1e-6),
    "current": ("current", "A", 0.0, 100.0, 1e-6),
    "pressure": ("pressure", "bar", -5.0, 50.0, 0.328),
    "temperature": ("temperature", "degC", -40.0, 200.0, 1e-4),
    "thermocouple": ("temperature", "degC", -40.0, 200.0, 1e-4),
    "voltage": ("voltage", "V", 0.0, 500.0, 1e-3),
    "volume_flow_rate_rms": ("flow", "l/min", 0.0, 1000.0, 1.0),
}
_DATASETS = (
    *(
        SensorContract(
            f"cmapss_{k}",
            kind,
            unit,
            lo,
            hi,
            1 / 3600,
            max_gap_s=7200.0,
            stuck_after_s=None,
            description=f"C-MAPSS {kind}",
        )
        for k, (kind, unit, lo, hi) in _CMAPSS.items()
    ),
    *(
        SensorContract(
            f"skab_{k}",
            kind,
            unit,
            lo,
            hi,
            1.0,
            max_gap_s=10.0,
            stuck_after_s=None,
            resolution=res,
            min_completeness=0.9,
            description=f"SKAB {k}",
        )
        for k, (kind, unit, lo, hi, res) in _SKAB.items()
    ),
    SensorContract(
        "nab_machine_temperature",
        "temperature",
        "degF",
        -50.0,
        300.0,
        1 / 300,
        max_gap_s=3600.0,
        stuck_after_s=None,
        description="NAB: temperature of an internal component of a large industrial machine",
    ),
)

LEGACY_SENSORS = {c.sensor_id: c for c in (*_CONTRACTS, *_DATASETS)}

LEGACY_RELATIONSHIPS: tuple[Relationship, ...] = (
    Relationship(
        "motor_current",
        ("discharge_pressure", "shaft_speed"),
        "pump affinity: shaft power (current) follows head (pressure) and speed",
    ),
    Relationship(
        "bearing_temp", ("motor_current",), "load heating: bearing temperature follows motor load"
    ),
)
