"""Drift → retrain → gate → new champion in the running stream, end to end, on real services.

1. History: six simulated pumps for ``--history`` s of event time (pumps 2 and 5 develop an
   outer-race defect) go through the real telemetry flow into Delta; their ground truth goes to
   ``maintenance_events``; the Dagster ``retrain_fault_classifier`` job trains and promotes the
   first champion (it knows ``normal`` and ``outer_race`` only).
2. Live: the Dagster daemon (which runs the ``drift_retrain_sensor``) and a Bytewax worker on
   the live fleet start as separate processes. The outer-race bearings were replaced overnight
   (``repair`` events); at ``--change`` s pumps 3 and 6 develop an *inner-race* defect, a
   degradation mode the champion has never seen.  Nobody knows it yet: no label is written
   ahead of the fault.
3. A technician (``plantpulse_cli.technician.confirmations``, as in the demo) confirms an
   alert ``--label-delay`` s after the bench first sees it open, when the alert's machine has
   actually developed the fault by then (the simulator's ground truth); a share ``--never`` of
   alerts (chosen by a hash of the alert id, as in the demo) is never confirmed.  The label
   lands in ``maintenance_events`` and the ``new_labels_sensor`` retrains with what has been
   labelled.
4. Measured from the moment the first changed reading is ingested: the first drift event, the
   first alert on a changed machine, the label's arrival, the gate's decision after it, and the
   first score written by the new champion in the still-running stream; the target (<= 5
   minutes) is counted from the label's arrival, since no model can learn a fault before
   anyone has said what it is.  The loop is given that long after the label before it gives up.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pandas as pd
from bytewax.testing import run_main

from bench.common import parser, report
from bytewax_flows.sources import SimulatorSource
from bytewax_flows.telemetry import get_flow
from lake import Lake, Settings, current_alerts
from models.registry import FAULT_MODEL, champion_version, client, load_version
from physics.simulator import default_fleet
from plantpulse_cli.technician import confirmations, faults_of, never_confirmed
from plantpulse_cli.up import Service, prepare

TARGET_S = 300.0
"""Label arrival → the new champion scoring in the stream."""


def _fleet(start_us: int, live: bool, change_s: float):
    return default_fleet(
        6,
        seed=7 if live else 3,
        start_us=start_us,
        outer_race_at_s=None if live else 60.0,
        inner_race_at_s=change_s if live else None,
        time_to_failure_s=400.0,
    )


def live_flow(start_us: int, change_s: float, speed: float, n_chunks: int):
    """The live stream of the benchmark (run by ``bytewax.run`` in its own process)."""
    return get_flow(
        SimulatorSource(_fleet(start_us, True, change_s), speed=speed, n_chunks=n_chunks)
    )


def main(argv: list[str] | None = None) -> dict:
    p = parser("retrain_loop", __doc__.splitlines()[0])
    p.add_argument("--history", type=int, default=300, help="seconds of history (event time)")
    p.add_argument("--change", type=float, default=90.0, help="live seconds before the change")
    p.add_argument("--speed", type=float, default=1.0, help="live stream speed (x real time)")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="give up waiting for the first label after this many s",
    )
    p.add_argument(
        "--label-delay",
        type=float,
        default=30.0,
        help="s from an alert opening to the technician's label",
    )
    p.add_argument(
        "--never",
        type=float,
        default=0.25,
        help="share of alerts the technician never confirms (default 0.25)",
    )
    args = p.parse_args(argv)
    load_start = os.getloadavg()
    if args.quick:
        args.history, args.change, args.speed, args.timeout = 150, 60.0, 3.0, 200.0
        args.label_delay = 5.0
    home = tempfile.mkdtemp(prefix="plantpulse-bench-")
    os.environ.update({"PLANTPULSE_HOME": home, "PLANTPULSE_DRIFT_DEBOUNCE_S": "60"})
    for var in (
        "PLANTPULSE_LAKE",
        "MLFLOW_TRACKING_URI",
        "PLANTPULSE_ARTIFACTS",
        "DAGSTER_HOME",
        "PLANTPULSE_RECOVERY",
    ):
        os.environ.pop(var, None)
    settings = Settings.from_env()
    os.environ.update(settings.as_env())
    prepare(settings)
    from dagster_project.definitions import defs  # after the environment is set

    lake = Lake(settings.lake_uri)
    # the history ends where the live stream begins: a day's readings are validated over the
    # span the stream has covered, and a silent stretch between them would fail that day (and
    # leave the retrain without a validated day to train on); the live stream's event time then
    # trails the wall clock by the time the history and the first champion take
    live_start_us = (time.time_ns() // 1000 // 1_000_000) * 1_000_000
    history = _fleet(live_start_us - args.history * 1_000_000, False, args.change)
    run_main(get_flow(SimulatorSource(history, n_chunks=args.history), lake.uri))
    lake.append("maintenance_events", pd.DataFrame(history.ground_truth()))
    instance = dg.DagsterInstance.get()
    first = defs.resolve_job_def("retrain_fault_classifier").execute_in_process(
        instance=instance, tags={"plantpulse/trigger": "bench-initial"}
    )
    c = client(settings.mlflow_tracking_uri)
    champion = champion_version(c, FAULT_MODEL)
    if not first.success or champion is None:
        sys.exit("error: the first champion was not trained and promoted")
    v1 = str(champion.version)

    start_us = live_start_us
    live = _fleet(start_us, True, args.change)
    repairs = [
        dict(
            asset_id=a,
            ts=start_us - 1_000_000,
            kind="repair",
            component="bearing_outer_race",
            detail="bearing replaced",
            source="bench",
        )
        for a in ("pump-02", "pump-05")
    ]
    lake.append("maintenance_events", pd.DataFrame(repairs))  # the past, not the future
    faults = faults_of(live.ground_truth())  # what the technician will find, once asked
    change_ts = pd.Timestamp(start_us + int(args.change * 1e6), unit="us", tz="UTC")
    # the stream runs until the loop closes or gives up: long enough for both at this speed
    n_chunks = int(args.change + (args.timeout + TARGET_S + 120) * args.speed)
    bin_dir = Path(sys.executable).parent
    log_dir = Path(home) / "logs"
    log_dir.mkdir(exist_ok=True)
    services = [
        Service(
            "dagster-daemon",
            [str(bin_dir / "dagster-daemon"), "run", "-m", "dagster_project.definitions"],
        ),
        Service(
            "stream",
            [
                sys.executable,
                "-m",
                "bytewax.run",
                f"bench.retrain_loop:live_flow({start_us}, {args.change}, "
                f"{args.speed}, {n_chunks})",
            ],
        ),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    marks: dict[str, float] = {}
    new_version = None
    decision = ""
    alert_seen: dict[str, float] = {}  # alert_id -> wall time the bench first saw it
    labelled: set[str] = set()
    labels: list[dict] = []
    never: set[str] = set()  # alerts due for a label that the technician never gets to
    checked: dict[str, bool] = {}  # promoted version -> knows inner_race
    try:
        for svc in services:
            svc.start(env, log_dir)
        deadline = time.time() + args.timeout + args.change / args.speed + 60
        while time.time() < deadline and "new_champion_scores" not in marks:
            time.sleep(1.0)
            if any(s.proc is not None and s.proc.poll() is not None for s in services):
                break
            if "change_ingested" not in marks and lake.exists("readings"):
                r = lake.read(
                    "readings", columns=["ts", "ingest_ts"], filters=[("ts", ">=", change_ts)]
                )
                if len(r):
                    marks["change_ingested"] = r["ingest_ts"].min().timestamp()
            if "first_drift" not in marks and lake.exists("drift_events"):
                d = lake.read(
                    "drift_events", columns=["ts", "asset_id"], filters=[("ts", ">=", change_ts)]
                )
                if len(d):
                    marks["first_drift"] = time.time()
            # the technician: alerts seen at least label_delay ago, on machines really faulted
            alerts = current_alerts(lake)
            now = time.time()
            for a in alerts["alert_id"]:
                alert_seen.setdefault(a, now)
            if "first_alert" not in marks and len(alerts):
                changed = alerts[
                    (alerts["opened_ts"] >= change_ts)
                    & alerts["asset_id"].isin({f.asset_id for f in faults})
                ]
                if len(changed):
                    marks["first_alert"] = alert_seen[changed["alert_id"].iloc[0]]
            due = alerts[[now - alert_seen[a] >= args.label_delay for a in alerts["alert_id"]]]
            rows = confirmations(
                due, faults, labelled, pd.Timestamp.max.tz_localize("UTC"), 0.0, args.never
            )
            if len(due):
                never |= {
                    a
                    for a, m in zip(due["alert_id"], due["asset_id"], strict=True)
                    if m in {f.asset_id for f in faults} and never_confirmed(a, args.never)
                }
            if rows:
                lake.append("maintenance_events", pd.DataFrame(rows))
                labelled |= {
                    r["detail"].split(";")[0].removeprefix("confirms alert ") for r in rows
                }
                labels += rows
                if "label" not in marks:
                    marks["label"] = time.time()
                    # from the label on, the loop has the time its target allows, and a margin
                    deadline = max(deadline, marks["label"] + TARGET_S + 60)
            if "label" in marks and lake.exists("model_decisions"):
                dec = lake.read("model_decisions").sort_values("ts")
                dec = dec[dec["ts"].map(lambda t: t.timestamp()) > marks["label"]]
                if len(dec) and "decision" not in marks:
                    marks["decision"] = dec["ts"].iloc[0].timestamp()
                    decision = str(dec["decision"].iloc[0])
                # the new champion is the first one promoted after the label that knows the
                # fault the label named (a drift-triggered candidate trained before it does not)
                for v in dec.loc[dec["decision"] == "promote", "candidate_version"]:
                    if new_version is None and v not in checked:
                        checked[v] = "inner_race" in (
                            load_version(settings.mlflow_tracking_uri, FAULT_MODEL, v).classes or []
                        )
                        if checked[v]:
                            new_version = str(v)
            if new_version is not None:
                s = lake.read(
                    "scores",
                    columns=["model_version"],
                    filters=[("model_version", "=", new_version)],
                )
                if len(s):
                    marks["new_champion_scores"] = time.time()
    finally:
        for svc in services:
            svc.stop()
    nan = float("nan")
    t0, t_label = marks.get("change_ingested", nan), marks.get("label", nan)
    metrics = {
        "change_to_first_drift_event_s": marks.get("first_drift", nan) - t0,
        "change_to_first_alert_s": marks.get("first_alert", nan) - t0,
        "change_to_label_s": t_label - t0,
        "label_to_gate_decision_s": marks.get("decision", nan) - t_label,
        "label_to_new_champion_scoring_s": marks.get("new_champion_scores", nan) - t_label,
        "change_to_new_champion_scoring_s": marks.get("new_champion_scores", nan) - t0,
        "first_decision_after_label_promoted": float(decision == "promote"),
        "labelled_alerts": float(len(labels)),
        "alerts_never_labelled": float(len(never)),
        "stream_speed_x_real_time": args.speed,
        # the default length (300 s of history, the change after 90 live s, real time), not
        # the --quick rehearsal (150 s, 60 s, three times real time)
        "full_length": float(not args.quick),
        "load_avg_1m_start": load_start[0],
        "load_avg_1m_end": os.getloadavg()[0],
        "load_avg_5m_end": os.getloadavg()[1],
    }
    decisions = (
        lake.read("model_decisions").sort_values("ts")
        if lake.exists("model_decisions")
        else pd.DataFrame()
    )
    return report(
        "retrain_loop",
        metrics,
        {"label_to_new_champion_scoring_s": f"<= {TARGET_S:g}"},
        quick=args.quick,
        out=args.out,
        extra={
            "first_champion": v1,
            "new_champion": new_version,
            "label_delay_s": args.label_delay,
            "never_labelled_share": args.never,
            "never_labelled_alerts": sorted(never),
            "labels": [{k: str(v) for k, v in r.items()} for r in labels],
            "promoted_after_label_knows_the_fault": checked,
            "decisions": decisions[["decision", "candidate_version", "champion_version"]].to_dict(
                "records"
            )
            if len(decisions)
            else [],
            "reasons": [list(r) for r in decisions["reasons"]] if len(decisions) else [],
            "logs": str(log_dir),
        },
    )


if __name__ == "__main__":
    main()
