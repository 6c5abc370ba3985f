"""Everything the Dagster control plane knows, assembled in one place."""

import dagster as dg

from dagster_project.assets.readings import DAILY, readings, sensor_daily_stats
from dagster_project.assets.validation import (
    features,
    features_validation,
    readings_validation,
    sensor_calibration,
)
from dagster_project.resources import default_resources
from dagster_project.sensors import build_new_readings_sensor

daily_profile_job = dg.define_asset_job("daily_sensor_profile", selection=[sensor_daily_stats])
validation_job = dg.define_asset_job(
    "validate_day",
    selection=[readings_validation, features_validation, sensor_calibration],
    description="Validate one day of readings and features, then recalibrate sensors that drifted.",
)

defs = dg.Definitions(
    assets=[
        readings,
        features,
        sensor_daily_stats,
        readings_validation,
        features_validation,
        sensor_calibration,
    ],
    jobs=[daily_profile_job, validation_job],
    schedules=[
        dg.build_schedule_from_partitioned_job(daily_profile_job, hour_of_day=0, minute_of_hour=30),
        dg.build_schedule_from_partitioned_job(validation_job, hour_of_day=0, minute_of_hour=45),
    ],
    sensors=[build_new_readings_sensor(validation_job, DAILY)],
    resources=default_resources(),
)
