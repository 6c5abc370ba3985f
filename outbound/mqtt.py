"""Asset state out over MQTT: a retained JSON message per asset, and Sparkplug B for SCADA.

JSON: ``plantpulse-out/<site>/<asset_id>/state`` by default (``topic`` of the plant file's
``outbound.mqtt``), retained, so a dashboard that subscribes later gets every asset's current
state at once.  The prefix is not ``plantpulse/``: the stream subscribes to ``plantpulse/#``
and would take the states for sensor readings.  An asset's state is published when its alert
changes, and on a score change at most every ``min_interval_s``.

Sparkplug B (``spBv1.0/<group>/...``, the payloads of ``outbound.sparkplug_b_pb2``): this
process is one edge node (``sparkplug_node``) and each asset a device.  On every connection
it publishes NBIRTH (``bdSeq``, ``Node Control/Rebirth``) and a DBIRTH per known asset (every
metric with its name, alias, datatype and value), then DDATA with aliases only, for the metrics
that changed.  Its MQTT will is the NDEATH of the same ``bdSeq``, so a SCADA host sees the node
die when the connection drops; ``bdSeq`` moves on at each reconnection.  ``seq`` counts 0..255
over the node's messages.  An NCMD ``Node Control/Rebirth`` makes it publish its births again.

The client reconnects by itself (paho, 1..30 s backoff) and publishes every state again on
reconnection (a broker without persistence has lost its retained messages).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from adapters.proto import DataType
from adapters.proto import sparkplug_b_pb2 as spb
from outbound.deliveries import DELIVERED, FAILED, DeliveryLog
from outbound.state import AssetState, alert_key

__all__ = ["StatePublisher", "sparkplug_metrics", "NAMESPACE"]

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
METRICS: tuple[tuple[str, int], ...] = (
    ("Health", DataType.Double),
    ("AnomalyScore", DataType.Double),
    ("RUL", DataType.Double),
    ("Alert/State", DataType.String),
    ("Alert/Active", DataType.Boolean),
    ("Alert/Severity", DataType.String),
    ("Alert/Id", DataType.String),
)
"""The metrics of each asset's device, in alias order."""


def sparkplug_metrics(state: AssetState) -> dict[str, Any]:
    """The device metrics' values of ``state`` (None: a null metric).

    >>> sparkplug_metrics(AssetState("pump-01", "hall-1", health=80.0))["Health"]
    80.0
    """
    return {
        "Health": state.health,
        "AnomalyScore": state.anomaly_score,
        "RUL": state.rul,
        "Alert/State": state.alert_status,
        "Alert/Active": state.alert_active,
        "Alert/Severity": state.severity,
        "Alert/Id": state.alert_id or "",
    }


def _set_value(metric: Any, datatype: int, value: Any) -> None:
    if value is None:
        metric.is_null = True
    elif datatype == DataType.Double:
        metric.double_value = float(value)
    elif datatype == DataType.Boolean:
        metric.boolean_value = bool(value)
    else:
        metric.string_value = str(value)


class StatePublisher:
    """One paho client publishing the JSON states and, with ``sparkplug``, the edge node."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        plant: str,
        deliveries: DeliveryLog,
        topic: str = "plantpulse-out/{site}/{asset_id}/state",
        qos: int = 1,
        min_interval_s: float = 1.0,
        sparkplug: bool = True,
        group: str | None = None,
        node: str = "plantpulse-outbound",
        auth: tuple[str, str] | None = None,
        client_id: str | None = None,
        tls_ca: str | None = None,
    ):
        self.host, self.port, self.plant, self.topic, self.qos = host, port, plant, topic, qos
        self.min_interval_s, self.deliveries = min_interval_s, deliveries
        self.sparkplug, self.group, self.node = sparkplug, group or plant, node
        self.states: dict[str, AssetState] = {}
        self._sent: dict[str, tuple[float, AssetState]] = {}  # asset -> (when, what) published
        self._devices: dict[str, int] = {}  # asset -> device index (aliases)
        self._pending: dict[int, dict[str, Any]] = {}  # mid -> delivery row awaiting PUBACK
        self._lock = threading.RLock()
        self.bd_seq, self.seq = 0, 0
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{node}-{time.time_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.suppress_exceptions = True
        self.client.enable_logger(logging.getLogger("paho.mqtt"))
        if auth is not None:
            self.client.username_pw_set(*auth)
        if tls_ca is not None:  # the broker verified against this CA
            self.client.tls_set(ca_certs=tls_ca)
        self.client.max_queued_messages_set(10_000)  # bounded while the broker is away
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._set_will()

    @classmethod
    def from_spec(
        cls,
        spec: Any,
        plant: str,
        deliveries: DeliveryLog,
        auth: tuple[str, str] | None,
        home: str | Path = ".plantpulse",
    ) -> StatePublisher:
        """From the plant file's ``outbound.mqtt``; with ``tls`` the broker is verified against
        ``tls_ca``, by default the set-up's CA (``<home>/mosquitto/tls/ca.crt``)."""
        ca = spec.tls_ca or str(Path(home) / "mosquitto" / "tls" / "ca.crt")
        return cls(
            spec.host,
            spec.port,
            plant=plant,
            deliveries=deliveries,
            topic=spec.topic,
            qos=spec.qos,
            min_interval_s=spec.min_interval_s,
            sparkplug=spec.sparkplug,
            group=spec.sparkplug_group,
            node=spec.sparkplug_node,
            auth=auth,
            tls_ca=ca if spec.tls else None,
        )

    def start(self) -> None:
        self.client.connect_async(self.host, self.port)
        self.client.loop_start()

    def stop(self) -> None:
        if self.sparkplug and self.connected.is_set():  # a clean NDEATH, as the will would
            self.client.publish(self._topic("NDEATH"), self._death(), qos=1).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()

    # -- topics and payloads ------------------------------------------------------------------
    def state_topic(self, state: AssetState) -> str:
        return self.topic.format(plant=self.plant, site=state.site, asset_id=state.asset_id)

    def _topic(self, kind: str, device: str | None = None) -> str:
        t = f"{NAMESPACE}/{self.group}/{kind}/{self.node}"
        return f"{t}/{device}" if device else t

    def _death(self) -> bytes:
        p = spb.Payload(timestamp=time.time_ns() // 1_000_000)
        m = p.metrics.add(name="bdSeq", datatype=DataType.Int64)
        m.long_value = self.bd_seq
        return p.SerializeToString()

    def _set_will(self) -> None:
        if self.sparkplug:
            self.client.will_set(self._topic("NDEATH"), self._death(), qos=1)

    def _next_seq(self) -> int:
        seq, self.seq = self.seq, (self.seq + 1) % 256
        return seq

    def _alias(self, asset: str, i: int) -> int:
        return self._devices.setdefault(asset, len(self._devices)) * len(METRICS) + i + 1

    def _device_payload(
        self, state: AssetState, birth: bool, only: set[str] | None = None
    ) -> bytes:
        now_ms = time.time_ns() // 1_000_000
        p = spb.Payload(timestamp=now_ms, seq=self._next_seq())
        values = sparkplug_metrics(state)
        for i, (name, datatype) in enumerate(METRICS):
            if only is not None and name not in only:
                continue
            m = p.metrics.add(alias=self._alias(state.asset_id, i), timestamp=now_ms)
            if birth:
                m.name, m.datatype = name, datatype
            _set_value(m, datatype, values[name])
        return p.SerializeToString()

    def _births(self) -> None:
        """NBIRTH, then a DBIRTH per known asset (each connection, and on a rebirth request)."""
        now_ms = time.time_ns() // 1_000_000
        self.seq = 0
        p = spb.Payload(timestamp=now_ms, seq=self._next_seq())
        bd = p.metrics.add(name="bdSeq", datatype=DataType.Int64, timestamp=now_ms)
        bd.long_value = self.bd_seq
        rebirth = p.metrics.add(
            name="Node Control/Rebirth", datatype=DataType.Boolean, timestamp=now_ms
        )
        rebirth.boolean_value = False
        self.client.publish(self._topic("NBIRTH"), p.SerializeToString(), qos=0)
        for state in self.states.values():
            self.client.publish(
                self._topic("DBIRTH", state.asset_id),
                self._device_payload(state, birth=True),
                qos=0,
            )

    # -- publishing ------------------------------------------------------------------------
    def update(self, state: AssetState, alert_changed: bool = False) -> None:
        """Publish ``state`` if its alert changed, or its score changed and the asset's last
        publication is older than ``min_interval_s``."""
        with self._lock:
            new_device = state.asset_id not in self.states
            self.states[state.asset_id] = state
            if not self.connected.is_set():
                return  # everything is published on connection
            last = self._sent.get(state.asset_id)
            if (
                not alert_changed
                and last is not None
                and (time.monotonic() - last[0] < self.min_interval_s or last[1] == state)
            ):
                return
            self._publish(state, new_device, alert_changed, last[1] if last else None)

    def flush_due(self) -> None:
        """Publish the states held back by ``min_interval_s`` whose time has come."""
        with self._lock:
            if not self.connected.is_set():
                return
            now = time.monotonic()
            for asset, state in self.states.items():
                last = self._sent.get(asset)
                if last is not None and last[1] != state and now - last[0] >= self.min_interval_s:
                    self._publish(state, False, False, last[1])

    def _publish(
        self, state: AssetState, new_device: bool, alert_changed: bool, before: AssetState | None
    ) -> None:
        info = self.client.publish(
            self.state_topic(state), orjson.dumps(state.to_json()), qos=self.qos, retain=True
        )
        self._sent[state.asset_id] = (time.monotonic(), state)
        rows = []
        if alert_changed and state.alert_id:
            key = alert_key(
                state.alert_id, "open" if state.alert_active else "closed", state.severity
            )
            rows.append(("mqtt", key, info))
        if self.sparkplug:
            sp = None
            if new_device or before is None:
                sp = self.client.publish(
                    self._topic("DBIRTH", state.asset_id),
                    self._device_payload(state, birth=True),
                    qos=0,
                )
            else:
                old, new = sparkplug_metrics(before), sparkplug_metrics(state)
                changed = {k for k in new if new[k] != old[k]}
                if changed:
                    sp = self.client.publish(
                        self._topic("DDATA", state.asset_id),
                        self._device_payload(state, False, changed),
                        qos=0,
                    )
            if sp is not None and rows:
                rows.append(("sparkplug", rows[0][1], sp))
        for target, key, info in rows:
            row = DeliveryLog.row(
                target, key, DELIVERED, alert_id=state.alert_id, asset_id=state.asset_id
            )
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                self.deliveries.add(
                    {**row, "status": FAILED, "code": info.rc, "error": mqtt.error_string(info.rc)}
                )
            elif target == "mqtt" and self.qos > 0:
                self._pending[info.mid] = row  # recorded when the broker acknowledges it
            else:
                self.deliveries.add(row)

    # -- paho callbacks (paho's thread; nothing may raise out of them) ------------------------
    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.error("outbound MQTT: the broker refused the connection: %s", reason)
            return
        with self._lock:
            self.connected.set()
            log.info("outbound MQTT connected to %s:%d", self.host, self.port)
            if self.sparkplug:
                client.subscribe(self._topic("NCMD"), qos=0)
                self._births()
            for state in self.states.values():
                client.publish(
                    self.state_topic(state),
                    orjson.dumps(state.to_json()),
                    qos=self.qos,
                    retain=True,
                )
                self._sent[state.asset_id] = (time.monotonic(), state)

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.connected.clear()
        with self._lock:
            self.bd_seq = (self.bd_seq + 1) % 256  # the next session's birth and will
            self._set_will()
            for row in self._pending.values():
                self.deliveries.add({**row, "status": FAILED, "error": f"disconnected: {reason}"})
            self._pending.clear()
        log.warning("outbound MQTT disconnected (%s); reconnecting", reason)

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._lock:
            row = self._pending.pop(mid, None)
        if row is not None:
            if reason.is_failure:
                row = {**row, "status": FAILED, "code": reason.value, "error": str(reason)}
            self.deliveries.add(row)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            payload = spb.Payload.FromString(msg.payload)
        except Exception:
            log.warning("outbound MQTT: unreadable NCMD on %s ignored", msg.topic)
            return
        if any(m.name == "Node Control/Rebirth" and m.boolean_value for m in payload.metrics):
            log.info("Sparkplug rebirth requested")
            with self._lock:
                self._births()
