"""Everything the Dagster control plane knows, assembled in one place."""

import os

import dagster as dg

from dagster_project.assets.maintenance import (
    lake_compaction,
    lake_vacuum,
    maintenance_job,
    maintenance_schedule,
)
from dagster_project.assets.models import (
    fault_candidate,
    fault_promotion,
    fault_training_set,
    maintenance_events,
    remaining_useful_life,
    rul_candidate,
    rul_promotion,
    rul_training_set,
)
from dagster_project.assets.onboarding import (
    build_unknown_sensors_sensor,
    onboarding_job,
    sensor_proposals,
    unknown_readings,
)
from dagster_project.assets.operations import STREAM_TABLES, operations_overview
from dagster_project.assets.plant import plant_model
from dagster_project.assets.readings import DAILY, readings, sensor_daily_stats
from dagster_project.assets.validation import (
    features,
    features_validation,
    readings_validation,
    sensor_calibration,
)
from dagster_project.resources import DEPLOYMENT_VARIABLE, resources_for
from dagster_project.sensors import (
    build_drift_sensor,
    build_label_sensor,
    build_new_readings_sensor,
)

# The jobs run their steps in the run's own process: on a small machine starting one Python
# process per step (each importing MLflow, XGBoost, GX) took longer than the steps themselves.
QUEUE_TAG = "plantpulse/queue"
"""Run tag the instance's run queue limits by (``dagster.yaml`` written by ``plantpulse up``:
one ``validate_day`` and one ``retrain`` run at a time).  Retrains carry a higher
``dagster/priority``: when runs queue, the new champion is the one waiting for."""

daily_profile_job = dg.define_asset_job("daily_sensor_profile", selection=[sensor_daily_stats])
validation_job = dg.define_asset_job(
    "validate_day",
    selection=[readings_validation, features_validation, sensor_calibration],
    description="Validate one day of readings and features, then recalibrate sensors that drifted.",
    run_tags={QUEUE_TAG: "validate_day"},
    executor_def=dg.in_process_executor,
)
retrain_fault_job = dg.define_asset_job(
    "retrain_fault_classifier",
    selection=[fault_training_set, fault_candidate, fault_promotion],
    description="Label validated feature windows, train a fault classifier, and gate it "
    "against the champion the stream serves.",
    run_tags={QUEUE_TAG: "retrain", "dagster/priority": "10"},
    executor_def=dg.in_process_executor,
)
retrain_rul_job = dg.define_asset_job(
    "retrain_rul",
    selection=[rul_training_set, rul_candidate, rul_promotion],
    description="Train the RUL model on the lake's run-to-failure histories and gate it "
    "against the champion.",
    # behind a queued fault-classifier retrain: a new fault's label is the loop operators wait on
    run_tags={QUEUE_TAG: "retrain", "dagster/priority": "5"},
    executor_def=dg.in_process_executor,
)

operations_job = dg.define_asset_job(
    "operations_report",
    selection=[operations_overview],
    description="Refresh the operators' overview: scores, alerts, drift, spectra.",
)

defs = dg.Definitions(
    assets=[
        readings,
        features,
        sensor_daily_stats,
        readings_validation,
        features_validation,
        sensor_calibration,
        maintenance_events,
        fault_training_set,
        fault_candidate,
        fault_promotion,
        rul_training_set,
        rul_candidate,
        rul_promotion,
        remaining_useful_life,
        operations_overview,
        plant_model,
        sensor_proposals,
        unknown_readings,
        *STREAM_TABLES,
        lake_compaction,
        lake_vacuum,
    ],
    jobs=[
        daily_profile_job,
        validation_job,
        retrain_fault_job,
        retrain_rul_job,
        operations_job,
        maintenance_job,
        onboarding_job,
    ],
    schedules=[
        maintenance_schedule,
        dg.build_schedule_from_partitioned_job(daily_profile_job, hour_of_day=0, minute_of_hour=30),
        dg.build_schedule_from_partitioned_job(validation_job, hour_of_day=0, minute_of_hour=45),
        dg.ScheduleDefinition(
            job=retrain_fault_job,
            cron_schedule="0 2 * * 0",
            description="Weekly retrain as a fallback when no drift has triggered one.",
            default_status=dg.DefaultScheduleStatus.RUNNING,
        ),
        dg.ScheduleDefinition(
            job=operations_job,
            cron_schedule="*/15 * * * *",
            description="The operators' overview, every 15 minutes.",
            default_status=dg.DefaultScheduleStatus.RUNNING,
        ),
        dg.ScheduleDefinition(
            job=retrain_rul_job,
            cron_schedule="30 2 * * 0",
            description="Weekly RUL retrain.",
        ),
    ],
    sensors=[
        build_new_readings_sensor(validation_job, DAILY),
        build_drift_sensor(retrain_fault_job),
        build_label_sensor(retrain_fault_job, retrain_rul_job),
        build_unknown_sensors_sensor(onboarding_job),
        # evaluates the assets' AutomationConditions (off unless a sensor like this one runs)
        dg.AutomationConditionSensorDefinition(
            "default_automation_condition_sensor",
            target=dg.AssetSelection.all(),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=60,
            description="Keeps downstream assets fresh as their AutomationConditions say "
            "(e.g. the promotion gate after a new candidate).",
        ),
    ],
    # the deployment picks its dictionary; the values resolve where they are used
    resources=resources_for(os.environ.get(DEPLOYMENT_VARIABLE)),
)
