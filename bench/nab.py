"""NAB: every series of the data set's ``nab`` folder through the stream, each from the plant file that names it.

For each ``<series>.csv`` in ``$PLANTPULSE_DATA/nab``, the plant file whose ``replay:`` section
names it (``plant/plants/nab*.yaml``, or ``--plants DIR``) declares the asset and its sensor;
the series goes through the real telemetry flow as that asset, one message per reading, and
its process detector sets itself up from its own first 400 windows (``dataplane.detectors``),
with the plant file's false-alarm budget (the NAB plant files declare 0.02 alerts a day: about
one false alert a quarter, NAB's own scoring of a series weeks to months long). Nothing is
chosen per series. Reported per series:
how many of its labelled anomaly windows contain the opening of an alert (alerted), how many
an open alert overlaps, how many alerts open outside every window, and how far into each
window the first alert came. A series without a plant file is listed as such, not scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.common import data_dir, parser, replay_into_lake, report
from bytewax_flows.replay import plant_messages
from lake import current_alerts
from physics.datasets import nab_windows
from plant import PLANTS_DIR, load_plant


def nab_plants(where: Path) -> dict[str, Path]:
    """Series name -> the plant file whose replay section names it."""
    out: dict[str, Path] = {}
    for f in sorted(where.glob("*.yaml")):
        try:
            plant = load_plant(f)
        except Exception:  # noqa: BLE001 - a plant file that does not load names no series
            continue
        spec = plant.replay
        if spec is not None and spec.adapter == "nab":
            out.setdefault(spec.series, f)
    return out


def score_series(alerts: pd.DataFrame, windows: list[tuple[pd.Timestamp, pd.Timestamp]]) -> dict:
    """Windows alerted (an alert opened inside), overlapped (an open alert reached into), alerts
    opened outside every window, and hours into each alerted window of its first alert."""
    opened = pd.to_datetime(alerts["opened_ts"], utc=True)
    closed = pd.to_datetime(alerts["closed_ts"], utc=True).fillna(
        pd.Timestamp.max.tz_localize("UTC")
    )
    inside = pd.Series(False, index=alerts.index)
    hit, lead, overlapped = 0, [], 0
    for lo, hi in windows:
        mask = (opened >= lo) & (opened <= hi)
        inside |= mask
        overlapped += bool(((opened <= hi) & (closed >= lo)).any())
        if mask.any():
            hit += 1
            lead.append((opened[mask].min() - lo).total_seconds() / 3600.0)
    return {
        "windows": len(windows),
        "windows_alerted": hit,
        "windows_overlapped": overlapped,
        "alerts_outside": int((~inside).sum()),
        "alerts": len(alerts),
        "hours_into_window": [round(h, 2) for h in lead],
    }


def main(argv: list[str] | None = None) -> dict:
    p = parser("nab", __doc__.splitlines()[0])
    p.add_argument("--plants", default=str(PLANTS_DIR), help="directory of NAB plant files")
    args = p.parse_args(argv)
    data = data_dir(args.data)
    plants = nab_plants(Path(args.plants))
    series = sorted(f.stem for f in (Path(data) / "nab").glob("*.csv"))
    per: dict[str, Any] = {}
    unplanted = [s for s in series if s not in plants]
    for name in series:
        if name not in plants:
            continue
        plant = load_plant(plants[name])
        timelines = plant_messages(plant, data)
        if args.quick:
            timelines = {k: v[:1500] for k, v in timelines.items()}
        alerts = current_alerts(replay_into_lake(timelines, plant=plant))
        windows = (
            nab_windows(data, name) if (Path(data) / "nab" / f"{name}.labels.json").exists() else []
        )
        if args.quick:
            last = pd.Timestamp(
                max(t for tl in timelines.values() for t, _ in tl), unit="us", tz="UTC"
            )
            windows = [(lo, hi) for lo, hi in windows if lo <= last]
        per[name] = {
            **score_series(alerts, windows),
            "plant": Path(plants[name]).name,
            "alerts_per_day": plant.alerts_per_day(plant.replay.asset),
            "alert_spans": [
                [str(o), str(c)]
                for o, c in zip(alerts["opened_ts"], alerts["closed_ts"], strict=True)
            ],
        }
        m = per[name]
        print(
            f"{name:<40} windows alerted {m['windows_alerted']}/{m['windows']}  overlapped "
            f"{m['windows_overlapped']}  alerts outside {m['alerts_outside']:3d}  "
            f"(plant {m['plant']})"
        )
    for name in unplanted:
        print(f"{name:<40} no plant file names this series: not scored")
    scored = list(per.values())
    metrics = {
        "series": float(len(series)),
        "series_scored": float(len(per)),
        "windows": float(sum(m["windows"] for m in scored)),
        "windows_alerted": float(sum(m["windows_alerted"] for m in scored)),
        "windows_overlapped": float(sum(m["windows_overlapped"] for m in scored)),
        "series_with_every_window_alerted": float(
            sum(m["windows_alerted"] == m["windows"] for m in scored)
        ),
        "alerts_outside_windows": float(sum(m["alerts_outside"] for m in scored)),
        "worst_alerts_outside": float(max((m["alerts_outside"] for m in scored), default=0)),
    }
    for name, m in per.items():
        metrics[f"{name}:windows_alerted"] = float(m["windows_alerted"])
        metrics[f"{name}:alerts_outside"] = float(m["alerts_outside"])
    return report(
        "nab",
        metrics,
        {
            "series_scored": f">= {len(series)}",
            "series_with_every_window_alerted": f">= {len(per)}",
            "worst_alerts_outside": "<= 2",
        },
        quick=args.quick,
        out=args.out,
        extra={
            "protocol": "each series through the real flow from the plant file naming it; the "
            "detector learns from the series' first 400 windows; no parameter per series; a "
            "window is alerted when an alert opens inside it",
            "designed_on": "SKAB valve1 0-7 and the anomaly-free run; no NAB series was used to "
            "choose anything",
            "unplanted_series": unplanted,
            "per_series": per,
        },
    )


if __name__ == "__main__":
    main()
