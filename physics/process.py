"""Features of slow process sensors: operating-regime normalisation, rolling level/trend/slope,
and a health indicator.

``RollingFeatures`` is incremental: feeding a series in pieces (as the stream does) gives exactly
the numbers of feeding it at once (as training does), because every output is computed from the
same window of values by the same arithmetic; the state carried between pieces is the last
``window - 1`` values of each series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

__all__ = [
    "regime_keys",
    "RegimeNormaliser",
    "rolling_window_stats",
    "stats_from_sums",
    "RollingFeatures",
    "HealthIndicator",
]

F64 = NDArray[np.float64]


def regime_keys(settings: pd.DataFrame) -> pd.Series:
    """Operating regime of each row from C-MAPSS-style settings (altitude kft, Mach, TRA).

    The six C-MAPSS flight conditions sit at distinct setting values; rounding separates them
    and merges the measurement noise around each.  FD001 has a single regime.

    >>> regime_keys(pd.DataFrame({"setting1": [0.001, 42.0], "setting2": [0.0003, 0.84],
    ...                           "setting3": [100.0, 100.0]})).tolist()
    ['0|0.0|100', '42|0.8|100']
    """
    s = settings.to_numpy(dtype=np.float64)
    alt = np.round(s[:, 0]).astype(int).astype(str)
    mach = np.round(s[:, 1], 1).astype(str)
    tra = (np.round(s[:, 2] / 10) * 10).astype(int).astype(str)
    return pd.Series(
        [f"{a}|{m}|{t}" for a, m, t in zip(alt, mach, tra, strict=True)], index=settings.index
    )


@dataclass
class RegimeNormaliser:
    """Z-scores each sensor within its operating regime, with statistics fitted on training data.

    A regime never seen in training is normalised with the pooled statistics (and counted in
    ``unseen``), rather than dropped.
    """

    stats: dict[str, tuple[F64, F64]] = field(default_factory=dict)
    pooled: tuple[F64, F64] | None = None
    unseen: int = 0

    def fit(self, settings: pd.DataFrame, sensors: pd.DataFrame) -> RegimeNormaliser:
        keys = regime_keys(settings)
        values = sensors.to_numpy(np.float64)
        for key in keys.unique():
            rows = values[(keys == key).to_numpy()]
            self.stats[key] = (rows.mean(axis=0), _safe_std(rows))
        self.pooled = (values.mean(axis=0), _safe_std(values))
        return self

    def transform(self, settings: pd.DataFrame, sensors: pd.DataFrame) -> pd.DataFrame:
        if self.pooled is None:
            raise RuntimeError("RegimeNormaliser.transform before fit")
        keys = regime_keys(settings).to_numpy()
        values = sensors.to_numpy(np.float64)
        out = np.empty_like(values)
        for key in np.unique(keys):
            rows = keys == key
            mean, std = self.stats.get(key, self.pooled)
            self.unseen += 0 if key in self.stats else int(rows.sum())
            out[rows] = (values[rows] - mean) / std
        return pd.DataFrame(out, index=sensors.index, columns=sensors.columns)


def _safe_std(rows: F64) -> F64:
    std = rows.std(axis=0)
    return np.where(std > 0, std, 1.0)  # a constant sensor stays 0 instead of inf


def rolling_window_stats(history: F64, values: F64, window: int) -> dict[str, F64]:
    """Level (mean), slope (least squares, per step) and std over the last ``window`` values,
    for each of ``values``; ``history`` is what came before (at most ``window - 1`` values).

    Windows at the start of a series are shorter (NaN slope/std below 2 values).

    >>> s = rolling_window_stats(np.array([]), np.array([1.0, 2.0, 3.0, 5.0]), window=3)
    >>> s["level"].round(3).tolist(), s["slope"].round(3).tolist()
    ([1.0, 1.5, 2.0, 3.333], [nan, 1.0, 1.0, 1.5])
    """
    full = np.concatenate(
        [
            np.full(window - 1, np.nan),
            history[-(window - 1) :] if window > 1 else history[:0],
            values,
        ]
    )
    full = full[-(values.size + window - 1) :]
    win = sliding_window_view(full, window)  # (n, window): the window ending at each value
    ok = np.isfinite(win)
    n = ok.sum(axis=1)
    x = np.broadcast_to(np.arange(window, dtype=np.float64), win.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(ok, win, 0.0)
        xm = np.where(ok, x, 0.0).sum(axis=1) / n
        ym = w.sum(axis=1) / n
        dx = np.where(ok, x - xm[:, None], 0.0)
        dy = np.where(ok, win - ym[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        slope = np.where((n >= 2) & (sxx > 0), (dx * dy).sum(axis=1) / sxx, np.nan)
        std = np.where(n >= 2, np.sqrt((dy * dy).sum(axis=1) / np.maximum(n - 1, 1)), np.nan)
    return {"level": ym, "slope": slope, "std": std}


def stats_from_sums(n: F64, st: F64, stt: F64, sy: F64, syy: F64, sty: F64) -> dict[str, F64]:
    """Level (mean), slope (least squares, per unit of ``t``) and sample std of windows given
    by their sums: count, sum t, sum t^2, sum y, sum y^2, sum t*y (one entry per window).  What
    the stream keeps per time bucket, so that a window is a sum of buckets, never a re-scan.

    Windows with fewer than 2 values get NaN slope and std, as ``rolling_window_stats``:

    >>> t, y = np.arange(4.0), np.array([1.0, 2.0, 3.0, 5.0])
    >>> s = stats_from_sums(*(np.array([v]) for v in (4.0, t.sum(), (t * t).sum(), y.sum(),
    ...                     (y * y).sum(), (t * y).sum())))
    >>> r = rolling_window_stats(np.array([]), y, window=4)
    >>> [round(float(s[k][0]), 6) == round(float(r[k][-1]), 6) for k in ("level", "slope", "std")]
    [True, True, True]
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        level = sy / n
        sxx = stt - st * st / n
        slope = np.where((n >= 2) & (sxx > 1e-12), (sty - st * sy / n) / sxx, np.nan)
        var = np.maximum(syy - sy * sy / n, 0.0) / np.maximum(n - 1, 1)
        std = np.where(n >= 2, np.sqrt(var), np.nan)
    return {"level": level, "slope": slope, "std": std}


@dataclass
class RollingFeatures:
    """Incremental rolling level/slope/std per series (e.g. per asset and sensor).

    >>> rf = RollingFeatures(window=3)
    >>> a = rf.update("pump-01/temp", np.array([1.0, 2.0]))["level"].tolist()
    >>> b = rf.update("pump-01/temp", np.array([3.0, 5.0]))["level"].round(3).tolist()
    >>> a + b == rolling_window_stats(np.array([]), np.array([1.0, 2.0, 3.0, 5.0]), 3)["level"].round(3).tolist()
    True
    """

    window: int = 30
    tails: dict[str, F64] = field(default_factory=dict)

    def update(self, series: str, values: F64) -> dict[str, F64]:
        values = np.asarray(values, dtype=np.float64)
        history = self.tails.get(series, np.empty(0))
        out = rolling_window_stats(history, values, self.window)
        self.tails[series] = (
            np.concatenate([history, values])[-(self.window - 1) :]
            if self.window > 1
            else np.empty(0)
        )
        return out


@dataclass
class HealthIndicator:
    """A health indicator: the mean of (normalised) sensors, each signed so that degradation
    pushes it up.  Signs are fitted from each sensor's correlation with remaining life.

    >>> hi = HealthIndicator().fit(pd.DataFrame({"a": [0.0, 1.0, 2.0], "b": [2.0, 1.0, 0.0]}),
    ...                            np.array([10.0, 5.0, 0.0]))
    >>> hi.signs, hi.transform(pd.DataFrame({"a": [3.0], "b": [-1.0]})).tolist()
    ({'a': 1.0, 'b': -1.0}, [2.0])
    """

    signs: dict[str, float] = field(default_factory=dict)

    def fit(self, sensors: pd.DataFrame, rul: F64) -> HealthIndicator:
        for col in sensors.columns:
            r = np.corrcoef(sensors[col].to_numpy(np.float64), rul)[0, 1]
            if np.isfinite(r) and abs(r) > 0.1:
                self.signs[col] = -float(np.sign(r))
        if not self.signs:
            raise ValueError(
                "no sensor correlates with remaining life; cannot build a health indicator"
            )
        return self

    def transform(self, sensors: pd.DataFrame) -> pd.Series:
        cols = list(self.signs)
        return (sensors[cols] * pd.Series(self.signs)).mean(axis=1)


CMAPSS_INFORMATIVE = [
    "s2",
    "s3",
    "s4",
    "s7",
    "s8",
    "s9",
    "s11",
    "s12",
    "s13",
    "s14",
    "s15",
    "s17",
    "s20",
    "s21",
]
"""C-MAPSS sensors that change with degradation (the others are constant in FD001)."""


@dataclass
class ProcessFeatureBuilder:
    """Process features of run-to-failure trajectories, fitted on training assets only.

    ``fit`` learns the regime statistics and the health indicator's signs from the training
    rows; ``transform`` gives, per row: the regime-normalised sensors, their rolling level,
    slope and std over ``window`` steps (computed per asset, incrementally-identical), the
    health indicator and its slope, and the step count.
    """

    sensors: list[str] = field(default_factory=lambda: list(CMAPSS_INFORMATIVE))
    settings: list[str] = field(default_factory=lambda: ["setting1", "setting2", "setting3"])
    window: int = 30
    asset: str = "unit"
    step: str = "cycle"
    normaliser: RegimeNormaliser = field(default_factory=RegimeNormaliser)
    health: HealthIndicator = field(default_factory=HealthIndicator)

    def fit(self, df: pd.DataFrame, rul: F64) -> ProcessFeatureBuilder:
        self.normaliser = RegimeNormaliser().fit(df[self.settings], df[self.sensors])
        z = self.normaliser.transform(df[self.settings], df[self.sensors])
        self.health = HealthIndicator().fit(z, np.asarray(rul, dtype=np.float64))
        return self

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        df = df.sort_values([self.asset, self.step])
        z = self.normaliser.transform(df[self.settings], df[self.sensors])
        z["hi"] = self.health.transform(z)
        out = {f"z_{c}": z[c].to_numpy() for c in z.columns}
        assets = df[self.asset].to_numpy()
        starts = np.flatnonzero(np.r_[True, assets[1:] != assets[:-1]])
        bounds = list(zip(starts, np.r_[starts[1:], len(df)], strict=True))
        for col in z.columns:
            values = z[col].to_numpy()
            stats = {k: np.empty(len(df)) for k in ("level", "slope", "std")}
            for lo, hi in bounds:
                s = rolling_window_stats(np.empty(0), values[lo:hi], self.window)
                for k in stats:
                    stats[k][lo:hi] = s[k]
            for k, v in stats.items():
                out[f"{k}_{col}"] = v
        out[self.step] = df[self.step].to_numpy(np.float64)
        return pd.DataFrame(out, index=df.index)
