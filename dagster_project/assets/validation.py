"""Continuous validation of the lake's readings and features, and sensor calibration."""

import json
from datetime import UTC, datetime

import dagster as dg
import pandas as pd
import pyarrow as pa

from dagster_project.assets.daily import Check, daily_validation_asset
from dagster_project.assets.readings import readings
from dagster_project.plots import png_markdown, sensor_trend
from dagster_project.resources import LakeResource
from expectations.contracts import SENSORS
from expectations.suites import features_expectations, process_expectations, run_suite
from expectations.validation import Period, ValidationReport, gx_outcomes, validate_readings
from lake import Lake
from physics.registry import FEATURE_VERSION, feature_names

__all__ = [
    "ValidationConfig",
    "readings_validation",
    "features_validation",
    "sensor_calibration",
    "validated_dates",
    "validate_features_day",
    "validate_readings_day",
    "reference_window",
    "load_partition",
    "day_period",
]

features = dg.AssetSpec(
    "features",
    description="Feature windows (one per vibration frame), appended by the Bytewax telemetry flow.",
    group_name="lake",
    kinds={"delta", "bytewax"},
    owners=["team:data-plane"],
)


class ValidationConfig(dg.Config):
    """Where the reference window comes from: ``reference_date`` (a day known to be good), or
    by default the first ``reference_hours`` of each asset's data in the lake."""

    reference_date: str | None = None
    reference_hours: float = 2.0


def load_partition(store: Lake, table: str, day: str) -> pd.DataFrame:
    return store.read(table, filters=[("date", "=", datetime.fromisoformat(day).date())])


def day_period(store: Lake, day: str) -> Period:
    """Day ``day`` as the validation ``Period`` its readings are judged on: the series that
    reported on the day before (with their first reading there) count as reporting since
    midnight, and the assets that report on the day after (with their newest reading there)
    as covered to the day's end.  Only those two partitions are read (three columns): a series
    silent for a whole day before counts as starting anew, which that day's own validation
    reported."""
    start = pd.Timestamp(day, tz="UTC")
    end = start + pd.Timedelta(days=1)
    if not store.exists("readings"):
        return Period(start, end)

    def edge(when: pd.Timestamp, keys: list[str], how: str) -> pa.Table:
        return (
            store.read_arrow(
                "readings",
                columns=[*keys, "ts"],
                filters=[("date", "=", when.date())],
            )
            .group_by(keys)
            .aggregate([("ts", how)])
        )

    before = edge(start - pd.Timedelta(days=1), ["asset_id", "sensor_id"], "min").to_pylist()
    after = edge(end, ["asset_id"], "max").to_pylist()
    return Period(
        start,
        end,
        first_seen={(r["asset_id"], r["sensor_id"]): pd.Timestamp(r["ts_min"]) for r in before},
        newest={r["asset_id"]: pd.Timestamp(r["ts_max"]) for r in after},
    )


def reference_window(store: Lake, day: str, config: ValidationConfig) -> pd.DataFrame | None:
    """Readings of the reference window, or None when the partition itself is the earliest data."""
    if config.reference_date:
        return load_partition(store, "readings", config.reference_date)
    if not store.exists("readings"):
        return None
    days = [p["date"] for p in store.table("readings").partitions()]  # from the log, no data read
    if not days:
        return None
    first_day = min(days)
    data = load_partition(store, "readings", first_day)
    starts = data.groupby("asset_id")["ts"].transform("min")
    return data[data["ts"] < starts + pd.Timedelta(hours=config.reference_hours)]


def _results_rows(report: ValidationReport, run_id: str, table: str, day: str) -> pd.DataFrame:
    now = datetime.now(UTC)
    return pd.DataFrame(
        {
            "run_id": run_id,
            "validated_ts": now,
            "table_name": table,
            "partition": day,
            "expectation": [o.check for o in report.outcomes],
            "column_name": [
                "value" if o.check.startswith("gx:") else None for o in report.outcomes
            ],
            "sensor_id": [o.sensor_id for o in report.outcomes],
            "success": [o.success for o in report.outcomes],
            "observed": [
                json.dumps(
                    {
                        **o.observed,
                        "asset_id": o.asset_id,
                        "severity": o.severity,
                        "since": o.since.isoformat() if o.since is not None else None,
                        "description": o.describe(),
                    },
                    default=str,
                )
                for o in report.outcomes
            ],
        }
    )


def _failures_markdown(report: ValidationReport) -> str:
    if not report.failed:
        return "all checks passed"
    rows = [
        {
            "severity": o.severity,
            "asset": o.asset_id or "-",
            "sensor": o.sensor_id or "-",
            "check": o.check,
            "since": f"{o.since:%Y-%m-%d %H:%M}" if o.since is not None else "-",
            "what is wrong": o.message,
            "what to do": o.action,
        }
        for o in report.failed
    ]
    return pd.DataFrame(rows).to_markdown(index=False)


def _worst_sensor_plot(data: pd.DataFrame, report: ValidationReport) -> str:
    failed = [o for o in report.failed if o.asset_id and o.sensor_id]
    if not failed:
        return "_no failing sensor_"
    worst = sorted(failed, key=lambda o: (o.severity != "error", o.since is None))[0]
    rows = data[(data["asset_id"] == worst.asset_id) & (data["sensor_id"] == worst.sensor_id)]
    marks = [
        (o.since, o.check)
        for o in failed
        if o.asset_id == worst.asset_id and o.sensor_id == worst.sensor_id and o.since is not None
    ]
    title = f"{worst.asset_id} {worst.sensor_id}: {', '.join(sorted({o.check for o in failed if o.sensor_id == worst.sensor_id}))}"
    return png_markdown(sensor_trend(rows, title, marks), "worst sensor")


@daily_validation_asset(
    readings,
    {"delta", "great_expectations"},
    [
        Check(
            "readings_pass_contracts",
            "No error-level failure: contracts (GX), completeness, gaps, NaN rate, stuck, spikes, "
            "clock rate and calibration of every sensor, over the part of the day the stream has "
            "covered. Blocks training on this day.",
            blocking=True,
        ),
        Check(
            "readings_no_warnings",
            "No warning-level finding (distribution shift; a sensor only suspected because one "
            "of its physical inputs disagrees).",
        ),
    ],
)
def readings_validation(
    context: dg.AssetExecutionContext, config: ValidationConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Validates one day of ``readings`` against the sensor contracts and the time-series checks,
    appends every result to ``validation_results`` and shows the failures with what to do."""
    data, report = validate_readings_day(
        lake.lake(), context.partition_key, context.run.run_id, config
    )
    errors = [o for o in report.failed if o.severity == "error"]
    warnings = [o for o in report.failed if o.severity != "error"]
    pass_rate = 1 - len(report.failed) / len(report.outcomes) if report.outcomes else 0.0
    summary = {
        "readings": dg.MetadataValue.int(len(data)),
        "checks": dg.MetadataValue.int(len(report.outcomes)),
        "pass_rate": dg.MetadataValue.float(round(pass_rate, 4)),
    }
    return dg.MaterializeResult(
        metadata={
            **summary,
            "failures": dg.MetadataValue.md(_failures_markdown(report)),
            "worst_sensor": dg.MetadataValue.md(
                _worst_sensor_plot(data, report) if len(data) else "_no data_"
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="readings_pass_contracts",
                passed=bool(len(data)) and not errors,
                severity=dg.AssetCheckSeverity.ERROR,
                description="; ".join(o.describe() for o in errors[:5])
                or ("no readings" if not len(data) else "all passed"),
                metadata={
                    "errors": dg.MetadataValue.int(len(errors)),
                    "failing": dg.MetadataValue.md(_failures_markdown(ValidationReport(errors))),
                },
            ),
            dg.AssetCheckResult(
                check_name="readings_no_warnings",
                passed=not warnings,
                severity=dg.AssetCheckSeverity.WARN,
                description="; ".join(o.describe() for o in warnings[:5]) or "none",
                metadata={"warnings": dg.MetadataValue.int(len(warnings))},
            ),
        ],
    )


@daily_validation_asset(
    features,
    {"delta", "great_expectations"},
    [
        Check(
            "features_pass_expectations",
            "Current feature version only, all feature columns, non-negative amplitudes, shaft "
            "speed known for >= 90 % of frames.",
            blocking=True,
        )
    ],
)
def features_validation(
    context: dg.AssetExecutionContext, lake: LakeResource
) -> dg.MaterializeResult:
    """Validates one day of ``features`` with a GX suite derived from the feature registry."""
    data, results, report = validate_features_day(
        lake.lake(), context.partition_key, context.run.run_id
    )
    failed = [f"{o.check}: {o.observed}" for o in report.failed]
    return dg.MaterializeResult(
        metadata={
            "windows": dg.MetadataValue.int(len(data)),
            "expectations": dg.MetadataValue.int(len(results)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="features_pass_expectations",
                passed=bool(len(data)) and not failed,
                description="; ".join(failed[:5])
                or ("no features" if not len(data) else "all passed"),
                metadata={"failed": dg.MetadataValue.int(len(failed))},
            )
        ],
    )


def validate_readings_day(
    store: Lake, day: str, run_id: str, config: ValidationConfig | None = None
) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate one day of readings and record the results in ``validation_results`` (nothing
    is recorded for a day without readings).  Completeness and gaps are judged over the part of
    the day the stream has covered (``day_period``): today's partition on its elapsed part."""
    data = load_partition(store, "readings", day)
    dead = load_partition(store, "dead_letter", day)
    reference = reference_window(store, day, config or ValidationConfig())
    report = (
        validate_readings(
            data, dead_letter=dead, reference=reference, period=day_period(store, day)
        )
        if len(data)
        else ValidationReport()
    )
    results = _results_rows(report, run_id, "readings", day)
    if len(results):
        store.append(
            "validation_results",
            results,
            idempotency_key=(f"validation:readings:{day}:{run_id}", 0),
        )
    return data, report


def validate_features_day(
    store: Lake, day: str, run_id: str
) -> tuple[pd.DataFrame, list, ValidationReport]:
    """Run the features suite on one day and record the results in ``validation_results``."""
    data = load_partition(store, "features", day)
    # the vibration suite is about frame windows; process windows of scalar sensors have no
    # vibration columns (and are checked for version and level)
    frames = data["sensor_id"].map(lambda s: s in SENSORS and SENSORS[s].frames)
    results = []
    if frames.any():
        results += run_suite(
            data[frames], features_expectations(FEATURE_VERSION, feature_names()), "features"
        )
    if (~frames).any():
        results += run_suite(data[~frames], process_expectations(FEATURE_VERSION), "process")
    report = ValidationReport(gx_outcomes(results))
    rows = _results_rows(report, run_id, "features", day)
    if len(rows):
        store.append(
            "validation_results", rows, idempotency_key=(f"validation:features:{day}:{run_id}", 0)
        )
    return data, results, report


@daily_validation_asset(readings_validation, {"delta"})
def sensor_calibration(
    context: dg.AssetExecutionContext, config: ValidationConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Estimates each related sensor's offset, gain and drift against the physics of its
    neighbours and writes a new ``calibration`` version when the sensor is off and the estimate
    is trustworthy (enough operating range, relationship R^2 >= 0.9); the stream applies the
    newest version without restarting."""
    day, store = context.partition_key, lake.lake()
    data = load_partition(store, "readings", day)
    reference = reference_window(store, day, config)
    report = (
        validate_readings(data, reference=reference, run_gx=False)
        if len(data) and reference is not None
        else ValidationReport()
    )
    failing = {
        (o.asset_id, o.sensor_id)
        for o in report.failed
        if o.check == "calibration" and o.severity == "error"
    }
    existing = store.read("calibration")
    rows = []
    for est in report.calibrations:
        if (
            (est.asset_id, est.sensor_id) not in failing
            or not est.identifiable
            or est.confidence < 0.9
        ):
            continue
        mine = existing[
            (existing["asset_id"] == est.asset_id) & (existing["sensor_id"] == est.sensor_id)
        ]
        gain, offset = est.correction
        rows.append(
            {
                "asset_id": est.asset_id,
                "sensor_id": est.sensor_id,
                "valid_from": est.valid_from,
                "version": int(mine["version"].max()) + 1 if len(mine) else 1,
                "offset": offset,
                "gain": gain,
                "method": est.method,
                "confidence": est.confidence,
            }
        )
    if rows:
        store.append(
            "calibration",
            pd.DataFrame(rows),
            idempotency_key=(f"calibration:{day}:{context.run.run_id}", 0),
        )
    table = pd.DataFrame(rows)
    return dg.MaterializeResult(
        metadata={
            "new_versions": dg.MetadataValue.int(len(rows)),
            "estimates": dg.MetadataValue.md(
                pd.DataFrame(
                    [
                        {
                            "asset": e.asset_id,
                            "sensor": e.sensor_id,
                            "gain": round(e.gain, 5),
                            "offset": round(e.offset, 4),
                            "drift_per_day": round(e.drift_per_day, 5),
                            "identifiable": e.identifiable,
                            "confidence": round(e.confidence, 4),
                        }
                        for e in report.calibrations
                    ]
                ).to_markdown(index=False)
                if report.calibrations
                else "_no relationship could be evaluated_"
            ),
            "written": dg.MetadataValue.md(
                table.to_markdown(index=False) if len(table) else "_none_"
            ),
        }
    )


def validated_dates(store: Lake, table: str = "readings") -> set[str]:
    """Partitions whose newest validation run has no failed error-level result: training reads
    only these, so a bad day never reaches a model."""
    results = store.read("validation_results", filters=[("table_name", "=", table)])
    if results.empty:
        return set()
    newest = results.sort_values("validated_ts").groupby("partition")["run_id"].last()
    latest = results[results["run_id"].isin(newest.values)]
    severity = latest["observed"].map(lambda s: json.loads(s).get("severity", "error"))
    bad = latest[(~latest["success"]) & (severity == "error")]["partition"]
    return set(newest.index) - set(bad)
