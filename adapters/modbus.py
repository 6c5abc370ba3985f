"""Modbus TCP in, via pymodbus: holding and input registers polled every ``poll_ms``.

The bindings of a table are read in as few requests as possible (runs of nearby registers, at
most 125 words a request, the protocol's limit); each value is decoded by its binding's type and
word order (``pymodbus``' own ``convert_from_registers``), then scaled.  A request the device
refuses (an address it does not have) is retried binding by binding, so one bad register goes to
``dead_letter`` (``modbus_error``, again every minute while it stays bad) and the others go on.
Readings are timestamped when the response arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from adapters.core import Adapter, now_us
from plant.schema import MODBUS_TYPES

__all__ = ["ModbusAdapter", "decode_words", "plan_reads", "registers_for"]

log = logging.getLogger(__name__)

MAX_WORDS = 125  # registers in one read request (Modbus' limit)
MAX_GAP = 8  # unbound words read rather than a second request
REPEAT_S = 60.0


WordOrder = Literal["big", "little"]


def decode_words(words: list[int], type_: str, word_order: WordOrder) -> float:
    """``words`` (16-bit registers) as a number of ``type_``, the first word the most
    significant with ``word_order='big'``.

    >>> decode_words([0x4148, 0x0000], "float32", "big")
    12.5
    >>> decode_words([0x0000, 0x4148], "float32", "little")
    12.5
    >>> decode_words([0xFFFF], "int16", "big")
    -1.0
    """
    kind = AsyncModbusTcpClient.DATATYPE[type_.upper()]
    value = AsyncModbusTcpClient.convert_from_registers(words, kind, word_order)
    if not isinstance(value, int | float):  # a numeric type gives one number
        raise ValueError(f"{type_} registers {words} decode to {value!r}, not a number")
    return float(value)


@dataclass
class _Read:
    table: str
    start: int
    count: int
    bindings: list[Any]


def plan_reads(bindings: list[Any]) -> list[_Read]:
    """Group bindings into read requests: per table, runs of registers at most ``MAX_GAP``
    apart and ``MAX_WORDS`` long.

    >>> from types import SimpleNamespace as B
    >>> plan = plan_reads([B(table="holding", address=a, type="uint16") for a in (0, 1, 50)])
    >>> [(r.start, r.count) for r in plan]
    [(0, 2), (50, 1)]
    """
    out: list[_Read] = []
    for table in ("holding", "input"):
        cur: _Read | None = None
        for b in sorted((b for b in bindings if b.table == table), key=lambda b: b.address):
            end = b.address + MODBUS_TYPES[b.type]
            if cur is not None and (
                b.address - (cur.start + cur.count) <= MAX_GAP and end - cur.start <= MAX_WORDS
            ):
                cur.count = max(cur.count, end - cur.start)
                cur.bindings.append(b)
                continue
            cur = _Read(table, b.address, end - b.address, [b])
            out.append(cur)
    return out


class ModbusAdapter(Adapter):
    kind = "modbus"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        host, _, port = self.spec.endpoint.removeprefix("tcp://").partition(":")
        self.host, self.port = host, int(port)
        self.plan = plan_reads(self.spec.bindings)
        self._bad: dict[int, tuple[float, int]] = {}  # id(binding) -> (last report, repeats)
        self.polls = 0

    async def session(self, stop: asyncio.Event) -> None:
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.spec.timeout_s, retries=0, reconnect_delay=0
        )
        try:
            if not await client.connect():
                raise ConnectionError(f"no Modbus server on {self.host}:{self.port}")
            self.connected()
            period = self.spec.poll_ms / 1000
            next_due = time.monotonic()
            while not stop.is_set():
                await self.poll(client)
                next_due += period
                delay = next_due - time.monotonic()
                if delay < -period:  # fell behind (a slow device): skip, do not burst
                    next_due = time.monotonic()
                    delay = 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, delay))
        finally:
            client.close()

    async def _read(
        self, client: AsyncModbusTcpClient, table: str, start: int, count: int
    ) -> list[int]:
        fn = client.read_holding_registers if table == "holding" else client.read_input_registers
        try:
            rr = await fn(start, count=count, device_id=self.spec.unit_id)
        except ModbusException as exc:
            if not client.connected:
                raise ConnectionError(str(exc)) from None
            raise _Refused(str(exc)) from None
        if rr.isError():
            raise _Refused(f"exception response {rr}")
        return list(rr.registers)

    async def poll(self, client: AsyncModbusTcpClient) -> None:
        """One poll of every binding."""
        self.polls += 1
        for read in self.plan:
            try:
                words = await self._read(client, read.table, read.start, read.count)
            except _Refused:
                for b in read.bindings:  # binding by binding: only the bad ones fail
                    n = MODBUS_TYPES[b.type]
                    try:
                        self._emit(b, await self._read(client, b.table, b.address, n), now_us())
                    except _Refused as exc:
                        self._bad_binding(b, str(exc))
                continue
            ts = now_us()
            for b in read.bindings:
                off = b.address - read.start
                self._emit(b, words[off : off + MODBUS_TYPES[b.type]], ts)

    def _emit(self, b: Any, words: list[int], ts: int) -> None:
        self._bad.pop(id(b), None)
        value = decode_words(words, b.type, b.word_order) * b.scale + b.offset
        self.emit(b.asset, b.sensor, [ts], [value])

    def _bad_binding(self, b: Any, detail: str) -> None:
        last, repeats = self._bad.get(id(b), (0.0, 0))
        now = time.monotonic()
        if now - last < REPEAT_S:
            self._bad[id(b)] = (last, repeats + 1)
            return
        self._bad[id(b)] = (now, 0)
        raw = orjson.dumps(
            {
                "endpoint": self.spec.endpoint,
                "unit_id": self.spec.unit_id,
                "table": b.table,
                "register": b.address,
                "type": b.type,
            }
        )
        self.reject(
            raw,
            "modbus_error",
            f"{b.table} register {b.address} ({b.type}) of unit {self.spec.unit_id} "
            f"for {b.asset}/{b.sensor}: {detail[:300]}"
            + (f" ({repeats} more failed polls since the last report)" if repeats else ""),
            b.asset,
            b.sensor,
        )


class _Refused(Exception):
    """The device answered with an exception (the connection is fine)."""


def registers_for(value: float, type_: str, word_order: WordOrder = "big") -> list[int]:
    """The registers holding ``value`` as ``type_`` (what a device, or a test, writes)."""
    kind = AsyncModbusTcpClient.DATATYPE[type_.upper()]
    v: Any = value if type_.startswith("float") else int(value)
    return AsyncModbusTcpClient.convert_to_registers(v, kind, word_order)
