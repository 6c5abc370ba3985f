"""CWRU bearing faults across loads: train on motor load 0 HP, test on 1 HP.

Frames of 4096 samples (0.34 s at 12 kHz). Training frames overlap (hop 1024, a standard
augmentation); test frames never overlap and never come from a training file. CWRU has a normal
baseline only at 0 HP, so its first half trains and its second half tests (said in the output).
XGBoost is trained twice on the same frames: on the physics features (the registry's vibration
features) and on plain time-domain statistics (RMS, peak, crest, kurtosis, skewness).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from rich.progress import track
from xgboost import XGBClassifier

from bench.common import data_dir, parser, report
from physics.bearing import SKF_6205
from physics.datasets import cwru_recordings, read_cwru
from physics.features import vibration_features
from physics.registry import feature_names

FRAME = 4096
TRAIN_HOP = 1024
PLAIN = ["vib_rms", "vib_peak", "vib_crest", "vib_kurtosis", "vib_skewness"]


def frame_features(data: str, quick: bool) -> pd.DataFrame:
    """One row per frame: the physics features, the labels and the split."""
    rows = []
    for name in track(cwru_recordings(data), description="featurising CWRU"):
        rec = read_cwru(data, name)
        if rec.load_hp not in (0, 1):
            continue
        parts = (
            [
                ("train", rec.signal[: len(rec.signal) // 2]),
                ("test", rec.signal[len(rec.signal) // 2 :]),
            ]
            if rec.location == "normal"
            else [("train" if rec.load_hp == 0 else "test", rec.signal)]
        )
        for split, signal in parts:
            hop = TRAIN_HOP if split == "train" else FRAME
            frames = sliding_window_view(signal, FRAME)[::hop]
            if quick:
                frames = frames[:6]
            f = pd.DataFrame(vibration_features(frames, rec.fs, rec.rpm, SKF_6205))
            f["location"], f["label"], f["split"], f["file"] = rec.location, rec.label, split, name
            rows.append(f)
    return pd.concat(rows, ignore_index=True)


def accuracy(
    train: pd.DataFrame, test: pd.DataFrame, columns: list[str], target: str, quick: bool
) -> tuple[float, pd.DataFrame]:
    classes = sorted(train[target].unique())
    index = {c: i for i, c in enumerate(classes)}
    model = XGBClassifier(
        n_estimators=40 if quick else 400,
        max_depth=4,
        learning_rate=0.05,
        subsample=0.8,
        colsample_bytree=0.8,
        n_jobs=2,
        random_state=0,
    )
    model.fit(train[columns], train[target].map(index))
    predicted = np.array(classes)[model.predict(test[columns])]
    confusion = pd.crosstab(
        test[target].to_numpy(), predicted, rownames=["true"], colnames=["predicted"]
    )
    return float((predicted == test[target].to_numpy()).mean()), confusion


def main(argv: list[str] | None = None) -> dict:
    args = parser("cwru", __doc__.splitlines()[0]).parse_args(argv)
    df = frame_features(data_dir(args.data), args.quick)
    train, test = df[df.split == "train"], df[df.split == "test"]
    physics = feature_names("vibration")
    metrics: dict[str, float] = {}
    confusions = {}
    for target, key in (("location", "location"), ("label", "class10")):
        for set_name, cols in (("physics", physics), ("plain", PLAIN)):
            acc, conf = accuracy(train, test, cols, target, args.quick)
            metrics[f"{key}_accuracy_{set_name}"] = acc
            confusions[f"{key}_{set_name}"] = conf
    metrics["train_frames"], metrics["test_frames"] = float(len(train)), float(len(test))
    print(confusions["class10_physics"].to_string())
    return report(
        "cwru",
        metrics,
        {"location_accuracy_physics": ">= 0.99"},
        quick=args.quick,
        out=args.out,
        extra={
            "protocol": "train 0 HP, test 1 HP; normal baseline (0 HP only) split in halves; frames 4096, train hop 1024",
            "confusion_class10_physics_true_to_predicted": confusions["class10_physics"].to_dict(
                orient="index"
            ),
        },
    )


if __name__ == "__main__":
    main()
