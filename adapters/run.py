"""Run every adapter a plant file declares, beside the stream:
``python -m adapters.run PLANT.yaml --broker-port 1883`` (what ``plantpulse up --adapters``
starts).  Each adapter forwards into the stream's broker as publisher ``<adapter id>``
(credentials: the broker set-up's file, ``PLANTPULSE_ADAPTER_CREDENTIALS``); its buffer,
status and dead letters go under the state directory and the lake.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from adapters.core import Adapter, Sink
from lake import Lake, Settings

__all__ = ["ADAPTERS", "build", "run_all", "main"]

log = logging.getLogger(__name__)


def _classes() -> dict[str, type[Adapter]]:
    from adapters.modbus import ModbusAdapter
    from adapters.opcua import OpcuaAdapter
    from adapters.sparkplug import SparkplugAdapter

    return {"opcua": OpcuaAdapter, "modbus": ModbusAdapter, "sparkplug": SparkplugAdapter}


ADAPTERS = ("opcua", "modbus", "sparkplug")


def build(specs: Any, home: str | Path, lake: Lake | None, sink_for: Any) -> list[Adapter]:
    """One adapter per spec; ``sink_for(spec)`` gives each its sink."""
    classes = _classes()
    return [classes[s.kind](s, home, lake, sink_for(s)) for s in specs]


async def run_all(adapters: list[Adapter], stop: asyncio.Event) -> None:
    await asyncio.gather(*(a.run(stop) for a in adapters))


def main(argv: list[str] | None = None) -> int:
    from adapters.sinks import MqttSink, credentials
    from plant import load_plant

    ap = argparse.ArgumentParser(prog="python -m adapters.run", description=__doc__)
    ap.add_argument("plant", help="the plant file whose adapters: to run")
    ap.add_argument("--broker-host", default="127.0.0.1")
    ap.add_argument("--broker-port", type=int, default=1883)
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    plant = load_plant(args.plant)
    settings = Settings.from_env()
    lake = Lake(settings.lake_uri)
    sinks: list[Sink] = []

    def sink_for(spec: Any) -> Sink:
        sink = MqttSink(
            args.broker_host,
            args.broker_port,
            f"plantpulse-adapter-{spec.id}",
            credentials(spec.id, settings.home),
        )
        sinks.append(sink)
        return sink

    adapters = build(plant.adapters, settings.home, lake, sink_for)
    if not adapters:
        log.warning("%s declares no adapters", args.plant)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_all(adapters, stop)

    try:
        asyncio.run(run())
    finally:
        for s in sinks:
            with contextlib.suppress(Exception):
                s.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
