"""Run every adapter a plant file declares, beside the stream:
``python -m adapters.run PLANT.yaml --broker-port 1883 [--only ID]`` (what ``plantpulse up
--adapters`` starts: one process per adapter, so each has a core's worth of Python to itself and
a crash of one leaves the others running).  Each adapter forwards into the stream's broker as publisher ``<adapter id>``
(credentials: the broker set-up's file, ``PLANTPULSE_ADAPTER_CREDENTIALS``), over TLS with
``--broker-ca`` (an adapter on another machine than the broker); its buffer, status and dead
letters go under the state directory and the lake.  Paths in the plant file (``trust``,
``tls_ca``) are relative to the file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
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


def resolve_paths(spec: Any, plant_dir: Path) -> Any:
    """``spec`` with the files it names (OPC UA ``trust``, Sparkplug ``tls_ca``) relative to
    the plant file's folder ``plant_dir``."""

    def at(p: str) -> str:
        path = Path(p).expanduser()
        return str(path if path.is_absolute() else plant_dir / path)

    update: dict[str, Any] = {}
    if getattr(spec, "trust", None):
        update["trust"] = [at(p) for p in spec.trust]
    if getattr(spec, "tls_ca", None):
        update["tls_ca"] = at(spec.tls_ca)
    return spec.model_copy(update=update) if update else spec


async def run_all(adapters: list[Adapter], stop: asyncio.Event) -> None:
    await asyncio.gather(*(a.run(stop) for a in adapters))


def main(argv: list[str] | None = None) -> int:
    from adapters.sinks import MqttSink, broker_credentials
    from plant import load_plant

    ap = argparse.ArgumentParser(prog="python -m adapters.run", description=__doc__)
    ap.add_argument("plant", help="the plant file whose adapters: to run")
    ap.add_argument("--broker-host", default="127.0.0.1")
    ap.add_argument("--broker-port", type=int, default=1883)
    ap.add_argument(
        "--broker-ca", default=None, help="TLS to the broker, verified against this CA (PEM)"
    )
    ap.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="ID",
        help="run only this adapter (repeatable); plantpulse up runs each in its own process",
    )
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
            broker_credentials(spec.id, settings.home),
            tls_ca=args.broker_ca,
        )
        sinks.append(sink)
        return sink

    chosen = [s for s in plant.adapters if args.only is None or s.id in args.only]
    missing = set(args.only or ()) - {s.id for s in chosen}
    if missing:
        print(f"error: {args.plant} declares no adapter {sorted(missing)}", file=sys.stderr)
        return 2
    specs = [resolve_paths(s, Path(args.plant).resolve().parent) for s in chosen]
    adapters = build(specs, settings.home, lake, sink_for)
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
