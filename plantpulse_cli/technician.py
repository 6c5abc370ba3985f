"""A simulated maintenance technician for the demo (``plantpulse up`` with the simulator).

In a plant, labels come after alerts: someone inspects the machine an alert is about and
records what they found, some time later, or never.  This process does that for the simulated
fleet: when an alert opens on a machine the simulator has actually faulted (the alert opened at
or after the fault's onset), it waits ``--delay`` seconds (the walk to the machine) and records
the simulator's ground truth for it, as ``plantpulse label <alert_id> --kind failure
--component <bearing>`` would.  A fixed share of alerts (``--never``, chosen by a hash of the
alert id, so the same alerts on every run) is not inspected when it comes in; of those, an
alert still open after ``--remind`` seconds (default ten minutes) is inspected then (an alarm
that stays on is not ignored for ever), the others are never confirmed.  Alerts on healthy
machines get no label (nothing to confirm).  Retraining then uses what has been labelled.

The fleet is ``physics.simulator.default_fleet()``, the one ``bytewax_flows.telemetry:flow``
streams.  Its clock starts when the stream first starts on a fresh recovery store; each
machine's start is its first reading after ``$PLANTPULSE_HOME/simulation_epoch_us`` (written
when that store was created), so a restart that resumes the stream keeps the same start.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lake import Lake, Settings, current_alerts

__all__ = ["GroundTruthFault", "faults_of", "confirmations", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroundTruthFault:
    """A fault the simulator injected: from ``onset`` on, ``asset_id``'s ``component`` is bad."""

    asset_id: str
    onset: pd.Timestamp
    component: str


def faults_of(ground_truth: Iterable[dict]) -> list[GroundTruthFault]:
    """The bearing faults among ``FleetSimulator.ground_truth()`` rows (onsets only)."""
    return [
        GroundTruthFault(
            str(r["asset_id"]), pd.Timestamp(int(r["ts"]), unit="us", tz="UTC"), str(r["component"])
        )
        for r in ground_truth
        if r["kind"] == "fault_injected" and str(r["component"]).startswith("bearing_")
    ]


def never_confirmed(alert_id: str, share: float) -> bool:
    """Whether the technician never gets to this alert (deterministic in ``alert_id``)."""
    return (zlib.crc32(alert_id.encode()) % 10_000) / 10_000 < share


def confirmations(
    alerts: pd.DataFrame,
    faults: list[GroundTruthFault],
    labelled: set[str],
    now: pd.Timestamp,
    delay_s: float,
    never_share: float = 0.0,
    remind_s: float | None = None,
) -> list[dict]:
    """The ``maintenance_events`` rows the technician writes at ``now``.

    ``alerts`` is the current state of each alert (``lake.current_alerts``); an alert gets a
    label when its machine has a fault whose onset is at or before the alert's opening, the
    alert opened at least ``delay_s`` ago, its id is not in ``labelled`` (already confirmed) and
    it is not one of the ``never_share`` the technician does not get to, unless it is still
    open ``remind_s`` after it opened.  The label's time is the alert's opening: what the
    technician can vouch for is that the fault was there then.
    """
    rows = []
    for a in alerts.itertuples():
        if a.alert_id in labelled:
            continue
        opened = pd.Timestamp(a.opened_ts)
        if now - opened < pd.Timedelta(seconds=delay_s):
            continue
        reminded = (
            remind_s is not None
            and a.status == "open"
            and now - opened >= pd.Timedelta(seconds=remind_s)
        )
        if never_confirmed(a.alert_id, never_share) and not reminded:
            continue
        found = [f for f in faults if f.asset_id == a.asset_id and f.onset <= opened]
        if not found:
            continue
        fault = max(found, key=lambda f: f.onset)
        rows.append(
            dict(
                asset_id=a.asset_id,
                ts=opened,
                kind="failure",
                component=fault.component,
                detail=f"confirms alert {a.alert_id}; found on inspection",
                source="technician",
            )
        )
    return rows


def labelled_alerts(lake: Lake) -> set[str]:
    """Alert ids some earlier label confirmed (``detail`` starts with ``confirms alert <id>``)."""
    if not lake.exists("maintenance_events"):
        return set()
    details = lake.read("maintenance_events", columns=["detail"])["detail"].dropna()
    out = set()
    for d in details:
        if d.startswith("confirms alert "):
            out.add(d.removeprefix("confirms alert ").split(";")[0].strip())
    return out


def simulation_starts(lake: Lake, asset_ids: list[str], epoch_us: int) -> dict[str, int]:
    """Each machine's simulation start: its first reading at or after ``epoch_us``, floored to
    the second (the live source starts on a whole second); machines without readings yet are
    left out."""
    if not lake.exists("readings"):
        return {}
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    since = pd.Timestamp(epoch_us - 1_000_000, unit="us", tz="UTC")
    out = {}
    for asset in asset_ids:
        ts = lake.dataset("readings").to_table(
            columns=["ts"],
            filter=(pads.field("asset_id") == asset) & (pads.field("ts") >= since),
        )["ts"]
        if len(ts):
            first = pc.min(ts).value  # µs
            out[asset] = (first // 1_000_000) * 1_000_000
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m plantpulse_cli.technician", description=__doc__)
    p.add_argument("--delay", type=float, default=120.0, help="seconds from alert to label")
    p.add_argument(
        "--never", type=float, default=0.25, help="share of alerts not inspected when they open"
    )
    p.add_argument(
        "--remind",
        type=float,
        default=600.0,
        help="seconds after which an alert still open is inspected anyway",
    )
    p.add_argument("--every", type=float, default=10.0, help="seconds between rounds")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from physics.simulator import default_fleet

    settings = Settings.from_env()
    lake = Lake(settings.lake_uri)
    fleet = default_fleet()
    epoch_file = Path(settings.home) / "simulation_epoch_us"
    epoch_us = int(epoch_file.read_text()) if epoch_file.exists() else 0
    starts: dict[str, int] = {}
    stop = {"now": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.update(now=True))
    log.info(
        "technician: confirms alerts %g s after they open; %.0f %% only if still open after %g s",
        args.delay,
        100 * args.never,
        args.remind,
    )
    while not stop["now"]:
        missing = [a for a in fleet.asset_ids if a not in starts]
        if missing:
            starts.update(simulation_starts(lake, missing, epoch_us))
        faults = [
            f
            for a, start in starts.items()
            for f in faults_of(fleet.starting_at(start).ground_truth())
            if f.asset_id == a
        ]
        alerts = current_alerts(lake)
        if len(alerts) and faults:
            rows = confirmations(
                alerts,
                faults,
                labelled_alerts(lake),
                pd.Timestamp.now(tz="UTC"),
                args.delay,
                args.never,
                args.remind,
            )
            if rows:
                lake.append("maintenance_events", pd.DataFrame(rows))
                for r in rows:
                    log.info(
                        "labelled %s: %s on %s (%s)",
                        r["detail"].split(";")[0],
                        r["component"],
                        r["asset_id"],
                        r["ts"],
                    )
        for _ in range(int(args.every * 10)):
            if stop["now"]:
                break
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
