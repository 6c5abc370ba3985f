"""Servers the adapters read, started on loopback for the tests and the benchmark: an OPC UA
server (asyncua) with historised variables and a Modbus TCP device (pymodbus' simulator
device), each on a free port, restartable on the same port."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from asyncua import Server, ua
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

__all__ = ["free_port", "OpcuaTestServer", "ModbusTestServer"]


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
