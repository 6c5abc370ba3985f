"""Everything the Dagster control plane knows, assembled in one place."""

from __future__ import annotations

import dagster as dg

from dagster_project.assets.readings import readings, sensor_daily_stats
from dagster_project.resources import default_resources

daily_profile_job = dg.define_asset_job("daily_sensor_profile", selection=[sensor_daily_stats])

defs = dg.Definitions(
    assets=[readings, sensor_daily_stats],
    jobs=[daily_profile_job],
    schedules=[
        dg.build_schedule_from_partitioned_job(daily_profile_job, hour_of_day=0, minute_of_hour=30)
    ],
    resources=default_resources(),
)
