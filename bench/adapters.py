"""Inbound protocol adapters at plant rate, on loopback: values/s into the stream's broker, none
lost; the adapter's own ceiling beside each rate; reconnect time after a server restart; the
store-and-forward buffer after an outage of the stream.

Every load generator runs in its own process (``python -m adapters.testing ...``), and so does
the adapter for the rate figures: ``python -m adapters.run PLANT.yaml``, what ``plantpulse up
--adapters`` starts, forwarding at QoS 1 into Mosquitto as the set-up configures it.  A third
process subscribes to the stream's topics and decodes what arrives with the stream's own
decoder (``dataplane.wire.decode_batch``): a value counts once it is there.

- **Sparkplug B** (``--spb-nodes`` 500 edge nodes, one MQTT connection each, in
  ``--spb-generators`` processes; each node one device of 20 Double metrics, DDATA by alias with
  per-metric timestamps, 10 times a second, QoS 1: 100,000 metrics/s offered), read by
  ``--spb-adapters`` adapter processes (each its share of the nodes).  Reported: the metrics/s
  that reached the stream's broker while the nodes published, how long the adapters took after
  them to drain what the broker held for them, the metrics the broker acknowledged from the
  nodes that never reached the stream (``sparkplug_metrics_not_received``, counted once the
  drain is over: lost, not late), what the broker counted as dropped
  (``$SYS/broker/publish/messages/dropped``), and the adapters' CPU seconds.
- **OPC UA** (``--opcua-servers`` 4 server processes, 10,000 variables in all, every value
  rewritten every 0.5 s in one batched write: 20,000 values/s offered; sessions Basic256Sha256
  SignAndEncrypt with a login, the servers' certificates trusted explicitly): one adapter per
  server in the adapters' process.  The test servers are asyncua with its per-value deep copy
  left out (``adapters.testing._KeepValues``), several of them so that they are not the limit.
- **The adapter's ceiling**: values per CPU second of the adapter process during the run
  (protocol client, decoding, binding, Arrow encoding, disk buffer, forwarding), and the
  decoding alone without a server (OPC UA publish responses decoded from their binary
  encoding; Sparkplug payloads handed to the adapter).
- **Modbus TCP**: 100 holding registers polled at 10 Hz (adapter in this process).
- **Reconnect**: the Modbus device and the OPC UA server are killed and started again on the same
  port; the time from the server listening again to the adapter's next reading.
- **Outage**: the stream is down for ``OUTAGE_S`` (30 s; 3 s with --quick) while Modbus reads 100
  registers at 10 Hz; the buffer's size then, scaled to a 5-minute outage, against its bound.
- **Kill** (``kill_restart``, also the test of the integrator's path): ``plantpulse up
  --adapters`` over a real OPC UA server, Modbus device and Sparkplug edge node; the broker
  frozen so the buffers fill, every adapter SIGKILLed mid-stream, ``up`` restarts them: OPC UA
  values and Sparkplug metrics lost, readings in ``readings`` twice.

The machine may be shared: the 1-minute load average is recorded before and after each rate.
``--only sparkplug,opcua`` re-runs some parts and keeps the others' figures in the JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from adapters.core import CountSink, read_statuses
from adapters.modbus import ModbusAdapter
from adapters.opcua import OpcuaAdapter
from adapters.security import trust_certificate
from adapters.sparkplug import SparkplugAdapter
from adapters.testing import free_port
from bench.common import RESULTS, parser, report
from plant.schema import ModbusAdapter as ModbusSpec
from plant.schema import OpcuaAdapter as OpcuaSpec
from plant.schema import SparkplugAdapter as SparkplugSpec

NAME = "adapters"
ROOT = Path(__file__).resolve().parents[1]
PARTS = ("sparkplug", "opcua", "decode", "modbus", "reconnect", "outage", "kill")
OPCUA_USER = ("bench", "bench-password")


def load() -> float:
    """The 1-minute load average (what else was running)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _home() -> Path:
    return Path(tempfile.mkdtemp(prefix="plantpulse-bench-adapters-"))


LOGS = Path(tempfile.mkdtemp(prefix="plantpulse-bench-adapters-logs-"))


def _spawn(argv: list[str], env: dict[str, str] | None = None, ready: bool = True) -> Any:
    """A process with its output piped here and its errors in a log under ``LOGS``; with
    ``ready``, returns once it printed ``ready``."""
    what = "-".join(Path(a).name for a in argv[2:4])
    log = LOGS / f"{what}-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    if ready:
        line = proc.stdout.readline() if proc.stdout else ""
        if "ready" not in line:
            proc.kill()
            tail = log.read_text()[-1500:]
            raise RuntimeError(f"{' '.join(argv[2:5])} did not start ({log}): {line}{tail}")
    return proc


def _server(*args: str) -> subprocess.Popen[str]:
    return _spawn([sys.executable, "-m", "adapters.testing", *args])


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _last_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, float]:
    """The ``key value key value ...`` line a load generator prints when it is done."""
    out, _ = proc.communicate(timeout=timeout)
    words = out.split("\n")[-2].split() if out.strip() else []
    return {words[i]: float(words[i + 1]) for i in range(0, len(words) - 1, 2)}


def _broker(acl: dict[str, list[str]]) -> tuple[subprocess.Popen[bytes], int, dict[str, str]]:
    from plantpulse_cli.broker import ensure_mosquitto, wait_for_port, write_config

    directory = _home() / "mosquitto"
    port = free_port()
    conf = write_config(directory, port, {}, acl=acl)
    proc = subprocess.Popen(
        [ensure_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port)
    return proc, port, json.loads((directory / "credentials.json").read_text())


def _adapters_process(
    home: Path, plant: str, port: int, users: dict[str, str], env: dict, only: str | None = None
) -> Any:
    """``python -m adapters.run`` on ``plant`` (text), forwarding into the broker on ``port``
    (with ``only``: that adapter alone, as ``plantpulse up`` runs each)."""
    (home / "plant.yaml").write_text(plant)
    creds = home / "broker-credentials.json"
    creds.write_text(json.dumps(users))
    env = {
        **os.environ,
        "PLANTPULSE_HOME": str(home),
        "PLANTPULSE_LAKE": str(home / "lake"),
        "PLANTPULSE_ADAPTER_CREDENTIALS": str(creds),
        **env,
    }
    return _spawn(
        [
            sys.executable,
            "-m",
            "adapters.run",
            str(home / "plant.yaml"),
            "--broker-port",
            str(port),
            *(["--only", only] if only else []),
        ],
        env,
        ready=False,
    )


def _wait_connected(home: Path, n: int, procs: list[Any], timeout: float = 600.0) -> None:
    """Until ``n`` adapters are connected and reading; an error as soon as one of ``procs`` (the
    adapter processes) has exited."""
    deadline = time.monotonic() + timeout
    st: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"an adapter process exited ({dead[0].args}); logs in {LOGS}")
        st = read_statuses(home)
        if len(st) >= n and all(s.get("connected") and s.get("readings_in") for s in st):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the adapters did not all connect and read within {timeout:g} s: {st}")


def _counter(port: int, users: dict[str, str], progress: Path) -> subprocess.Popen[str]:
    auth = ["--user", "worker", "--password", users["worker"]]
    return _server(
        "count", "--port", str(port), *auth, "--seconds", "0", "--progress", str(progress)
    )


def _settle(progress: Path, want: float = float("inf"), timeout: float = 60.0) -> float:
    """Wait until the stream has ``want`` readings, or what reaches it stopped growing for 3 s;
    returns how many it has."""
    deadline, last, since = time.monotonic() + timeout, -1.0, time.monotonic()
    while time.monotonic() < deadline:
        n = _into_stream(progress)[1]
        if n >= want:
            return n
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 3.0:
            break
        time.sleep(0.2)
    return last


def _counted(counter: subprocess.Popen[str], progress: Path) -> dict:
    """The counter's totals, once what reaches the stream stopped growing."""
    _settle(progress)
    counter.terminate()
    return _last_line(counter, 30)


def _into_stream(progress: Path) -> tuple[float, float]:
    """``(when, readings)``: the counter's running total of what reached the stream."""
    try:
        when, n = progress.read_text().split()
        return float(when), float(n)
    except (OSError, ValueError):
        return time.time(), 0.0


def _window_rate(progress: Path, seconds: float, warmup: float) -> tuple[float, float, float]:
    """Readings/s into the stream over ``seconds`` after ``warmup``: ``(rate, t0, t1)``."""
    time.sleep(warmup)
    t0, n0 = _into_stream(progress)
    time.sleep(seconds)
    t1, n1 = _into_stream(progress)
    return (n1 - n0) / max(t1 - t0, 1e-9), t0, t1


# -- Sparkplug B ----------------------------------------------------------------------------------
SPB_PLANT_HEAD = """\
plant: bench-sparkplug
sites: [{id: bench, assets: []}]
adapters:
"""
SPB_ADAPTER = """\
  - id: spb{k}
    kind: sparkplug
    endpoint: mqtt://127.0.0.1:{port}
    credentials: host
    group: bench
    host_id: bench-{k}
    flush_ms: {flush_ms}
    receive_maximum: 20000
    buffer_mb: 256
    nodes: [{nodes}]
    bindings:
{bindings}
"""


def sparkplug_rate(
    nodes: int,
    metrics: int,
    hz: float,
    seconds: float,
    generators: int,
    flush_ms: float,
    adapters: int,
) -> dict[str, float]:
    """``nodes`` edge nodes in ``generators`` processes, read by ``adapters`` Sparkplug
    adapters (each its own process and its share of the nodes, ``nodes:`` in the plant)."""
    broker, port, users = _broker(
        {
            "host": ["topic readwrite spBv1.0/#"],
            "edge": ["topic readwrite spBv1.0/#"],
            **{f"spb{k}": [f"topic write plantpulse/+/spb{k}"] for k in range(adapters)},
        }
    )
    home = _home()
    bindings = "\n".join(
        f'      - {{device: "*", metric: m{m:02d}, asset: "{{device}}", sensor: m{m:02d}}}'
        for m in range(metrics)
    )
    plant = SPB_PLANT_HEAD + "".join(
        SPB_ADAPTER.format(
            k=k,
            port=port,
            flush_ms=flush_ms,
            bindings=bindings,
            nodes=", ".join(f"node-{n:03d}" for n in range(k, nodes, adapters)),
        )
        for k in range(adapters)
    )
    env = {"PLANTPULSE_HOST_USERNAME": "host", "PLANTPULSE_HOST_PASSWORD": users["host"]}
    procs: list[Any] = []
    progress = home / "into-stream.txt"
    try:
        counter = _counter(port, users, progress)
        procs.append(counter)
        readers = [
            _adapters_process(home, plant, port, users, env, only=f"spb{k}")
            for k in range(adapters)
        ]
        procs += readers
        deadline = time.monotonic() + 120
        while sum(bool(s.get("connected")) for s in read_statuses(home)) < adapters:
            if time.monotonic() > deadline or any(r.poll() is not None for r in readers):
                raise RuntimeError("the Sparkplug adapters did not connect")
            time.sleep(0.1)
        per = nodes // generators
        fleet = ["--port", str(port), "--items", str(per), "--metrics", str(metrics)]
        fleet += ["--hz", str(hz), "--seconds", str(seconds), "--wait-go"]
        fleet += ["--user", "edge", "--password", users["edge"]]
        fleets = [_server("sparkplug", "--first", str(g * per), *fleet) for g in range(generators)]
        procs += fleets
        time.sleep(2.0)  # the births read and forwarded
        load_before, cpu0 = load(), sum(cpu_s(r.pid) for r in readers)
        for f in fleets:  # every generator at once
            if f.stdin is not None:
                f.stdin.write("go\n")
                f.stdin.flush()
        warmup = min(2.0, seconds / 4)
        rate, _, _ = _window_rate(progress, seconds - warmup - 0.5, warmup)
        sent = [_last_line(f, seconds + 120) for f in fleets]
        load_after = load()
        # the adapters may be behind (the broker holds the rest for them): wait until what
        # reaches the stream stops growing, so what is missing then is lost, not late
        ended = time.monotonic()
        acked = sum(s["acked"] for s in sent)
        _settle(progress, want=acked + nodes * metrics, timeout=180.0)
        drain_s = time.monotonic() - ended
        cpu = sum(cpu_s(r.pid) for r in readers) - cpu0
        statuses = read_statuses(home)
        for r in readers:
            r.terminate()
            r.wait(30)
        got = _counted(counter, progress)
    finally:
        for p in procs:
            _stop(p)
        broker.terminate()
        broker.wait(10)
    acked = sum(s["acked"] for s in sent)
    births = nodes * metrics  # each DBIRTH carries every metric's value: readings too
    received = sum(float(s["readings_in"]) for s in statuses) - births
    return {
        "offered_per_s": sum(s["sent"] for s in sent) / max(s["seconds"] for s in sent),
        "acked_by_broker": acked,
        "received_by_adapters": received,
        "into_stream": got["readings"] - births,
        "per_s": rate,
        "not_received": acked + births - got["readings"],
        "dropped_by_broker": got["dropped_by_broker"],
        "rejected_by_stream": got["rejected"],
        "adapter_dead_letters": sum(float(s["dead_letters"]) for s in statuses),
        "adapter_cpu_s": cpu,
        "seconds": max(s["seconds"] for s in sent),
        "drain_after_s": drain_s,
        "load_before": load_before,
        "load_after": load_after,
    }


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
    t0 = time.process_time()
    for topic, payload in messages:
        adapter.on_message(topic, payload)
    adapter.flush()
    return len(messages) * metrics / (time.process_time() - t0)


# -- OPC UA ------------------------------------------------------------------------------------
OPCUA_PLANT_HEAD = """\
plant: bench-opcua
sensor_kinds:
  level: {{unit: m, range: [-1.0e9, 1.0e9], rate_hz: 2.0}}
asset_kinds:
  bench_asset:
    sensors: [{sensors}]
sites:
  - id: bench
    assets: [{assets}]
adapters:
"""
OPCUA_ADAPTER = """\
  - id: ua{k}
    kind: opcua
    endpoint: opc.tcp://127.0.0.1:{port}/plantpulse/
    credentials: bench
    sampling_ms: 0
    publishing_ms: {publishing_ms}
    queue_size: 1
    backfill: false
    timeout_s: 60
    bindings:
{bindings}
"""


def _opcua_server(
    port: int, items: int, period: float, first: int, cert_dir: Path, bulk: bool = False
) -> Any:
    args = ["--port", str(port), "--items", str(items), "--period", str(period)]
    args += ["--first", str(first), "--cert-dir", str(cert_dir), *(["--bulk"] if bulk else [])]
    return _server("opcua", *args, "--user", OPCUA_USER[0], "--password", OPCUA_USER[1])


def opcua_rate(
    items: int, servers: int, period: float, seconds: float, publishing_ms: float, bulk: bool
) -> dict[str, float]:
    """``servers`` server processes sharing ``items`` variables, each value rewritten every
    ``period``; one adapter per server in one ``adapters.run`` process."""
    from adapters.testing import bench_tags

    broker, port, users = _broker(
        {f"ua{k}": ["topic write plantpulse/+/+"] for k in range(servers)}
    )
    home = _home()
    per = items // servers
    procs: list[Any] = []
    progress = home / "into-stream.txt"
    try:
        counter = _counter(port, users, progress)
        procs.append(counter)
        n_assets = sum(len(bench_tags(per, k * ((per + 99) // 100))) for k in range(servers))
        plant = OPCUA_PLANT_HEAD.format(
            sensors=", ".join(f"{{id: s{i:03d}, kind: level}}" for i in range(100)),
            assets=", ".join(f"{{id: pump-{a:03d}, kind: bench_asset}}" for a in range(n_assets)),
        )
        monitored = 0
        for k in range(servers):
            sport, cert_dir = free_port(), home / f"server-{k}"
            first = k * ((per + 99) // 100)
            procs.append(_opcua_server(sport, per, period, first, cert_dir, bulk))
            trust_certificate(home, (cert_dir / "cert.der").read_bytes(), f"server-{k}")
            tags = bench_tags(per, first)
            monitored += sum(len(v) for v in tags.values())
            bindings = "\n".join(
                f'      - {{node: "ns=2;s={a}.{s}", asset: {a}, sensor: {s}}}'
                for a, sensors in tags.items()
                for s in sensors
            )
            plant += OPCUA_ADAPTER.format(
                k=k, port=sport, publishing_ms=publishing_ms, bindings=bindings
            )
        adapter = _adapters_process(
            home,
            plant,
            port,
            users,
            {
                "PLANTPULSE_BENCH_USERNAME": OPCUA_USER[0],
                "PLANTPULSE_BENCH_PASSWORD": OPCUA_USER[1],
            },
        )
        procs.append(adapter)
        _wait_connected(home, servers, [adapter])
        load_before = load()
        n0 = sum(s["readings_in"] for s in read_statuses(home))
        cpu0, t0 = cpu_s(adapter.pid), time.monotonic()
        # after the warm-up every monitored item is created and reporting
        rate, _, _ = _window_rate(progress, seconds, warmup=2.0)
        n1 = sum(s["readings_in"] for s in read_statuses(home))
        elapsed, cpu = time.monotonic() - t0, cpu_s(adapter.pid) - cpu0
        load_after = load()
        for p in procs[1 : 1 + servers]:  # the servers stop: what was read drains to the stream
            _stop(p)
        time.sleep(3.0)
        statuses = read_statuses(home)
        adapter.terminate()
        adapter.wait(30)
        got = _counted(counter, progress)
    finally:
        for p in procs:
            _stop(p)
        broker.terminate()
        broker.wait(10)
    read_total = sum(s["readings_in"] for s in statuses)
    return {
        "offered_per_s": items / period,
        "per_s": rate,
        "read_per_s": (n1 - n0) / elapsed,
        "monitored": float(monitored),
        "read_by_adapter": float(read_total),
        "into_stream": got["readings"],
        "not_forwarded": read_total - got["readings"],
        "dropped_by_broker": got["dropped_by_broker"],
        "adapter_cpu_s": cpu,
        "adapter_values_per_cpu_s": (n1 - n0) / cpu if cpu else float("nan"),
        "seconds": elapsed,
        "load_before": load_before,
        "load_after": load_after,
    }


def opcua_decode_rate(items: int = 10_000, rounds: int = 5) -> float:
    """Values/s the OPC UA adapter takes from publish responses decoded from their binary
    encoding (asyncua's decoder, as the client does), without a server: its own cost."""
    from asyncua import ua
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

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
    adapter.by_handle = dict(enumerate(spec.bindings))
    encoded = []
    for r in range(rounds):
        now = ua.DateTime.now(UTC)
        dcn = ua.DataChangeNotification()
        dcn.MonitoredItems = [
            ua.MonitoredItemNotification(
                ClientHandle=ua.UInt32(h),
                Value=ua.DataValue(
                    ua.Variant(float(r + h), ua.VariantType.Double),
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                ),
            )
            for h in range(items)
        ]
        encoded.append(struct_to_binary(dcn))
        time.sleep(0.002)  # a later source timestamp each round
    t0 = time.process_time()
    for data in encoded:
        dcn = struct_from_binary(ua.DataChangeNotification, Buffer(data))
        adapter.on_items(dcn.MonitoredItems)
        adapter.flush()
    return items * rounds / (time.process_time() - t0)


# -- Modbus, reconnects, outage (adapter in this process, servers in their own) -----------------
async def _rate(adapter: Any, seconds: float, warmup: float = 2.0) -> float:
    """Readings/s into the adapter over ``seconds`` after ``warmup``."""
    deadline = time.monotonic() + 600
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

        result: tuple[float, float] = asyncio.run(_run(adapter, body))
        return result
    finally:
        _stop(proc)


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
        result: float = asyncio.run(_run(adapter, body))
        return result
    finally:
        _stop(proc)


def reconnect_opcua() -> float:
    """Through a secured session (SignAndEncrypt, a login, the server's certificate trusted)."""
    port, home = free_port(), _home()
    cert_dir = home / "server"
    proc = _opcua_server(port, 100, 0.1, 0, cert_dir)
    trust_certificate(home, (cert_dir / "cert.der").read_bytes(), "server")
    os.environ["PLANTPULSE_BENCH_USERNAME"], os.environ["PLANTPULSE_BENCH_PASSWORD"] = OPCUA_USER
    spec = OpcuaSpec.model_validate(
        {
            "id": "ua-restart",
            "kind": "opcua",
            "endpoint": f"opc.tcp://127.0.0.1:{port}/plantpulse/",
            "credentials": "bench",
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
    adapter = OpcuaAdapter(spec, home, None, CountSink())

    async def body(a: OpcuaAdapter) -> float:
        nonlocal proc
        await _rate(a, 0.5, warmup=0.5)
        _stop(proc)
        await asyncio.sleep(3.0)
        proc = await asyncio.to_thread(_opcua_server, port, 100, 0.1, 0, cert_dir)
        t_ready, n0 = time.monotonic(), a.status.readings_in
        return await _first_reading_after(a, n0, t_ready)

    try:
        result: float = asyncio.run(_run(adapter, body))
        return result
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
        held: dict[str, float] = {
            "readings": float(a.status.readings_in - n0),
            "bytes": float(a.buffer.bytes),
            "file_bytes": float(a.buffer.file_bytes()),
            "overflow": float(a.buffer.overflow_readings),
        }
        sink.available = True
        t0 = time.monotonic()
        while a.buffer.messages and time.monotonic() - t0 < 120:
            await asyncio.sleep(0.05)
        held["drain_s"] = time.monotonic() - t0
        return held

    try:
        held: dict[str, float] = asyncio.run(_run(adapter, body))
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


# -- an adapter killed mid-stream under plantpulse up -------------------------------------------
KILL_PLANT = """\
plant: e2e-adapters
sensor_kinds:
  level: {{unit: m, range: [0.0, 1000000.0], rate_hz: 10.0}}
sites:
  - id: line
    assets:
      - {{id: opc-01, sensors: [{{id: level_a, kind: level}}, {{id: level_b, kind: level}}]}}
      - {{id: plc-01, sensors: [{{id: level_a, kind: level}}]}}
      - {{id: edge-01, sensors: [{{id: level_a, kind: level}}, {{id: level_b, kind: level}}]}}
adapters:
  - id: scada
    kind: opcua
    endpoint: {opcua}
    credentials: scada
    sampling_ms: 0
    publishing_ms: 50
    flush_ms: 50
    reconnect_max_s: 0.5
    bindings:
      - {{node: "ns=2;s=opc-01.level_a", asset: opc-01, sensor: level_a}}
      - {{node: "ns=2;s=opc-01.level_b", asset: opc-01, sensor: level_b}}
  - id: plc
    kind: modbus
    endpoint: tcp://127.0.0.1:{modbus}
    poll_ms: 100
    flush_ms: 50
    reconnect_max_s: 0.5
    bindings:
      - {{register: 0, asset: plc-01, sensor: level_a}}
  - id: edge
    kind: sparkplug
    endpoint: mqtt://127.0.0.1:{mqtt}
    credentials: spb-host
    group: e2e
    flush_ms: 50
    reconnect_max_s: 0.5
    bindings:
      - {{device: "*", metric: A, asset: "{{device}}", sensor: level_a}}
      - {{device: "*", metric: B, asset: "{{device}}", sensor: level_b}}
"""
SCADA_LOGIN = ("plantpulse", "s3cret")


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _us(ts: Any) -> Any:
    """A column of timestamps as integer microseconds since the epoch."""
    return ts.astype("datetime64[us, UTC]").astype("int64")


def kill_restart(work: Path, after_s: float = 4.0) -> dict[str, Any]:
    """``plantpulse up --adapters`` as processes over a real OPC UA server (secured,
    historised), Modbus device and Sparkplug edge node (QoS 1): once every adapter's readings
    are in the lake, the broker is frozen (the adapters' buffers fill), every adapter process is
    SIGKILLed, the broker thawed, ``up`` starts them again; after ``after_s`` more the sources
    stop and everything is waited for in the lake.  Returns what was written, published and
    landed, and the counts: each OPC UA value and Sparkplug metric lost or twice, Modbus
    readings twice."""
    import contextlib

    from adapters.testing import PlantSources, SparkplugEdge
    from lake import Lake
    from plantpulse_cli.broker import wait_for_port

    home = work / "home"
    servers = PlantSources(work / "opcua-server", "opc-01", {SCADA_LOGIN[0]: SCADA_LOGIN[1]})
    servers.start()
    if not servers.ready.wait(60):
        raise RuntimeError("the OPC UA and Modbus servers did not start")
    trust_certificate(home, servers.opcua.certificate, "scada")
    mqtt_port = free_port()
    plant = work / "plant.yaml"
    plant.write_text(
        KILL_PLANT.format(opcua=servers.opcua.url, modbus=servers.modbus.port, mqtt=mqtt_port)
    )
    env = {
        **os.environ,
        "PLANTPULSE_HOME": str(home),
        "PLANTPULSE_SCADA_USERNAME": SCADA_LOGIN[0],
        "PLANTPULSE_SCADA_PASSWORD": SCADA_LOGIN[1],
    }
    for k in ("PLANTPULSE_PLANT", "PLANTPULSE_LAKE", "PLANTPULSE_ADAPTER_CREDENTIALS"):
        env.pop(k, None)
    servers.writing.set()
    argv = [str(Path(sys.executable).parent / "plantpulse"), "up", "--no-ui", "--no-technician"]
    up = subprocess.Popen(
        [*argv, "--adapters", str(plant), "--mqtt", str(mqtt_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    edge: SparkplugEdge | None = None
    stop_edge = threading.Event()
    published: list[tuple[int, float, float]] = []  # (ts ms, A, B) the broker acknowledged
    broker_pid = None
    lake = Lake(home / "lake")

    def statuses() -> dict[str, dict[str, Any]]:
        return {s["adapter_id"]: s for s in read_statuses(home)}

    try:
        creds = home / "mosquitto" / "credentials.json"
        _wait(creds.exists, 120, "the broker's set-up")
        wait_for_port(mqtt_port, 60)
        _wait(lambda: len(statuses()) == 3, 180, "three adapters")
        _wait(lambda: statuses()["edge"]["connected"], 60, "the Sparkplug adapter")
        users = json.loads(creds.read_text())
        node = SparkplugEdge(
            "127.0.0.1",
            mqtt_port,
            "e2e",
            "gw-1",
            {"edge-01": ["A", "B"]},
            ("sparkplug-edge", users["sparkplug-edge"]),
        )
        edge = node
        node.births()
        time.sleep(0.05)  # the first data a few ms after the births' values (not the same ts)

        def publish() -> None:
            k = 0
            while not stop_edge.is_set():
                k += 1
                ts = int(time.time() * 1000)
                node.data("edge-01", {"A": float(k), "B": float(k) + 0.25}, ts)  # QoS 1, acked
                published.append((ts, float(k), float(k) + 0.25))
                time.sleep(0.1)

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        _wait(
            lambda: (
                lake.exists("readings")
                and set(lake.read("readings", columns=["asset_id"])["asset_id"])
                >= {"opc-01", "plc-01", "edge-01"}
            ),
            180,
            "readings of all three adapters in the lake",
        )
        before = {k: s["pid"] for k, s in statuses().items()}
        first_session = statuses()["scada"]["connected_since_us"]
        # the broker freezes: the adapters cannot forward, their buffers on disk fill
        found = subprocess.run(
            ["pgrep", "-f", str(home / "mosquitto" / "mosquitto.conf")],
            capture_output=True,
            text=True,
        )
        broker_pid = int(found.stdout.split()[0])
        os.kill(broker_pid, signal.SIGSTOP)
        _wait(
            lambda: all(statuses()[a]["buffer_messages"] > 0 for a in ("scada", "plc")),
            20,
            "messages waiting in the buffers",
        )
        held = {a: statuses()[a]["buffer_messages"] for a in ("scada", "plc")}
        for pid in before.values():
            os.kill(pid, signal.SIGKILL)
        os.kill(broker_pid, signal.SIGCONT)
        _wait(
            lambda: all(s["pid"] != before[k] and s["connected"] for k, s in statuses().items()),
            120,
            "the adapters started again by plantpulse up",
        )
        time.sleep(after_s)  # reading on after the restart
        servers.writing.clear()
        stop_edge.set()
        publisher.join(10)
        last_opc, last_edge = servers.written[-1][0], published[-1][0] * 1000

        def landed() -> bool:
            r = lake.read("readings", columns=["asset_id", "ts"])
            got = {a: int(_us(r["ts"][r["asset_id"] == a]).max()) for a in ("opc-01", "edge-01")}
            return got["opc-01"] >= last_opc and got["edge-01"] >= last_edge

        _wait(landed, 120, "the last values in the lake")
        after = statuses()
    finally:
        stop_edge.set()
        if broker_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker_pid, signal.SIGCONT)
        if edge is not None:
            edge.close()
        os.killpg(up.pid, signal.SIGINT)
        out = up.communicate(timeout=120)[0]
        servers.stop()
    readings = lake.read("readings")
    readings["us"] = _us(readings["ts"])
    dead = lake.read("dead_letter") if lake.exists("dead_letter") else None
    twice = {
        a: int(readings[readings["asset_id"] == a].duplicated(["sensor_id", "us"]).sum())
        for a in ("opc-01", "plc-01", "edge-01")
    }
    opc = readings[(readings["asset_id"] == "opc-01") & (readings["sensor_id"] == "level_a")]
    got = dict(zip(opc["us"], opc["value"], strict=False))
    wanted = {ts: v for ts, v in servers.written if ts >= min(got)}
    spb = readings[(readings["asset_id"] == "edge-01") & (readings["sensor_id"] == "level_a")]
    spb_got = dict(zip(spb["us"], spb["value"], strict=False))
    spb_wanted = {ts * 1000: a for ts, a, _ in published}
    counts = {
        "kill_adapters_killed": float(len(before)),
        "kill_adapters_restarted": float(out.count("exited with code -9; starting it again")),
        "kill_buffer_messages_held": float(sum(held.values())),
        "kill_opcua_values_written": float(len(wanted)),
        "kill_opcua_values_lost": float(sum(got.get(ts) != v for ts, v in wanted.items())),
        "kill_opcua_backfilled": float(after["scada"]["backfilled"]),
        "kill_sparkplug_metrics_published": float(len(spb_wanted)),
        "kill_sparkplug_metrics_lost": float(
            sum(spb_got.get(ts) != v for ts, v in spb_wanted.items())
        ),
        "kill_sparkplug_redelivered": float(after["edge"].get("redelivered", 0)),
        "kill_readings_duplicated": float(sum(twice.values())),
    }
    counts["kill_readings_lost"] = (
        counts["kill_opcua_values_lost"] + counts["kill_sparkplug_metrics_lost"]
    )
    return {
        "counts": counts,
        "readings": readings,
        "written": servers.written,
        "published": published,
        "held": held,
        "after": after,
        "first_session": first_session,
        "up_output": out,
        "dead_letter_reasons": sorted(set(dead["reason"])) if dead is not None else [],
    }


# -- the run ---------------------------------------------------------------------------------
TARGETS = {
    "opcua_values_per_s": ">= 10000",
    "kill_readings_lost": "<= 0",
    "kill_readings_duplicated": "<= 0",
    "sparkplug_metrics_per_s": ">= 100000",
    "sparkplug_metrics_not_received": "<= 0",
    "sparkplug_dropped_by_broker": "<= 0",
    "reconnect_modbus_s": "<= 10",
    "reconnect_opcua_s": "<= 10",
    "buffer_mb_after_5min_outage_scaled": "<= 64",
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--only", default=None, help=f"comma-separated parts of {', '.join(PARTS)}")
    p.add_argument("--spb-nodes", type=int, default=500)
    p.add_argument("--spb-metrics", type=int, default=20)
    p.add_argument("--spb-hz", type=float, default=10.0)
    p.add_argument("--spb-seconds", type=float, default=20.0)
    p.add_argument("--spb-generators", type=int, default=2)
    p.add_argument("--spb-flush-ms", type=float, default=1000.0)
    p.add_argument("--spb-adapters", type=int, default=2, help="Sparkplug adapter processes")
    p.add_argument("--opcua-items", type=int, default=10_000)
    p.add_argument("--opcua-servers", type=int, default=4)
    p.add_argument("--opcua-period", type=float, default=0.5)
    p.add_argument("--opcua-seconds", type=float, default=15.0)
    p.add_argument(
        "--opcua-writes",
        action="store_true",
        help="the OPC UA servers write their address space (default: they publish in bulk)",
    )
    args = p.parse_args(argv)
    # a SIGTERM unwinds like an error: every load generator and broker started is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench.adapters: terminated"))
    quick = args.quick
    parts = args.only.split(",") if args.only else list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}: choose from {', '.join(PARTS)}")
    if quick:
        args.spb_nodes, args.spb_seconds, args.spb_generators = 20, 3.0, 1
        args.spb_adapters = 1
        args.opcua_items, args.opcua_servers, args.opcua_seconds = 200, 1, 3.0
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    if "sparkplug" in parts:
        r = sparkplug_rate(
            args.spb_nodes,
            args.spb_metrics,
            args.spb_hz,
            args.spb_seconds,
            args.spb_generators,
            args.spb_flush_ms,
            args.spb_adapters,
        )
        details["sparkplug"] = r
        print(f"sparkplug: {json.dumps(r)}", flush=True)
        metrics.update(
            {
                "sparkplug_edge_nodes": float(args.spb_nodes),
                "sparkplug_adapter_processes": float(args.spb_adapters),
                "sparkplug_metrics_offered_per_s": r["offered_per_s"],
                "sparkplug_metrics_per_s": r["per_s"],
                "sparkplug_metrics_acked_by_broker": r["acked_by_broker"],
                "sparkplug_metrics_into_stream": r["into_stream"],
                "sparkplug_metrics_not_received": r["not_received"],
                "sparkplug_drain_after_generators_s": r["drain_after_s"],
                "sparkplug_dropped_by_broker": r["dropped_by_broker"],
                "sparkplug_adapter_cpu_s": r["adapter_cpu_s"],
                "sparkplug_adapter_metrics_per_cpu_s": r["received_by_adapters"]
                / max(r["adapter_cpu_s"], 1e-9),
                "sparkplug_load_avg_before": r["load_before"],
                "sparkplug_load_avg_after": r["load_after"],
            }
        )
    if "opcua" in parts:
        r = opcua_rate(
            args.opcua_items,
            args.opcua_servers,
            args.opcua_period,
            args.opcua_seconds,
            publishing_ms=100.0,
            bulk=not args.opcua_writes,
        )
        details["opcua"] = r
        print(f"opcua: {json.dumps(r)}", flush=True)
        metrics.update(
            {
                "opcua_servers": float(args.opcua_servers),
                "opcua_servers_publish_in_bulk": float(not args.opcua_writes),
                "opcua_monitored_items": r["monitored"],
                "opcua_values_offered_per_s": r["offered_per_s"],
                "opcua_values_per_s": r["per_s"],
                "opcua_values_into_stream": r["into_stream"],
                "opcua_values_not_forwarded": r["not_forwarded"],
                "opcua_adapter_cpu_s": r["adapter_cpu_s"],
                "opcua_adapter_values_per_cpu_s": r["adapter_values_per_cpu_s"],
                "opcua_load_avg_before": r["load_before"],
                "opcua_load_avg_after": r["load_after"],
            }
        )
    if "decode" in parts:
        metrics["opcua_adapter_decode_values_per_cpu_s"] = opcua_decode_rate(
            1_000 if quick else 10_000
        )
        metrics["sparkplug_adapter_decode_metrics_per_cpu_s"] = sparkplug_decode_rate(
            50 if quick else 500
        )
    if "modbus" in parts:
        metrics["modbus_load_avg_before"] = load()
        rate, polls = modbus_rate(2.0 if quick else 8.0)
        metrics["modbus_100_registers_values_per_s"] = rate
        metrics["modbus_polls_per_s"] = polls
    if "reconnect" in parts:
        metrics["reconnect_modbus_s"] = reconnect_modbus()
        metrics["reconnect_opcua_s"] = reconnect_opcua()
    if "outage" in parts:
        out = outage(3.0 if quick else 30.0)
        details["outage"] = out
        metrics["outage_s"] = out["outage_s"]
        metrics["buffer_bytes_after_outage"] = out["buffer_bytes"]
        metrics["buffer_mb_after_5min_outage_scaled"] = out["buffer_mb_5min"]
        metrics["buffer_bound_mb"] = out["bound_mb"]
        metrics["buffer_overflow_readings"] = out["overflow_readings"]
        metrics["buffer_drain_s"] = out["drain_s"]
    if "kill" in parts:
        k = kill_restart(_home(), after_s=2.0 if quick else 6.0)
        metrics.update(k["counts"])
        details["kill"] = {
            "dead_letter_reasons": k["dead_letter_reasons"],
            "held": k["held"],
            "load_after": load(),
        }
    if args.only and not quick:  # keep the other parts' figures of the last full run
        path = Path(args.out) if args.out else RESULTS / f"{NAME}.json"
        if path.exists():
            old = json.loads(path.read_text())
            details = {**old.get("details", {}), **details}
            metrics = {**old.get("metrics", {}), **metrics}
    details["parts_run_now"] = parts
    return report(
        NAME,
        metrics,
        {k: v for k, v in TARGETS.items() if k in metrics},
        quick=quick,
        out=args.out,
        extra=details,
    )


if __name__ == "__main__":
    main()
