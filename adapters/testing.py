"""Servers the adapters read, started on loopback for the tests and the benchmark: an OPC UA
server (asyncua) with historised variables and a Modbus TCP device (pymodbus' simulator
device), each on a free port, restartable on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import tempfile
import threading
import time
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server import monitored_item_service
from asyncua.server.monitored_item_service import MonitoredItemValues
from asyncua.server.user_managers import UserManager
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.security import application_certificate

__all__ = [
    "free_port",
    "OpcuaTestServer",
    "ModbusTestServer",
    "SparkplugEdge",
    "EdgeFleet",
    "PlantSources",
    "bench_tags",
    "mqtt_login_attempt",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TEST_SERVER_URI = "urn:plantpulse:test-server"


class _TestUsers(UserManager):
    """The test server's logins (``users``: name -> password); anonymous when there are none."""

    def __init__(self, users: dict[str, str] | None):
        self.users = users

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if self.users is None:
            return User(role=UserRole.User)
        if username in self.users and self.users[username] == password:
            return User(role=UserRole.User, name=username)
        return None


class OpcuaTestServer:
    """Variables ``ns=2;s=<asset>.<sensor>`` under one object per asset, all historised
    (in memory), on ``opc.tcp://127.0.0.1:<port>/plantpulse/``.  Secured like a plant's server:
    Basic256Sha256 endpoints in the ``security`` modes with its own certificate (made in
    ``cert_dir``, a temporary folder by default: ``certificate`` is what a client must trust),
    sessions for ``users`` only (anonymous when None)."""

    def __init__(
        self,
        tags: dict[str, list[str]],
        port: int | None = None,
        history: bool = True,
        strings: tuple[str, ...] = (),
        *,
        security: tuple[str, ...] = ("SignAndEncrypt", "Sign"),
        users: dict[str, str] | None = None,
        cert_dir: str | Path | None = None,
    ):
        self.tags, self.port, self.history = tags, port or free_port(), history
        self.strings = strings  # node ids that hold text (a wrongly typed tag)
        self.url = f"opc.tcp://127.0.0.1:{self.port}/plantpulse/"
        self.security, self.users = security, users
        self.cert_dir = Path(cert_dir or tempfile.mkdtemp(prefix="plantpulse-opcua-server-"))
        self.server: Server | None = None
        self.nodes: dict[str, Any] = {}

    @property
    def certificate(self) -> bytes:
        """The server's certificate (DER), generated on first use."""
        cert, _ = application_certificate(self.cert_dir, TEST_SERVER_URI, server=True)
        return cert.read_bytes()

    async def start(self) -> None:
        quiet = logging.getLogger("asyncua")
        quiet.setLevel(max(quiet.level, logging.WARNING))
        server = Server(user_manager=_TestUsers(self.users))
        await server.init()
        server.set_endpoint(self.url)
        modes = {
            "SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            "Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
            "None": ua.SecurityPolicyType.NoSecurity,
        }
        server.set_security_policy([modes[m] for m in self.security])
        if self.security != ("None",):
            cert, key = application_certificate(self.cert_dir, TEST_SERVER_URI, server=True)
            await server.set_application_uri(TEST_SERVER_URI)
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
        server.set_identity_tokens(
            [ua.AnonymousIdentityToken] if self.users is None else [ua.UserNameIdentityToken]
        )
        idx = await server.register_namespace("urn:plantpulse:test")
        self.nodes = {}
        for asset, sensors in self.tags.items():
            obj = await server.nodes.objects.add_object(
                ua.NodeId(ua.String(asset), ua.Int16(idx)), asset
            )
            for sensor in sensors:
                nid = f"{asset}.{sensor}"
                value: Any = "n/a" if f"ns={idx};s={nid}" in self.strings else 0.0
                var = await obj.add_variable(
                    ua.NodeId(ua.String(nid), ua.Int16(idx)), sensor, value
                )
                self.nodes[f"ns={idx};s={nid}"] = var
        await server.start()
        if self.history:  # in memory, a day of it (longer than any test)
            await server.historize_node_data_change(
                list(self.nodes.values()), period=timedelta(days=1), count=0
            )
        self.server = server

    def running(self) -> Server:
        if self.server is None:
            raise RuntimeError(f"the OPC UA test server on {self.url} is not running")
        return self.server

    async def write(self, values: dict[str, float | str], ts: Any = None) -> None:
        """Write ``{node id: value}`` (with source timestamp ``ts``, default now)."""
        ts = ts or ua.DateTime.now(UTC)
        for nid, v in values.items():
            dv = ua.DataValue(
                ua.Variant(
                    v, ua.VariantType.Double if isinstance(v, float) else ua.VariantType.String
                ),
                SourceTimestamp=ts,
                ServerTimestamp=ts,
            )
            await self.running().write_attribute_value(self.nodes[nid].nodeid, dv)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


class ModbusTestServer:
    """A Modbus TCP device (unit 1): ``holding`` and ``input`` registers 0..n-1."""

    def __init__(
        self,
        n_holding: int = 200,
        n_input: int = 20,
        port: int | None = None,
        input_values: list[int] | None = None,
    ):
        self.port = port or free_port()
        self.n_holding, self.n_input = n_holding, n_input
        self.input_values = input_values or [0] * n_input
        self.server: ModbusTcpServer | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        logging.getLogger("pymodbus").setLevel(logging.WARNING)
        bit = [SimData(0, count=1, values=False, datatype=DataType.BITS)]
        device = SimDevice(
            id=1,
            simdata=(
                bit,
                list(bit),
                [SimData(0, count=self.n_holding, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, values=list(self.input_values), datatype=DataType.REGISTERS)],
            ),
        )
        self.server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        self.task = asyncio.create_task(self.server.serve_forever())
        for _ in range(100):
            await asyncio.sleep(0.02)
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                continue

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None
        if self.task is not None:
            self.task.cancel()
            self.task = None


class SparkplugEdge:
    """A Sparkplug B edge node on a broker (what a gateway at the machine publishes): births
    with aliases, data by alias with per-metric timestamps, numbered 0..255; it answers a
    rebirth command with new births and records it (``rebirths``)."""

    def __init__(
        self,
        host: str,
        port: int,
        group: str,
        node: str,
        devices: dict[str, list[str]],
        auth: tuple[str, str] | None = None,
        tls_ca: str | Path | None = None,
    ):
        import paho.mqtt.client as mqtt

        from adapters.proto.sparkplug_b_pb2 import Payload

        self.Payload = Payload
        self.group, self.node, self.devices = group, node, devices
        self.seq = 0
        self.rebirths = 0
        self.alias = {
            (d, m): i + 1
            for i, (d, m) in enumerate((d, m) for d, ms in devices.items() for m in ms)
        }
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-{group}-{node}", protocol=mqtt.MQTTv5
        )
        if auth:
            self.client.username_pw_set(*auth)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.on_message = self._on_command
        self.client.connect(host, port)
        self.client.subscribe(f"spBv1.0/{group}/NCMD/{node}", qos=0)
        self.client.loop_start()

    def _topic(self, kind: str, device: str | None = None) -> str:
        return f"spBv1.0/{self.group}/{kind}/{self.node}" + (f"/{device}" if device else "")

    def _next(self) -> int:
        seq, self.seq = self.seq, (self.seq + 1) % 256
        return seq

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def births(self) -> None:
        self.seq = 0
        p = self.Payload(timestamp=int(time.time() * 1000), seq=self._next())
        p.metrics.add(name="bdSeq", datatype=8, long_value=0)
        p.metrics.add(name="Node Control/Rebirth", datatype=11, boolean_value=False)
        self.publish(self._topic("NBIRTH"), p.SerializeToString())
        for device, metrics in self.devices.items():
            p = self.Payload(timestamp=int(time.time() * 1000), seq=self._next())
            for m in metrics:
                p.metrics.add(name=m, alias=self.alias[(device, m)], datatype=10, double_value=0.0)
            self.publish(self._topic("DBIRTH", device), p.SerializeToString())

    def data_payload(
        self, device: str, values: dict[str, Any], ts_ms: int, seq: int | None = None
    ) -> bytes:
        p = self.Payload(timestamp=ts_ms, seq=self._next() if seq is None else seq)
        for m, v in values.items():
            metric = p.metrics.add(alias=self.alias[(device, m)], timestamp=ts_ms)
            if isinstance(v, str):
                metric.datatype, metric.string_value = 12, v
            else:
                metric.datatype, metric.double_value = 10, float(v)
        return p.SerializeToString()

    def data(self, device: str, values: dict[str, Any], ts_ms: int | None = None) -> None:
        ts_ms = int(time.time() * 1000) if ts_ms is None else ts_ms
        self.publish(self._topic("DDATA", device), self.data_payload(device, values, ts_ms))

    def _on_command(self, client, userdata, msg) -> None:
        p = self.Payload.FromString(msg.payload)
        if any(m.name == "Node Control/Rebirth" and m.boolean_value for m in p.metrics):
            self.rebirths += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- load generators as processes (python -m adapters.testing ...) ----------------------------
class _KeepValues(MonitoredItemValues):
    """asyncua's server copies every value it samples (``copy.deepcopy``, most of its cost per
    value: about 160 µs here); the load generator writes a new value object each time and never
    changes it after, so keeping the reference is the same value without the copy."""

    def set_current_datavalue(self, cur_val: ua.DataValue) -> None:
        self.old_dvalue, self.current_dvalue = self.current_dvalue, cur_val


def bench_tags(items: int, first_asset: int = 0, per_asset: int = 100) -> dict[str, list[str]]:
    """The load generator's variables: ``items`` sensors ``s000``.. under assets
    ``pump-<first_asset>``.. (``per_asset`` each); the bindings of a benchmark's plant file
    name the same."""
    n_assets = (items + per_asset - 1) // per_asset
    return {
        f"pump-{first_asset + a:03d}": [
            f"s{s:03d}" for s in range(min(per_asset, items - a * per_asset))
        ]
        for a in range(n_assets)
    }


async def _publish_in_bulk(iserver: Any, index: dict[Any, int], k: int, now: Any) -> int:
    """Every monitored item of every subscription a new value, put straight into the
    subscription's queue of data changes (what a server does once a value has changed, without
    writing its address space first); returns how many."""
    n = 0
    for isub in list(iserver.subscription_service.subscriptions.values()):
        items = isub.monitored_item_srv._monitored_items  # asyncua 2.1's, read only
        for mid, item in list(items.items()):
            i = index.get(item.read_value_id.NodeId)
            if i is None:
                continue
            value = ua.DataValue(
                ua.Variant(float(k + i % 7), ua.VariantType.Double),
                SourceTimestamp=now,
                ServerTimestamp=now,
            )
            notification = ua.MonitoredItemNotification(
                ClientHandle=item.client_handle, Value=value
            )
            await isub.enqueue_datachange_event(mid, notification, item.queue_size)
            n += 1
    return n


async def _serve_opcua(
    items: int,
    port: int,
    period_s: float,
    first_asset: int = 0,
    security: tuple[str, ...] = ("SignAndEncrypt",),
    users: dict[str, str] | None = None,
    cert_dir: str | None = None,
    bulk: bool = False,
) -> None:
    """An OPC UA server with ``items`` variables, every value rewritten every ``period_s`` in
    one batched write (the server side of the OPC UA benchmark), or with ``bulk`` handed to its
    subscriptions directly (``_publish_in_bulk``: a server that publishes in bulk, about a
    third of the cost per value); prints ``ready``, then each second ``written <n>``."""
    vars(monitored_item_service)["MonitoredItemValues"] = _KeepValues  # see _KeepValues
    server = OpcuaTestServer(
        bench_tags(items, first_asset),
        port=port,
        history=False,
        security=security,
        users=users,
        cert_dir=cert_dir,
    )
    await server.start()
    iserver = server.running().iserver
    nodes = [n.nodeid for n in server.nodes.values()]
    index = {nid: i for i, nid in enumerate(nodes)}
    print("ready", flush=True)
    k, written, last = 0, 0, time.monotonic()
    next_at = time.monotonic()
    while True:
        k += 1
        now = ua.DateTime.now(UTC)
        if bulk:
            written += await _publish_in_bulk(iserver, index, k, now)
        else:
            params = ua.WriteParameters()
            for i, nid in enumerate(nodes):
                wv = ua.WriteValue()
                wv.NodeId, wv.AttributeId = nid, ua.AttributeIds.Value
                wv.Value = ua.DataValue(
                    ua.Variant(float(k + i % 7), ua.VariantType.Double),
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                )
                params.NodesToWrite.append(wv)
            await iserver.isession.write(params)
            written += len(nodes)
        if time.monotonic() - last >= 1.0:
            print(f"written {written}", flush=True)
            last = time.monotonic()
        next_at += period_s
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if next_at < time.monotonic() - period_s:  # behind: no burst to catch up
            next_at = time.monotonic()


async def _serve_modbus(port: int, n: int) -> None:
    server = ModbusTestServer(n_holding=n, port=port)
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


class EdgeFleet:
    """``nodes`` Sparkplug B edge nodes (``node-<first>``..), one MQTT connection each, driven
    from one thread by a selector (paho's external event loop: no thread per node), each with
    one device (``pump-<n>``) of ``metrics`` Double metrics; ``run`` publishes each node's
    DDATA (by alias, per-metric timestamps) ``hz`` times a second at QoS ``qos`` and counts
    what the broker acknowledged."""

    def __init__(
        self,
        port: int,
        first: int,
        nodes: int,
        metrics: int,
        auth: tuple[str, str] | None,
        group: str = "bench",
        qos: int = 1,
        host: str = "127.0.0.1",
    ):
        import selectors

        import paho.mqtt.client as mqtt

        from adapters.proto.sparkplug_b_pb2 import Payload

        self.Payload, self.group, self.qos, self.metrics = Payload, group, qos, metrics
        self.ids = [f"node-{n:03d}" for n in range(first, first + nodes)]
        self.devices = [f"pump-{n:03d}" for n in range(first, first + nodes)]
        self.seq = [0] * nodes
        self.acked = 0  # metrics in messages the broker acknowledged
        self.sent = 0  # metrics in messages handed to the sockets
        self.selector = selectors.DefaultSelector()
        self.clients: list[Any] = []
        self._pending: dict[tuple[int, int], int] = {}  # (node index, mid) -> metrics
        for i, node in enumerate(self.ids):
            c = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=f"edge-{group}-{node}",
                protocol=mqtt.MQTTv5,
                userdata=i,
            )
            if auth is not None:
                c.username_pw_set(*auth)
            c.max_inflight_messages_set(200)
            c.on_publish = self._on_publish
            c.connect(host, port, keepalive=60)
            sock = c.socket()
            if sock is None:
                raise ConnectionError(f"edge node {node}: no connection to the broker")
            self.selector.register(sock, selectors.EVENT_READ, c)
            self.clients.append(c)

    def _on_publish(self, client: Any, index: int, mid: int, reason: Any, props: Any) -> None:
        self.acked += self._pending.pop((index, mid), 0)

    def _pump(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            key.data.loop_read(100)
        for c in self.clients:
            if c.want_write():
                c.loop_write()

    def _next(self, i: int) -> int:
        seq, self.seq[i] = self.seq[i], (self.seq[i] + 1) % 256
        return seq

    def connected(self, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(c.is_connected() for c in self.clients):
                return True
            self._pump(0.05)
        return False

    def births(self) -> None:
        ts = int(time.time() * 1000)
        for i, c in enumerate(self.clients):
            self.seq[i] = 0
            p = self.Payload(timestamp=ts, seq=self._next(i))
            p.metrics.add(name="bdSeq", datatype=8, long_value=0)
            p.metrics.add(name="Node Control/Rebirth", datatype=11, boolean_value=False)
            c.publish(f"spBv1.0/{self.group}/NBIRTH/{self.ids[i]}", p.SerializeToString(), 1)
            p = self.Payload(timestamp=ts, seq=self._next(i))
            for m in range(self.metrics):
                p.metrics.add(name=f"m{m:02d}", alias=m + 1, datatype=10, double_value=0.0)
            topic = f"spBv1.0/{self.group}/DBIRTH/{self.ids[i]}/{self.devices[i]}"
            c.publish(topic, p.SerializeToString(), 1)
        deadline = time.monotonic() + 30
        while any(c.want_write() for c in self.clients) and time.monotonic() < deadline:
            self._pump(0.05)

    def run(self, hz: float, seconds: float) -> float:
        """Each node's DDATA ``hz`` times a second for ``seconds``, the nodes spread evenly
        over the period (not all at once); a metric's value is its message's number plus its
        own, so each is known.  Returns how long it published (the acknowledgements are waited
        for after)."""
        n = len(self.clients)
        period = 1.0 / hz
        start = time.monotonic()
        end = start + seconds
        k, last_misc = 0, start
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) / period * n)  # node i publishes at (tick + i / n) * period
            ts = int(time.time() * 1000)
            while k < due and (k % 64 or time.monotonic() < end):  # behind: not past the end
                i, tick = k % n, k // n
                p = self.Payload(timestamp=ts, seq=self._next(i))
                for m in range(self.metrics):
                    p.metrics.add(
                        alias=m + 1, timestamp=ts, datatype=10, double_value=float(tick + m)
                    )
                info = self.clients[i].publish(
                    f"spBv1.0/{self.group}/DDATA/{self.ids[i]}/{self.devices[i]}",
                    p.SerializeToString(),
                    self.qos,
                )
                if self.qos:
                    self._pending[(i, info.mid)] = self.metrics
                else:
                    self.acked += self.metrics
                self.sent += self.metrics
                k += 1
            self._pump(0.002)
            if now - last_misc > 1.0:
                for c in self.clients:
                    c.loop_misc()
                last_misc = now
        publishing = time.monotonic() - start
        deadline = time.monotonic() + 30  # the acknowledgements still on their way
        while self._pending and time.monotonic() < deadline:
            self._pump(0.05)
        return publishing

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            with contextlib.suppress(Exception):
                c.loop_write()


def _fleet(args: Any) -> None:
    auth = (args.user, args.password) if args.user else None
    fleet = EdgeFleet(args.port, args.first, args.items, args.metrics, auth, qos=args.qos)
    if not fleet.connected():
        raise SystemExit("the broker did not accept every edge node")
    fleet.births()
    print("ready", flush=True)
    if args.wait_go:  # the benchmark starts every generator at once
        sys.stdin.readline()
    publishing = fleet.run(args.hz, args.seconds)
    fleet.close()
    print(f"sent {fleet.sent} acked {fleet.acked} seconds {publishing:.3f}", flush=True)


def _count_stream(args: Any) -> None:
    """What reaches the stream's broker on ``plantpulse/#``, decoded by the stream's own decoder
    (``dataplane.wire.decode_batch``): prints ``ready``, then, on SIGTERM (or once nothing came
    for ``--seconds``, when above 0), ``readings <n> rejected <n> messages <n>
    dropped_by_broker <n>`` (the broker's count of dropped messages over the run, -1 when it
    said nothing)."""
    import threading

    import paho.mqtt.client as mqtt

    from dataplane.wire import Message, decode_batch

    got: list[bytes] = []
    lock = threading.Lock()
    dropped: list[int] = []
    subscribed = threading.Event()

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        if msg.topic.startswith("$SYS"):
            dropped.append(int(msg.payload))
            return
        with lock:
            got.append(msg.payload)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(args.user, args.password)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", args.port)
    client.subscribe([("plantpulse/#", 1), ("$SYS/broker/publish/messages/dropped", 0)])
    client.loop_start()
    subscribed.wait(10)
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    readings = rejected = messages = 0
    first: float | None = None
    idle_since: float | None = None
    progress = Path(args.progress) if args.progress else None
    while not stop.is_set():
        time.sleep(0.2)
        with lock:
            batch, got[:] = list(got), []
        if batch:
            d = decode_batch([Message("count", i, 0, b) for i, b in enumerate(batch)])
            readings += d.n_readings
            rejected += len(d.rejects)
            messages += len(batch)
            first = first or time.monotonic()
            idle_since = None
            if progress is not None:  # for rates over a window: "<epoch s> <readings>"
                progress.with_suffix(".tmp").write_text(f"{time.time()} {readings}\n")
                progress.with_suffix(".tmp").replace(progress)
        elif first is not None and args.seconds > 0:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > args.seconds:
                break
    client.loop_stop()
    client.disconnect()
    lost = (max(dropped) - min(dropped)) if dropped else -1
    print(
        f"readings {readings} rejected {rejected} messages {messages} dropped_by_broker {lost}",
        flush=True,
    )


class PlantSources(threading.Thread):
    """A plant's OPC UA server (secured, a login, historised) and Modbus device on their own
    event loop, for end-to-end runs: while ``writing`` is set the OPC UA values ``level_a`` and
    ``level_b`` of ``asset`` are rewritten every 100 ms (a count, so each value is known;
    ``written`` keeps ``(source ts µs, value of level_a)``)."""

    def __init__(self, cert_dir: Path, asset: str, users: dict[str, str]):
        super().__init__(daemon=True)
        self.asset = asset
        self.opcua = OpcuaTestServer(
            {asset: ["level_a", "level_b"]}, users=users, cert_dir=cert_dir
        )
        self.modbus = ModbusTestServer(n_holding=4)
        self.written: list[tuple[int, float]] = []
        self.ready, self.writing = threading.Event(), threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop, self.done = asyncio.get_running_loop(), asyncio.Event()
        await self.opcua.start()
        await self.modbus.start()
        self.ready.set()
        k = 0
        while not self.done.is_set():
            if self.writing.is_set():
                k += 1
                ts = ua.DateTime.now(UTC)
                a, b = f"ns=2;s={self.asset}.level_a", f"ns=2;s={self.asset}.level_b"
                await self.opcua.write({a: float(k), b: float(k + 0.5)}, ts)
                self.written.append((int(ts.timestamp() * 1e6), float(k)))
            await asyncio.sleep(0.1)
        await self.opcua.stop()
        await self.modbus.stop()

    def stop(self) -> None:
        if self.loop is not None and self.done is not None:
            self.loop.call_soon_threadsafe(self.done.set)
        self.join(20)


def mqtt_login_attempt(
    port: int,
    auth: tuple[str, str] | None = None,
    tls_ca: str | Path | None = None,
    host: str = "127.0.0.1",
    timeout_s: float = 10.0,
) -> str:
    """Try to log in to the broker at ``host:port`` (anonymous when ``auth`` is None, over TLS
    verifying it against ``tls_ca`` when given): ``"accepted"``, else why not (the CONNACK's
    reason code, or the TLS or socket error)."""
    import ssl
    import threading

    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if auth is not None:
        client.username_pw_set(*auth)
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca))
    answered = threading.Event()
    outcome: list[str] = []

    def on_connect(c, userdata, flags, reason, properties) -> None:
        outcome.append("accepted" if not reason.is_failure else str(reason))
        answered.set()

    def on_disconnect(c, userdata, flags, reason, properties) -> None:
        if not outcome:
            outcome.append(f"disconnected: {reason}")
        answered.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            return "no answer"
        return outcome[0]
    finally:
        client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="a loopback load generator for the adapters' bench")
    ap.add_argument("kind", choices=["opcua", "modbus", "sparkplug", "count"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--items", type=int, default=1000, help="variables / registers / nodes")
    ap.add_argument("--first", type=int, default=0, help="number of the first asset / node")
    ap.add_argument("--period", type=float, default=0.1)
    ap.add_argument("--metrics", type=int, default=20)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--qos", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--user", default=None)
    ap.add_argument("--password", default=None)
    ap.add_argument("--security", default="SignAndEncrypt", help="comma-separated modes")
    ap.add_argument("--cert-dir", default=None)
    ap.add_argument("--bulk", action="store_true", help="opcua: publish in bulk (see above)")
    ap.add_argument("--progress", default=None, help="count: file of the running total")
    ap.add_argument("--wait-go", action="store_true", help="sparkplug: start on a stdin line")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.kind == "sparkplug":
        _fleet(a)
        raise SystemExit(0)
    if a.kind == "count":
        _count_stream(a)
        raise SystemExit(0)
    main = (
        _serve_opcua(
            a.items,
            a.port,
            a.period,
            a.first,
            tuple(a.security.split(",")),
            {a.user: a.password} if a.user else None,
            a.cert_dir,
            a.bulk,
        )
        if a.kind == "opcua"
        else _serve_modbus(a.port, a.items)
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main)
