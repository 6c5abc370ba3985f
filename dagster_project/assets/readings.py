"""Assets over the ``readings`` table, which the streaming data plane writes."""

import dagster as dg
import pandas as pd

from dagster_project.assets.daily import DAILY, Check, daily_validation_asset
from dagster_project.resources import LakeResource
from expectations.contracts import SENSORS
from lake.sql import query

__all__ = ["readings", "sensor_daily_stats", "DAILY", "contract_violations"]

readings = dg.AssetSpec(
    "readings",
    description="Accepted scalar readings, appended continuously by the Bytewax telemetry flow "
    "(`bytewax_flows.telemetry`). One row per reading; partitioned by UTC date.",
    group_name="lake",
    kinds={"delta", "bytewax"},
    owners=["team:data-plane"],
)


def contract_violations(daily: pd.DataFrame) -> pd.DataFrame:
    """Rows of a daily profile whose sensor is undeclared or whose min/max leave its range."""
    low = daily["sensor_id"].map(lambda s: SENSORS[s].low if s in SENSORS else float("nan"))
    high = daily["sensor_id"].map(lambda s: SENSORS[s].high if s in SENSORS else float("nan"))
    bad = low.isna() | (daily["min"] < low) | (daily["max"] > high) | daily["mean"].isna()
    return daily[bad]


@daily_validation_asset(
    readings,
    {"delta", "duckdb"},
    [
        Check(
            "readings_within_contract",
            "Every sensor in the day's readings is declared and stays inside its physical range "
            "(the stream should have rejected the rest).",
            blocking=True,
        ),
        Check("every_asset_reports", "The day has readings at all."),
    ],
)
def sensor_daily_stats(
    context: dg.AssetExecutionContext, lake: LakeResource
) -> dg.MaterializeResult:
    """Daily profile of every sensor's accepted readings: count, mean, min, max, first and last
    timestamp. Rebuilding a day replaces exactly that day's partition, so reruns are safe."""
    day = context.partition_key
    store = lake.lake()
    daily = query(
        store,
        f"""
        select cast('{day}' as date) as date, asset_id, sensor_id, count(*) as n_readings,
               avg(value) as mean, min(value) as min, max(value) as max,
               min(ts) as first_ts, max(ts) as last_ts
        from readings where date = cast('{day}' as date)
        group by asset_id, sensor_id order by asset_id, sensor_id
    """,
    ).to_pandas()
    store.replace_partition("sensor_daily_stats", daily, date=day)
    bad = contract_violations(daily)
    n_rows = int(daily["n_readings"].sum()) if len(daily) else 0
    return dg.MaterializeResult(
        metadata={
            "row_count": dg.MetadataValue.int(len(daily)),
            "readings": dg.MetadataValue.int(n_rows),
            "preview": dg.MetadataValue.md(
                daily.head(20).to_markdown(index=False) if len(daily) else "_no readings_"
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="readings_within_contract",
                passed=bad.empty,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "violations": dg.MetadataValue.int(len(bad)),
                    "details": dg.MetadataValue.md(
                        bad.to_markdown(index=False) if len(bad) else "none"
                    ),
                },
            ),
            dg.AssetCheckResult(
                check_name="every_asset_reports",
                passed=n_rows > 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "readings": dg.MetadataValue.int(n_rows),
                    "assets": dg.MetadataValue.int(
                        daily["asset_id"].nunique() if len(daily) else 0
                    ),
                },
            ),
        ],
    )
