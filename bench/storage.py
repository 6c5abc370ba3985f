"""Storage per 10 kHz vibration sensor-day: what the lake keeps (features + retained frames)
against the raw samples as float32.

How it is measured: a simulated fleet of three pumps with drive-end accelerometers at their
contract's rate (12 kHz; the stream dead-letters any other rate) (one healthy, one developing an outer-race and one an inner-race defect a third of the way in, so the
flight recorder's alert frames are included) runs through the real telemetry flow into a fresh
lake, with the stream's own retention rule (``FRAME_KEEP_EVERY``: one frame in N is kept as a
sample, plus the frames around each alert).  The vibration sensors' ``features`` and ``frames``
rows are then written, as lake maintenance leaves them (one compacted, Z-ordered file per day),
to their own Delta tables, and the bytes of those files are scaled linearly from the run's event
seconds to 86,400 s, the frames' bytes also from 12 kHz to 10 kHz (a frame is one second of
samples; a feature row is one per frame whatever the rate, so it is not scaled).
Raw = 10,000 samples/s x 86,400 s x 4 bytes = 3.456 GB per sensor-day.

Two ratios:
  - ingest_ratio: raw bytes / bytes the lake writes for one sensor-day;
  - retained_ratio: raw bytes / bytes the lake holds per sensor-day of history in steady state,
    when features are kept ``retention_days(features)`` and frames ``retention_days(frames)``
    (catalogue): per day of history, features + frames x frames_days / features_days.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.compute as pc
from bytewax.testing import run_main

from bench.common import Timer, parser, report
from bytewax_flows.sources import SimulatorSource
from bytewax_flows.telemetry import get_flow
from dataplane.scoring import FRAME_KEEP_EVERY
from lake import Lake, table_spec
from lake.maintenance import compact
from physics.simulator import VIBRATION_SENSOR, Fault, FleetSimulator, MachineSpec

RATE_HZ = 10_000.0  # the sensor-day the target is stated for
DAY_S = 86_400
T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def fleet(seconds: int) -> FleetSimulator:
    machines = [MachineSpec(f"pump-{i + 1:02d}", rpm=1797.0 - 25.0 * i) for i in range(3)]
    onset = seconds / 3
    faults = [
        Fault("pump-02", "outer_race", start_s=onset, time_to_failure_s=4 * seconds),
        Fault("pump-03", "inner_race", start_s=onset, time_to_failure_s=4 * seconds),
    ]
    return FleetSimulator(machines, faults, seed=11, start_us=T0_US)


def _bytes(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*.parquet"))


def measure(seconds: int, workdir: str) -> dict:
    lake = Lake(Path(workdir) / "lake")
    with Timer() as t:
        run_main(get_flow(SimulatorSource(fleet(seconds), n_chunks=seconds), lake.uri))
    kept = Lake(Path(workdir) / "vibration-only")
    sizes, rows = {}, {}
    for name in ("features", "frames"):
        table = lake.read_arrow(name, filters=[("sensor_id", "=", VIBRATION_SENSOR)])
        rows[name] = table.num_rows
        kept.append(name, table.drop_columns(["date"]))
        compact(kept, name, min_files=1)  # as maintenance leaves a closed day (Z-ordered)
        kept.vacuum(name, retention_hours=0)
        sizes[name] = _bytes(kept.table_uri(name))
    frames = lake.read_arrow("frames", filters=[("sensor_id", "=", VIBRATION_SENSOR)])
    n_samples = int(pc.sum(frames["n_samples"]).as_py() or 0)
    alert_frames = int(pc.sum(pc.starts_with(frames["retained_because"], "alert:")).as_py() or 0)
    sensors = 3
    sim_rate = float(pc.max(frames["sample_rate_hz"]).as_py() or RATE_HZ)
    scale = DAY_S / seconds / sensors  # per sensor, per day of event time
    features_day = sizes["features"] * scale
    frames_day = sizes["frames"] * scale * RATE_HZ / sim_rate
    raw_day = RATE_HZ * DAY_S * 4
    f_days = table_spec("features").retention_days or 1
    r_days = table_spec("frames").retention_days or f_days
    held_day = features_day + frames_day * min(r_days, f_days) / f_days
    return {
        "metrics": {
            "raw_mb_per_sensor_day": raw_day / 1e6,
            "features_mb_per_sensor_day": features_day / 1e6,
            "frames_mb_per_sensor_day": frames_day / 1e6,
            "ingest_ratio": raw_day / (features_day + frames_day),
            "retained_ratio": raw_day / held_day,
            "frames_kept_fraction": n_samples / (sim_rate * seconds * sensors),
        },
        "details": {
            "event_seconds": seconds,
            "sensors": sensors,
            "simulated_rate_hz": sim_rate,
            "frame_keep_every": FRAME_KEEP_EVERY,
            "feature_rows": rows["features"],
            "frame_rows": rows["frames"],
            "alert_frames": alert_frames,
            "features_retention_days": f_days,
            "frames_retention_days": r_days,
            "bytes": sizes,
            "flow_seconds": round(t.seconds, 1),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    p = parser("storage", __doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=None, help="event seconds to simulate")
    args = p.parse_args(argv)
    seconds = args.seconds or (60 if args.quick else 1800)
    with tempfile.TemporaryDirectory(prefix="plantpulse-bench-storage-") as workdir:
        result = measure(seconds, workdir)
    return report(
        "storage",
        result["metrics"],
        {"ingest_ratio": ">= 100", "retained_ratio": ">= 100"},
        quick=args.quick,
        out=args.out,
        extra=result["details"],
        title=f"bench.storage: one 10 kHz sensor-day, from {seconds} s x 3 sensors scaled"
        + (" (quick)" if args.quick else ""),
    )


if __name__ == "__main__":
    main()
