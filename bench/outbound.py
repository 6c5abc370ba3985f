"""Outbound latency: a reading published over MQTT that opens an alert, to that alert visible
on the outbound OPC UA server.

Everything real, on loopback: Mosquitto as ``plantpulse up --mqtt`` configures it, the stream as
``plantpulse up`` runs it (``bytewax_flows.mqtt:mqtt_flow``, its Delta sink committing about
every second), ``python -m outbound`` on the same lake with an OPC UA server, and here a
publisher and an OPC UA client subscribed (data change, 20 ms publishing interval) to each
asset's ``AlertId`` node.  Each asset has one pressure sensor whose contract makes every
reading one 30 s process window; after the detector's warm-up (``PLANTPULSE_PROCESS_WARMUP``
windows, noisy) the assets cycle through 3 high readings (the third opens an alert) and 11 normal
steady ones (the alert closes), at most 5 readings per asset per second (an alert that opened and
closed within one commit of the stream would show on the server only as its closed state: the
server shows each asset's current state).  Latency of an alert = when the client was notified of its id minus
when the reading that opened it was published, over the alerts the stream opened (in the lake).  Readings are published at ``--rate`` per
second in all, spread over the assets.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import parser, report

ROOT = Path(__file__).resolve().parents[1]
SENSOR = "discharge_pressure"
HOT_READINGS, CALM_READINGS = 3, 11
NORMAL, HOT = 20.0, 30.0

PLANT = """\
plant: bench-outbound
sites:
  - id: bench-hall
    assets:
{assets}
outbound:
  poll_s: 0.1
  opcua: {{endpoint: "opc.tcp://127.0.0.1:{port}/plantpulse"}}
"""
ASSET = (
    "      - {{id: {asset}, sensors: [{{id: discharge_pressure, kind: pressure, unit: bar, "
    "range: [0.0, 40.0], rate_hz: 1.0, window_every_s: 30.0}}]}}"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class AlertWatch:
    """An asyncua client on its own thread, subscribed to every asset's ``AlertId``: the wall
    time each new alert id became visible."""

    def __init__(self, endpoint: str, plant: str, assets: list[str]):
        self.endpoint, self.plant, self.assets = endpoint, plant, assets
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True)

    def datachange_notification(self, node, val, data) -> None:
        if val and val not in self.seen:
            self.seen[val] = time.time()

    async def _watch(self) -> None:
        from asyncua import Client, ua

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        deadline = time.monotonic() + 120
        while True:  # the outbound process is starting
            try:
                client = Client(self.endpoint, timeout=10)
                await client.connect()
                break
            except (TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        try:
            ns = await client.get_namespace_index(f"urn:plantpulse:{self.plant}")
            sub = await client.create_subscription(20, self)
            await sub.subscribe_data_change(
                [client.get_node(ua.NodeId(f"{a}.AlertId", ns)) for a in self.assets],
                sampling_interval=0,
            )
            self.ready.set()
            await self._stop.wait()
        finally:
            await client.disconnect()

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(150):
            raise RuntimeError(f"no OPC UA subscription on {self.endpoint}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def _wait_for_readings(lake_dir: Path, n: int, timeout_s: float = 180.0) -> None:
    from lake import Lake

    lake = Lake(lake_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if lake.exists("readings") and lake.count("readings") >= n:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the stream did not write {n} readings within {timeout_s:g} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(n_alerts: int, n_assets: int, rate: float, warmup: int) -> dict:
    from bytewax_flows.mqtt import Publisher, topic_for
    from bytewax_flows.payloads import encode_scalars
    from plantpulse_cli.broker import ensure_mosquitto, wait_for_port, write_config

    home = Path(tempfile.mkdtemp(prefix="bench-outbound-"))
    assets = [f"pump-{i + 1:02d}" for i in range(n_assets)]
    mqtt_port, opc_port = _free_port(), _free_port()
    plant_file = home / "plant.yaml"
    plant_file.write_text(
        PLANT.format(assets="\n".join(ASSET.format(asset=a) for a in assets), port=opc_port)
    )
    conf = write_config(home / "mosquitto", mqtt_port, {"bench": assets})
    env = {
        **os.environ,
        "PLANTPULSE_HOME": str(home),
        "PLANTPULSE_LAKE": str(home / "lake"),
        "PLANTPULSE_PLANT": str(plant_file),
        "PLANTPULSE_PROCESS_WARMUP": str(warmup),
        "PLANTPULSE_MQTT_CREDENTIALS": str(home / "mosquitto" / "credentials.json"),
        "PYTHONUNBUFFERED": "1",
    }
    os.environ["PLANTPULSE_MQTT_CREDENTIALS"] = env["PLANTPULSE_MQTT_CREDENTIALS"]
    logs = {
        name: open(home / f"{name}.log", "wb")  # noqa: SIM115
        for name in (
            "mosquitto",
            "stream",  # noqa: SIM115
            "outbound",
        )
    }
    procs = [
        subprocess.Popen(
            [ensure_mosquitto(), "-c", str(conf)],
            stdout=logs["mosquitto"],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ]
    wait_for_port(mqtt_port)
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bytewax.run",
                f"bytewax_flows.mqtt:mqtt_flow('127.0.0.1', {mqtt_port})",
                "-s",
                "2",
            ],
            cwd=ROOT,
            env=env,
            stdout=logs["stream"],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "outbound"],
            cwd=ROOT,
            env=env,
            stdout=logs["outbound"],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    watch = AlertWatch(f"opc.tcp://127.0.0.1:{opc_port}/plantpulse", "bench-outbound", assets)
    published: dict[str, float] = {}
    try:
        watch.start()
        time.sleep(3.0)  # the stream's MQTT client subscribes (its session then keeps the rest)
        pub = Publisher("bench", "127.0.0.1", mqtt_port)
        rng = np.random.default_rng(0)
        t0 = (int(time.time()) // 30 - 2 * 24 * 120) * 30 * 1_000_000  # two days ago, on 30 s
        cycle = HOT_READINGS + CALM_READINGS
        per_asset = -(-n_alerts // n_assets)
        n_readings = warmup + 2 + per_asset * cycle
        interval = 1.0 / rate
        next_at = time.monotonic()
        for k in range(n_readings):
            if k == warmup + 2:  # the stream has caught up with the warm-up before alerts
                _wait_for_readings(home / "lake", (warmup + 2) * n_assets)
                next_at = time.monotonic()
            phase = (k - warmup - 2) % cycle if k >= warmup + 2 else cycle - 1
            hot = k >= warmup + 2 and phase < HOT_READINGS
            ts = t0 + k * 30_000_000 + 29_000_000  # closes its own 30 s window
            for asset in assets:
                # calm after the warm-up means calm: every alert closes in its calm phase
                noise = 0.2 if k < warmup + 2 else 0.02
                value = (HOT if hot else NORMAL) + float(rng.normal(0, noise))
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
                if hot and phase == HOT_READINGS - 1:  # this reading opens an alert
                    published[f"{asset}-{ts}"] = time.time()
                info = pub.publish(
                    topic_for(asset, SENSOR), encode_scalars(asset, SENSOR, [ts], [value])
                )
                info.wait_for_publish(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(published) <= set(watch.seen):
            time.sleep(0.2)
        pub.close()
    finally:
        watch.stop()
        for proc in reversed(procs):
            _stop(proc)
        for f in logs.values():
            f.close()
    from lake import Lake

    opened = set(
        Lake(home / "lake").read_arrow("alerts", columns=["alert_id"])["alert_id"].to_pylist()
    )
    timed = {a: t for a, t in published.items() if a in opened}  # what the stream opened
    lat = np.array([watch.seen[a] - t for a, t in timed.items() if a in watch.seen])
    missing = sorted(set(timed) - set(watch.seen))
    extra = sorted(set(watch.seen) - set(timed))
    return {
        "latency": lat,
        "missing": missing,
        "extra": extra,
        "home": str(home),
        "expected": len(timed),
        "planned": len(published),
        "not_opened": sorted(set(published) - opened),
    }


def main(argv: list[str] | None = None) -> dict:
    p = parser("outbound", __doc__.splitlines()[0])
    p.add_argument("--alerts", type=int, default=24, help="alerts to open (>= 20)")
    p.add_argument("--assets", type=int, default=4)
    p.add_argument("--rate", type=float, default=20.0, help="readings published per second")
    args = p.parse_args(argv)
    n_alerts = 2 if args.quick else args.alerts
    warmup = 10 if args.quick else 30
    load_before = _uptime()
    n_assets = 1 if args.quick else args.assets
    rate = min(args.rate, 5.0 * n_assets)  # an asset's alert lasts longer than a commit
    r = run(n_alerts, n_assets, rate, warmup)
    lat = r["latency"]
    load_after = _uptime()
    metrics = {
        "alerts_planned": float(r["planned"]),
        "alerts_opened": float(r["expected"]),
        "alerts_seen_on_opcua": float(lat.size),
        "alerts_missing": float(len(r["missing"])),
        "reading_to_opcua_p50_s": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "reading_to_opcua_p99_s": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "reading_to_opcua_max_s": float(lat.max()) if lat.size else float("nan"),
    }
    print(f"uptime before: {load_before}\nuptime after:  {load_after}")
    return report(
        "outbound",
        metrics,
        {
            "reading_to_opcua_p99_s": "<= 2",
            "alerts_missing": "<= 0",
            "alerts_opened": ">= 2" if args.quick else ">= 20",
        },
        quick=args.quick,
        out=args.out,
        extra={
            "uptime_before": load_before,
            "uptime_after": load_after,
            "latencies_s": json.loads(json.dumps(lat.round(4).tolist())),
            "missing": r["missing"],
            "unexpected": r["extra"],
            "state_dir": r["home"],
            "planned_but_not_opened_by_the_stream": r["not_opened"],
            "assets": n_assets,
            "rate_per_s": rate,
            "process_warmup_windows": warmup,
        },
    )


if __name__ == "__main__":
    main()
