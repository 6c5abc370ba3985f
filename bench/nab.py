"""NAB machine temperature: the labelled failures, replayed through the stream.

The series (5-minute readings of an industrial machine's temperature, with four labelled
anomaly windows around known failures) goes through the real telemetry flow as one asset; the
process channel learns from the first 400 readings (about 33 hours) and then scores every
reading; alerts open and close with the stream's hysteresis. Reported: how many of the four
windows contain the opening of an alert, how many alerts open outside every window, and how
far into each window the first alert came; also how many windows an open alert overlaps (an
alert that opened hours before a window and stays open through it warned early).
"""

from __future__ import annotations

import pandas as pd

from bench.common import data_dir, parser, replay_into_lake, report
from bytewax_flows.replay import dataset_messages
from lake import current_alerts
from physics.datasets import nab_windows


def main(argv: list[str] | None = None) -> dict:
    args = parser("nab", __doc__.splitlines()[0]).parse_args(argv)
    data = data_dir(args.data)
    timelines = dataset_messages("nab", data)
    if args.quick:
        timelines = {k: v[:3000] for k, v in timelines.items()}
    lake = replay_into_lake(timelines)
    alerts = current_alerts(lake)
    windows = nab_windows(data)
    opened = pd.to_datetime(alerts["opened_ts"], utc=True)
    closed = pd.to_datetime(alerts["closed_ts"], utc=True).fillna(
        pd.Timestamp.max.tz_localize("UTC")
    )
    covered = sum(bool(((opened <= hi) & (closed >= lo)).any()) for lo, hi in windows)
    hit, lead = 0, []
    inside = pd.Series(False, index=alerts.index)
    for lo, hi in windows:
        mask = (opened >= lo) & (opened <= hi)
        inside |= mask
        if mask.any():
            hit += 1
            lead.append((opened[mask].min() - lo).total_seconds() / 3600.0)
    metrics = {
        "windows_with_alert": float(hit),
        "windows": float(len(windows)),
        "windows_overlapped_by_an_open_alert": float(covered),
        "alerts_outside_windows": float((~inside).sum()),
        "alerts_total": float(len(alerts)),
        "mean_hours_into_window_of_first_alert": float(sum(lead) / len(lead))
        if lead
        else float("nan"),
    }
    return report(
        "nab",
        metrics,
        {"windows_with_alert": ">= 4"},
        quick=args.quick,
        out=args.out,
        extra={
            "windows": [[str(lo), str(hi)] for lo, hi in windows],
            "alerts": [
                [str(o), str(c)]
                for o, c in zip(alerts["opened_ts"], alerts["closed_ts"], strict=True)
            ],
        },
    )


if __name__ == "__main__":
    main()
