"""OPC UA in, via asyncua: data-change subscriptions, browsing, and backfill from history.

One subscription carries every binding's node (monitored items created in chunks of
``CHUNK``), sampled every ``sampling_ms`` by the server and published every
``publishing_ms``.  Notifications are taken a whole publish response at a time (a subclass of
asyncua's ``Subscription``, not one task per value as its handler path does), with each value's
source timestamp.  A value that is not a number (a string on a node bound to a sensor: the
wrong tag) or has a bad status goes to ``dead_letter`` (``wrong_type``, ``bad_quality``; again
every minute while it stays bad), a node the server does not have (``unknown_node``) too;
the other nodes go on.

After an outage (the server restarting, the network, the adapter itself stopped) the gap is
read back from the server's history (``backfill``): the adapter keeps each node's newest
source timestamp on disk, and on connecting reads every node's raw history after it, up to
``backfill_max_s``, before releasing the live values (held meanwhile), so each sensor's
readings reach the stream in time order and none twice.

``browse(url)`` walks the server's Objects folder and proposes plant-model entries
(``plantpulse adapters browse opc.tcp://...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from asyncua import Client, ua
from asyncua.common.subscription import Subscription

from adapters.core import Adapter, now_us
from adapters.sinks import credentials

__all__ = ["OpcuaAdapter", "browse", "proposal_yaml"]

log = logging.getLogger(__name__)

CHUNK = 1000  # monitored items per CreateMonitoredItems request
REPEAT_S = 60.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number (not a bool, a string, an array...)."""
    t = type(value)
    if t is float or t is int:
        return float(value)
    return None


class _BulkSubscription(Subscription):
    """asyncua's subscription, each publish response handed whole to the adapter."""

    def __init__(self, adapter: OpcuaAdapter, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.adapter = adapter

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        data = publish_result.NotificationMessage.NotificationData
        if not data:
            return
        self.last_sequence_number = int(publish_result.NotificationMessage.SequenceNumber)
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                self.adapter.on_items(notif.MonitoredItems)
            elif isinstance(notif, ua.StatusChangeNotification):
                self.adapter.lost.set()


class OpcuaAdapter(Adapter):
    kind = "opcua"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.by_handle: dict[int, Any] = {}
        self.last_ts: dict[str, int] = self._load_last_ts()  # node -> newest source ts (µs)
        self._bad: dict[str, tuple[float, int]] = {}
        self.holding: list[Any] | None = None
        self.lost = asyncio.Event()
        self.sessions = 0

    # -- the newest timestamp of each node, kept on disk for the backfill ---------------------
    def _load_last_ts(self) -> dict[str, int]:
        try:
            return {
                k: int(v) for k, v in json.loads((self.dir / "last_ts.json").read_text()).items()
            }
        except (OSError, ValueError, AttributeError):
            return {}

    def write_status(self) -> None:
        super().write_status()
        tmp = self.dir / "last_ts.json.tmp"
        tmp.write_text(json.dumps(self.last_ts))
        tmp.replace(self.dir / "last_ts.json")

    # -- values in -----------------------------------------------------------------------------
    def on_items(self, items: list[Any]) -> None:
        if self.holding is not None:
            self.holding.extend(items)
            return
        self._take(items)

    def _take(self, items: list[Any]) -> None:
        """Monitored-item notifications into readings (one ``emit`` per asset)."""
        out: dict[str, tuple[list[str], list[int], list[float]]] = {}
        received = now_us()
        for item in items:
            b = self.by_handle.get(item.ClientHandle)
            if b is None:
                continue
            self._value(b, item.Value, received, out)
        for asset, (sensors, ts, values) in out.items():
            self.emit(asset, sensors, ts, values)

    def _value(
        self,
        b: Any,
        dv: Any,
        received: int,
        out: dict[str, tuple[list[str], list[int], list[float]]],
    ) -> None:
        if dv is None:
            return
        status = dv.StatusCode
        if status is not None and not status.is_good():
            self._bad_node(b, "bad_quality", f"status {status.name}", dv)
            return
        raw = dv.Value.Value if dv.Value is not None else None
        value = _number(raw)
        if value is None:
            self._bad_node(
                b,
                "wrong_type",
                f"a {type(raw).__name__} value ({str(raw)[:80]!r}), not a number",
                dv,
            )
            return
        ts = _us(dv.SourceTimestamp) or _us(dv.ServerTimestamp) or received
        if ts <= self.last_ts.get(b.node, -1):
            return  # already delivered (a subscription's initial value, or history overlap)
        self.last_ts[b.node] = ts
        self._bad.pop(b.node, None)
        sensors, tss, values = out.setdefault(b.asset, ([], [], []))
        sensors.append(b.sensor)
        tss.append(ts)
        values.append(value * b.scale + b.offset)

    def _bad_node(self, b: Any, reason: str, detail: str, dv: Any = None) -> None:
        last, repeats = self._bad.get(b.node, (0.0, 0))
        now = time.monotonic()
        if now - last < REPEAT_S:
            self._bad[b.node] = (last, repeats + 1)
            return
        self._bad[b.node] = (now, 0)
        raw = orjson.dumps(
            {
                "endpoint": self.spec.endpoint,
                "node": b.node,
                "value": None if dv is None or dv.Value is None else str(dv.Value.Value)[:500],
                "source_ts": None if dv is None else str(dv.SourceTimestamp),
            }
        )
        self.reject(
            raw,
            reason,
            f"node {b.node} bound to {b.asset}/{b.sensor}: {detail}"
            + (f" ({repeats} more since the last report)" if repeats else ""),
            b.asset,
            b.sensor,
        )

    # -- the connection --------------------------------------------------------------------
    async def session(self, stop: asyncio.Event) -> None:
        client = Client(
            self.spec.endpoint,
            timeout=self.spec.timeout_s,
            watchdog_intervall=1.0,
            auto_reconnect=False,
        )
        auth = credentials(self.spec.credentials, self.dir.parent.parent)
        if auth is not None:
            client.set_user(auth[0])
            client.set_password(auth[1])
        self.lost.clear()

        async def on_lost(exc: Exception) -> None:
            self.lost.set()

        client.connection_lost_callback = on_lost
        await client.connect()
        try:
            self.holding = [] if self.spec.backfill else None
            sub = await self._subscribe(client)
            self.connected()
            self.sessions += 1
            if self.spec.backfill:
                await self.backfill(client)
                held, self.holding = self.holding or [], None
                self._take(held)
            stopping = asyncio.create_task(stop.wait())
            lost = asyncio.create_task(self.lost.wait())
            await asyncio.wait([stopping, lost], return_when=asyncio.FIRST_COMPLETED)
            for t in (stopping, lost):
                t.cancel()
            if not stop.is_set():
                raise ConnectionError(f"lost the OPC UA server {self.spec.endpoint}")
            with contextlib.suppress(Exception):  # closing anyway
                await asyncio.wait_for(sub.delete(), 2)
        finally:
            self.holding = None
            try:
                await asyncio.wait_for(client.disconnect(), 3)
            except Exception:  # noqa: BLE001 - the server may be gone: nothing to close
                log.debug("opcua %s: disconnect from a lost server", self.spec.id)

    async def _subscribe(self, client: Client) -> Subscription:
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self.spec.publishing_ms
        params.RequestedLifetimeCount = 10000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(self.spec.publishing_ms)
        params.MaxNotificationsPerPublish = 0  # no limit
        params.PublishingEnabled = True
        params.Priority = 0
        sub = _BulkSubscription(self, client.uaclient.session, params, handler=_NoHandler())
        await sub.init()
        self.by_handle = {}
        bindings = list(self.spec.bindings)
        for start in range(0, len(bindings), CHUNK):
            chunk, requests = bindings[start : start + CHUNK], []
            for b in chunk:
                try:
                    node = client.get_node(b.node)
                except (ValueError, ua.UaError) as exc:
                    self._bad_node(b, "unknown_node", f"not a NodeId: {exc}")
                    continue
                req = sub._make_monitored_item_request(
                    node,
                    ua.AttributeIds.Value,
                    None,
                    self.spec.queue_size,
                    ua.MonitoringMode.Reporting,
                    self.spec.sampling_ms,
                )
                self.by_handle[req.RequestedParameters.ClientHandle] = b
                requests.append((b, req))
            results = await sub.create_monitored_items([r for _, r in requests])
            for (b, req), result in zip(requests, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    self.by_handle.pop(req.RequestedParameters.ClientHandle, None)
                    self._bad_node(
                        b, "unknown_node", f"the server refused to monitor it ({result.name})"
                    )
        return sub

    async def backfill(self, client: Client) -> int:
        """Every bound node's history after its newest delivered value (at most
        ``backfill_max_s`` back), emitted in time order; returns how many values."""
        end = datetime.now(UTC)
        floor = end - timedelta(seconds=self.spec.backfill_max_s)
        todo = [b for b in self.spec.bindings if b.node in self.last_ts]
        n = 0

        async def one(b: Any) -> list[Any]:
            start = max(floor, _EPOCH + timedelta(microseconds=self.last_ts[b.node] + 1))
            try:
                return await client.get_node(b.node).read_raw_history(
                    start, end, 0, return_bounds=False
                )
            except (ua.UaError, ValueError, TimeoutError) as exc:
                log.info("opcua %s: no history for %s (%s)", self.spec.id, b.node, exc)
                return []

        for i in range(0, len(todo), 50):
            part = todo[i : i + 50]
            histories = await asyncio.gather(*(one(b) for b in part))
            out: dict[str, tuple[list[str], list[int], list[float]]] = {}
            received = now_us()
            for b, values in zip(part, histories, strict=True):
                for dv in sorted(values, key=lambda d: d.SourceTimestamp or end):
                    before = len(out.get(b.asset, ([],))[0])
                    self._value(b, dv, received, out)
                    n += len(out.get(b.asset, ([],))[0]) - before
            for asset, (sensors, ts, vals) in out.items():
                self.emit(asset, sensors, ts, vals)
        self.status.backfilled += n
        if n:
            log.info("opcua %s: backfilled %d values from the server's history", self.spec.id, n)
        return n


class _NoHandler:
    """Notifications go through ``_BulkSubscription.publish_callback``, not per value."""


# -- browsing ------------------------------------------------------------------------------
_NUMERIC = {
    ua.VariantType.Boolean: False,
    ua.VariantType.SByte: True,
    ua.VariantType.Byte: True,
    ua.VariantType.Int16: True,
    ua.VariantType.UInt16: True,
    ua.VariantType.Int32: True,
    ua.VariantType.UInt32: True,
    ua.VariantType.Int64: True,
    ua.VariantType.UInt64: True,
    ua.VariantType.Float: True,
    ua.VariantType.Double: True,
}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "x"


async def browse(
    url: str, max_depth: int = 6, auth: tuple[str, str] | None = None, limit: int = 100_000
) -> list[dict[str, Any]]:
    """The numeric variables under the server's Objects folder: ``node`` (its NodeId),
    ``asset`` (its parent object's browse name) and ``sensor`` (its own), ``data_type``."""
    client = Client(url, timeout=10)
    if auth:
        client.set_user(auth[0])
        client.set_password(auth[1])
    found: list[dict[str, Any]] = []
    async with client:
        objects = client.nodes.objects
        stack: list[tuple[Any, str, int]] = [(objects, "", 0)]
        seen: set[str] = set()
        while stack and len(found) < limit:
            node, parent, depth = stack.pop()
            for ref in await node.get_children_descriptions():
                nid = ref.NodeId.to_string()
                if nid in seen or ref.NodeId.NamespaceIndex == 0:
                    continue  # the standard's own nodes (Server, ...) are not plant tags
                seen.add(nid)
                name = ref.BrowseName.Name
                if ref.NodeClass == ua.NodeClass.Variable:
                    try:
                        vt = await client.get_node(ref.NodeId).read_data_type_as_variant_type()
                    except (ua.UaError, ValueError):
                        continue
                    if _NUMERIC.get(vt):
                        found.append(
                            {
                                "node": nid,
                                "asset": _slug(parent or name),
                                "sensor": _slug(name),
                                "data_type": vt.name,
                            }
                        )
                elif ref.NodeClass == ua.NodeClass.Object and depth < max_depth:
                    stack.append((client.get_node(ref.NodeId), name, depth + 1))
    found.sort(key=lambda f: (f["asset"], f["sensor"]))
    return found


def proposal_yaml(url: str, found: list[dict[str, Any]], adapter_id: str = "opcua-1") -> str:
    """A plant-file ``adapters:`` entry binding every variable found (to edit: the asset and
    sensor ids must be the plant's)."""
    lines = [
        "# proposed by `plantpulse adapters browse`: check each asset and sensor id against",
        "# the plant's (plantpulse plant check), set units and scales, drop what is not wanted",
        "adapters:",
        f"  - id: {adapter_id}",
        "    kind: opcua",
        f"    endpoint: {url}",
        "    sampling_ms: 100",
        "    publishing_ms: 500",
        "    bindings:",
    ]
    for f in found:
        lines.append(
            f"      - {{node: {json.dumps(f['node'])}, asset: {f['asset']}, "
            f"sensor: {f['sensor']}}}  # {f['data_type']}"
        )
    if not found:
        lines.append("      []  # no numeric variables found")
    return "\n".join(lines) + "\n"
