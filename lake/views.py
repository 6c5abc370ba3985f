"""Derived views of the tables that more than one reader needs."""

from __future__ import annotations

import pandas as pd

from lake.catalogue import table_spec
from lake.store import Lake

__all__ = ["current_alerts"]


def current_alerts(lake: Lake) -> pd.DataFrame:
    """The current state of every alert: ``alerts`` keeps one row per state change (opened,
    re-diagnosed, closed), so this is the newest row per ``alert_id``, newest alert first.
    Empty (with the table's columns) when no alert has been written yet."""
    if not lake.exists("alerts"):
        return pd.DataFrame(columns=table_spec("alerts").columns)
    a = lake.read("alerts").sort_values("updated_ts")
    return a.groupby("alert_id", as_index=False).last().sort_values("opened_ts", ascending=False)
