"""Sensors that keep validation continuous and retrain models when the stream sees drift."""

import json
import os
import time
from collections.abc import Callable
from typing import Any

import dagster as dg
import pandas as pd

from dagster_project.resources import LakeResource, MLflowResource
from lake import Lake
from models.registry import FAULT_MODEL, RUL_MODEL, champion_version
from models.training import label_faults
from plant import default_plant

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


def fault_labelled(store: Lake) -> bool:
    """Whether ``maintenance_events`` names a fault a classifier can learn: a condition other
    than normal, as ``models.training.label_faults`` reads the events."""
    if not store.exists("maintenance_events"):
        return False
    events = store.read("maintenance_events", columns=["asset_id", "ts", "kind", "component"])
    at_events = events[["asset_id", "ts"]].rename(columns={"ts": "window_end"})
    return bool((label_faults(at_events, events)["condition"] != "normal").any())


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
        if not fault_labelled(store):
            # drift says the machines changed, only labels say into what: without a fault
            # label a training set is all normal and no classifier can be trained (a fresh
            # plant's first drift comes minutes before the first label); new_labels_sensor
            # retrains when one lands
            context.update_cursor(
                json.dumps({**new_cursor, "last_run_s": cursor.get("last_run_s", -1e18)})
            )
            return dg.SkipReason(
                f"{len(events)} drift event(s), but maintenance_events labels no fault yet: "
                "a retrain waits for the first label"
            )
        assets = set(events["asset_id"].unique()) if len(events) else set()
        return dg.SensorResult(
            run_requests=[retrain_request(job.name, f"drift:{newest}", "drift_events", assets)],
            cursor=json.dumps(new_cursor),
        )

    return drift_retrain_sensor


LABEL_KINDS = ("failure", "fault_injected", "repair")
"""``maintenance_events`` kinds that change what a window is labelled (inspections do not)."""
RUL_LABEL_KINDS = ("failure", "repair")
"""Kinds that end an asset's history (``models.prognostics.lake_rul_rows``): a failure closes
a run to failure, a repair starts a new life; on an asset with a health indicator either
changes the RUL model's training set (a technician's confirmation of an alert does not: it
says the fault was there, not that the life ended)."""


def _label_keys(events: pd.DataFrame, kinds: tuple[str, ...]) -> list[str]:
    return [
        f"{a}@{int(t.value // 1000)}@{k}"
        for a, t, k in zip(events["asset_id"], events["ts"], events["kind"], strict=True)
        if k in kinds
    ]


def label_requests(
    events: pd.DataFrame, cursor: dict, kinds: tuple[str, ...] = LABEL_KINDS, key: str = "seen"
) -> tuple[list[str], dict]:
    """New labels: the keys (``asset_id@ts@kind``) of the rows of ``events`` (with ``asset_id``,
    ``ts``, ``kind``) of ``kinds`` that are not in ``cursor[key]``, and the cursor with them
    added (its other entries kept).  Labels are few (people write them), so the cursor keeps
    them all."""
    seen = set(cursor.get(key, []))
    keys = _label_keys(events, kinds)
    new = sorted(set(keys) - seen)
    return new, {**cursor, key: sorted(seen | set(keys))}


def rul_label_rows(events: pd.DataFrame, has_indicator: Callable[[str], bool]) -> pd.DataFrame:
    """The rows of ``events`` that end a history of an asset with a health indicator: a
    ``failure`` or ``repair`` that is not a technician's confirmation of an alert."""
    detail = events["detail"] if "detail" in events else pd.Series("", index=events.index)
    confirmation = detail.fillna("").astype(str).str.startswith("confirms alert")
    return events[
        events["kind"].isin(RUL_LABEL_KINDS)
        & ~confirmation
        & events["asset_id"].astype(str).map(has_indicator)
    ]


def retrain_request(
    job_name: str, run_key: str, trigger: str, assets: list[str] | set[str]
) -> dg.RunRequest:
    """A retrain run of ``job_name``, tagged with what triggered it and the assets concerned."""
    return dg.RunRequest(
        job_name=job_name,
        run_key=run_key,
        tags={
            "plantpulse/trigger": trigger,
            "plantpulse/assets": ",".join(sorted(assets))[:200],
        },
    )


def _not_started(context: dg.SensorEvaluationContext, job_name: str) -> int:
    """Runs of ``job_name`` queued or starting: they have not read the lake yet."""
    return context.instance.get_runs_count(
        dg.RunsFilter(
            job_name=job_name,
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
            ],
        )
    )


def _known_labels(store: Any, client: Any, model: str, columns: list[str]) -> pd.DataFrame:
    """``maintenance_events`` as it was when ``model``'s champion was registered (empty
    without a champion): the labels that champion was trained with."""
    champ = champion_version(client, model)
    trained_ms = int(champ.creation_timestamp) if champ is not None else -1
    before = [
        h["version"] for h in store.history("maintenance_events") if h["timestamp"] <= trained_ms
    ]
    if not before:
        return pd.DataFrame(columns=columns)
    return store.read("maintenance_events", columns=columns, version=max(before))


def build_label_sensor(fault_job: Any, rul_job: Any) -> dg.SensorDefinition:
    @dg.sensor(
        jobs=[fault_job, rul_job],
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Retrains the fault classifier when new labels arrive in maintenance_events "
        "(a technician's confirmation through `plantpulse label`, a CMMS import), and the RUL "
        "model when a failure or repair ends the history of an asset with a health indicator: "
        "retraining uses what is labelled, whenever it is labelled.",
    )
    def new_labels_sensor(
        context: dg.SensorEvaluationContext, lake: LakeResource, mlflow: MLflowResource
    ) -> dg.SensorResult | dg.SkipReason:
        """Labels a serving champion was not trained with count as new: on the first
        evaluation, those committed after that champion was registered; then, those not in the
        cursor.  A model whose retrain is queued but not started gets no second run (it will
        read these labels too)."""
        store = lake.lake()
        if not store.exists("maintenance_events"):
            return dg.SkipReason("no maintenance_events table yet")
        columns = ["asset_id", "ts", "kind", "detail"]
        plant = default_plant()

        def has_indicator(asset: str) -> bool:
            return plant.health_indicator(asset) is not None

        cursor = json.loads(context.cursor) if context.cursor else {}
        if "seen" not in cursor:
            known = _known_labels(store, mlflow.client(), FAULT_MODEL, columns)
            _, cursor = label_requests(known, cursor)
        if "seen_rul" not in cursor:
            known = _known_labels(store, mlflow.client(), RUL_MODEL, columns)
            _, cursor = label_requests(rul_label_rows(known, has_indicator), cursor, key="seen_rul")
        events = store.read("maintenance_events", columns=columns)
        new, cursor = label_requests(events, cursor)
        new_rul, cursor = label_requests(
            rul_label_rows(events, has_indicator), cursor, RUL_LABEL_KINDS, "seen_rul"
        )
        requests, waiting = [], []
        for job, labels, key in ((fault_job, new, "seen"), (rul_job, new_rul, "seen_rul")):
            if not labels:
                continue
            if _not_started(context, job.name):
                waiting.append(
                    f"{len(labels)} new label(s); a {job.name} run that has not started yet will use them"
                )
                continue
            requests.append(
                retrain_request(
                    job.name,
                    f"labels:{labels[-1]}:{len(cursor[key])}",
                    "maintenance_events",
                    {k.split("@")[0] for k in labels},
                )
            )
        if not requests:
            context.update_cursor(json.dumps(cursor))
            return dg.SkipReason("; ".join(waiting) or "no new labels")
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))

    return new_labels_sensor
