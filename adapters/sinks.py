"""Where the adapters' buffered messages go: the stream's MQTT broker (``MqttSink``), or the
stream's decoder in this process (``DecodeSink``, for the benchmark and checks).

``MqttSink`` publishes each message at QoS 1 on ``plantpulse/<asset>/<adapter id>`` as
publisher ``<adapter id>`` with the message's buffer number as ``pp-seq`` (the marks
``bytewax_flows.mqtt`` reads), so the stream writes a message once even when the adapter sends
it again after a crash; it returns only when the broker has acknowledged every message.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties, VariableByteIntegers

from dataplane.marks import PUBLISHER, SEQ
from dataplane.wire import Message, decode_batch
from lake.credentials import login

__all__ = ["MqttSink", "DecodeSink", "broker_credentials", "credentials"]

log = logging.getLogger(__name__)


def credentials(
    ref: str | None, home: str | Path | None = None, env: dict[str, str] | None = None
) -> tuple[str, str] | None:
    """``(username, password)`` of the credentials named ``ref`` in a plant file:
    ``PLANTPULSE_<REF>_USERNAME`` / ``PLANTPULSE_<REF>_PASSWORD``, else the entry ``ref`` of the
    credentials file named by ``PLANTPULSE_ADAPTER_CREDENTIALS``, else of
    ``<home>/credentials.json`` (``lake.credentials.login``: ``{"<ref>": "<password>"}`` as the
    broker set-up writes it, or ``{"<ref>": {"username": ..., "password": ...}}``); None without
    ``ref``.  A plant file names credentials, it never holds them."""
    if ref is None:
        return None
    env = dict(os.environ if env is None else env)
    key = "PLANTPULSE_" + "".join(c if c.isalnum() else "_" for c in ref).upper()
    if env.get(f"{key}_USERNAME"):
        return env[f"{key}_USERNAME"], env.get(f"{key}_PASSWORD", "")
    for path in (
        env.get("PLANTPULSE_ADAPTER_CREDENTIALS"),
        home and Path(home) / "credentials.json",
    ):
        found = login(path, ref) if path else None
        if found is not None:
            return found
    raise ConnectionError(f"no credentials {ref!r}: set {key}_USERNAME and {key}_PASSWORD")


def broker_credentials(
    adapter_id: str, home: str | Path, env: dict[str, str] | None = None
) -> tuple[str, str] | None:
    """The login of adapter ``adapter_id`` as a publisher into the stream's broker: its entry
    in the broker set-up's credentials file (``PLANTPULSE_ADAPTER_CREDENTIALS``, default
    ``<home>/mosquitto/credentials.json``), under its own id (the user the set-up's ACLs let
    write its assets' topics).  Kept apart from the plant file's ``credentials`` names: those
    log in to the adapter's source."""
    env = dict(os.environ if env is None else env)
    path = (
        env.get("PLANTPULSE_ADAPTER_CREDENTIALS") or Path(home) / "mosquitto" / "credentials.json"
    )
    return login(path, adapter_id)


class _Marks(Properties):
    """The user properties of a numbered PUBLISH (``pp-publisher``, ``pp-seq``), encoded once
    as MQTT 5 specifies them (identifier 0x26, two length-prefixed UTF-8 strings each, the
    block prefixed by its length): paho's generic ``Properties.pack`` costs more than the rest
    of a publish."""

    def __init__(self, publisher: str, seq: int):
        # not Properties.__init__ (its tables are what is slow); its __setattr__ checks names
        pairs = [(PUBLISHER, publisher), (SEQ, str(seq))]
        body = b"".join(
            b"\x26" + len(k).to_bytes(2, "big") + k + len(v).to_bytes(2, "big") + v
            for k, v in ((a.encode(), b.encode()) for a, b in pairs)
        )
        vars(self).update(pairs=pairs, packed=VariableByteIntegers.encode(len(body)) + body)

    def pack(self) -> bytes:
        packed: bytes = vars(self)["packed"]
        return packed

    def __str__(self) -> str:
        return f"[UserProperty : {vars(self)['pairs']}]"


class MqttSink:
    """The stream's broker at ``host:port``, logged in with ``auth`` (over TLS, verifying the
    broker against ``tls_ca``, when given).  paho reconnects by itself (1..2 s); ``send``
    raises ``ConnectionError`` while it is away."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        auth: tuple[str, str] | None = None,
        timeout_s: float = 10.0,
        tls_ca: str | Path | None = None,
    ):
        self.timeout_s = timeout_s
        self.connected = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.suppress_exceptions = True
        self.client.enable_logger(logging.getLogger("paho.mqtt"))
        if auth is not None:
            self.client.username_pw_set(*auth)
        if tls_ca is not None:  # a TLS listener, the broker verified against this CA
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(host, port, keepalive=15)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self.connected = not reason.is_failure
        if reason.is_failure:
            log.warning("the stream's broker refused the adapter: %s", reason)

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.connected = False

    def send(self, adapter_id: str, records: list[tuple[int, str, bytes, int]]) -> None:
        if not self.connected:
            raise ConnectionError("not connected to the stream's broker")
        infos = []
        for seq, topic, payload, _ in records:
            info = self.client.publish(topic, payload, qos=1, properties=_Marks(adapter_id, seq))
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
            infos.append(info)
        for info in infos:
            info.wait_for_publish(self.timeout_s)
            if not info.is_published():
                raise ConnectionError("the broker did not acknowledge in time")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class DecodeSink:
    """The stream's own decoder (``dataplane.wire.decode_batch``) in this process: counts what
    the stream would accept and reject of what the adapters send; ``available`` False plays a
    stream outage (``send`` raises, the adapters buffer)."""

    def __init__(self, keep: bool = False):
        self.connected = True
        self.available = True
        self.keep = keep
        self.readings = 0
        self.messages = 0
        self.rejects: list[tuple[Any, ...]] = []
        self.decoded: list[Any] = []
        self.first_us: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()

    def send(self, adapter_id: str, records: list[tuple[int, str, bytes, int]]) -> None:
        if not self.available:
            raise ConnectionError("the stream is down")
        d = decode_batch(
            [Message(f"adapter:{adapter_id}", seq, 0, payload) for seq, _, payload, _ in records]
        )
        with self.lock:
            self.readings += d.n_readings
            self.messages += len(records)
            self.rejects += d.rejects
            if self.keep:
                self.decoded.append(d)

    def close(self) -> None:
        pass
