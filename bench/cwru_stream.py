"""CWRU through the stream: per-recording alert decisions of the served champion.

The 0 HP recordings (and the first half of the normal baseline) are replayed through the real
telemetry flow; a fault classifier is trained on the ``features`` rows the stream wrote, logged
to MLflow and made ``champion``. Then the other recordings (1 HP in the shared data) (and the second half of the normal
baseline) are replayed through a fresh stream that serves that champion. Per recording, the
decision is what an operator would see: no alert (normal), or an alert naming the suspected
fault location (the newest state of its first alert). Reported against the labels: detection
(alert on a faulty recording, none on the normal one) and location accuracy.
"""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pandas as pd
from bytewax.testing import run_main

from bench.common import data_dir, parser, report
from bytewax_flows.replay import ReplaySource, dataset_messages
from bytewax_flows.telemetry import get_flow
from lake import Lake, current_alerts
from models.registry import CHAMPION, FAULT_MODEL, ChampionWatcher, client, log_candidate
from models.training import FAULT_FEATURES, fit_fault_classifier
from physics import datasets as ds

LOCATION = {"normal": "normal", "outer": "outer_race", "inner": "inner_race", "ball": "ball"}


def _replay(timelines: dict, tracking: str) -> Lake:
    lake = Lake(tempfile.mkdtemp(prefix="bench-cwru-stream-"))
    champion = ChampionWatcher(tracking, FAULT_MODEL, refresh_s=3600)
    run_main(get_flow(ReplaySource(timelines), lake.uri, champion=champion))
    return lake


def main(argv: list[str] | None = None) -> dict:
    args = parser("cwru_stream", __doc__.splitlines()[0]).parse_args(argv)
    data = data_dir(args.data)
    timelines = dataset_messages("cwru", data)
    normal = timelines.pop("cwru-normal_0")
    half = (len(normal) // 4) * 2  # whole (speed, frame) pairs
    labels = {a: LOCATION[ds.read_cwru(data, a.removeprefix("cwru-")).location] for a in timelines}
    train = {a: t for a, t in timelines.items() if a.endswith("_0")}
    test = {a: t for a, t in timelines.items() if not a.endswith("_0")}
    if args.quick:
        test = dict(list(sorted(test.items()))[::6])
    # the two halves of the normal baseline: two partitions, one machine (``cwru-normal_0``)
    train["cwru-normal_0"], test["cwru-normal_0"] = normal[:half], normal[half:]
    labels["cwru-normal_0"] = "normal"

    root = tempfile.mkdtemp(prefix="bench-cwru-mlflow-")
    tracking = f"sqlite:///{root}/mlflow.db"
    c = client(tracking)
    experiment = c.create_experiment("cwru-stream", artifact_location=f"file://{root}/artifacts")
    first = _replay(train, tracking)  # no champion yet: features only
    feats = first.read("features", filters=[("sensor_id", "=", "vib_de")])
    feats["condition"] = feats["asset_id"].map(labels)
    model, classes = fit_fault_classifier(feats, 40 if args.quick else 200)
    mv = log_candidate(
        tracking,
        experiment,
        FAULT_MODEL,
        model,
        task="classifier",
        x_example=feats[FAULT_FEATURES].astype(np.float64),
        holdout=feats.head(50),
        params={"trained_on": "CWRU 0 HP through the stream"},
        metrics={"rows": len(feats)},
        tags={"classes": json.dumps(classes), "training_validated": "true"},
    )
    c.set_registered_model_alias(FAULT_MODEL, CHAMPION, str(mv.version))

    served = _replay(test, tracking)
    scores = served.read("scores", columns=["asset_id", "model_version"])
    first_alert = current_alerts(served).sort_values("opened_ts").groupby("asset_id").first()
    rows = []
    for asset in sorted(test):
        if asset in first_alert.index:  # its current state: the diagnosis as it firmed up
            summary = first_alert.loc[asset, "summary"]
            decided = next((c for c in classes if f"{c} suspected" in summary), "anomaly")
        else:
            decided = "normal"
        rows.append(
            {"recording": asset.removeprefix("cwru-"), "label": labels[asset], "decision": decided}
        )
    d = pd.DataFrame(rows)
    faulty = d["label"] != "normal"
    metrics = {
        "recordings": float(len(d)),
        "faulty_recordings_alerted": float((d.loc[faulty, "decision"] != "normal").mean()),
        "normal_recordings_quiet": float((d.loc[~faulty, "decision"] == "normal").mean()),
        "location_correct": float((d["decision"] == d["label"]).mean()),
        "scores_by_champion": float((scores["model_version"] == str(mv.version)).mean()),
    }
    return report(
        "cwru_stream",
        metrics,
        {"location_correct": ">= 0.9"},
        quick=args.quick,
        out=args.out,
        extra={
            "decisions": d.to_dict("records"),
            "protocol": "train: 0 HP recordings + first half of normal_0 (stream features); "
            "test: the other loads + second half of normal_0, served champion",
        },
    )


if __name__ == "__main__":
    main()
