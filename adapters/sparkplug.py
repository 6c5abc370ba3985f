"""Sparkplug B in: the edge nodes of one group on an MQTT broker, as a Sparkplug host
application.

Topics ``spBv1.0/<group>/<type>/<node>[/<device>]``; payloads are the Sparkplug B protobuf
(``adapters/proto/sparkplug_b.proto``).  Births (NBIRTH, DBIRTH) bind each metric's alias to its
name; data (NDATA, DDATA) may then name metrics by alias only.  Every metric keeps its own
timestamp (else the payload's, else the arrival time).  A node's messages are numbered 0..255
(NBIRTH is 0, wrapping after 255); a number out of turn is a ``sequence_gap`` in
``dead_letter`` (the message's own metrics are still read: they are valid, what is missing is
what came between), a payload that is not Sparkplug B is ``malformed`` (payload kept), data
from a node or device not born yet (or naming an alias it never declared) is ``not_born`` /
``unknown_alias``; each of these asks the node for a rebirth (NCMD ``Node Control/Rebirth``, at
most one per node every ``REBIRTH_EVERY_S``).  A metric of a type that is no number (a string,
a data set) bound to a sensor is ``wrong_type``; the others go on.  NDEATH and DDEATH forget
the node's (device's) aliases.

The adapter subscribes at QoS 1 in a persistent session under a stable client id, so what the
nodes publish while it reconnects waits in the broker; it announces itself on
``spBv1.0/STATE/<host_id>`` (retained, with a will saying it went offline); with ``nodes`` it
subscribes to those edge nodes only (several adapters share a group).  It acknowledges a
message only once its readings are durable in the buffer (``manual_ack``: the flush's
``committed``), with the nodes' sequence numbers, last timestamps and alias maps committed in
the same transaction (the buffer's marks).  So after a kill -9 the broker delivers again what
was not durable, and a redelivered message that was (``dup``, at or before the node's
committed position) is acknowledged and not read twice; the restarted adapter knows every
node's aliases without asking for rebirths.  ``receive_maximum`` bounds the messages the broker
sends ahead of the acknowledgements (MQTT 5 flow control): enough for a flush interval of
traffic.

Data messages whose metrics the node's births typed as numbers take a fast path: the metric
list is matched once per (device, alias sequence) to its bindings (``_Plan``), after which a
message costs a few list comprehensions over its metrics, not a lookup per metric.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from google.protobuf.message import DecodeError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.core import Adapter, now_us
from adapters.proto import DataType
from adapters.proto.sparkplug_b_pb2 import Payload
from adapters.sinks import credentials

__all__ = ["SparkplugAdapter", "rebirth_payload", "REBIRTH_METRIC", "NAMESPACE"]

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
REBIRTH_EVERY_S = 2.0
REPEAT_S = 60.0

# Sparkplug data types -> how the value is carried and read
_SIGNED_INT = {1: 8, 2: 16, 3: 32}  # Int8/16/32 travel as uint32 (two's complement)
_UNSIGNED_INT = {5, 6, 7}
_INT64, _UINT64, _FLOAT, _DOUBLE, _BOOLEAN = (
    DataType.Int64,
    DataType.UInt64,
    DataType.Float,
    DataType.Double,
    DataType.Boolean,
)
_DATETIME = DataType.DateTime


def metric_value(m: Any) -> float | None:
    """A metric's value as a float; None if its type is not a number.  NaN for a null."""
    dt = m.datatype
    if m.is_null:
        return float("nan")
    if dt in _SIGNED_INT:
        bits = _SIGNED_INT[dt]
        v = m.int_value & ((1 << bits) - 1)
        return float(v - (1 << bits) if v >= 1 << (bits - 1) else v)
    if dt in _UNSIGNED_INT:
        return float(m.int_value)
    if dt == _INT64:
        v = m.long_value
        return float(v - (1 << 64) if v >= 1 << 63 else v)
    if dt == _UINT64:
        return float(m.long_value)
    if dt == _FLOAT:
        return float(m.float_value)
    if dt == _DOUBLE:
        return float(m.double_value)
    if dt == _BOOLEAN:
        return 1.0 if m.boolean_value else 0.0
    return None


def rebirth_payload(ts_ms: int | None = None) -> bytes:
    """The NCMD payload asking a node to publish its births again."""
    p = Payload(timestamp=ts_ms if ts_ms is not None else now_us() // 1000)
    p.metrics.add(name=REBIRTH_METRIC, datatype=_BOOLEAN, boolean_value=True)
    return p.SerializeToString()


@dataclass
class _Plan:
    """How a data message whose metrics carry one sequence of aliases becomes readings:
    the datatypes the births declared (per position), the getter of their values (``double``
    or ``float``), and per asset the positions bound to it with their sensors, scales and
    offsets."""

    dtypes: list[int]
    kind: str
    groups: list[tuple[str, list[int], list[str], list[float], list[float]]]
    unbound: int
    all_of_one: bool  # one asset takes every metric, in order, unscaled


@dataclass
class _Node:
    """What the host knows of one edge node: the next sequence number, the timestamp of its
    last message, and the alias maps of the node (device None) and of each device born."""

    next_seq: int | None = None
    aliases: dict[str | None, dict[int, str]] = field(default_factory=dict)
    types: dict[tuple[str | None, str], int] = field(default_factory=dict)
    last_rebirth: float = 0.0
    last_ts: int = 0  # payload timestamp (ms) of the last message read
    plans: dict[tuple[str | None, tuple[int, ...]], _Plan | None] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """The alias maps and types, as committed to the buffer's marks."""
        return {
            "aliases": [[d, {str(a): n for a, n in m.items()}] for d, m in self.aliases.items()],
            "types": [[d, n, t] for (d, n), t in self.types.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.aliases = {d: {int(a): n for a, n in m.items()} for d, m in state["aliases"]}
        self.types = {(d, n): int(t) for d, n, t in state["types"]}
        self.plans = {}


_SEQ_MARK, _ALIAS_MARK = "spb.seq", "spb.aliases:"


class SparkplugAdapter(Adapter):
    kind = "sparkplug"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        host, _, port = self.spec.endpoint.removeprefix("mqtt://").partition(":")
        self.host, self.port = host, int(port)
        self.nodes: dict[str, _Node] = {}
        self._bound: dict[tuple[str, str | None, str], tuple[str, str, float, float] | None] = {}
        self._index = {(b.node, b.device, b.metric): b for b in self.spec.bindings}
        self._bad: dict[tuple[str, str | None, str], tuple[float, int]] = {}
        self.messages = 0
        self.metrics = 0
        self.unbound = 0
        self.redelivered = 0  # messages the broker delivered again that were already durable
        self.rebirths: list[str] = []  # nodes asked to rebirth, in order (for the status)
        self.client: mqtt.Client | None = None
        self._acks: list[tuple[int, int]] = []  # (mid, qos) read since the last flush
        self._births: set[str] = set()  # nodes whose alias maps changed since the last flush
        self._read = False  # a message was read since the last flush
        self._restore()

    # -- what survives a restart: committed with the readings ---------------------------------
    def _restore(self) -> None:
        marks = self.buffer.marks("spb.")
        for key, text in marks.items():
            if key.startswith(_ALIAS_MARK):
                self.nodes.setdefault(key[len(_ALIAS_MARK) :], _Node()).restore(json.loads(text))
        for node_id, (next_seq, last_ts) in json.loads(marks.get(_SEQ_MARK, "{}")).items():
            node = self.nodes.setdefault(node_id, _Node())
            node.next_seq, node.last_ts = next_seq, last_ts
        if self.nodes:
            log.info(
                "sparkplug %s: resumed %d nodes from its buffer", self.spec.id, len(self.nodes)
            )

    def checkpoint(self) -> tuple[dict[str, str], Any]:
        marks = {}
        if self._read:
            marks[_SEQ_MARK] = json.dumps(
                {
                    k: [n.next_seq, n.last_ts]
                    for k, n in self.nodes.items()
                    if n.next_seq is not None
                }
            )
        for node_id in self._births:
            marks[_ALIAS_MARK + node_id] = json.dumps(self.nodes[node_id].state())
        self._read, self._births = False, set()
        token, self._acks = (self.client, self._acks), []
        return marks, token

    def committed(self, token: Any) -> None:
        client: mqtt.Client | None = token[0]
        if client is None or client is not self.client:
            return  # that connection is gone: the broker delivers them again (dup), read once
        for mid, qos in token[1]:
            client.ack(mid, qos)

    # -- bindings --------------------------------------------------------------------------
    def binding(
        self, node: str, device: str | None, metric: str
    ) -> tuple[str, str, float, float] | None:
        """``(asset, sensor, scale, offset)`` of a metric, or None when it is not bound."""
        key = (node, device, metric)
        try:
            return self._bound[key]
        except KeyError:
            pass
        idx = self._index
        b = (
            idx.get((node, device, metric))
            or idx.get((None, device, metric))
            or (
                device is not None
                and (idx.get((node, "*", metric)) or idx.get((None, "*", metric)))
            )
            or None
        )
        found = None
        if b is not None:
            asset = (
                (device or node)
                if b.asset == "{device}"
                else (node if b.asset == "{node}" else b.asset)
            )
            found = (asset, b.sensor, b.scale, b.offset)
        if len(self._bound) < 1_000_000:
            self._bound[key] = found
        return found

    # -- messages ----------------------------------------------------------------------------
    def on_message(
        self,
        topic: str,
        payload: bytes,
        received: int | None = None,
        mid: int = 0,
        qos: int = 0,
        dup: bool = False,
    ) -> None:
        """One Sparkplug message (on paho's thread: never raises); ``mid``/``qos`` acknowledge
        it once durable, ``dup`` says the broker delivered it before."""
        with self._lock:
            if qos:
                self._acks.append((mid, qos))
            try:
                self._message(topic, payload, received or now_us(), dup)
            except Exception as exc:  # noqa: BLE001 - one bad message never stops reception
                log.exception("sparkplug %s: message on %s", self.spec.id, topic)
                self.reject(payload, "malformed", f"{topic}: could not be read ({exc})"[:500])

    def _message(self, topic: str, payload: bytes, received: int, dup: bool) -> None:
        parts = topic.split("/")
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE or parts[1] != self.spec.group:
            return
        mtype, node_id = parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else None
        if mtype in ("NCMD", "DCMD", "STATE"):
            return
        self.messages += 1
        try:
            p = Payload.FromString(payload)
        except DecodeError as exc:
            self.reject(
                payload,
                "malformed",
                f"{topic}: not a Sparkplug B payload ({exc})",
                device or node_id,
            )
            self.request_rebirth(node_id, f"malformed payload on {topic}")
            return
        node = self.nodes.setdefault(node_id, _Node())
        if dup and self._delivered(node, p):
            self.redelivered += 1  # durable before a restart: acknowledged, not read again
            self.status.redelivered = self.redelivered
            return
        self._read = True
        node.last_ts = max(node.last_ts, p.timestamp)
        if mtype == "NBIRTH":
            node.next_seq = (p.seq + 1) % 256
            node.aliases, node.types, node.plans = {None: {}}, {}, {}
            self._births.add(node_id)
        elif mtype == "NDEATH":
            node.next_seq, node.aliases, node.types, node.plans = None, {}, {}, {}
            self._births.add(node_id)
            return
        else:
            if node.next_seq is None:
                gap = None
            else:
                gap = None if p.seq == node.next_seq else node.next_seq
                node.next_seq = (p.seq + 1) % 256
            if gap is not None:
                self.reject(
                    orjson.dumps({"topic": topic, "expected_seq": gap, "seq": p.seq}),
                    "sequence_gap",
                    f"{topic}: seq {p.seq} where {gap} was due: "
                    f"{(p.seq - gap) % 256} message(s) of node {node_id} missing",
                    device or node_id,
                )
                self.request_rebirth(node_id, "sequence gap")
            if mtype == "DBIRTH":
                node.aliases[device] = {}
                node.plans = {k: v for k, v in node.plans.items() if k[0] != device}
                self._births.add(node_id)
            elif mtype == "DDEATH":
                node.aliases.pop(device, None)
                node.plans = {k: v for k, v in node.plans.items() if k[0] != device}
                self._births.add(node_id)
                return
            born = node.next_seq is not None and (device is None or device in node.aliases)
            if not born:
                self.reject(
                    payload,
                    "not_born",
                    f"{topic}: {mtype} from a "
                    f"{'device' if device else 'node'} without a birth certificate",
                    device or node_id,
                )
                self.request_rebirth(node_id, f"{mtype} before its birth")
                return
        aliases = node.aliases.setdefault(device, {})
        birth = mtype in ("NBIRTH", "DBIRTH")
        if birth or not self._fast(p, node_id, device, aliases, node, received):
            self._metrics(topic, p, node_id, device, aliases, node, birth, received)

    @staticmethod
    def _delivered(node: _Node, p: Any) -> bool:
        """Whether a message the broker delivers again was read before (and so is durable, or
        will be with the next flush): messages of a node come in order, so it was if it is older
        than the node's last one read, or as old but not the one due next."""
        if node.next_seq is None:
            return False
        if p.timestamp != node.last_ts:
            return p.timestamp < node.last_ts
        return p.seq != node.next_seq

    # -- the fast path ------------------------------------------------------------------------
    def _plan(
        self, node_id: str, device: str | None, aliases: dict[int, str], node: _Node, key: Any
    ) -> _Plan | None:
        dtypes: list[int] = []
        groups: dict[str, tuple[str, list[int], list[str], list[float], list[float]]] = {}
        kind: str | None = None
        unbound = 0
        for i, alias in enumerate(key):
            name = aliases.get(alias)
            if name is None:
                return None  # an alias never born: the slow path says so
            dt = node.types.get((device, name), 0)
            dtypes.append(dt)
            bound = self.binding(node_id, device, name)
            if bound is None:
                unbound += 1
                continue
            k = "double" if dt == _DOUBLE else "float" if dt == _FLOAT else None
            if k is None or (kind is not None and k != kind):
                return None  # integers, booleans, text, mixed: the slow path reads them
            kind = k
            asset, sensor, scale, offset = bound
            g = groups.setdefault(asset, (asset, [], [], [], []))
            g[1].append(i)
            g[2].append(sensor)
            g[3].append(scale)
            g[4].append(offset)
        if kind is None:
            return None
        out = list(groups.values())
        whole = (
            len(out) == 1
            and out[0][1] == list(range(len(key)))
            and all(s == 1.0 for s in out[0][3])
            and not any(out[0][4])
        )
        return _Plan(dtypes, kind, out, unbound, whole)

    def _fast(
        self,
        p: Any,
        node_id: str,
        device: str | None,
        aliases: dict[int, str],
        node: _Node,
        received: int,
    ) -> bool:
        """A data message by alias, all of whose bound metrics are numbers the births typed:
        its readings in a few passes over the metrics; False when the slow path must read it."""
        ms = p.metrics
        if not ms:
            return False
        key = (device, tuple([m.alias for m in ms]))
        try:
            plan = node.plans[key]
        except KeyError:
            plan = node.plans[key] = self._plan(node_id, device, aliases, node, key[1])
        if plan is None or any([m.name for m in ms]) or any([m.is_null for m in ms]):
            return False
        dts = [m.datatype for m in ms]
        if dts != plan.dtypes and any(d and d != e for d, e in zip(dts, plan.dtypes, strict=True)):
            return False
        values = (
            [m.double_value for m in ms] if plan.kind == "double" else [m.float_value for m in ms]
        )
        default = p.timestamp * 1000 if p.timestamp else received
        ts = [t * 1000 if t else default for t in [m.timestamp for m in ms]]
        self.metrics += len(ms)
        self.unbound += plan.unbound
        if plan.all_of_one:
            asset, _, sensors, _, _ = plan.groups[0]
            self.emit(asset, sensors, ts, values)
            return True
        for asset, pos, sensors, scale, offset in plan.groups:
            self.emit(
                asset,
                sensors,
                [ts[i] for i in pos],
                [values[i] * sc + of for i, sc, of in zip(pos, scale, offset, strict=True)],
            )
        return True

    def _metrics(
        self,
        topic: str,
        p: Any,
        node_id: str,
        device: str | None,
        aliases: dict[int, str],
        node: _Node,
        birth: bool,
        received: int,
    ) -> None:
        out: dict[str, tuple[list[str], list[int], list[float]]] = {}
        default_ts = p.timestamp * 1000 if p.timestamp else received
        unknown: list[int] = []
        binding, types, bad = self.binding, node.types, self._wrong_type
        n = 0
        for m in p.metrics:
            # proto2 optionals read as 0 / "" when absent (cheaper than HasField on the hot path)
            name = m.name
            if name:
                if birth:
                    if m.HasField("alias"):
                        aliases[m.alias] = name
                    types[(device, name)] = m.datatype
            else:
                name = aliases.get(m.alias)
                if name is None:
                    unknown.append(m.alias)
                    continue
            n += 1
            bound = binding(node_id, device, name)
            if bound is None:
                self.unbound += 1
                continue
            asset, sensor, scale, offset = bound
            dt = m.datatype or types.get((device, name), 0)
            if dt == _DOUBLE and not m.is_null:
                value = m.double_value
            else:
                if dt != m.datatype:  # data messages may leave the type to the birth
                    m.datatype = dt
                value = metric_value(m)
                if value is None:
                    bad(topic, m, name, asset, sensor)
                    continue
            try:
                sensors, tss, values = out[asset]
            except KeyError:
                sensors, tss, values = out[asset] = ([], [], [])
            sensors.append(sensor)
            tss.append(m.timestamp * 1000 or default_ts)
            values.append(value * scale + offset)
        self.metrics += n
        for asset, (sensors, tss, values) in out.items():
            self.emit(asset, sensors, tss, values)
        if unknown:
            self.reject(
                orjson.dumps({"topic": topic, "aliases": unknown[:100]}),
                "unknown_alias",
                f"{topic}: {len(unknown)} metric(s) by alias never "
                f"declared in a birth ({unknown[:5]})",
                device or node_id,
            )
            self.request_rebirth(node_id, "unknown alias")

    def _wrong_type(self, topic: str, m: Any, name: str, asset: str, sensor: str) -> None:
        key = (topic, None, name)
        last, repeats = self._bad.get(key, (0.0, 0))
        now = time.monotonic()
        if now - last < REPEAT_S:
            self._bad[key] = (last, repeats + 1)
            return
        self._bad[key] = (now, 0)
        value = m.WhichOneof("value")
        self.reject(
            orjson.dumps(
                {
                    "topic": topic,
                    "metric": name,
                    "datatype": m.datatype,
                    "value": str(getattr(m, value) if value else None)[:500],
                }
            ),
            "wrong_type",
            f"{topic}: metric {name!r} (datatype {m.datatype}) bound to "
            f"{asset}/{sensor} is not a number"
            + (f" ({repeats} more since the last report)" if repeats else ""),
            asset,
            sensor,
        )

    def request_rebirth(self, node_id: str, why: str) -> bool:
        """NCMD ``Node Control/Rebirth`` to ``node_id`` (at most one every
        ``REBIRTH_EVERY_S``); True when sent."""
        node = self.nodes.setdefault(node_id, _Node())
        now = time.monotonic()
        if now - node.last_rebirth < REBIRTH_EVERY_S or self.client is None:
            return False
        node.last_rebirth = now
        topic = f"{NAMESPACE}/{self.spec.group}/NCMD/{node_id}"
        self.client.publish(topic, rebirth_payload(), qos=0)
        self.rebirths.append(node_id)
        self.status.rebirths_requested += 1
        log.info("sparkplug %s: asked %s to rebirth (%s)", self.spec.id, node_id, why)
        return True

    # -- the connection --------------------------------------------------------------------
    async def session(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        lost = asyncio.Event()
        ready = asyncio.Event()
        state = f"{NAMESPACE}/STATE/{self.spec.host_id}"
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"plantpulse-spb-{self.spec.id}",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.suppress_exceptions = True
        home = self.dir.parent.parent
        auth = credentials(self.spec.credentials, home)
        if auth is not None:
            client.username_pw_set(*auth)
        if self.spec.tls:
            ca = Path(self.spec.tls_ca or Path(home) / "mosquitto" / "tls" / "ca.crt")
            if not ca.exists():
                raise ConnectionError(f"no CA certificate {ca} to verify the broker with")
            client.tls_set(ca_certs=str(ca))
        client.will_set(
            state,
            orjson.dumps({"online": False, "timestamp": now_us() // 1000}),
            qos=1,
            retain=True,
        )
        refused: list[str] = []

        def on_connect(c, userdata, flags, reason, properties) -> None:
            if reason.is_failure:
                refused.append(str(reason))
                loop.call_soon_threadsafe(lost.set)
                return
            group = self.spec.group
            topics = [(f"{NAMESPACE}/{group}/+/{n}", 1) for n in self.spec.nodes or ["+"]]
            c.subscribe(topics + [(t + "/+", 1) for t, _ in topics])
            c.publish(
                state,
                orjson.dumps({"online": True, "timestamp": now_us() // 1000}),
                qos=1,
                retain=True,
            )
            loop.call_soon_threadsafe(ready.set)

        def on_disconnect(c, userdata, flags, reason, properties) -> None:
            loop.call_soon_threadsafe(lost.set)

        def on_message(c, userdata, msg) -> None:
            self.on_message(msg.topic, msg.payload, None, msg.mid, msg.qos, bool(msg.dup))

        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # what the nodes send meanwhile waits in the broker
        props.ReceiveMaximum = self.spec.receive_maximum
        await asyncio.to_thread(
            client.connect, self.host, self.port, 15, clean_start=False, properties=props
        )
        client.loop_start()
        self.client = client
        try:
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait(
                [waiter, asyncio.create_task(lost.wait())],
                timeout=10,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if refused or not ready.is_set():
                raise ConnectionError(
                    f"broker {self.spec.endpoint}: "
                    f"{refused[0] if refused else 'no CONNACK in 10 s'}"
                )
            self.connected()
            done, _ = await asyncio.wait(
                [asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not stop.is_set():
                raise ConnectionError(f"lost the broker {self.spec.endpoint}")
            client.publish(
                state,
                orjson.dumps({"online": False, "timestamp": now_us() // 1000}),
                qos=1,
                retain=True,
            ).wait_for_publish(2)
            client.disconnect()
        finally:
            self.client = None
            client.loop_stop()
