"""Operator commands: ``status``, ``alerts``, ``promote``, ``rollback``.

Each returns plain data (lists and dicts) that ``main`` prints as tables or, with ``--json``,
as JSON for scripts.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from lake import TABLES, Lake, Settings, current_alerts

if TYPE_CHECKING:
    from models.gate import GatePolicy

# models.* (MLflow, XGBoost) is imported by the functions that need it: `alerts` does not.

__all__ = ["models", "model_name", "status", "alerts", "promote", "roll_back"]


def models() -> dict[str, str]:
    """The short names the commands accept for the registered models."""
    from models.registry import FAULT_MODEL, RUL_MODEL

    return {"fault": FAULT_MODEL, "rul": RUL_MODEL}


STREAM_STALE_S = 30.0
"""The stream commits every few seconds; no commit for this long means the worker is not running
(or not receiving data)."""


def model_name(name: str) -> str:
    """``fault``/``rul`` or a full registered name; anything else is a ``ModelNotFoundError``."""
    from models.registry import ModelNotFoundError

    known = models()
    if name in known:
        return known[name]
    if name in known.values():
        return name
    raise ModelNotFoundError(
        f"unknown model {name!r}; use one of: {', '.join([*known, *known.values()])}"
    )


def _iso(ts: pd.Timestamp | float | None) -> str | None:
    """A timestamp, or epoch milliseconds, as ISO 8601 to the second (None for a missing one)."""
    if ts is None or (isinstance(ts, float) and ts != ts) or pd.isna(ts):
        return None
    when = ts if isinstance(ts, pd.Timestamp) else pd.Timestamp(ts, unit="ms", tz="UTC")
    return when.isoformat(timespec="seconds")


NEWEST_COLUMN = {
    "calibration": "valid_from",
    "maintenance_events": "ts",
    "model_decisions": "ts",
    "sensor_daily_stats": "last_ts",
    "sensor_proposals": "profiled_ts",
}
"""The column ``status`` reports as ``newest`` for the tables without a declared time column."""


def newest_column(name: str) -> str | None:
    return TABLES[name].time_column or NEWEST_COLUMN.get(name)


def _newest(lake: Lake, name: str, actions: pd.DataFrame, col: str) -> pd.Timestamp | None:
    """The newest value of ``col``: from the files' statistics when every file has them,
    otherwise (files written without statistics for it) by scanning that one column."""
    if not len(actions):
        return None
    stat = f"max.{col}"
    if stat in actions and actions[stat].notna().all():
        return pd.Timestamp(actions[stat].max())
    import pyarrow.compute as pc

    values = lake.dataset(name).to_table(columns=[col])[col]
    newest = pc.max(values).as_py()
    return None if newest is None else pd.Timestamp(newest)


def _table_status(lake: Lake, name: str) -> dict[str, Any]:
    if not lake.exists(name):
        return {"table": name, "rows": 0, "newest": None, "last_commit": None, "version": None}
    dt = lake.table(name)
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pandas()
    rows = int(actions["num_records"].sum()) if "num_records" in actions else lake.count(name)
    col = newest_column(name)
    newest = _newest(lake, name, actions, col) if col else None
    last = dt.history(1)[0]
    return {
        "table": name,
        "rows": rows,
        "newest": _iso(newest),
        "last_commit": _iso(float(last["timestamp"])),
        "version": dt.version(),
        "_last_commit_ms": float(last["timestamp"]),
    }


def _champion(settings: Settings, lake: Lake, name: str) -> dict[str, Any]:
    from models.registry import champion_version, client

    mv = champion_version(client(settings.mlflow_tracking_uri), name)
    if mv is None:
        return {"model": name, "champion": None}
    info: dict[str, Any] = {
        "model": name,
        "champion": str(mv.version),
        "registered": _iso(float(mv.creation_timestamp)),
    }
    if lake.exists("model_decisions"):
        d = lake.read("model_decisions", filters=[("model_name", "=", name)])
        d = d[(d["decision"] == "promote") & (d["candidate_version"] == str(mv.version))]
        if len(d):
            ev = json.loads(d.sort_values("ts")["metrics"].iloc[-1])["candidate"]
            info["metric"] = ev["metric"]
            info["value"] = round(float(ev["overall"]), 4)
    return info


def status(settings: Settings) -> dict[str, Any]:
    lake = Lake(settings.lake_uri)
    tables = [_table_status(lake, name) for name in TABLES]
    now_ms = time.time() * 1000
    stream = [t for t in tables if t["table"] in ("readings", "features") and t["last_commit"]]
    age = min((now_ms - t["_last_commit_ms"]) / 1000 for t in stream) if stream else None
    for t in tables:
        t.pop("_last_commit_ms", None)
    alerts_now = current_alerts(lake)
    return {
        "lake": settings.lake_uri,
        "tables": tables,
        "models": [_champion(settings, lake, n) for n in models().values()],
        "open_alerts": int((alerts_now["status"] == "open").sum()),
        "stream": {
            "last_commit_s_ago": None if age is None else round(age, 1),
            "healthy": age is not None and age <= STREAM_STALE_S,
        },
    }


def alerts(settings: Settings, days: float = 7.0, only_open: bool = False) -> list[dict]:
    """Open alerts and those opened in the last ``days`` days, newest first."""
    a = current_alerts(Lake(settings.lake_uri))
    if len(a):
        cutoff = pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=days)
        a = a[(a["status"] == "open") | (a["opened_ts"] >= cutoff)]
        if only_open:
            a = a[a["status"] == "open"]
    return [
        {
            "alert_id": r.alert_id,
            "asset_id": r.asset_id,
            "status": r.status,
            "severity": r.severity,
            "opened": _iso(r.opened_ts),
            "closed": _iso(r.closed_ts),
            "summary": r.summary,
            "top_features": ", ".join(
                f"{t['feature']} ({t['contribution']:+.2f})" for t in r.top_features
            ),
        }
        for r in a.itertuples()
    ]


def promote(settings: Settings, name: str, version: str, policy: GatePolicy) -> dict[str, Any]:
    """``version`` of ``name`` through the gate; the plant's latency ceiling (if it declares
    one) applies whatever ``policy`` says."""
    from dataclasses import replace

    from models.gate import plant_latency_ceiling_ms, run_gate
    from plant import default_plant

    ceiling = plant_latency_ceiling_ms(default_plant())
    if ceiling is not None:
        policy = replace(policy, latency_ceiling_ms=ceiling)
    d = run_gate(
        settings.mlflow_tracking_uri, Lake(settings.lake_uri), model_name(name), version, policy
    )
    return {
        "decision": d.decision,
        "model": d.model_name,
        "candidate": d.candidate_version,
        "champion_before": d.champion_version,
        "reasons": d.reasons,
        "latency": d.evidence.get("latency"),
    }


def roll_back(settings: Settings, name: str, reason: str) -> dict[str, Any]:
    from models.gate import rollback

    d = rollback(settings.mlflow_tracking_uri, Lake(settings.lake_uri), model_name(name), reason)
    return {
        "decision": d.decision,
        "model": d.model_name,
        "from": d.candidate_version,
        "to": d.champion_version,
        "reasons": d.reasons,
    }
