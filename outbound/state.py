"""What each asset's state is, from the ``scores`` and ``alerts`` rows: health, anomaly score,
RUL and alert state, and which alert changes are events a maintenance system hears about.

Pure: rows in, states and events out.  Rows may arrive more than once and in any order (a
compacted table's files are read again; several workers commit independently): a row older
than what is already known changes nothing, so folding is idempotent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from dataplane.scoring import PROCESS_DETECTOR_NAME, AlertPolicy
from models.registry import RUL_MODEL

__all__ = ["AssetState", "AlertEvent", "StateBook", "health_from", "alert_key"]


_POLICY = AlertPolicy()


def health_from(
    anomaly_score: float,
    p_fault: float | None,
    model_name: str | None,
    policy: AlertPolicy = _POLICY,
) -> float:
    """Health in percent: 100 for a normal window, 50 when the online score sits at the
    channel's alert-opening threshold (or the champion's P(fault) is 0.5), lower beyond.

    >>> health_from(0.0, None, None)
    100.0
    >>> health_from(AlertPolicy().anomaly_open_at, None, None)
    50.0
    >>> health_from(0.0, 0.9, "plantpulse-fault")
    10.0
    """
    channel = "process" if model_name == PROCESS_DETECTOR_NAME else "vibration"
    open_at = policy.for_channel(channel).anomaly_open_at
    score = anomaly_score if math.isfinite(anomaly_score) else 0.0
    health = 100.0 * open_at / (open_at + max(score, 0.0))
    if p_fault is not None and model_name != RUL_MODEL and math.isfinite(p_fault):
        health = min(health, 100.0 * (1.0 - min(max(p_fault, 0.0), 1.0)))
    return round(health, 3)


def alert_key(alert_id: str, status: str, severity: str) -> str:
    """The idempotency key of one alert state: what a target must receive once."""
    return f"{alert_id}:{status}:{severity}"


@dataclass(frozen=True)
class AssetState:
    """The state of one asset as outbound targets show it."""

    asset_id: str
    site: str
    health: float | None = None
    anomaly_score: float | None = None
    rul: float | None = None
    model: str | None = None
    model_version: str | None = None
    scored_us: int | None = None  # event time of the newest score
    alert_id: str | None = None
    alert_status: str = "normal"  # normal (no alert yet or the last one closed) or open
    severity: str = ""
    summary: str = ""
    opened_us: int | None = None
    alert_updated_us: int | None = None
    # the newest ``prognostics`` row (assets with a health indicator, while an RUL model serves)
    rul_low: float | None = None
    rul_high: float | None = None
    health_indicator: float | None = None
    rul_us: int | None = None

    @property
    def alert_active(self) -> bool:
        return self.alert_status == "open"

    def to_json(self) -> dict[str, Any]:
        return {
            "asset_id": self.asset_id,
            "site": self.site,
            "health": self.health,
            "anomaly_score": self.anomaly_score,
            "rul": self.rul,
            "model": self.model,
            "model_version": self.model_version,
            "scored_ts_us": self.scored_us,
            "rul_interval": None if self.rul_low is None else [self.rul_low, self.rul_high],
            "health_indicator": self.health_indicator,
            "rul_ts_us": self.rul_us,
            "alert": {
                "state": self.alert_status,
                "active": self.alert_active,
                "alert_id": self.alert_id,
                "severity": self.severity,
                "summary": self.summary,
                "opened_ts_us": self.opened_us,
                "updated_ts_us": self.alert_updated_us,
            },
        }


@dataclass(frozen=True)
class AlertEvent:
    """An alert change for the maintenance system: ``kind`` is open, escalate or close."""

    kind: str
    key: str
    alert: dict[str, Any]  # the alerts row of this state


def _us(value: Any) -> int:
    """A timestamp of an Arrow row (datetime or int µs) in µs."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    return int(value.timestamp() * 1_000_000)


@dataclass
class StateBook:
    """Every asset's current state, and every alert's newest row."""

    site_of: Any = None  # callable asset_id -> site (the plant's), or None
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    assets: dict[str, AssetState] = field(default_factory=dict)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per alert, the states it has had (keys), to tell escalation from a first opening
    _history: dict[str, set[str]] = field(default_factory=dict)

    def _asset(self, asset_id: str) -> AssetState:
        state = self.assets.get(asset_id)
        if state is None:
            site = (self.site_of(asset_id) if self.site_of else None) or "unassigned"
            state = self.assets[asset_id] = AssetState(asset_id, site)
        return state

    def fold_scores(self, rows: list[dict[str, Any]]) -> set[str]:
        """Take ``scores`` rows; returns the assets whose state changed."""
        changed: set[str] = set()
        for r in rows:
            asset = r["asset_id"]
            end = _us(r["window_end"])
            old = self._asset(asset)
            if old.scored_us is not None and end <= old.scored_us:
                continue
            score = float(r["anomaly_score"])
            prediction = r.get("prediction")
            model = r.get("model_name")
            rul = float(prediction) if model == RUL_MODEL and prediction is not None else old.rul
            self.assets[asset] = replace(
                old,
                anomaly_score=score,
                rul=rul,
                model=model,
                model_version=r.get("model_version"),
                scored_us=end,
                health=health_from(score, prediction, model, self.policy),
            )
            changed.add(asset)
        return changed

    def fold_prognostics(self, rows: list[dict[str, Any]]) -> set[str]:
        """Take ``prognostics`` rows (remaining life with its interval and the health
        indicator); returns the assets whose state changed (an older row changes nothing)."""
        changed: set[str] = set()
        for r in rows:
            asset, ts = r["asset_id"], _us(r["ts"])
            old = self._asset(asset)
            if old.rul_us is not None and ts <= old.rul_us:
                continue
            self.assets[asset] = replace(
                old,
                rul=float(r["rul"]),
                rul_low=float(r["rul_low"]),
                rul_high=float(r["rul_high"]),
                health_indicator=float(r["health_indicator"]),
                rul_us=ts,
            )
            changed.add(asset)
        return changed

    def fold_alerts(self, rows: list[dict[str, Any]]) -> tuple[set[str], list[AlertEvent]]:
        """Take ``alerts`` rows (in any order); returns the assets whose alert state changed
        and the events (each alert state once, oldest first)."""
        changed: set[str] = set()
        events: list[AlertEvent] = []
        for r in sorted(rows, key=lambda r: (_us(r["updated_ts"]), r["status"] == "closed")):
            aid = r["alert_id"]
            known = self.alerts.get(aid)
            if known is not None and (_us(r["updated_ts"]), r["status"] == "closed") <= (
                _us(known["updated_ts"]),
                known["status"] == "closed",
            ):
                continue
            self.alerts[aid] = r
            key = alert_key(aid, r["status"], r["severity"])
            seen = self._history.setdefault(aid, set())
            if key not in seen:
                kind = "close" if r["status"] == "closed" else "escalate" if seen else "open"
                seen.add(key)
                events.append(AlertEvent(kind, key, r))
            asset = r["asset_id"]
            old = self._asset(asset)
            if (
                old.alert_id is not None
                and old.alert_id != aid
                and old.alert_active
                and r["status"] == "closed"
            ):
                continue  # an older alert closing does not hide the asset's open one
            self.assets[asset] = replace(
                old,
                alert_id=aid,
                alert_status="open" if r["status"] == "open" else "normal",
                severity=r["severity"] if r["status"] == "open" else "",
                summary=r["summary"],
                opened_us=_us(r["opened_ts"]),
                alert_updated_us=_us(r["updated_ts"]),
            )
            changed.add(asset)
        return changed, events
