"""Sensors that keep validation continuous and retrain models when the stream sees drift."""

import json
import os
import time
from typing import Any

import dagster as dg
import pandas as pd

from dagster_project.resources import LakeResource, MLflowResource
from models.registry import FAULT_MODEL, champion_version

DEBOUNCE_S = float(os.environ.get("PLANTPULSE_VALIDATION_DEBOUNCE_S", "900"))
"""A day with fresh data is revalidated at most this often (the stream commits every second)."""
VALIDATION_TICK_S = int(os.environ.get("PLANTPULSE_VALIDATION_TICK_S", "60"))
"""How often ``new_readings_sensor`` looks for days with new readings."""
MAX_DAYS_PER_TICK = 3
"""Validation runs requested per sensor tick at most: a replay of a year of history queues its
days a few at a time (newest first), not one run per day at once; the rest stay pending in the
cursor for the next ticks, and the instance's run queue runs one ``validate_day`` at a time."""


def new_readings_requests(
    store_files: list[dict],
    cursor: dict,
    now_s: float,
    valid_keys: set[str] | None = None,
    max_days: int = MAX_DAYS_PER_TICK,
) -> tuple[list[str], dict]:
    """Which daily partitions to validate, given the ``readings`` table's files.

    ``store_files`` rows have ``modification_time`` (ms) and ``date``; the cursor remembers the
    newest file seen, the days with unvalidated data (``pending``) and when each day was last
    requested, so a burst of commits gives one run per day per ``DEBOUNCE_S``.  At most
    ``max_days`` days are due per call, the newest first; the others stay pending.
    """
    seen_ms = cursor.get("seen_ms", 0)
    pending = set(cursor.get("pending", []))
    last_run = dict(cursor.get("last_run", {}))
    newest = seen_ms
    for f in store_files:
        if f["modification_time"] > seen_ms:
            pending.add(f["date"])
            newest = max(newest, f["modification_time"])
    due = sorted((d for d in pending if now_s - last_run.get(d, 0.0) >= DEBOUNCE_S), reverse=True)
    if valid_keys is not None:
        due = [d for d in due if d in valid_keys]
    due = sorted(due[:max_days])
    for d in due:
        last_run[d] = now_s
        pending.discard(d)
    return due, {"seen_ms": newest, "pending": sorted(pending), "last_run": last_run}


def build_new_readings_sensor(job: Any, partitions: dg.PartitionsDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        job=job,
        minimum_interval_seconds=VALIDATION_TICK_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Validates a day of readings when the stream has written new data to it "
        f"(at most once per {DEBOUNCE_S / 60:g} minutes per day, at most {MAX_DAYS_PER_TICK} days"
        " per tick, newest first).",
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


LABEL_KINDS = ("failure", "fault_injected", "repair")
"""``maintenance_events`` kinds that change what a window is labelled (inspections do not)."""


def label_requests(events: pd.DataFrame, cursor: dict) -> tuple[list[str], dict]:
    """New labels: the keys (``asset_id@ts@kind``) of the rows of ``events`` (with ``asset_id``,
    ``ts``, ``kind``) that are not in ``cursor['seen']``, and the cursor with them added.  Only
    kinds that change a window's label count; labels are few (people write them), so the
    cursor keeps them all."""
    seen = set(cursor.get("seen", []))
    keys = [
        f"{a}@{int(t.value // 1000)}@{k}"
        for a, t, k in zip(events["asset_id"], events["ts"], events["kind"], strict=True)
        if k in LABEL_KINDS
    ]
    new = sorted(set(keys) - seen)
    return new, {"seen": sorted(seen | set(keys))}


def build_label_sensor(job: Any) -> dg.SensorDefinition:
    @dg.sensor(
        job=job,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Retrains the fault classifier when new labels arrive in maintenance_events "
        "(a technician's confirmation through `plantpulse label`, a CMMS import): retraining "
        "uses what is labelled, whenever it is labelled.",
    )
    def new_labels_sensor(
        context: dg.SensorEvaluationContext, lake: LakeResource, mlflow: MLflowResource
    ) -> dg.SensorResult | dg.SkipReason:
        """Labels the serving champion was not trained with count as new: on the first
        evaluation, those committed after the champion was registered; then, those not in the
        cursor."""
        store = lake.lake()
        if not store.exists("maintenance_events"):
            return dg.SkipReason("no maintenance_events table yet")
        columns = ["asset_id", "ts", "kind"]
        cursor = json.loads(context.cursor) if context.cursor else None
        if cursor is None:
            champ = champion_version(mlflow.client(), FAULT_MODEL)
            trained_ms = int(champ.creation_timestamp) if champ is not None else -1
            before = [
                h["version"]
                for h in store.history("maintenance_events")
                if h["timestamp"] <= trained_ms
            ]
            known = (
                store.read("maintenance_events", columns=columns, version=max(before))
                if before
                else pd.DataFrame(columns=columns)
            )
            _, cursor = label_requests(known, {})
        events = store.read("maintenance_events", columns=columns)
        new, new_cursor = label_requests(events, cursor)
        if not new:
            context.update_cursor(json.dumps(new_cursor))
            return dg.SkipReason("no new labels")
        waiting = context.instance.get_runs_count(
            dg.RunsFilter(
                job_name=job.name,
                statuses=[
                    dg.DagsterRunStatus.QUEUED,
                    dg.DagsterRunStatus.NOT_STARTED,
                    dg.DagsterRunStatus.STARTING,
                ],
            )
        )
        if waiting:  # it has not read the lake yet: it will train with these labels too
            context.update_cursor(json.dumps(new_cursor))
            return dg.SkipReason(
                f"{len(new)} new label(s); a {job.name} run that has not started yet will use them"
            )
        assets = sorted({k.split("@")[0] for k in new})
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"labels:{new[-1]}:{len(new_cursor['seen'])}",
                    tags={
                        "plantpulse/trigger": "maintenance_events",
                        "plantpulse/assets": ",".join(assets)[:200],
                    },
                )
            ],
            cursor=json.dumps(new_cursor),
        )

    return new_labels_sensor
