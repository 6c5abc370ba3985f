"""Outbound latency and security: a value change on the plant's OPC UA server that opens an
alert, to that alert's state on the outbound OPC UA server; and what the listeners accept of
anonymous sessions, wrong passwords, unsecured channels and writes, measured by trying.

Everything real, on loopback, each in its own process as ``plantpulse up --adapters`` runs it:
the plant's OPC UA server (here: an asyncua server in this process, secured, that the bench
writes), the OPC UA adapter (``python -m adapters.run``: a SignAndEncrypt session with a login,
the server's certificate trusted explicitly) forwarding into Mosquitto as the set-up writes it
(a TLS listener beside the loopback one), the stream (``bytewax_flows.mqtt:mqtt_flow``, its
Delta sink committing about every second), ``python -m outbound`` with its secured OPC UA
server, and here an OPC UA client (SignAndEncrypt, the set-up's ``scada`` user) subscribed to
each asset's ``AlertId`` (data change, 20 ms publishing interval).

Each asset has one pressure sensor whose contract makes every reading one 30 s process window;
the bench writes the values with source timestamps 30 s apart (event time), so an alert opens
within seconds of wall time.  After the detector's warm-up (``PLANTPULSE_PROCESS_WARMUP``
windows, noisy) the assets cycle through 3 high values (the third opens an alert) and 11 normal
steady ones (it closes), at most 5 values per asset per second.  Latency of an alert = when the
client was notified of its id minus when the value that opened it was written on the source
server, over the alerts the stream opened (in the lake).

Security, each a real attempt: anonymous sessions on every endpoint mode and on a channel
without security, writes to every variable of an asset anonymously and as a logged-in user, a
wrong password, an unknown user; on the broker, anonymous and wrong-password logins on both
listeners.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import free_ports, parser, report

ROOT = Path(__file__).resolve().parents[1]
SENSOR = "discharge_pressure"
HOT_READINGS, CALM_READINGS = 3, 11
NORMAL, HOT = 20.0, 30.0
SOURCE_LOGIN = ("plant-historian", "bench-password")

PLANT = """\
plant: bench-outbound
sites:
  - id: bench-hall
    assets:
{assets}
adapters:
  - id: scada
    kind: opcua
    endpoint: {source}
    credentials: source
    sampling_ms: 0
    publishing_ms: 50
    flush_ms: 50
    queue_size: 50
    bindings:
{bindings}
outbound:
  poll_s: 0.1
  opcua: {{endpoint: "opc.tcp://127.0.0.1:{port}/plantpulse"}}
"""
ASSET = (
    "      - {{id: {asset}, sensors: [{{id: discharge_pressure, kind: pressure, unit: bar, "
    "range: [0.0, 40.0], rate_hz: 1.0, window_every_s: 30.0}}]}}"
)
BINDING = '      - {{node: "ns=2;s={asset}.discharge_pressure", asset: {asset}, sensor: {sensor}}}'


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class SourceServer(threading.Thread):
    """The plant's OPC UA server (``adapters.testing.OpcuaTestServer``, secured, a login) on
    its own event loop; ``write`` changes a value from any thread and returns when it is
    written."""

    def __init__(self, assets: list[str], cert_dir: Path):
        super().__init__(daemon=True)
        from adapters.testing import OpcuaTestServer

        self.server = OpcuaTestServer(
            {a: [SENSOR] for a in assets},
            history=False,
            users={SOURCE_LOGIN[0]: SOURCE_LOGIN[1]},
            cert_dir=cert_dir,
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started, self.done = threading.Event(), threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.start()
        self.started.set()
        while not self.done.is_set():
            await asyncio.sleep(0.1)
        await self.server.stop()

    def write(self, asset: str, value: float, ts_us: int) -> None:
        from datetime import UTC, datetime

        assert self.loop is not None
        ts = datetime.fromtimestamp(ts_us / 1e6, UTC)
        future = asyncio.run_coroutine_threadsafe(
            self.server.write({f"ns=2;s={asset}.{SENSOR}": value}, ts), self.loop
        )
        future.result(10)

    def stop(self) -> None:
        self.done.set()
        self.join(20)


class AlertWatch:
    """An OPC UA client on its own thread, subscribed to every asset's ``AlertId`` over a
    SignAndEncrypt session as the set-up's ``scada`` user: the wall time each new alert id
    became visible."""

    def __init__(self, endpoint: str, plant: str, assets: list[str], home: Path):
        self.endpoint, self.plant, self.assets, self.home = endpoint, plant, assets, home
        self.seen: dict[str, float] = {}
        self.ns = 0  # the outbound namespace's index, once subscribed
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._watch()), daemon=True)

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        if val and val not in self.seen:
            self.seen[val] = time.time()

    async def _watch(self) -> None:
        from asyncua import ua

        from adapters.opcua import secure_client
        from adapters.security import opcua_dir, trust_certificate

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        creds, cert = opcua_dir(self.home) / "credentials.json", opcua_dir(self.home) / "server"
        deadline = time.monotonic() + 180
        while True:  # the outbound process is starting (it makes its certificate and users)
            try:
                trust_certificate(self.home, (cert / "cert.der").read_bytes(), "outbound")
                auth = ("scada", json.loads(creds.read_text())["scada"])
                client = await secure_client(self.endpoint, self.home, auth=auth)
                await client.connect()
                break
            except (TimeoutError, OSError, ValueError, KeyError, ua.UaError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        try:
            self.ns = ns = await client.get_namespace_index(f"urn:plantpulse:{self.plant}")
            sub = await client.create_subscription(20, self)
            await sub.subscribe_data_change(
                [
                    client.get_node(ua.NodeId(ua.String(f"{a}.AlertId"), ua.Int16(ns)))
                    for a in self.assets
                ],
                sampling_interval=ua.Double(0),
            )
            self.ready.set()
            await self._stop.wait()
        finally:
            await client.disconnect()

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(200):
            raise RuntimeError(f"no OPC UA subscription on {self.endpoint}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def _wait_for_readings(lake_dir: Path, n: int, timeout_s: float = 240.0) -> None:
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


def security_probes(endpoint: str, home: Path, node_ids: list[str], mqtt: dict) -> dict:
    """Every attempt a client on the network could make; counts of what was accepted."""
    from adapters.security import opcua_dir
    from adapters.testing import mqtt_login_attempt
    from outbound import probes

    login = ("scada", json.loads((opcua_dir(home) / "credentials.json").read_text())["scada"])

    async def opcua() -> dict[str, list[probes.Attempt]]:
        return {
            "anonymous_sessions": [
                await probes.session(endpoint, home, security="SignAndEncrypt"),
                await probes.session(endpoint, home, security="Sign"),
                await probes.session(endpoint, home, security="None"),
                await probes.unsecured_session(endpoint),
            ],
            "anonymous_writes": await probes.writes(endpoint, home, node_ids, auth=None),
            "user_writes": await probes.writes(endpoint, home, node_ids, auth=login),
            "wrong_passwords": [
                await probes.session(endpoint, home, auth=(login[0], "guess")),
                await probes.session(endpoint, home, auth=("admin", login[1])),
            ],
            "unsecured_logged_in": [await probes.unsecured_session(endpoint, login)],
            "user_sessions": [await probes.session(endpoint, home, auth=login)],
        }

    got = asyncio.run(opcua())
    port, tls_port, ca, user = mqtt["port"], mqtt["tls_port"], mqtt["ca"], mqtt["user"]
    broker = {
        "anonymous": [mqtt_login_attempt(port), mqtt_login_attempt(tls_port, tls_ca=ca)],
        "wrong_password": [
            mqtt_login_attempt(port, (user, "guess")),
            mqtt_login_attempt(tls_port, (user, "guess"), tls_ca=ca),
        ],
        "tls_login": [mqtt_login_attempt(tls_port, (user, mqtt["password"]), tls_ca=ca)],
    }
    out: dict[str, Any] = {k: [a.__dict__ for a in v] for k, v in got.items()}
    out["mqtt"] = broker
    out["counts"] = {
        "anonymous_opcua_sessions_tried": len(got["anonymous_sessions"]),
        "anonymous_opcua_sessions_accepted": sum(a.accepted for a in got["anonymous_sessions"]),
        "anonymous_opcua_writes_tried": len(got["anonymous_writes"]),
        "anonymous_opcua_writes_accepted": sum(a.accepted for a in got["anonymous_writes"]),
        "opcua_user_writes_tried": len(got["user_writes"]),
        "opcua_user_writes_accepted": sum(a.accepted for a in got["user_writes"]),
        "opcua_wrong_password_sessions_accepted": sum(a.accepted for a in got["wrong_passwords"]),
        "opcua_unsecured_channel_sessions_accepted": sum(
            a.accepted for a in got["unsecured_logged_in"]
        ),
        "opcua_user_sessions_accepted": sum(a.accepted for a in got["user_sessions"]),
        "mqtt_anonymous_tried": len(broker["anonymous"]),
        "mqtt_anonymous_accepted": sum(r == "accepted" for r in broker["anonymous"]),
        "mqtt_wrong_password_accepted": sum(r == "accepted" for r in broker["wrong_password"]),
        "mqtt_tls_logins_accepted": sum(r == "accepted" for r in broker["tls_login"]),
    }
    return out


def run(n_alerts: int, n_assets: int, rate: float, warmup: int) -> dict:
    from adapters.security import trust_certificate
    from lake import Lake
    from plantpulse_cli.broker import ensure_mosquitto, wait_for_port, write_config

    home = Path(tempfile.mkdtemp(prefix="bench-outbound-"))
    assets = [f"pump-{i + 1:02d}" for i in range(n_assets)]
    mqtt_port, tls_port, opc_port = free_ports(3)
    source = SourceServer(assets, home / "source-server")
    source.start()
    if not source.started.wait(120):
        raise RuntimeError("the source OPC UA server did not start")
    trust_certificate(home, source.server.certificate, "source")
    plant_file = home / "plant.yaml"
    plant_file.write_text(
        PLANT.format(
            assets="\n".join(ASSET.format(asset=a) for a in assets),
            bindings="\n".join(BINDING.format(asset=a, sensor=SENSOR) for a in assets),
            source=source.server.url,
            port=opc_port,
        )
    )
    conf = write_config(
        home / "mosquitto",
        mqtt_port,
        {},
        acl={"scada": ["topic write plantpulse/+/scada"]},
        tls=("127.0.0.1", tls_port),
    )
    users = json.loads((home / "mosquitto" / "credentials.json").read_text())
    env = {
        **os.environ,
        "PLANTPULSE_HOME": str(home),
        "PLANTPULSE_LAKE": str(home / "lake"),
        "PLANTPULSE_PLANT": str(plant_file),
        "PLANTPULSE_PROCESS_WARMUP": str(warmup),
        "PLANTPULSE_MQTT_CREDENTIALS": str(home / "mosquitto" / "credentials.json"),
        "PLANTPULSE_ADAPTER_CREDENTIALS": str(home / "mosquitto" / "credentials.json"),
        "PLANTPULSE_SOURCE_USERNAME": SOURCE_LOGIN[0],
        "PLANTPULSE_SOURCE_PASSWORD": SOURCE_LOGIN[1],
        "PYTHONUNBUFFERED": "1",
    }
    names = ("mosquitto", "stream", "adapter", "outbound")
    logs = {n: open(home / f"{n}.log", "wb") for n in names}  # noqa: SIM115 (the children's)
    py = sys.executable

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=logs[name],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    procs = [start("mosquitto", [ensure_mosquitto(), "-c", str(conf)])]
    wait_for_port(mqtt_port)
    flow = f"bytewax_flows.mqtt:mqtt_flow('127.0.0.1', {mqtt_port})"
    procs.append(start("stream", [py, "-m", "bytewax.run", flow, "-s", "2"]))
    procs.append(start("outbound", [py, "-m", "outbound"]))
    watch = AlertWatch(f"opc.tcp://127.0.0.1:{opc_port}/plantpulse", "bench-outbound", assets, home)
    written: dict[str, float] = {}
    probes_out: dict[str, Any] = {}
    load_before = load()
    try:
        watch.start()
        from plantpulse_cli.broker import wait_for_subscription

        # the stream subscribes before the adapter starts (as plantpulse up orders them)
        wait_for_subscription(home / "mosquitto.log", "$share/plantpulse/plantpulse/#", 180)
        rng = np.random.default_rng(0)
        t0 = (int(time.time()) // 30 - 2 * 24 * 120) * 30 * 1_000_000  # two days ago, on 30 s
        for asset in assets:  # the value a subscription starts from: older than every other
            source.write(asset, NORMAL, t0 - 60_000_000)
        adapter = [py, "-m", "adapters.run", str(plant_file), "--broker-port", str(mqtt_port)]
        procs.append(start("adapter", [*adapter, "--only", "scada"]))
        cycle = HOT_READINGS + CALM_READINGS
        per_asset = -(-n_alerts // n_assets)
        n_values = warmup + 2 + per_asset * cycle
        interval = 1.0 / rate
        next_at = time.monotonic()
        time.sleep(5.0)  # the adapter's session and its monitored items
        for k in range(n_values):
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
                if hot and phase == HOT_READINGS - 1:  # this value opens an alert
                    written[f"{asset}-{ts}"] = time.time()
                source.write(asset, value, ts)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(written) <= set(watch.seen):
            time.sleep(0.2)
        from outbound.opcua import VARIABLES

        nodes = [f"ns={watch.ns};s={assets[0]}.{name}" for name, _ in VARIABLES]
        probes_out = security_probes(
            f"opc.tcp://127.0.0.1:{opc_port}/plantpulse",
            home,
            nodes,
            {
                "port": mqtt_port,
                "tls_port": tls_port,
                "ca": home / "mosquitto" / "tls" / "ca.crt",
                "user": "scada",
                "password": users["scada"],
            },
        )
    finally:
        load_after = load()
        watch.stop()
        for proc in reversed(procs):
            _stop(proc)
        source.stop()
        for f in logs.values():
            f.close()
    opened = set(
        Lake(home / "lake").read_arrow("alerts", columns=["alert_id"])["alert_id"].to_pylist()
    )
    timed = {a: t for a, t in written.items() if a in opened}  # what the stream opened
    lat = np.array([watch.seen[a] - t for a, t in timed.items() if a in watch.seen])
    return {
        "latency": lat,
        "missing": sorted(set(timed) - set(watch.seen)),
        "extra": sorted(set(watch.seen) - set(timed)),
        "home": str(home),
        "expected": len(timed),
        "planned": len(written),
        "not_opened": sorted(set(written) - opened),
        "probes": probes_out,
        "load_before": load_before,
        "load_after": load_after,
    }


def main(argv: list[str] | None = None) -> dict:
    p = parser("outbound", __doc__.splitlines()[0])
    p.add_argument("--alerts", type=int, default=24, help="alerts to open (>= 20)")
    p.add_argument("--assets", type=int, default=4)
    p.add_argument("--rate", type=float, default=20.0, help="values written per second")
    args = p.parse_args(argv)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # the refusals it logs are expected
    n_alerts = 2 if args.quick else args.alerts
    warmup = 10 if args.quick else 30
    n_assets = 1 if args.quick else args.assets
    rate = min(args.rate, 5.0 * n_assets)  # an asset's alert lasts longer than a commit
    r = run(n_alerts, n_assets, rate, warmup)
    lat = r["latency"]
    counts = r["probes"].get("counts", {})
    metrics = {
        "alerts_planned": float(r["planned"]),
        "alerts_opened": float(r["expected"]),
        "alerts_seen_on_opcua": float(lat.size),
        "alerts_missing": float(len(r["missing"])),
        "opcua_change_to_outbound_p50_s": float(np.percentile(lat, 50)) if lat.size else np.nan,
        "opcua_change_to_outbound_p99_s": float(np.percentile(lat, 99)) if lat.size else np.nan,
        "opcua_change_to_outbound_max_s": float(lat.max()) if lat.size else np.nan,
        **{k: float(v) for k, v in counts.items()},
        "load_avg_before": r["load_before"],
        "load_avg_after": r["load_after"],
    }
    return report(
        "outbound",
        metrics,
        {
            "opcua_change_to_outbound_p99_s": "<= 2",
            "alerts_missing": "<= 0",
            "alerts_opened": ">= 2" if args.quick else ">= 20",
            "anonymous_opcua_sessions_accepted": "<= 0",
            "anonymous_opcua_writes_accepted": "<= 0",
            "opcua_user_writes_accepted": "<= 0",
            "opcua_wrong_password_sessions_accepted": "<= 0",
            "opcua_unsecured_channel_sessions_accepted": "<= 0",
            "opcua_user_sessions_accepted": ">= 1",
            "mqtt_anonymous_accepted": "<= 0",
            "mqtt_wrong_password_accepted": "<= 0",
            "mqtt_tls_logins_accepted": ">= 1",
        },
        quick=args.quick,
        out=args.out,
        extra={
            "latencies_s": json.loads(json.dumps(lat.round(4).tolist())),
            "missing": r["missing"],
            "unexpected": r["extra"],
            "state_dir": r["home"],
            "planned_but_not_opened_by_the_stream": r["not_opened"],
            "assets": n_assets,
            "rate_per_s": rate,
            "process_warmup_windows": warmup,
            "security_attempts": {k: v for k, v in r["probes"].items() if k != "counts"},
        },
    )


if __name__ == "__main__":
    main()
