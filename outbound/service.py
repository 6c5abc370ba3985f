"""The outbound loop: tail the lake's ``scores`` and ``alerts``, fold them into asset states,
and hand each change to the configured targets.

Why tail the lake rather than hook into the stream's sink: the stream does not wait on any
target (a slow CMMS or a dead broker cannot back-pressure the data plane), every worker's
commits are seen wherever they were made, and a restarted outbound finds the state again in
the tables.  The cost is the stream's commit interval (about a second) plus ``poll_s``.

On start the current state is read (all alerts; the scores of the newest two days) and shown
on every target.  Work orders from that first read go only to alerts that are open now (their
current state), and to closings of alerts whose earlier state was delivered: a first start on
a lake with years of history does not flood the CMMS with old alerts.  After that every
alert change in ``on`` (open, escalate, close) becomes a work order.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from lake import Lake, Settings
from outbound.deliveries import DELIVERED, FAILED, DeliveryLog
from outbound.state import AlertEvent, AssetState, StateBook, alert_key
from outbound.tail import TableTail
from outbound.webhook import WebhookDeliverer, WorkOrder
from plant import Plant

__all__ = ["Outbound", "work_order"]

log = logging.getLogger(__name__)

SCORE_COLUMNS = [
    "asset_id",
    "window_end",
    "anomaly_score",
    "prediction",
    "model_name",
    "model_version",
]
PROGNOSTICS_COLUMNS = ["asset_id", "ts", "rul", "rul_low", "rul_high", "health_indicator"]
ALERT_COLUMNS = [
    "alert_id",
    "asset_id",
    "opened_ts",
    "closed_ts",
    "updated_ts",
    "severity",
    "status",
    "summary",
    "top_features",
]


def work_order(
    event: AlertEvent, state: AssetState, plant: str, frames_link: str | None = None
) -> dict[str, Any]:
    """The JSON body of the work order for ``event`` on an asset in ``state``."""
    a = event.alert
    aid = a["alert_id"]
    frames_query = (
        "select asset_id, sensor_id, ts_start, sample_rate_hz, n_samples from "
        f"frames where retained_because = 'alert:{aid}' order by ts_start"
    )
    return {
        "idempotency_key": event.key,
        "event": event.kind,
        "plant": plant,
        "site": state.site,
        "asset_id": a["asset_id"],
        "priority": "high" if a["severity"] == "critical" else "normal",
        "title": a["summary"],
        "alert": {
            k: a.get(k)
            for k in (
                "alert_id",
                "status",
                "severity",
                "summary",
                "opened_ts",
                "updated_ts",
                "closed_ts",
            )
        },
        "evidence": {
            "top_features": a.get("top_features") or [],
            "health": state.health,
            "anomaly_score": state.anomaly_score,
            "rul": state.rul,
            "model": state.model,
            "model_version": state.model_version,
            "frames_query": frames_query,
            "frames_command": f'plantpulse sql "{frames_query}"',
            "frames_link": frames_link.format(alert_id=aid, asset_id=a["asset_id"])
            if frames_link
            else None,
        },
    }


class Outbound:
    """The outbound targets of ``plant`` (its file's ``outbound:`` section, or ``spec``)."""

    def __init__(
        self,
        plant: Plant,
        lake: Lake,
        spec: Any = None,
        *,
        mqtt_auth: tuple[str, str] | None = None,
        home: str | Path | None = None,
    ):
        self.plant, self.lake = plant, lake
        self.home = Path(home if home is not None else Settings.from_env().home)
        self.spec = spec if spec is not None else plant.outbound
        if self.spec is None:
            raise ValueError(f"plant {plant.name!r} has no outbound section")
        self.deliveries = DeliveryLog(lake)

        def site_of(asset_id: str) -> str | None:
            a = plant.asset(asset_id)
            return a.site if a is not None else None

        self.book = StateBook(site_of=site_of)
        self.scores = TableTail(lake, "scores", SCORE_COLUMNS, first_days=2)
        self.prognostics = TableTail(lake, "prognostics", PROGNOSTICS_COLUMNS, first_days=2)
        self.alerts = TableTail(lake, "alerts", ALERT_COLUMNS)
        self.mqtt = self.opcua = self.webhook = None
        if self.spec.mqtt is not None:
            from outbound.mqtt import StatePublisher

            self.mqtt = StatePublisher.from_spec(
                self.spec.mqtt, plant.name, self.deliveries, mqtt_auth, self.home
            )
        if self.spec.opcua is not None:
            from outbound.opcua import OpcUaServer, ServerSecurity

            declared = {a.asset_id: a.site for a in plant.assets.values() if a.match is None}
            self.opcua = OpcUaServer(
                self.spec.opcua.endpoint,
                plant.name,
                declared,
                ServerSecurity.from_spec(self.spec.opcua, plant.name, self.home),
                self.spec.opcua.namespace,
            )
        if self.spec.webhook is not None:
            self.webhook = WebhookDeliverer.from_spec(self.spec.webhook, self.deliveries)
        self._first = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the targets and the loop (in a thread); returns once the OPC UA server listens
        and the current state has been read."""
        if self.opcua is not None:
            self.opcua.start()
        if self.mqtt is not None:
            self.mqtt.start()
        if self.webhook is not None:
            self.webhook.start()
        self._poll_safely()
        self._thread = threading.Thread(target=self._run, name="outbound", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for target in (self.webhook, self.mqtt, self.opcua):
            if target is not None:
                target.stop()
        self.deliveries.flush()

    def _poll_safely(self) -> None:
        try:
            self.poll_once()
        except Exception:  # a bad poll (lake briefly unreadable) must not end outbound
            log.exception("outbound poll failed; trying again")

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._poll_safely()
            self._stop.wait(max(0.0, self.spec.poll_s - (time.monotonic() - started)))

    # -- one poll -----------------------------------------------------------------------------
    def poll_once(self) -> None:
        scored: set[str] = set()
        alerted: set[str] = set()
        events: list[AlertEvent] = []
        rows = self.scores.poll()
        if rows is not None:
            scored = self.book.fold_scores(rows.to_pylist())
        rows = self.prognostics.poll()
        if rows is not None:
            scored |= self.book.fold_prognostics(rows.to_pylist())
        rows = self.alerts.poll()
        if rows is not None:
            alerted, events = self.book.fold_alerts(rows.to_pylist())
        for asset in alerted:
            self._show(self.book.assets[asset], alert_changed=True)
        for asset in scored - alerted:
            self._show(self.book.assets[asset], alert_changed=False)
        if self.webhook is not None and events:
            self._work_orders(events)
        if self.mqtt is not None:
            self.mqtt.flush_due()
        self._first = False
        self.deliveries.flush()

    def _show(self, state: AssetState, alert_changed: bool) -> None:
        if self.mqtt is not None:
            self.mqtt.update(state, alert_changed)
        if self.opcua is not None:
            done = None
            if alert_changed and state.alert_id:
                key = alert_key(
                    state.alert_id, "open" if state.alert_active else "closed", state.severity
                )

                def done(
                    exc: BaseException | None, key: str = key, state: AssetState = state
                ) -> None:
                    self.deliveries.add(
                        DeliveryLog.row(
                            "opcua",
                            key,
                            FAILED if exc else DELIVERED,
                            alert_id=state.alert_id,
                            asset_id=state.asset_id,
                            error=None if exc is None else str(exc),
                        )
                    )

            self.opcua.update(state, done)

    def _work_orders(self, events: list[AlertEvent]) -> None:
        assert self.webhook is not None
        wanted = set(self.webhook_spec.on)
        if self._first:
            events = self._current(events)
        for event in events:
            if event.kind not in wanted:
                continue
            a = event.alert
            state = self.book.assets[a["asset_id"]]
            body = work_order(event, state, self.plant.name, self.webhook_spec.frames_link)
            self.webhook.submit(WorkOrder(event.key, a["alert_id"], a["asset_id"], body))

    @property
    def webhook_spec(self) -> Any:
        return self.spec.webhook

    def _current(self, events: list[AlertEvent]) -> list[AlertEvent]:
        """Of the first read's events: each open alert's current state, and the closing of
        alerts the CMMS was told about."""
        assert self.webhook is not None
        newest: dict[str, AlertEvent] = {}
        for e in events:
            newest[e.alert["alert_id"]] = e
        out = []
        for aid, e in newest.items():
            told = any(k.startswith(f"{aid}:") for k in self.webhook.delivered)
            if e.kind == "close":
                if told:
                    out.append(e)
            else:
                out.append(AlertEvent("escalate" if told else "open", e.key, e.alert))
        return out
