"""C-MAPSS FD001 remaining useful life with XGBoost: engine-wise 5-fold cross-validation.

RUL is capped at 125 cycles (piecewise-linear target). Folds split by engine, never by row;
every fold fits the feature builder (regime statistics, health-indicator signs) and the model on
its training engines only. The model is the one the ``rul_candidate`` asset trains
(``models.training.fit_rul_regressor``). Reported over every cycle of the held-out engines: RMSE and the
PHM08 score (exp(-d/13)-1 early, exp(d/10)-1 late, d = predicted - true), plus the same at the
last cycle of each engine (the end of life, where mistakes cost most).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich.progress import track
from sklearn.model_selection import GroupKFold

from bench.common import data_dir, parser, report
from models.training import RUL_CAP, fit_rul_regressor, phm08, rmse
from physics.datasets import read_cmapss
from physics.process import ProcessFeatureBuilder


def cross_validate(df: pd.DataFrame, folds: int, quick: bool) -> pd.DataFrame:
    """Out-of-fold predictions for every row (column ``predicted``)."""
    out = []
    splits = GroupKFold(n_splits=folds).split(df, groups=df["unit"])
    for train_idx, test_idx in track(list(splits), description="cross-validating"):
        train, test = df.iloc[train_idx], df.iloc[test_idx]
        builder = ProcessFeatureBuilder().fit(train, train["rul"].to_numpy())
        x_train, x_test = builder.transform(train), builder.transform(test)
        model = fit_rul_regressor(
            x_train, train.loc[x_train.index, "rul"].to_numpy(), 60 if quick else 600
        )
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
