"""``plantpulse label``: a technician's finding appended to ``maintenance_events``.

In a plant the label comes after the alert: a technician inspects the machine and confirms (or
not) what failed, late, or never.  The label names an alert (it then applies to that alert's
asset, from the alert's opening unless ``--ts`` says otherwise) or an asset directly.  Unknown
alerts and assets, unknown kinds and components, and unreadable times are refused before
anything is written.

``normal_operation`` says an alert's state (typically a *persisting change*) is the machine's
new normal, and ``operating_change`` declares a change of operating point (a new setpoint, a
different product): the running stream closes the asset's alert and learns its normal again
from then on (``dataplane.scoring.apply_labels``).  They need no component and date from now
unless ``--ts`` says otherwise (the new normal holds from when it is declared).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lake import Lake, Settings, current_alerts
from plantpulse_cli.checks import UsageError, check_readable_lake

__all__ = [
    "BEARING_COMPONENTS",
    "KINDS",
    "REBASELINE_KINDS",
    "normalise_component",
    "record_label",
    "label_row",
]

KINDS = ("failure", "repair", "inspection", "normal_operation", "operating_change")
REBASELINE_KINDS = ("normal_operation", "operating_change")
"""Kinds that re-baseline the asset's normal in the running stream (no component needed)."""
BEARING_COMPONENTS = ("outer_race", "inner_race", "ball")
"""The bearing conditions the fault classifier knows (``models.training.FAULT_CLASSES`` without
``normal``; kept here so the CLI starts without importing XGBoost; a test keeps them equal)."""


def normalise_component(component: str) -> str:
    """``outer_race`` or ``bearing_outer_race`` → ``bearing_outer_race``; ``<sensor>_sensor``
    stays as it is; anything else is a ``UsageError``."""
    c = component.strip().lower()
    bare = c.removeprefix("bearing_")
    if bare in BEARING_COMPONENTS:
        return f"bearing_{bare}"
    if c.endswith("_sensor") and len(c) > len("_sensor"):
        return c
    raise UsageError(
        f"unknown component {component!r}; use one of {', '.join(BEARING_COMPONENTS)} "
        "(bearing_ prefix optional) or <sensor_id>_sensor"
    )


def _parse_ts(text: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise UsageError(
            f"--ts {text!r} is not a time; use ISO 8601, e.g. 2026-12-01T14:05Z"
        ) from None
    if ts is pd.NaT:
        raise UsageError(f"--ts {text!r} is not a time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _has_asset(lake: Lake, asset_id: str) -> bool:
    import pyarrow.dataset as pads

    for table in ("features", "readings", "scores"):
        if lake.exists(table) and lake.dataset(table).count_rows(
            filter=pads.field("asset_id") == asset_id
        ):
            return True
    return False


def label_row(
    lake: Lake,
    target: str,
    *,
    kind: str,
    component: str | None,
    ts: str | pd.Timestamp | None = None,
    detail: str | None = None,
    source: str = "cli",
) -> dict[str, Any]:
    """The validated ``maintenance_events`` row for a label on ``target`` (alert or asset)."""
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    rebaseline = kind in REBASELINE_KINDS
    if component is None and not rebaseline:
        raise UsageError(f"--kind {kind} needs --component (what failed, was repaired or seen)")
    comp = "operation" if rebaseline and component is None else normalise_component(component or "")
    alerts = current_alerts(lake)
    hit = alerts[alerts["alert_id"] == target] if len(alerts) else alerts
    if len(hit):
        alert = hit.iloc[0]
        asset_id = str(alert["asset_id"])
        when = _parse_ts(ts) if isinstance(ts, str) else ts
        if when is None:  # a finding dates from the alert; a new normal from now
            when = pd.Timestamp.now(tz="UTC") if rebaseline else pd.Timestamp(alert["opened_ts"])
        note: str | None = (
            "normal operation, alert " if rebaseline else "confirms alert "
        ) + target
        note = f"{note}; {detail}" if detail else note
    elif _has_asset(lake, target):
        asset_id = target
        when = _parse_ts(ts) if isinstance(ts, str) else ts
        when = pd.Timestamp.now(tz="UTC") if when is None else when
        note = detail
    else:
        raise UsageError(
            f"unknown alert or asset {target!r}: no alert has that id and no feature, reading or "
            "score names that asset (see `plantpulse alerts`)"
        )
    when = pd.Timestamp(when)
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    if when > pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=5):
        raise UsageError(f"--ts {when.isoformat()} lies in the future")
    return dict(asset_id=asset_id, ts=when, kind=kind, component=comp, detail=note, source=source)


def record_label(
    settings: Settings,
    target: str,
    *,
    kind: str,
    component: str | None,
    ts: str | None = None,
    detail: str | None = None,
    source: str = "cli",
) -> dict[str, Any]:
    """Validate and append one label; returns the row written."""
    check_readable_lake(settings.lake_uri)
    lake = Lake(settings.lake_uri)
    row = label_row(
        lake, target, kind=kind, component=component, ts=ts, detail=detail, source=source
    )
    lake.append("maintenance_events", pd.DataFrame([row]))
    return row
