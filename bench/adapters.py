"""Inbound protocol adapters on loopback: readings/s per adapter, reconnect time after a server
restart, and the store-and-forward buffer after an outage of the stream.

Each server runs in its own process (``python -m adapters.testing ...``: an asyncua server, a
pymodbus device, Sparkplug B edge nodes publishing to Mosquitto), the adapter in this one,
forwarding into a sink that counts what it is given (``adapters.core.CountSink``; the tests
check with the stream's own decoder that what adapters send is accepted).  So the figures are
the adapter's (protocol client, decoding, binding, wire encoding, disk buffer), with the
server in another process.

- OPC UA: 1,000 and 10,000 monitored items, every value rewritten by the server (one batched
  write) every 100 ms (1,000 items) or 500 ms (10,000): values/s into the adapter.
- Modbus TCP: 100 holding registers polled at 10 Hz: values/s and the achieved poll rate.
- Sparkplug B: 500 devices x 20 metrics (10 edge nodes) publishing DDATA at QoS 0 as fast as
  the broker takes it: metrics/s decoded by the adapter (and how many of the offered ones the
  broker dropped because the adapter fell behind).
- The adapters' own cost, without a server: OPC UA notifications and Sparkplug payloads handed
  to the adapter directly (decoding, binding, Arrow encoding, the disk buffer) - what the
  adapter could take from a server faster than the Python test servers here.
- Reconnect: the Modbus device and the OPC UA server are killed and started again on the same
  port; the time from the server listening again to the adapter's next reading.
- Outage: the stream is down for ``OUTAGE_S`` (30 s; 3 s with --quick) while Modbus reads 100
  registers at 10 Hz; the buffer's size then, and scaled to a 5-minute outage (linear: the
  buffer holds the outage's readings), against its bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adapters.core import CountSink
from adapters.modbus import ModbusAdapter
from adapters.opcua import OpcuaAdapter
from adapters.sparkplug import SparkplugAdapter
from adapters.testing import free_port
from bench.common import parser, report
from plant.schema import ModbusAdapter as ModbusSpec
from plant.schema import OpcuaAdapter as OpcuaSpec
from plant.schema import SparkplugAdapter as SparkplugSpec

NAME = "adapters"


def _server(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "adapters.testing", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if "ready" not in line:
        proc.kill()
        raise RuntimeError(f"server {args} did not start")
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _rate(adapter: Any, seconds: float, warmup: float = 2.0) -> float:
    """Readings/s into the adapter over ``seconds`` after ``warmup``."""
    deadline = time.monotonic() + 600  # 10,000 monitored items take a while to set up
    while not adapter.status.readings_in and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(warmup)
    n0, t0 = adapter.status.readings_in, time.monotonic()
    await asyncio.sleep(seconds)
    return (adapter.status.readings_in - n0) / (time.monotonic() - t0)


async def _run(adapter: Any, body: Any) -> Any:
    stop = asyncio.Event()
    task = asyncio.create_task(adapter.run(stop))
    try:
        return await body(adapter)
    finally:
        stop.set()
        await task


def _home() -> str:
    return tempfile.mkdtemp(prefix="plantpulse-bench-adapters-")


def opcua_rate(items: int, seconds: float, period_s: float) -> tuple[float, int]:
    port = free_port()
    proc = _server("opcua", "--port", str(port), "--items", str(items), "--period", str(period_s))
    try:
        spec = OpcuaSpec.model_validate(
            {
                "id": f"ua{items}",
                "kind": "opcua",
                "endpoint": f"opc.tcp://127.0.0.1:{port}/plantpulse/",
                "sampling_ms": 0,
                "publishing_ms": 100,
                "backfill": False,
                "queue_size": 1,
                "timeout_s": 60,
                "bindings": [
                    {
                        "node": f"ns=2;s=pump-{i // 100:03d}.s{i % 100:03d}",
                        "asset": f"pump-{i // 100:03d}",
                        "sensor": f"s{i % 100:03d}",
                    }
                    for i in range(items)
                ],
            }
        )
        sink = CountSink()
        adapter = OpcuaAdapter(spec, _home(), None, sink)
        rate = asyncio.run(_run(adapter, lambda a: _rate(a, seconds)))
        return rate, len(adapter.by_handle)
    finally:
        _stop(proc)


def opcua_decode_rate(items: int = 10_000, rounds: int = 5) -> float:
    """Values/s the OPC UA adapter takes from publish responses (notifications as asyncua
    decodes them: ``ua.MonitoredItemNotification``), without a server: its own cost."""
    from datetime import UTC, datetime

    from asyncua import ua

    spec = OpcuaSpec.model_validate(
        {
            "id": "ua-decode",
            "kind": "opcua",
            "endpoint": "opc.tcp://127.0.0.1:1/",
            "bindings": [
                {
                    "node": f"ns=2;s=pump-{i // 100:03d}.s{i % 100:03d}",
                    "asset": f"pump-{i // 100:03d}",
                    "sensor": f"s{i % 100:03d}",
                }
                for i in range(items)
            ],
        }
    )
    adapter = OpcuaAdapter(spec, _home(), None, CountSink())
    adapter.by_handle = {h: b for h, b in enumerate(spec.bindings)}
    batches = []
    for r in range(rounds):
        now = datetime.now(UTC)
        batches.append(
            [
                ua.MonitoredItemNotification(
                    ClientHandle=h,
                    Value=ua.DataValue(
                        ua.Variant(float(r + h), ua.VariantType.Double),
                        SourceTimestamp=now,
                        ServerTimestamp=now,
                    ),
                )
                for h in range(items)
            ]
        )
    t0 = time.perf_counter()
    for items_ in batches:
        adapter.on_items(items_)
        adapter.flush()
    return items * rounds / (time.perf_counter() - t0)


def sparkplug_decode_rate(devices: int = 500, metrics: int = 20, rounds: int = 4) -> float:
    """Metrics/s the Sparkplug adapter takes from DDATA payloads handed to it directly (births
    first, data by alias with per-metric timestamps), without the broker: its own cost."""
    from adapters.proto.sparkplug_b_pb2 import Payload

    spec = SparkplugSpec.model_validate(
        {
            "id": "spb-decode",
            "kind": "sparkplug",
            "endpoint": "mqtt://127.0.0.1:1",
            "group": "g",
            "bindings": [
                {"device": "*", "metric": f"m{m:02d}", "asset": "{device}", "sensor": f"m{m:02d}"}
                for m in range(metrics)
            ],
        }
    )
    adapter = SparkplugAdapter(spec, _home(), None, CountSink())
    seq = 0
    adapter.on_message("spBv1.0/g/NBIRTH/n", Payload(seq=seq, timestamp=1).SerializeToString())
    for d in range(devices):
        seq = (seq + 1) % 256
        p = Payload(seq=seq, timestamp=1)
        for m in range(metrics):
            p.metrics.add(name=f"m{m:02d}", alias=m + 1, datatype=10, double_value=0.0)
        adapter.on_message(f"spBv1.0/g/DBIRTH/n/pump-{d:03d}", p.SerializeToString())
    messages = []
    ts = int(time.time() * 1000)
    for r in range(rounds):
        for d in range(devices):
            seq = (seq + 1) % 256
            p = Payload(seq=seq, timestamp=ts + r)
            for m in range(metrics):
                p.metrics.add(alias=m + 1, timestamp=ts + r, datatype=10, double_value=float(m))
            messages.append((f"spBv1.0/g/DDATA/n/pump-{d:03d}", p.SerializeToString()))
    t0 = time.perf_counter()
    for topic, payload in messages:
        adapter.on_message(topic, payload)
    adapter.flush()
    return len(messages) * metrics / (time.perf_counter() - t0)


def modbus_spec(port: int, registers: int, **kw: Any) -> ModbusSpec:
    return ModbusSpec.model_validate(
        {
            "id": kw.pop("id", "plc"),
            "kind": "modbus",
            "endpoint": f"tcp://127.0.0.1:{port}",
            "poll_ms": 100,
            "reconnect_max_s": 1.0,
            **kw,
            "bindings": [
                {"register": r, "asset": f"pump-{r // 20:03d}", "sensor": f"r{r % 20:02d}"}
                for r in range(registers)
            ],
        }
    )


def modbus_rate(seconds: float) -> tuple[float, float]:
    port = free_port()
    proc = _server("modbus", "--port", str(port), "--items", "100")
    try:
        adapter = ModbusAdapter(modbus_spec(port, 100), _home(), None, CountSink())

        async def body(a: ModbusAdapter) -> tuple[float, float]:
            rate = await _rate(a, seconds)
            p0, t0 = a.polls, time.monotonic()
            await asyncio.sleep(min(seconds, 3.0))
            return rate, (a.polls - p0) / (time.monotonic() - t0)

        return asyncio.run(_run(adapter, body))
    finally:
        _stop(proc)


def _broker() -> tuple[subprocess.Popen[bytes], int, dict[str, str]]:
    from plantpulse_cli.broker import ensure_mosquitto, wait_for_port, write_config

    directory = Path(_home()) / "mosquitto"
    port = free_port()
    conf = write_config(
        directory,
        port,
        {},
        acl={"host": ["topic readwrite spBv1.0/#"], "edge": ["topic readwrite spBv1.0/#"]},
        limits={"max_queued_messages": 1_000_000, "max_queued_bytes": 1024 * 1024 * 1024},
    )
    proc = subprocess.Popen(
        [ensure_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port)
    return proc, port, json.loads((directory / "credentials.json").read_text())


def sparkplug_rate(devices: int, metrics: int, seconds: float) -> dict[str, float]:
    broker, port, users = _broker()
    os.environ["PLANTPULSE_BENCHHOST_USERNAME"] = "host"
    os.environ["PLANTPULSE_BENCHHOST_PASSWORD"] = users["host"]
    try:
        spec = SparkplugSpec.model_validate(
            {
                "id": "spb",
                "kind": "sparkplug",
                "endpoint": f"mqtt://127.0.0.1:{port}",
                "credentials": "benchhost",
                "group": "bench",
                "flush_ms": 500,
                "bindings": [
                    {
                        "device": "*",
                        "metric": f"m{m:02d}",
                        "asset": "{device}",
                        "sensor": f"m{m:02d}",
                    }
                    for m in range(metrics)
                ],
            }
        )
        adapter = SparkplugAdapter(spec, _home(), None, CountSink())

        async def body(a: SparkplugAdapter) -> dict[str, float]:
            while not a.status.connected:
                await asyncio.sleep(0.05)
            pub = await asyncio.to_thread(
                _server,
                "sparkplug",
                "--port",
                str(port),
                "--items",
                str(devices),
                "--metrics",
                str(metrics),
                "--seconds",
                str(seconds + 3),
                "--user",
                "edge",
                "--password",
                users["edge"],
            )
            rate = await _rate(a, seconds, warmup=1.0)
            out = await asyncio.to_thread(pub.communicate, timeout=120)
            sent = int(out[0].split()[-1])
            await asyncio.sleep(1.0)
            return {
                "metrics_per_s": rate,
                "sent": sent,
                "received": a.metrics,
                "gaps": a.dead.by_reason.get("sequence_gap", 0),
            }

        return asyncio.run(_run(adapter, body))
    finally:
        broker.terminate()
        broker.wait(10)


async def _first_reading_after(adapter: Any, n0: int, t_ready: float) -> float:
    while adapter.status.readings_in == n0:
        await asyncio.sleep(0.01)
        if time.monotonic() - t_ready > 60:
            return float("inf")
    return time.monotonic() - t_ready


def reconnect_modbus() -> float:
    port = free_port()
    proc = _server("modbus", "--port", str(port), "--items", "10")
    adapter = ModbusAdapter(modbus_spec(port, 10, reconnect_max_s=5.0), _home(), None, CountSink())

    async def body(a: ModbusAdapter) -> float:
        nonlocal proc
        await _rate(a, 0.5, warmup=0.5)
        _stop(proc)
        await asyncio.sleep(3.0)  # down for a while: the adapter backs off
        proc = await asyncio.to_thread(_server, "modbus", "--port", str(port), "--items", "10")
        t_ready, n0 = time.monotonic(), a.status.readings_in
        return await _first_reading_after(a, n0, t_ready)

    try:
        return asyncio.run(_run(adapter, body))
    finally:
        _stop(proc)


def reconnect_opcua() -> float:
    port = free_port()
    args = ("opcua", "--port", str(port), "--items", "100", "--period", "0.1")
    proc = _server(*args)
    spec = OpcuaSpec.model_validate(
        {
            "id": "ua-restart",
            "kind": "opcua",
            "endpoint": f"opc.tcp://127.0.0.1:{port}/plantpulse/",
            "publishing_ms": 100,
            "sampling_ms": 0,
            "backfill": False,
            "reconnect_max_s": 5.0,
            "bindings": [
                {"node": f"ns=2;s=pump-000.s{i:03d}", "asset": "pump-000", "sensor": f"s{i:03d}"}
                for i in range(100)
            ],
        }
    )
    adapter = OpcuaAdapter(spec, _home(), None, CountSink())

    async def body(a: OpcuaAdapter) -> float:
        nonlocal proc
        await _rate(a, 0.5, warmup=0.5)
        _stop(proc)
        await asyncio.sleep(3.0)
        proc = await asyncio.to_thread(_server, *args)
        t_ready, n0 = time.monotonic(), a.status.readings_in
        return await _first_reading_after(a, n0, t_ready)

    try:
        return asyncio.run(_run(adapter, body))
    finally:
        _stop(proc)


def outage(seconds: float) -> dict[str, float]:
    port = free_port()
    proc = _server("modbus", "--port", str(port), "--items", "100")
    sink = CountSink()
    adapter = ModbusAdapter(modbus_spec(port, 100, buffer_mb=64), _home(), None, sink)

    async def body(a: ModbusAdapter) -> dict[str, float]:
        await _rate(a, 0.5, warmup=0.5)
        sink.available = False
        n0 = a.status.readings_in
        await asyncio.sleep(seconds)
        a.write_status()
        held = {
            "readings": a.status.readings_in - n0,
            "bytes": a.buffer.bytes,
            "file_bytes": a.buffer.file_bytes(),
            "overflow": a.buffer.overflow_readings,
        }
        sink.available = True
        t0 = time.monotonic()
        while a.buffer.messages and time.monotonic() - t0 < 120:
            await asyncio.sleep(0.05)
        held["drain_s"] = time.monotonic() - t0
        return held

    try:
        held = asyncio.run(_run(adapter, body))
    finally:
        _stop(proc)
    per_s = held["bytes"] / seconds
    return {
        "outage_s": seconds,
        "buffer_bytes": held["bytes"],
        "buffer_file_bytes": held["file_bytes"],
        "readings_held": held["readings"],
        "buffer_mb_5min": per_s * 300 / 2**20,
        "bound_mb": 64.0,
        "overflow_readings": held["overflow"],
        "drain_s": held["drain_s"],
    }


def main(argv: list[str] | None = None) -> None:
    args = parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    quick = args.quick
    seconds = 2.0 if quick else 8.0
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {uptime}")
    metrics: dict[str, float] = {}
    # the server rewrites every value each period: 1,000 items every 0.1 s, 10,000 every 0.5 s
    # (an asyncua server in Python cannot rewrite 10,000 values every 0.1 s here)
    for items, period in ((200, 0.1),) if quick else ((1_000, 0.1), (10_000, 0.5)):
        rate, monitored = opcua_rate(items, seconds, period)
        metrics[f"opcua_{items}_items_offered_per_s"] = items / period
        metrics[f"opcua_{items}_items_values_per_s"] = rate
        metrics[f"opcua_{items}_items_monitored"] = float(monitored)
    metrics["opcua_adapter_decode_values_per_s"] = opcua_decode_rate(1_000 if quick else 10_000)
    rate, polls = modbus_rate(seconds)
    metrics["modbus_100_registers_values_per_s"] = rate
    metrics["modbus_polls_per_s"] = polls
    spb = sparkplug_rate(50 if quick else 500, 20, seconds)
    metrics["sparkplug_metrics_per_s"] = spb["metrics_per_s"]
    metrics["sparkplug_adapter_decode_metrics_per_s"] = sparkplug_decode_rate(50 if quick else 500)
    metrics["sparkplug_metrics_offered_per_s"] = spb["sent"] / (seconds + 3)
    # QoS 0 from the edge: what the broker dropped while the adapter's socket was backed up
    metrics["sparkplug_metrics_not_received_qos0"] = float(max(0, spb["sent"] - spb["received"]))
    metrics["reconnect_modbus_s"] = reconnect_modbus()
    metrics["reconnect_opcua_s"] = reconnect_opcua()
    out = outage(3.0 if quick else 30.0)
    metrics["outage_s"] = out["outage_s"]
    metrics["buffer_bytes_after_outage"] = out["buffer_bytes"]
    metrics["buffer_mb_after_5min_outage_scaled"] = out["buffer_mb_5min"]
    metrics["buffer_bound_mb"] = out["bound_mb"]
    metrics["buffer_overflow_readings"] = out["overflow_readings"]
    metrics["buffer_drain_s"] = out["drain_s"]
    big = "opcua_200_items_values_per_s" if quick else "opcua_10000_items_values_per_s"
    targets = {
        big: ">= 10000",
        "sparkplug_metrics_per_s": ">= 100000",
        "reconnect_modbus_s": "<= 10",
        "reconnect_opcua_s": "<= 10",
        "buffer_mb_after_5min_outage_scaled": "<= 64",
    }
    report(
        NAME,
        metrics,
        targets,
        quick=quick,
        out=args.out,
        extra={"uptime": uptime, "sparkplug": spb, "outage": out},
    )


if __name__ == "__main__":
    main()
