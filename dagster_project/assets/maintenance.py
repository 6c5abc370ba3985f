"""Lake maintenance as assets: expire rows past each table's retention and compact the stream's
small files (Z-ordered by asset and time), then vacuum files out of the tables for longer than
their window.  The rules are the tables' declarations in ``lake.catalogue``; the work is
``lake.maintenance``.  Safe while the stream appends (optimistic concurrency, retried commits)."""

import dagster as dg
import pandas as pd

from dagster_project.resources import LakeResource
from lake import TABLES
from lake.maintenance import maintain, partition_files

__all__ = ["lake_compaction", "lake_vacuum", "maintenance_job", "maintenance_schedule"]

_STREAMED = ("readings", "features", "frames", "scores", "alerts", "drift_events", "dead_letter")


def _rules_table() -> str:
    rows = [
        {
            "table": t.name,
            "keep rows (days)": "for ever" if t.retention_days is None else t.retention_days,
            "vacuum after (h)": t.vacuum_hours,
            "z-order": ", ".join(t.z_order) or "-",
        }
        for t in TABLES.values()
    ]
    return pd.DataFrame(rows).to_markdown(index=False)


@dg.asset(
    deps=[dg.AssetKey(name) for name in _STREAMED],
    group_name="maintenance",
    kinds={"delta"},
    owners=["team:platform"],
)
def lake_compaction(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Every table: drop the `date` partitions older than its retention (raw frames go after
    two weeks, features after three years), then fold each partition's small files into large
    ones, Z-ordered by asset and time for closed days."""
    store = lake.lake()
    reports = maintain(store, vacuum_tables=False)
    for r in reports:
        context.log.info("%s", r.as_row())
    table = pd.DataFrame([r.as_row() for r in reports])
    return dg.MaterializeResult(
        metadata={
            "tables": dg.MetadataValue.int(len(reports)),
            "files_before": dg.MetadataValue.int(
                int(table["files_before"].sum()) if len(table) else 0
            ),
            "files_after": dg.MetadataValue.int(
                int(table["files_after"].sum()) if len(table) else 0
            ),
            "expired_partitions": dg.MetadataValue.int(
                sum(len(r.expired_partitions) for r in reports)
            ),
            "per_table": dg.MetadataValue.md(table.to_markdown(index=False) if len(table) else "-"),
            "rules": dg.MetadataValue.md(_rules_table()),
        }
    )


@dg.asset(
    deps=[lake_compaction], group_name="maintenance", kinds={"delta"}, owners=["team:platform"]
)
def lake_vacuum(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Every table: delete the files that compaction and expiry took out of it once they are
    older than the table's vacuum window (readers on older versions and time travel keep
    working inside the window)."""
    store = lake.lake()
    reports = maintain(store, compact_tables=False)
    removed = {r.table: r.vacuumed_files for r in reports}
    context.log.info("vacuumed %s", removed)
    files = {name: sum(partition_files(store, name).values()) for name in removed}
    return dg.MaterializeResult(
        metadata={
            "files_deleted": dg.MetadataValue.int(sum(removed.values())),
            "per_table": dg.MetadataValue.json({"deleted": removed, "live_files": files}),
        }
    )


maintenance_job = dg.define_asset_job(
    "lake_maintenance",
    selection=[lake_compaction, lake_vacuum],
    description="Expire, compact (Z-order) and vacuum every lake table by its declared rules.",
)

maintenance_schedule = dg.ScheduleDefinition(
    job=maintenance_job,
    cron_schedule="15 3 * * *",
    description="Nightly lake maintenance, after the day's partitions have closed.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
