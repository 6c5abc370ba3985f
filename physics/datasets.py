"""Readers for the reference data sets (CWRU, C-MAPSS, SKAB, NAB).

Each reader turns the published files into the project's shapes — frames (high-rate samples) or
long-format readings ``asset_id, sensor_id, ts, value`` with UTC microsecond timestamps — so any
of them can be replayed through the stream, plus a labels table (fault class, RUL, anomaly
flags) for evaluation.  This is the only file-reading corner of ``physics``; it takes explicit
paths (the data directory comes from ``PLANTPULSE_DATA`` in the applications).

The readers are adapters a plant file configures (``plant/plants/*.yaml``, ``replay:``): which
folder of the data directory (``root``), which SKAB folder or files, which C-MAPSS split and
subset, which NAB series, which CWRU recordings, and which data column is which sensor.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.io import loadmat

__all__ = [
    "DatasetError",
    "CwruRecording",
    "cwru_recordings",
    "read_cwru",
    "frame_signal",
    "cwru_frames",
    "read_cmapss",
    "cmapss_readings",
    "CMAPSS_SENSORS",
    "read_skab",
    "skab_runs",
    "skab_readings",
    "SKAB_SENSORS",
    "read_nab",
    "nab_windows",
]

CWRU_FS = 12_000.0
CMAPSS_SENSORS = [f"s{i}" for i in range(1, 22)]
SKAB_SENSORS = {
    "Accelerometer1RMS": "accelerometer1_rms",
    "Accelerometer2RMS": "accelerometer2_rms",
    "Current": "current",
    "Pressure": "pressure",
    "Temperature": "temperature",
    "Thermocouple": "thermocouple",
    "Voltage": "voltage",
    "Volume Flow RateRMS": "volume_flow_rate_rms",
}


class DatasetError(FileNotFoundError):
    """A data set file is missing or not in the published format; the message says where."""


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(
            f"{what} not found at {path}; set PLANTPULSE_DATA to the folder holding the data sets"
        )
    return path


def _us(ts: pd.Series | pd.DatetimeIndex) -> NDArray[np.int64]:
    return pd.DatetimeIndex(ts).tz_localize("UTC").as_unit("us").asi8


# -- CWRU ------------------------------------------------------------------------------------

_CWRU_NAME = re.compile(r"^(normal|B|IR|OR)(\d{3})?(?:_centered_at_6)?_(\d)$")
_LOCATIONS = {"normal": "normal", "B": "ball", "IR": "inner", "OR": "outer"}


@dataclass(frozen=True)
class CwruRecording:
    name: str
    location: str  # normal, ball, inner, outer
    size_in: float  # defect diameter in inches (0 for normal)
    load_hp: int
    rpm: float
    fs: float
    signal: NDArray[np.float64]  # drive-end acceleration, g

    @property
    def label(self) -> str:
        """The 10-class label: location and size, e.g. ``inner_014`` or ``normal``."""
        return (
            "normal"
            if self.location == "normal"
            else f"{self.location}_{round(self.size_in * 1000):03d}"
        )


def cwru_recordings(data_dir: str | Path, pattern: str = "*", root: str = "cwru") -> list[str]:
    """Names (file stems) of the CWRU recordings under ``data_dir`` matching the glob
    ``pattern`` (e.g. ``IR*_1``)."""
    folder = _need(Path(data_dir) / root / "12k_drive_end", f"CWRU folder {root}/12k_drive_end")
    return sorted(
        p.stem
        for p in folder.glob("*.mat")
        if _CWRU_NAME.match(p.stem) and fnmatch.fnmatchcase(p.stem, pattern)
    )


def read_cwru(data_dir: str | Path, name: str, root: str = "cwru") -> CwruRecording:
    """One CWRU recording (e.g. ``IR014_1``) with its labels parsed from the file name."""
    match = _CWRU_NAME.match(name)
    if not match:
        raise DatasetError(f"{name!r} is not a CWRU recording name like 'IR014_1' or 'normal_0'")
    path = _need(Path(data_dir) / root / "12k_drive_end" / f"{name}.mat", f"CWRU recording {name}")
    mat = loadmat(path)
    de = [k for k in mat if k.endswith("_DE_time")]
    rpm = [k for k in mat if k.endswith("RPM")]
    if not de:
        raise DatasetError(f"{path} has no drive-end signal (*_DE_time)")
    kind, size, load = match.groups()
    speed = float(np.ravel(mat[rpm[0]])[0]) if rpm else float("nan")
    return CwruRecording(
        name,
        _LOCATIONS[kind],
        int(size or 0) / 1000,
        int(load),
        speed,
        CWRU_FS,
        np.ravel(mat[de[0]]).astype(np.float64),
    )


def frame_signal(signal: NDArray[np.floating], frame_len: int) -> NDArray[np.float64]:
    """Cut a signal into consecutive frames of ``frame_len`` samples (the tail is dropped).

    >>> frame_signal(np.arange(10.0), 4).tolist()
    [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    """
    n = len(signal) // frame_len
    if n == 0:
        raise ValueError(
            f"signal of {len(signal)} samples is shorter than one frame of {frame_len}"
        )
    return np.asarray(signal[: n * frame_len], dtype=np.float64).reshape(n, frame_len)


def cwru_frames(
    rec: CwruRecording, frame_len: int = 4096, start_us: int = 1_767_225_600_000_000
) -> pd.DataFrame:
    """The recording as rows of the ``frames`` shape, plus its shaft speed and labels."""
    frames = frame_signal(rec.signal, frame_len)
    step = round(frame_len / rec.fs * 1e6)
    return pd.DataFrame(
        {
            "asset_id": f"cwru-{rec.name}",
            "sensor_id": "vib_de",
            "ts_start": pd.to_datetime(
                start_us + step * np.arange(len(frames)), unit="us", utc=True
            ),
            "sample_rate_hz": rec.fs,
            "n_samples": frame_len,
            "samples": list(frames.astype(np.float32)),
            "shaft_rpm": rec.rpm,
            "location": rec.location,
            "label": rec.label,
            "load_hp": rec.load_hp,
        }
    )


# -- C-MAPSS ---------------------------------------------------------------------------------


def read_cmapss(
    data_dir: str | Path,
    subset: str = "FD001",
    rul_cap: float | None = 125.0,
    split: str = "train",
    root: str = "cmapss",
) -> pd.DataFrame:
    """C-MAPSS trajectories of ``{split}_{subset}.txt``: unit, cycle, setting1..3, s1..s21 and
    the RUL label (cycles to the end of life, capped at ``rul_cap`` for the piecewise-linear
    target).  A training trajectory ends at failure; a test one ends ``RUL_{subset}.txt``
    cycles before it (without that file its RUL is unknown: NaN)."""
    if split not in ("train", "test"):
        raise DatasetError(f"C-MAPSS split must be 'train' or 'test', got {split!r}")
    folder = Path(data_dir) / root
    path = _need(folder / f"{split}_{subset}.txt", f"C-MAPSS {split}_{subset}.txt")
    cols = ["unit", "cycle", "setting1", "setting2", "setting3", *CMAPSS_SENSORS]
    df = pd.read_csv(path, sep=r"\s+", header=None, names=cols, engine="c")
    if df.shape[1] != len(cols) or df[cols].isna().any().any():
        raise DatasetError(
            f"{path} is not in the C-MAPSS layout of {len(cols)} space-separated columns"
        )
    df[["unit", "cycle"]] = df[["unit", "cycle"]].astype(int)
    rul = (df.groupby("unit")["cycle"].transform("max") - df["cycle"]).astype(float)
    if split == "test":
        final = folder / f"RUL_{subset}.txt"
        if final.exists():
            at_end = pd.read_csv(final, header=None, sep=r"\s+").iloc[:, 0].to_numpy(float)
            rul = rul + df["unit"].map(dict(enumerate(at_end, start=1)))
        else:
            rul = rul * np.nan
    df["rul"] = rul.clip(upper=rul_cap) if rul_cap is not None else rul
    df["rul_true"] = rul
    if split == "train":
        df[["rul", "rul_true"]] = df[["rul", "rul_true"]].astype(int)
    return df


def cmapss_readings(
    df: pd.DataFrame,
    start_us: int = 1_767_225_600_000_000,
    cycle_s: float = 3600.0,
    sensor_ids: Mapping[str, str] | None = None,
    asset_id: str = "engine-{unit:03d}",
) -> pd.DataFrame:
    """Long-format readings: one engine per asset (``asset_id`` formatted with the unit), one
    cycle every ``cycle_s``.  ``sensor_ids`` maps data columns to sensor ids (default: every
    setting and sensor as ``cmapss_<column>``)."""
    mapping = (
        dict(sensor_ids)
        if sensor_ids is not None
        else {c: f"cmapss_{c}" for c in ["setting1", "setting2", "setting3", *CMAPSS_SENSORS]}
    )
    missing = [c for c in mapping if c not in df.columns]
    if missing:
        raise DatasetError(f"C-MAPSS has no column(s) {', '.join(missing)}")
    long = df.melt(
        id_vars=["unit", "cycle"],
        value_vars=list(mapping),
        var_name="sensor_id",
        value_name="value",
    )
    ts = start_us + np.round((long["cycle"].to_numpy() - 1) * cycle_s * 1e6).astype(np.int64)
    units = {u: asset_id.format(unit=u) for u in long["unit"].unique()}
    return pd.DataFrame(
        {
            "asset_id": long["unit"].map(units).to_numpy(),
            "sensor_id": long["sensor_id"].map(mapping).to_numpy(),
            "ts": pd.to_datetime(ts, unit="us", utc=True),
            "value": long["value"].astype(np.float64),
        }
    ).sort_values(["asset_id", "ts", "sensor_id"], ignore_index=True)


# -- SKAB ------------------------------------------------------------------------------------


def read_skab(
    data_dir: str | Path,
    experiment: str,
    columns: Mapping[str, str] | None = None,
    root: str = "skab",
) -> pd.DataFrame:
    """One SKAB file (``anomaly-free`` or ``valve1/<n>``), indexed by UTC time, with the
    sensor columns renamed by ``columns`` (published name -> new name; default: snake case)
    and ``anomaly``/``changepoint`` labels where present."""
    columns = dict(columns) if columns is not None else SKAB_SENSORS
    path = _need(Path(data_dir) / root / f"{experiment}.csv", f"SKAB experiment {experiment}")
    df = pd.read_csv(path, sep=";", parse_dates=["datetime"])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{path} lacks SKAB column(s) {', '.join(missing)}")
    df = df.rename(columns=columns).set_index("datetime")
    df.index = df.index.tz_localize("UTC")
    return df


def skab_runs(
    data_dir: str | Path, folder: str = "valve1", files: str = "*.csv", root: str = "skab"
) -> list[str]:
    """The experiments (``valve1/0``, ...) of a SKAB folder (``""``: the top level), in
    numeric order where the names are numbers."""
    where = Path(data_dir) / root / folder
    names = [p.stem for p in where.glob(files) if p.suffix == ".csv"] if where.is_dir() else []
    if not names:
        raise DatasetError(f"no SKAB experiments ({files}) under {where}; set PLANTPULSE_DATA")
    names.sort(key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))
    return [f"{folder}/{n}" if folder else n for n in names]


def skab_readings(
    df: pd.DataFrame, asset_id: str, sensor_ids: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Long-format readings of one SKAB experiment; ``sensor_ids`` maps the frame's columns to
    sensor ids (default: the snake-case columns as ``skab_<column>``)."""
    mapping = (
        dict(sensor_ids)
        if sensor_ids is not None
        else {s: f"skab_{s}" for s in SKAB_SENSORS.values()}
    )
    values = df[list(mapping)].to_numpy(np.float64)
    n, k = values.shape
    return pd.DataFrame(
        {
            "asset_id": asset_id,
            "sensor_id": np.tile(np.array(list(mapping.values())), n),
            "ts": np.repeat(df.index.to_numpy(), k),
            "value": values.ravel(),
        }
    )


# -- NAB -------------------------------------------------------------------------------------


def read_nab(
    data_dir: str | Path, name: str = "machine_temperature_system_failure", root: str = "nab"
) -> pd.DataFrame:
    """A NAB series (``ts`` UTC, ``value``) with an ``in_window`` label from NAB's anomaly
    windows (all False for a series without a labels file)."""
    folder = Path(data_dir) / root
    path = _need(folder / f"{name}.csv", f"NAB series {name}")
    df = pd.read_csv(path)
    missing = [c for c in ("timestamp", "value") if c not in df.columns]
    if missing:
        raise DatasetError(f"{path} lacks NAB column(s) {', '.join(missing)}")
    df = df.rename(columns={"timestamp": "ts"})
    df["ts"] = pd.to_datetime(df["ts"]).dt.tz_localize("UTC")
    df["in_window"] = False
    if not (folder / f"{name}.labels.json").exists():
        return df
    for lo, hi in nab_windows(data_dir, name, root):
        df.loc[(df["ts"] >= lo) & (df["ts"] <= hi), "in_window"] = True
    return df


def nab_windows(
    data_dir: str | Path, name: str = "machine_temperature_system_failure", root: str = "nab"
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """NAB's labelled anomaly windows for ``name``, as UTC timestamps."""
    path = _need(Path(data_dir) / root / f"{name}.labels.json", f"NAB labels for {name}")
    windows = json.loads(path.read_text())["anomaly_windows"]
    return [(pd.Timestamp(lo, tz="UTC"), pd.Timestamp(hi, tz="UTC")) for lo, hi in windows]
