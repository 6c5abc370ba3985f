"""Servers the adapters read, started on loopback for the tests and the benchmark: an OPC UA
server (asyncua) with historised variables and a Modbus TCP device (pymodbus' simulator
device), each on a free port, restartable on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.security import application_certificate

__all__ = ["free_port", "OpcuaTestServer", "ModbusTestServer", "SparkplugEdge"]


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
        logging.getLogger("asyncua").setLevel(logging.WARNING)
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
            obj = await server.nodes.objects.add_object(ua.NodeId(asset, idx), asset)
            for sensor in sensors:
                nid = f"{asset}.{sensor}"
                value: Any = "n/a" if f"ns={idx};s={nid}" in self.strings else 0.0
                var = await obj.add_variable(ua.NodeId(nid, idx), sensor, value)
                self.nodes[f"ns={idx};s={nid}"] = var
        await server.start()
        if self.history:
            await server.historize_node_data_change(list(self.nodes.values()), period=None, count=0)
        self.server = server

    async def write(self, values: dict[str, float], ts: Any = None) -> None:
        """Write ``{node id: value}`` (with source timestamp ``ts``, default now)."""
        from datetime import UTC, datetime

        ts = ts or datetime.now(UTC)
        for nid, v in values.items():
            dv = ua.DataValue(
                ua.Variant(
                    v, ua.VariantType.Double if isinstance(v, float) else ua.VariantType.String
                ),
                SourceTimestamp=ts,
                ServerTimestamp=ts,
            )
            await self.server.write_attribute_value(self.nodes[nid].nodeid, dv)

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


# -- servers as processes (the benchmark runs them beside the adapter, on the other core) ------
async def _serve_opcua(items: int, port: int, period_s: float) -> None:
    """``items`` variables under ``n`` objects, every value rewritten every ``period_s`` in one
    batched write (the server side of the OPC UA benchmark)."""
    from datetime import UTC, datetime

    per_asset = 100
    tags = {
        f"pump-{a:03d}": [f"s{s:03d}" for s in range(per_asset)]
        for a in range((items + per_asset - 1) // per_asset)
    }
    from asyncua.server.monitored_item_service import MonitoredItemValues

    def _keep(self, cur_val):
        self.old_dvalue, self.current_dvalue = self.current_dvalue, cur_val

    MonitoredItemValues.set_current_datavalue = _keep
    server = OpcuaTestServer(tags, port=port, history=False)
    await server.start()
    nodes = list(server.nodes.values())[:items]
    print("ready", flush=True)
    k = 0
    while True:
        k += 1
        now = datetime.now(UTC)
        params = ua.WriteParameters()
        for i, n in enumerate(nodes):
            wv = ua.WriteValue()
            wv.NodeId, wv.AttributeId = n.nodeid, ua.AttributeIds.Value
            wv.Value = ua.DataValue(
                ua.Variant(float(k + i % 7), ua.VariantType.Double),
                SourceTimestamp=now,
                ServerTimestamp=now,
            )
            params.NodesToWrite.append(wv)
        await server.server.iserver.isession.write(params)
        await asyncio.sleep(period_s)


async def _serve_modbus(port: int, n: int) -> None:
    server = ModbusTestServer(n_holding=n, port=port)
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def _publish_sparkplug(
    port: int,
    devices: int,
    metrics: int,
    seconds: float,
    auth: tuple[str, str] | None,
    nodes: int = 10,
) -> None:
    """``nodes`` edge nodes with ``devices`` devices in all, each of ``metrics`` metrics:
    births, then DDATA of every device (by alias, per-metric timestamps) as fast as the
    broker takes them, for ``seconds``; prints how many metrics it published."""
    per_node = devices // nodes
    edges = [
        SparkplugEdge(
            "127.0.0.1",
            port,
            "bench",
            f"node-{n}",
            {
                f"pump-{n * per_node + d:03d}": [f"m{m:02d}" for m in range(metrics)]
                for d in range(per_node)
            },
            auth=auth,
        )
        for n in range(nodes)
    ]
    for e in edges:
        e.births()
    print("ready", flush=True)
    sent = 0
    end = time.monotonic() + seconds
    values = {f"m{m:02d}": float(m) for m in range(metrics)}
    while time.monotonic() < end:
        ts = int(time.time() * 1000)
        for e in edges:
            for device in e.devices:
                payload = e.data_payload(device, values, ts)
                while e.client.publish(e._topic("DDATA", device), payload, qos=0).rc:
                    time.sleep(0.001)  # the client's queue is full: wait for the socket
                sent += metrics
    for e in edges:
        e.close()
    print(f"sent {sent}", flush=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="a loopback server for the adapters' benchmark")
    ap.add_argument("kind", choices=["opcua", "modbus", "sparkplug"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--period", type=float, default=0.1)
    ap.add_argument("--metrics", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--user", default=None)
    ap.add_argument("--password", default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.kind == "sparkplug":
        _publish_sparkplug(
            a.port, a.items, a.metrics, a.seconds, (a.user, a.password) if a.user else None
        )
        raise SystemExit(0)
    main = (
        _serve_opcua(a.items, a.port, a.period)
        if a.kind == "opcua"
        else _serve_modbus(a.port, a.items)
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main)


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
