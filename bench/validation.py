"""Validation detection matrix: inject each sensor fault on its own and see which check catches it.

One simulated pump (healthy bearings): a clean day is the reference window; on the next day one
fault starts at midnight. Checks run on growing windows after the onset (5 min ... 24 h); the
table gives, per fault, the check named for it, whether it fired, the shortest window it needed,
and every check that failed on the full day. Gain faults also report the calibration error
against the injected gain at the end of the window. False alarms: every check on a clean
simulated day and on SKAB's anomaly-free recording (its first third as reference). Throughput:
rows/s of the GX suite and of the whole validation over one machine-day of readings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.common import Timer, data_dir, parser, report
from expectations.checks import scalar_reasons
from expectations.contracts import SENSORS
from expectations.suites import readings_expectations, run_suite
from expectations.validation import ValidationReport, validate_readings
from physics.datasets import read_skab, skab_readings
from physics.simulator import Fault, FleetSimulator, MachineSpec, SensorFaultKind

DAY = 86_400.0
WINDOWS_S = [300, 900, 1800, 3600, 7200, 14_400, 28_800, 86_400]
FAULTS: list[tuple[str, str, SensorFaultKind, float, str]] = [
    # (name, sensor, kind, magnitude, check named for it)
    ("gain drift +2 %/day", "bearing_temp", "sensor_gain_drift", 0.02, "calibration"),
    ("gain drift +5 %/day", "bearing_temp", "sensor_gain_drift", 0.05, "calibration"),
    ("offset step +2 degC", "bearing_temp", "sensor_offset", 2.0, "calibration"),
    ("stuck value", "motor_current", "sensor_stuck", 0.0, "stuck"),
    ("10 % dropout", "discharge_pressure", "sensor_dropout", 0.10, "completeness"),
    ("NaN bursts (5 % of time)", "shaft_speed", "sensor_nan_bursts", 0.05, "null_rate"),
    ("spikes (1 % of readings)", "motor_current", "sensor_spikes", 0.01, "spikes"),
    ("clock skew +200 ppm", "discharge_pressure", "sensor_clock_skew", 200.0, "clock_rate"),
]


def sim_frames(
    sim: FleetSimulator, start_s: float, duration_s: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(readings, dead_letter) of every machine, split by the stream's own value checks."""
    rows = []
    for asset in sim.asset_ids:
        for sensor_id, (ts, values) in sim.scalar_window(asset, start_s, duration_s).items():
            rows.append(
                pd.DataFrame(
                    {
                        "asset_id": asset,
                        "sensor_id": sensor_id,
                        "ts": pd.to_datetime(ts, unit="us", utc=True),
                        "value": values,
                    }
                )
            )
    df = pd.concat(rows, ignore_index=True)
    reasons = np.empty(len(df), dtype=object)
    for sensor_id, idx in df.groupby("sensor_id").groups.items():
        reasons[idx] = scalar_reasons(SENSORS[sensor_id], df.loc[idx, "value"].to_numpy())
    ok = reasons == "ok"
    readings = df[ok].assign(
        raw_value=lambda d: d["value"],
        quality="good",
        ingest_ts=lambda d: d["ts"],
        date=lambda d: d["ts"].dt.date,
    )
    dead = df[~ok].assign(reason=reasons[~ok])
    return readings.reset_index(drop=True), dead.reset_index(drop=True)


def failed_checks(
    readings: pd.DataFrame,
    dead: pd.DataFrame,
    reference: pd.DataFrame,
    end: pd.Timestamp,
    sensor: str | None = None,
    gx: bool = False,
) -> tuple[set[str], ValidationReport]:
    rep = validate_readings(readings, dead_letter=dead, reference=reference, end=end, run_gx=gx)
    return {o.check for o in rep.failed if sensor is None or o.sensor_id == sensor}, rep


def main(argv: list[str] | None = None) -> dict:
    args = parser("validation", __doc__.splitlines()[0]).parse_args(argv)
    windows = [w for w in WINDOWS_S if w <= (7200 if args.quick else DAY)]
    ref_len = 7200.0 if args.quick else DAY
    machine = [MachineSpec("pump-01")]
    clean = FleetSimulator(machine, seed=7)
    reference, _ = sim_frames(clean, 0.0, ref_len)
    t0 = pd.Timestamp(clean.start_us, unit="us", tz="UTC") + pd.Timedelta(seconds=ref_len)

    table = Table(title="bench.validation: detection matrix" + (" (quick)" if args.quick else ""))
    for col in (
        "fault",
        "sensor",
        "check named for it",
        "caught",
        "data needed",
        "failed checks (full window)",
        "calibration",
    ):
        table.add_column(col)
    metrics: dict[str, float] = {}
    matrix: list[dict[str, Any]] = []
    caught_all, worst_cal = True, 0.0
    for name, sensor, kind, magnitude, expected in FAULTS:
        sim = FleetSimulator(
            machine,
            [Fault("pump-01", kind, ref_len, sensor_id=sensor, magnitude=magnitude)],
            seed=7,
        )
        readings, dead = sim_frames(sim, ref_len, windows[-1])
        needed, calibration, full = None, "", set()
        for w in windows:
            end = t0 + pd.Timedelta(seconds=w)
            part = readings[readings["ts"] < end]
            fails, rep = failed_checks(part, dead[dead["ts"] < end], reference, end, sensor)
            if expected in fails and needed is None:
                needed = w
            if w == windows[-1]:
                full = fails
                if kind == "sensor_gain_drift":
                    est = next(c for c in rep.calibrations if c.sensor_id == sensor)
                    true_gain = 1.0 + magnitude * w / DAY
                    err = abs(est.gain - true_gain) / true_gain
                    worst_cal = max(worst_cal, err)
                    calibration = f"gain {est.gain:.4f} vs {true_gain:.4f} ({100 * err:.2f} %)"
        caught = needed is not None
        caught_all &= caught
        matrix.append(
            {
                "fault": name,
                "sensor": sensor,
                "check": expected,
                "caught": caught,
                "data_needed_s": needed,
                "failed_checks": sorted(full),
            }
        )
        table.add_row(
            name,
            sensor,
            expected,
            "yes" if caught else "NO",
            _dur(needed) if caught else "-",
            ", ".join(sorted(full)) or "-",
            calibration,
        )
    Console(width=160).print(table)

    clean_day, clean_dead = sim_frames(clean, ref_len, windows[-1])
    end = t0 + pd.Timedelta(seconds=windows[-1])
    clean_fails, clean_rep = failed_checks(clean_day, clean_dead, reference, end, gx=True)
    skab_fails = skab_false_alarms(data_dir(args.data), quick=args.quick)
    print(f"clean simulated window: failed checks {sorted(clean_fails) or 'none'}")
    print(f"SKAB anomaly-free: failed checks {sorted(skab_fails) or 'none'}")

    day, _ = sim_frames(clean, 0.0, ref_len)
    present = sorted(day["sensor_id"].unique())
    gx_frame = day.assign(sensor_id=day["sensor_id"].astype("category"))
    with Timer() as gx_time:
        run_suite(gx_frame, readings_expectations(present))
    with Timer() as all_time:
        validate_readings(day, reference=reference)

    metrics["faults_caught_by_named_check"] = float(sum(m["caught"] for m in matrix))
    metrics["faults_injected"] = float(len(matrix))
    metrics["calibration_gain_error_max"] = worst_cal
    metrics["false_alarms_clean_sim"] = float(
        len([o for o in clean_rep.failed if o.severity == "error"])
    )
    metrics["false_alarms_skab_anomaly_free"] = float(len(skab_fails))
    metrics["gx_rows_per_s"] = len(day) / gx_time.seconds
    metrics["validation_rows_per_s"] = len(day) / all_time.seconds
    metrics["rows_per_machine_day"] = float(len(day))
    return report(
        "validation",
        metrics,
        {
            "faults_caught_by_named_check": f">= {len(matrix)}",
            "calibration_gain_error_max": "<= 0.005",
            "false_alarms_clean_sim": "<= 0",
            "false_alarms_skab_anomaly_free": "<= 0",
        },
        quick=args.quick,
        out=args.out,
        extra={
            "matrix": matrix,
            "clean_failed": sorted(clean_fails),
            "skab_failed": sorted(skab_fails),
            "all_caught": caught_all,
        },
    )


def skab_false_alarms(data: str, quick: bool) -> set[str]:
    df = read_skab(data, "anomaly-free")
    if quick:
        df = df.iloc[:3000]
    long = skab_readings(df, "skab-anomaly-free")
    long = long.assign(
        raw_value=long["value"], quality="good", ingest_ts=long["ts"], date=long["ts"].dt.date
    )
    cut = long["ts"].min() + (long["ts"].max() - long["ts"].min()) / 3
    fails, rep = failed_checks(
        long[long["ts"] >= cut], pd.DataFrame(), long[long["ts"] < cut], long["ts"].max(), gx=True
    )
    return {f"{o.sensor_id}:{o.check}" for o in rep.failed if o.severity == "error"}


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"


if __name__ == "__main__":
    main()
