"""Sensors that keep validation continuous and retrain models when the stream sees drift."""

import json
import os
import time
from typing import Any

import dagster as dg
import pandas as pd

from dagster_project.resources import LakeResource, MLflowResource
from models.registry import FAULT_MODEL, champion_version

DEBOUNCE_S = 15 * 60
"""A day with fresh data is revalidated at most this often (the stream commits every second)."""


def new_readings_requests(
    store_files: list[dict], cursor: dict, now_s: float, valid_keys: set[str] | None = None
) -> tuple[list[str], dict]:
    """Which daily partitions to validate, given the ``readings`` table's files.

    ``store_files`` rows have ``modification_time`` (ms) and ``date``; the cursor remembers the
    newest file seen, the days with unvalidated data (``pending``) and when each day was last
    requested, so a burst of commits gives one run per day per ``DEBOUNCE_S``.
    """
    seen_ms = cursor.get("seen_ms", 0)
    pending = set(cursor.get("pending", []))
    last_run = dict(cursor.get("last_run", {}))
    newest = seen_ms
    for f in store_files:
        if f["modification_time"] > seen_ms:
            pending.add(f["date"])
            newest = max(newest, f["modification_time"])
    due = sorted(d for d in pending if now_s - last_run.get(d, 0.0) >= DEBOUNCE_S)
    if valid_keys is not None:
        due = [d for d in due if d in valid_keys]
    for d in due:
        last_run[d] = now_s
        pending.discard(d)
    return due, {"seen_ms": newest, "pending": sorted(pending), "last_run": last_run}


def build_new_readings_sensor(job: Any, partitions: dg.PartitionsDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Validates a day of readings when the stream has written new data to it "
        f"(at most once per {DEBOUNCE_S // 60} minutes per day).",
    )
    def new_readings_sensor(
        context: dg.SensorEvaluationContext, lake: LakeResource
    ) -> dg.SensorResult | dg.SkipReason:
        store = lake.lake()
        if not store.exists("readings"):
            return dg.SkipReason("no readings table yet")
        actions = store.table("readings").get_add_actions(flatten=True)
        files = [
            {"modification_time": m, "date": d.isoformat()}
            for m, d in zip(
                actions.column("modification_time").to_pylist(),
                actions.column("partition.date").to_pylist(),
                strict=True,
            )
        ]
        cursor = json.loads(context.cursor) if context.cursor else {}
        keys = set(partitions.get_partition_keys())
        due, new_cursor = new_readings_requests(files, cursor, time.time(), keys)
        if not due:
            context.update_cursor(json.dumps(new_cursor))
            return dg.SkipReason("no day with new readings is due")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(partition_key=d, run_key=f"{d}:{new_cursor['seen_ms']}") for d in due
            ],
            cursor=json.dumps(new_cursor),
        )

    return new_readings_sensor


DRIFT_DEBOUNCE_S = float(os.environ.get("PLANTPULSE_DRIFT_DEBOUNCE_S", "600"))
"""After a drift-triggered retrain, more drift events wait this long before the next one."""


def drift_requests(
    new_events: int, newest_ts_us: int, cursor: dict, now_s: float
) -> tuple[bool, dict]:
    """Whether to request a retrain now, given ``new_events`` drift events up to
    ``newest_ts_us`` that the cursor has not counted yet.  Events arriving within
    ``DRIFT_DEBOUNCE_S`` of the last request stay ``pending`` and give one run when it passes."""
    pending = int(cursor.get("pending", 0)) + new_events
    last_run = float(cursor.get("last_run_s", -1e18))
    due = pending > 0 and now_s - last_run >= DRIFT_DEBOUNCE_S
    return due, {
        "seen_ts_us": max(newest_ts_us, int(cursor.get("seen_ts_us", 0))),
        "pending": 0 if due else pending,
        "last_run_s": now_s if due else last_run,
    }


def build_drift_sensor(job: Any) -> dg.SensorDefinition:
    @dg.sensor(
        job=job,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Retrains the fault classifier when the stream records drift events "
        f"(one run per burst: at most once per {DRIFT_DEBOUNCE_S / 60:g} minutes).",
    )
    def drift_retrain_sensor(
        context: dg.SensorEvaluationContext, lake: LakeResource, mlflow: MLflowResource
    ) -> dg.SensorResult | dg.SkipReason:
        """Drift events newer than the cursor and than the serving champion (whose training
        data already saw anything older) count towards a retrain."""
        store = lake.lake()
        if not store.exists("drift_events"):
            return dg.SkipReason("no drift_events table yet")
        cursor = json.loads(context.cursor) if context.cursor else {}
        champ = champion_version(mlflow.client(), FAULT_MODEL)
        trained_us = int(champ.creation_timestamp) * 1000 if champ is not None else 0
        seen = max(int(cursor.get("seen_ts_us", 0)), trained_us)
        events = store.read(
            "drift_events",
            columns=["ts", "asset_id", "subject", "detector"],
            filters=[("ts", ">", pd.Timestamp(seen, unit="us", tz="UTC"))],
        )
        newest = int(events["ts"].max().value // 1000) if len(events) else seen
        due, new_cursor = drift_requests(len(events), newest, cursor, time.time())
        if not due:
            context.update_cursor(json.dumps(new_cursor))
            return dg.SkipReason(
                f"{new_cursor['pending']} drift event(s) pending; debouncing"
                if new_cursor["pending"]
                else "no new drift events"
            )
        assets = sorted(events["asset_id"].unique()) if len(events) else []
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"drift:{newest}",
                    tags={
                        "plantpulse/trigger": "drift_events",
                        "plantpulse/assets": ",".join(assets)[:200],
                    },
                )
            ],
            cursor=json.dumps(new_cursor),
        )

    return drift_retrain_sensor
