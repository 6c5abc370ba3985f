"""Servers the adapters read, started on loopback for the tests and the benchmark: an OPC UA
server (asyncua) with historised variables and a Modbus TCP device (pymodbus' simulator
device), each on a free port, restartable on the same port."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from asyncua import Server, ua
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

__all__ = ["free_port", "OpcuaTestServer", "ModbusTestServer", "SparkplugEdge"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpcuaTestServer:
    """Variables ``ns=2;s=<asset>.<sensor>`` under one object per asset, all historised
    (in memory), on ``opc.tcp://127.0.0.1:<port>/plantpulse/``."""

    def __init__(self, tags: dict[str, list[str]], port: int | None = None,
                 history: bool = True, strings: tuple[str, ...] = ()):
        self.tags, self.port, self.history = tags, port or free_port(), history
        self.strings = strings  # node ids that hold text (a wrongly typed tag)
        self.url = f"opc.tcp://127.0.0.1:{self.port}/plantpulse/"
        self.server: Server | None = None
        self.nodes: dict[str, Any] = {}

    async def start(self) -> None:
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
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
            await server.historize_node_data_change(list(self.nodes.values()), period=None,
                                                    count=0)
        self.server = server

    async def write(self, values: dict[str, float], ts: Any = None) -> None:
        """Write ``{node id: value}`` (with source timestamp ``ts``, default now)."""
        from datetime import UTC, datetime

        ts = ts or datetime.now(UTC)
        for nid, v in values.items():
            dv = ua.DataValue(ua.Variant(v, ua.VariantType.Double if isinstance(v, float)
                                         else ua.VariantType.String),
                              SourceTimestamp=ts, ServerTimestamp=ts)
            await self.server.write_attribute_value(self.nodes[nid].nodeid, dv)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


class ModbusTestServer:
    """A Modbus TCP device (unit 1): ``holding`` and ``input`` registers 0..n-1."""

    def __init__(self, n_holding: int = 200, n_input: int = 20, port: int | None = None,
                 input_values: list[int] | None = None):
        self.port = port or free_port()
        self.n_holding, self.n_input = n_holding, n_input
        self.input_values = input_values or [0] * n_input
        self.server: ModbusTcpServer | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        logging.getLogger("pymodbus").setLevel(logging.WARNING)
        bit = [SimData(0, count=1, values=False, datatype=DataType.BITS)]
        device = SimDevice(id=1, simdata=(
            bit, list(bit),
            [SimData(0, count=self.n_holding, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, values=list(self.input_values), datatype=DataType.REGISTERS)]))
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

    def __init__(self, host: str, port: int, group: str, node: str,
                 devices: dict[str, list[str]], auth: tuple[str, str] | None = None):
        import paho.mqtt.client as mqtt

        from adapters.proto.sparkplug_b_pb2 import Payload

        self.Payload = Payload
        self.group, self.node, self.devices = group, node, devices
        self.seq = 0
        self.rebirths = 0
        self.alias = {(d, m): i + 1 for i, (d, m) in
                      enumerate((d, m) for d, ms in devices.items() for m in ms)}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"edge-{group}-{node}", protocol=mqtt.MQTTv5)
        if auth:
            self.client.username_pw_set(*auth)
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
                p.metrics.add(name=m, alias=self.alias[(device, m)], datatype=10,
                              double_value=0.0)
            self.publish(self._topic("DBIRTH", device), p.SerializeToString())

    def data_payload(self, device: str, values: dict[str, Any], ts_ms: int,
                     seq: int | None = None) -> bytes:
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
