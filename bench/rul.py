"""C-MAPSS FD001 remaining useful life with XGBoost: engine-wise 5-fold cross-validation.

RUL is capped at 125 cycles (piecewise-linear target). Folds split by engine, never by row;
every fold fits the feature builder (regime statistics, health-indicator signs) and the model on
its training engines only. Reported over every cycle of the held-out engines: RMSE and the
PHM08 score (exp(-d/13)-1 early, exp(d/10)-1 late, d = predicted - true), plus the same at the
last cycle of each engine (the end of life, where mistakes cost most).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich.progress import track
from sklearn.model_selection import GroupKFold
from xgboost import XGBRegressor

from bench.common import data_dir, parser, report
from physics.datasets import read_cmapss
from physics.process import ProcessFeatureBuilder

RUL_CAP = 125.0


def phm08(predicted: np.ndarray, true: np.ndarray) -> float:
    d = predicted - true
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))


def rmse(predicted: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - true) ** 2)))


def cross_validate(df: pd.DataFrame, folds: int, quick: bool) -> pd.DataFrame:
    """Out-of-fold predictions for every row (column ``predicted``)."""
    out = []
    splits = GroupKFold(n_splits=folds).split(df, groups=df["unit"])
    for train_idx, test_idx in track(list(splits), description="cross-validating"):
        train, test = df.iloc[train_idx], df.iloc[test_idx]
        builder = ProcessFeatureBuilder().fit(train, train["rul"].to_numpy())
        x_train, x_test = builder.transform(train), builder.transform(test)
        model = XGBRegressor(
            n_estimators=60 if quick else 600,
            max_depth=4,
            learning_rate=0.03,
            subsample=0.8,
            colsample_bytree=0.7,
            min_child_weight=5,
            n_jobs=2,
            random_state=0,
        )
        model.fit(x_train, train.loc[x_train.index, "rul"])
        fold = test.loc[x_test.index, ["unit", "cycle", "rul"]].copy()
        fold["predicted"] = np.clip(model.predict(x_test), 0.0, RUL_CAP)
        out.append(fold)
    return pd.concat(out)


def main(argv: list[str] | None = None) -> dict:
    args = parser("rul", __doc__.splitlines()[0]).parse_args(argv)
    df = read_cmapss(data_dir(args.data), "FD001", rul_cap=RUL_CAP)
    if args.quick:
        df = df[df["unit"] <= 20]
    oof = cross_validate(df, folds=5, quick=args.quick)
    last = oof.sort_values("cycle").groupby("unit").tail(1)
    metrics = {
        "rmse": rmse(oof["predicted"].to_numpy(), oof["rul"].to_numpy()),
        "phm08_score": phm08(oof["predicted"].to_numpy(), oof["rul"].to_numpy()),
        "rmse_last_cycle": rmse(last["predicted"].to_numpy(), last["rul"].to_numpy()),
        "phm08_last_cycle": phm08(last["predicted"].to_numpy(), last["rul"].to_numpy()),
        "engines": float(df["unit"].nunique()),
        "rows": float(len(df)),
    }
    return report(
        "rul",
        metrics,
        {"rmse": "<= 14"},
        quick=args.quick,
        out=args.out,
        extra={
            "protocol": "FD001 train file, GroupKFold(5) by engine, RUL cap 125, all held-out cycles"
        },
    )


if __name__ == "__main__":
    main()
