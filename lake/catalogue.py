"""The Delta table catalogue: every table's name, Arrow schema, partitioning and meaning.

Declared once here and used by both planes.  Timestamps are UTC microseconds; tables that grow
with time are partitioned by a ``date`` column that the writer derives from ``time_column``.
Each table also declares how long its rows are kept (``retention_days``: raw frames two weeks,
features three years, labels and decisions for ever), how long vacuum leaves removed files for
time travel (``vacuum_hours``) and what compaction clusters by (``z_order``); the lake
maintenance assets of the control plane apply them (``lake.maintenance``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa

from physics.registry import FEATURES

__all__ = ["TableSpec", "TABLES", "table_spec", "table_names", "UnknownTableError", "TS"]

TS = pa.timestamp("us", tz="UTC")
"""The one timestamp type of the lake: UTC, microseconds."""


class UnknownTableError(KeyError):
    """A table name that the catalogue does not declare."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class TableSpec:
    """A declared Delta table."""

    name: str
    schema: pa.Schema
    description: str
    time_column: str | None = None
    partition_by: tuple[str, ...] = ()
    retention_days: int | None = None
    """Rows are kept this many days (whole ``date`` partitions older are deleted by lake
    maintenance); None keeps them for ever."""
    vacuum_hours: int = 168
    """Files no longer in the table are deleted by ``vacuum`` once they have been out of it this
    long: the window for time travel and for readers still on an older version."""
    z_order: tuple[str, ...] = ()
    """Columns compaction clusters each partition by (Z-order), for the usual queries: one
    asset over a time range.  Empty: plain bin-packing compaction."""

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    @cached_property
    def input_schema(self) -> pa.Schema:
        """The schema writers must supply: the full schema minus the derived ``date`` column
        (computed once: the stream asks for it for every row it builds)."""
        if self.time_column and "date" in self.partition_by:
            return pa.schema([f for f in self.schema if f.name != "date"])
        return self.schema


def _f(name: str, type_: pa.DataType, nullable: bool = False, doc: str = "") -> pa.Field:
    meta = {"description": doc} if doc else None
    return pa.field(name, type_, nullable=nullable, metadata=meta)


_DATE = _f("date", pa.date32(), doc="UTC date of the time column; the partition")

_TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "readings",
        pa.schema(
            [
                _f("asset_id", pa.string(), doc="machine the sensor is on"),
                _f("sensor_id", pa.string(), doc="sensor name from the sensor contracts"),
                _f("ts", TS, doc="event time of the reading"),
                _f("value", pa.float64(), doc="calibrated value in the contract's unit"),
                _f("raw_value", pa.float64(), doc="value as received, before calibration"),
                _f("quality", pa.string(), doc="'good', or why the value is suspect"),
                _f("ingest_ts", TS, doc="when the stream accepted it"),
                _DATE,
            ]
        ),
        "One accepted scalar reading.",
        time_column="ts",
        partition_by=("date",),
        retention_days=400,
        z_order=("asset_id", "sensor_id", "ts"),
    ),
    TableSpec(
        "frames",
        pa.schema(
            [
                _f("asset_id", pa.string()),
                _f("sensor_id", pa.string()),
                _f("ts_start", TS, doc="event time of the first sample"),
                _f("sample_rate_hz", pa.float64()),
                _f("n_samples", pa.int32()),
                _f("samples", pa.list_(pa.float32()), doc="the samples, in the contract's unit"),
                _f("retained_because", pa.string(), doc="'sampled' or 'alert:<alert_id>'"),
                _DATE,
            ]
        ),
        "One window of high-rate samples kept for diagnosis (around alerts, or sampled).",
        time_column="ts_start",
        partition_by=("date",),
        retention_days=14,
        vacuum_hours=24,
        z_order=("asset_id", "ts_start"),
    ),
    TableSpec(
        "dead_letter",
        pa.schema(
            [
                _f("received_ts", TS, doc="when the stream received the input"),
                _f("source", pa.string(), doc="where it came from, e.g. 'sim:pump-01', 'mqtt'"),
                _f("raw", pa.binary(), doc="the rejected payload, byte for byte"),
                _f("reason", pa.string(), doc="reason code, e.g. malformed, out_of_range, late"),
                _f("detail", pa.string(), doc="human-readable explanation"),
                _f("asset_id", pa.string(), nullable=True),
                _f("sensor_id", pa.string(), nullable=True),
                _DATE,
            ]
        ),
        "One rejected input, with the raw payload and a reason code.",
        time_column="received_ts",
        partition_by=("date",),
        retention_days=90,
    ),
    TableSpec(
        "unknown_readings",
        pa.schema(
            [
                _f("asset_id", pa.string(), doc="asset id as received (may be undeclared)"),
                _f("sensor_id", pa.string(), doc="a sensor the plant model does not declare"),
                _f("ts", TS, doc="event time of the reading"),
                _f("value", pa.float64(), True, doc="value as received (NaN/null kept)"),
                _f(
                    "raw",
                    pa.binary(),
                    doc="the input it came in: the message's payload, or "
                    "this sensor's part of a multi-sensor message",
                ),
                _f("source", pa.string(), doc="where it came from"),
                _f("ingest_ts", TS, doc="when the stream landed it"),
                _DATE,
            ]
        ),
        "One reading of a sensor the plant model does not declare (schema on read): kept "
        "apart from readings until `plantpulse sensors accept` declares it and replays it.",
        time_column="ts",
        partition_by=("date",),
        retention_days=30,
        z_order=("asset_id", "sensor_id", "ts"),
    ),
    TableSpec(
        "sensor_proposals",
        pa.schema(
            [
                _f("asset_id", pa.string()),
                _f("sensor_id", pa.string()),
                _f("profiled_ts", TS, doc="when the profile was computed"),
                _f("n_readings", pa.int64()),
                _f("first_ts", TS),
                _f("last_ts", TS),
                _f("min", pa.float64(), True),
                _f("max", pa.float64(), True),
                _f("rate_hz", pa.float64(), True, doc="median reading rate"),
                _f("resolution", pa.float64(), True, doc="smallest step between values"),
                _f("gaps", pa.int64(), doc="intervals longer than 5 median intervals"),
                _f("longest_gap_s", pa.float64(), True),
                _f("stuck_stretches", pa.int64(), doc="runs of one repeated value >= 10 s"),
                _f("longest_stuck_s", pa.float64(), True),
                _f("non_finite", pa.int64(), doc="null, NaN or infinite values"),
                _f("kind", pa.string(), True, doc="guessed sensor kind (plant's sensor_kinds)"),
                _f("kind_reason", pa.string(), True),
                _f("proposal", pa.string(), doc="the proposed plant-file sensor entry, YAML"),
            ]
        ),
        "One proposed contract per unknown sensor, from its profile (built by Dagster).",
    ),
    TableSpec(
        "features",
        pa.schema(
            [
                _f("asset_id", pa.string()),
                _f("sensor_id", pa.string(), doc="sensor the window was computed from"),
                _f("window_start", TS),
                _f("window_end", TS),
                _f("feature_version", pa.int32()),
                _f("n_samples", pa.int64(), doc="samples or readings in the window"),
                *[_f(f.name, pa.float64(), True, f"{f.description} [{f.unit}]") for f in FEATURES],
                _DATE,
            ]
        ),
        "One feature window per asset and sensor.",
        time_column="window_end",
        partition_by=("date",),
        retention_days=3 * 365,
        z_order=("asset_id", "window_end"),
    ),
    TableSpec(
        "scores",
        pa.schema(
            [
                _f("asset_id", pa.string()),
                _f("window_end", TS),
                _f("anomaly_score", pa.float64(), doc="online detector score, higher = stranger"),
                _f("prediction", pa.float64(), True, doc="supervised model output (RUL, class)"),
                _f("model_name", pa.string(), True),
                _f("model_version", pa.string(), True),
                _f("feature_version", pa.int32()),
                _f("latency_ms", pa.float64(), doc="ingest to score"),
                _DATE,
            ]
        ),
        "One scored window.",
        time_column="window_end",
        partition_by=("date",),
        retention_days=400,
        z_order=("asset_id", "window_end"),
    ),
    TableSpec(
        "prognostics",
        pa.schema(
            [
                _f("asset_id", pa.string()),
                _f("ts", TS, doc="end of the health-indicator window the estimate is as of"),
                _f("sensor_id", pa.string(), doc="the sensor the health indicator is read from"),
                _f("feature", pa.string(), doc="the features column that is the indicator"),
                _f("health_indicator", pa.float64(), doc="the indicator's value in the window"),
                _f(
                    "hi_z",
                    pa.float64(),
                    doc="the indicator in healthy-baseline spreads "
                    "(robust z, signed so that wear is positive)",
                ),
                _f(
                    "prior_rul",
                    pa.float64(),
                    doc="RUL of the asset's own exponential "
                    "degradation fit crossing the model's failure level, s",
                ),
                _f(
                    "rul",
                    pa.float64(),
                    doc="remaining useful life: prior + the regressor's "
                    "residual correction, s (capped at the plant's rul_cap_s)",
                ),
                _f("rul_low", pa.float64(), doc="lower end of the conformal interval, s"),
                _f("rul_high", pa.float64(), doc="upper end of the conformal interval, s"),
                _f("coverage", pa.float64(), doc="nominal coverage of the interval"),
                _f("model_name", pa.string()),
                _f("model_version", pa.string()),
                _DATE,
            ]
        ),
        "One remaining-useful-life estimate of an asset with a declared health indicator "
        "(dataplane.prognostics): hybrid of an online degradation prior and the RUL champion.",
        time_column="ts",
        partition_by=("date",),
        retention_days=3 * 365,
        z_order=("asset_id", "ts"),
    ),
    TableSpec(
        "alerts",
        pa.schema(
            [
                _f("alert_id", pa.string()),
                _f("asset_id", pa.string()),
                _f("opened_ts", TS),
                _f("closed_ts", TS, True),
                _f(
                    "updated_ts",
                    TS,
                    doc="event time of this state; the newest row of an alert_id is current",
                ),
                _f("severity", pa.string(), doc="info, warning or critical"),
                _f("status", pa.string(), doc="open or closed"),
                _f("summary", pa.string(), doc="what is wrong, in words"),
                _f(
                    "top_features",
                    pa.list_(pa.struct([("feature", pa.string()), ("contribution", pa.float64())])),
                    doc="features that contributed most (SHAP)",
                ),
                _f(
                    "suspected_cause",
                    pa.string(),
                    True,
                    doc="an upstream asset's open alert or drift event (plant topology), "
                    "e.g. 'upstream pump-01 in alert since 10:02:00'",
                ),
                _f(
                    "downstream_effects",
                    pa.list_(pa.string()),
                    True,
                    doc="alerts of downstream assets that opened while this one was open",
                ),
                _DATE,
            ]
        ),
        "One alert lifecycle: a row when it opens, when its diagnosis changes, and when it closes.",
        time_column="opened_ts",
        partition_by=("date",),
    ),
    TableSpec(
        "drift_events",
        pa.schema(
            [
                _f("ts", TS),
                _f("asset_id", pa.string()),
                _f("subject_kind", pa.string(), doc="sensor, feature or residual"),
                _f("subject", pa.string(), doc="which sensor/feature/model"),
                _f("detector", pa.string(), doc="ADWIN, PageHinkley, KSWIN, ..."),
                _f("statistic", pa.float64(), True, doc="the value that fired"),
                _f("detail", pa.string(), True),
                _DATE,
            ]
        ),
        "One detected change.",
        time_column="ts",
        partition_by=("date",),
    ),
    TableSpec(
        "validation_results",
        pa.schema(
            [
                _f("run_id", pa.string()),
                _f("validated_ts", TS),
                _f("table_name", pa.string()),
                _f("partition", pa.string()),
                _f("expectation", pa.string()),
                _f("column_name", pa.string(), True),
                _f("sensor_id", pa.string(), True),
                _f("success", pa.bool_()),
                _f("observed", pa.string(), True, doc="observed value or summary, as JSON"),
                _DATE,
            ]
        ),
        "One expectation result on one partition.",
        time_column="validated_ts",
        partition_by=("date",),
    ),
    TableSpec(
        "calibration",
        pa.schema(
            [
                _f("asset_id", pa.string()),
                _f("sensor_id", pa.string()),
                _f("valid_from", TS),
                _f("version", pa.int64()),
                _f("offset", pa.float64(), doc="calibrated = gain * raw + offset"),
                _f("gain", pa.float64()),
                _f("method", pa.string()),
                _f("confidence", pa.float64(), True),
            ]
        ),
        "One calibration estimate for a sensor.",
    ),
    TableSpec(
        "maintenance_events",
        pa.schema(
            [
                _f("asset_id", pa.string()),
                _f("ts", TS),
                _f(
                    "kind",
                    pa.string(),
                    doc="failure, repair, inspection, fault_injected, or normal_operation / "
                    "operating_change (the stream re-baselines the asset's normal)",
                ),
                _f("component", pa.string(), doc="e.g. bearing_outer_race, temperature_sensor"),
                _f("detail", pa.string(), True),
                _f("source", pa.string(), doc="who recorded it: simulator, cmms, dataset name"),
            ]
        ),
        "One failure, repair or inspection (the labels).",
    ),
    TableSpec(
        "model_decisions",
        pa.schema(
            [
                _f("ts", TS),
                _f("model_name", pa.string()),
                _f("candidate_version", pa.string()),
                _f("champion_version", pa.string(), True),
                _f("decision", pa.string(), doc="promote, refuse or rollback"),
                _f("metrics", pa.string(), doc="evidence as JSON"),
                _f("reasons", pa.list_(pa.string())),
            ]
        ),
        "One promotion-gate decision, with its evidence.",
    ),
    TableSpec(
        "deliveries",
        pa.schema(
            [
                _f("ts", TS, doc="when the attempt ended"),
                _f("target", pa.string(), doc="webhook, mqtt, sparkplug or opcua"),
                _f("key", pa.string(), doc="idempotency key: the alert state delivered"),
                _f("alert_id", pa.string(), True),
                _f("asset_id", pa.string(), True),
                _f("attempt", pa.int32(), doc="1 for the first try of this key at this target"),
                _f("status", pa.string(), doc="delivered, retry (failed, will retry) or failed"),
                _f("code", pa.int32(), True, doc="HTTP status or MQTT reason code, if any"),
                _f("error", pa.string(), True, doc="why it failed"),
                _DATE,
            ]
        ),
        "One delivery attempt of an alert state to an outbound target, with its outcome.",
        time_column="ts",
        partition_by=("date",),
        retention_days=400,
    ),
    TableSpec(
        "sensor_daily_stats",
        pa.schema(
            [
                _f("date", pa.date32()),
                _f("asset_id", pa.string()),
                _f("sensor_id", pa.string()),
                _f("n_readings", pa.int64()),
                _f("mean", pa.float64()),
                _f("min", pa.float64()),
                _f("max", pa.float64()),
                _f("first_ts", TS),
                _f("last_ts", TS),
            ]
        ),
        "Daily profile of each sensor's accepted readings (built by Dagster).",
        partition_by=("date",),
    ),
)

TABLES: dict[str, TableSpec] = {t.name: t for t in _TABLES}


def table_names() -> list[str]:
    return list(TABLES)


def table_spec(name: str) -> TableSpec:
    """The declared table ``name``, or ``UnknownTableError`` listing the known ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise UnknownTableError(
            f"unknown table {name!r}; the lake has: {', '.join(TABLES)}"
        ) from None
