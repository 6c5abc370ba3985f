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

The session is secured as the plant file says (``secure_client``): Basic256Sha256 with
SignAndEncrypt unless it says ``Sign`` (or ``None``, with a reason), the installation's client
certificate (generated at set-up under ``<home>/opcua/client/``), a username and password
when ``credentials`` names them, and the server accepted only if its certificate is in the
trust list (``adapters.security.ServerTrust``: the file's ``trust`` entries and
``<home>/opcua/trusted/``).  An untrusted server is refused on every attempt, its
certificate's fingerprint in the status's ``last_error``.

``browse(url)`` walks the server's Objects folder and proposes plant-model entries
(``plantpulse adapters browse opc.tcp://...``); ``server_certificate(url)`` fetches the
certificate a server presents (``plantpulse adapters trust``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from asyncua import Client, ua
from asyncua.common.subscription import Subscription
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from adapters.core import Adapter, now_us
from adapters.security import (
    CLIENT_URI,
    ServerTrust,
    application_certificate,
    opcua_dir,
    server_trust,
)
from adapters.sinks import credentials

__all__ = [
    "OpcuaAdapter",
    "browse",
    "proposal_yaml",
    "secure_client",
    "server_certificate",
]

log = logging.getLogger(__name__)

CHUNK = 1000  # monitored items per CreateMonitoredItems request
_MARK = "opcua.last_ts:"  # buffer mark of a node's newest delivered source timestamp
REPEAT_S = 60.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


async def secure_client(
    url: str,
    home: str | Path,
    *,
    security: str = "SignAndEncrypt",
    trust: Iterable[str | Path] = (),
    auth: tuple[str, str] | None = None,
    timeout: float = 10.0,
    **kwargs: Any,
) -> Client:
    """An asyncua client of ``url`` (not connected yet): Basic256Sha256 in mode ``security``
    (``SignAndEncrypt``, ``Sign``; ``None`` for a server without security) with the
    installation's client certificate under ``home``, accepting the server only if its
    certificate is in ``trust`` or ``<home>/opcua/trusted/``; logged in as ``auth`` (else
    anonymous).  Setting up the security asks the server for its endpoints: ``OSError`` when it
    does not answer."""
    client = Client(url, timeout=timeout, **kwargs)
    if security != "None":
        client.application_uri = CLIENT_URI
        cert, key = application_certificate(opcua_dir(home) / "client", CLIENT_URI, server=False)
        client.certificate_validator = ServerTrust(server_trust(home, trust))
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(cert),
            str(key),
            mode=getattr(ua.MessageSecurityMode, security),
        )
    if auth is not None:
        client.set_user(auth[0])
        client.set_password(auth[1])
    return client


async def server_certificate(url: str, timeout: float = 10.0) -> tuple[bytes, str]:
    """The certificate (DER) an OPC UA server presents on its secured endpoints, and its
    application URI (asked over the discovery channel, as every client does first)."""
    client = Client(url, timeout=timeout)
    endpoints = await client.connect_and_get_server_endpoints()
    for ep in endpoints:
        if ep.ServerCertificate:
            return bytes(ep.ServerCertificate), str(ep.Server.ApplicationUri)
    raise ConnectionError(f"{url} presents no certificate (it offers no secured endpoint)")


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
        self._changed: dict[str, int] = {}  # the nodes' new timestamps not yet emitted
        self._bad: dict[str, tuple[float, int]] = {}
        self.holding: list[Any] | None = None
        self.lost = asyncio.Event()
        self.sessions = 0

    # -- the newest timestamp of each node, committed with its readings (the backfill's start) -
    def _load_last_ts(self) -> dict[str, int]:
        marks = self.buffer.marks(_MARK)
        if marks:
            return {k[len(_MARK) :]: int(v) for k, v in marks.items()}
        try:  # a state directory from before the marks were kept in the buffer
            old = json.loads((self.dir / "last_ts.json").read_text())
            return {str(k): int(v) for k, v in old.items()}
        except (OSError, ValueError, AttributeError):
            return {}

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
        by_handle, value = self.by_handle, self._value
        with self._lock:
            for item in items:
                b = by_handle.get(item.ClientHandle)
                if b is not None:
                    value(b, item.Value, received, out)
            self._emit_all(out)

    def _emit_all(self, out: dict[str, tuple[list[str], list[int], list[float]]]) -> None:
        """The readings of ``out``, with the newest timestamp of each node they came from as the
        marks committed with them (called under the lock that ``_value`` ran under, so a flush
        never commits a node's mark without its readings)."""
        marks = {_MARK + n: str(ts) for n, ts in self._changed.items()}
        self._changed = {}
        for asset, (sensors, ts, values) in out.items():
            self.emit(asset, sensors, ts, values, marks)
            marks = {}
        if marks:
            self.emit("", [], [], [], marks)

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
        self.last_ts[b.node] = self._changed[b.node] = ts
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
        home = self.dir.parent.parent
        client = await secure_client(
            self.spec.endpoint,
            home,
            security=self.spec.security,
            trust=self.spec.trust,
            auth=credentials(self.spec.credentials, home),
            timeout=self.spec.timeout_s,
            watchdog_intervall=1.0,
            auto_reconnect=False,
        )
        self.lost.clear()

        async def on_lost(exc: Exception) -> None:
            self.lost.set()

        client.connection_lost_callback = on_lost
        try:
            await client.connect()
        except ua.UaStatusCodeError as exc:
            trust = client.certificate_validator
            if isinstance(trust, ServerTrust) and trust.refused:
                raise ConnectionError(
                    f"the server's certificate {trust.refused[-1]} is not trusted: "
                    f"`plantpulse adapters trust {self.spec.endpoint}` or a `trust:` entry"
                ) from None
            raise ConnectionError(f"the server refused the session: {exc}") from None
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
            with self._lock:
                for b, values in zip(part, histories, strict=True):
                    for dv in sorted(values, key=lambda d: d.SourceTimestamp or end):
                        before = len(out.get(b.asset, ([],))[0])
                        self._value(b, dv, received, out)
                        n += len(out.get(b.asset, ([],))[0]) - before
                self._emit_all(out)
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
    url: str,
    home: str | Path,
    max_depth: int = 6,
    auth: tuple[str, str] | None = None,
    limit: int = 100_000,
    security: str = "SignAndEncrypt",
) -> list[dict[str, Any]]:
    """The numeric variables under the server's Objects folder: ``node`` (its NodeId),
    ``asset`` (its parent object's browse name) and ``sensor`` (its own), ``data_type``
    (through a session secured as ``secure_client`` does)."""
    client = await secure_client(url, home, security=security, auth=auth)
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
