"""Protocol adapters against real servers on loopback: a pymodbus device, an asyncua server,
Mosquitto with Sparkplug B edge nodes.  Server restarts mid-stream, wrongly typed tags,
malformed payloads and sequence gaps (dead_letter + a rebirth request), a gap backfilled from
OPC UA history, the store-and-forward buffer's bound."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.core import CountSink, DiskBuffer, read_statuses
from adapters.modbus import ModbusAdapter, registers_for
from adapters.opcua import OpcuaAdapter, browse, proposal_yaml
from adapters.security import broker_tls, trust_certificate
from adapters.sinks import DecodeSink
from adapters.sparkplug import SparkplugAdapter
from adapters.testing import (
    ModbusTestServer,
    OpcuaTestServer,
    SparkplugEdge,
    free_port,
    mqtt_login_attempt,
)
from dataplane.wire import encode_arrow
from lake import Lake
from plant import PlantError, load_plant
from plant.schema import ModbusAdapter as ModbusSpec
from plant.schema import OpcuaAdapter as OpcuaSpec
from plant.schema import SparkplugAdapter as SparkplugSpec
from plantpulse_cli.adapters import rows
from plantpulse_cli.broker import ensure_mosquitto, wait_for_port, write_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "plant" / "plants" / "adapters.yaml"


def _lake(tmp_path: Path) -> Lake:
    lake = Lake(tmp_path / "lake")
    lake.create_tables(["dead_letter"])
    return lake


def _dead(lake: Lake) -> list[dict[str, Any]]:
    return lake.read("dead_letter").to_dict("records")


async def _until(cond, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.05)


def _values(sink: DecodeSink) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = {}
    for d in sink.decoded:
        for g in range(d.n_groups):
            key = (d.assets[d.g_a[g]], d.sensors[d.g_s[g]])
            out.setdefault(key, []).extend(d.value[d.group == g].tolist())
    return out


# -- the plant model ------------------------------------------------------------------------
def test_example_plant_binds_declared_sensors():
    plant = load_plant(EXAMPLE)
    kinds = {a.id: a.kind for a in plant.adapters}
    assert kinds == {"scada-opcua": "opcua", "plc-modbus": "modbus", "edge-sparkplug": "sparkplug"}
    modbus = next(a for a in plant.adapters if a.kind == "modbus")
    assert [(b.address, b.type, b.word_order) for b in modbus.bindings] == [
        (0, "uint16", "big"),
        (1, "float32", "little"),
        (0, "int16", "big"),
    ]


@pytest.mark.parametrize(
    "old, new, where, message",
    [
        (
            "sensor: motor_current, unit: A}",
            "sensor: motor_currant, unit: A}",
            "adapters[0].bindings[2].sensor",
            "is not a sensor of asset 'pump-01'",
        ),
        (
            "sensor: bearing_temp, unit: degC}",
            "sensor: bearing_temp, unit: degF}",
            "adapters[0].bindings[0].unit",
            "is not the unit of pump-01/bearing_temp",
        ),
        (
            "{register: 1, type: float32",
            "{register: 0, type: float32",
            "adapters[1].bindings[1]",
            "bound twice",
        ),
        (
            "{register: 0, table: input, type: int16",
            "{register: 2, type: int16",
            "adapters[1].bindings[2].register",
            "already read by the binding at line",
        ),
        ("kind: modbus", "kind: profinet", "adapters[1]", "kind must be one of"),
        ("type: int16", "type: int12", "adapters[1].bindings[2].type", "Input should be"),
        (
            "tcp://127.0.0.1:5020",
            "tcp://127.0.0.1",
            "adapters[1].endpoint",
            "is not a modbus endpoint",
        ),
        ("poll_ms: 100", "poll_ms: 100\n    pol_ms: 3", "adapters[1]", "unknown key 'pol_ms'"),
        (
            "security: SignAndEncrypt  #",
            "security: None  #",
            "adapters[0]",
            "security None turns security off: say why in insecure_reason",
        ),
    ],
)
def test_bad_bindings_are_one_line_errors(tmp_path, old, new, where, message):
    text = EXAMPLE.read_text().replace(
        "include: [demo.yaml]", f"include: [{EXAMPLE.parent / 'demo.yaml'}]"
    )
    assert old in text
    bad = tmp_path / "plant.yaml"
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(PlantError) as err:
        load_plant(bad)
    line = text.replace(old, new, 1).splitlines()
    assert err.value.field == where and message in err.value.message
    assert err.value.line is not None and err.value.line <= len(line)
    assert "\n" not in str(err.value)


# -- Modbus TCP -------------------------------------------------------------------------------
def test_modbus_types_scaling_bad_register_and_restart(tmp_path):
    lake = _lake(tmp_path)
    spec = ModbusSpec.model_validate(
        {
            "id": "plc",
            "kind": "modbus",
            "endpoint": "tcp://127.0.0.1:1",
            "poll_ms": 50,
            "reconnect_max_s": 0.5,
            "flush_ms": 50,
            "bindings": [
                {
                    "register": 0,
                    "type": "uint16",
                    "scale": 0.01,
                    "asset": "pump-02",
                    "sensor": "discharge_pressure",
                },
                {
                    "register": 1,
                    "type": "float32",
                    "word_order": "little",
                    "asset": "pump-02",
                    "sensor": "motor_current",
                },
                {"register": 3, "type": "int32", "asset": "pump-02", "sensor": "shaft_speed"},
                {
                    "register": 0,
                    "table": "input",
                    "type": "int16",
                    "scale": 0.1,
                    "asset": "pump-02",
                    "sensor": "bearing_temp",
                },
                {
                    "register": 150,
                    "asset": "pump-01",
                    "sensor": "bearing_temp",
                },  # not on the device
            ],
        }
    )

    async def main() -> None:
        server = ModbusTestServer(n_holding=20, input_values=[0xFF9C])  # -100 -> -10.0 degC
        await server.start()
        spec_ = spec.model_copy(update={"endpoint": f"tcp://127.0.0.1:{server.port}"})
        sink = DecodeSink(keep=True)
        adapter = ModbusAdapter(spec_, tmp_path / "home", lake, sink)
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop))
        from pymodbus.client import AsyncModbusTcpClient

        async def write(pressure: float, current: float, speed: int) -> None:
            c = AsyncModbusTcpClient("127.0.0.1", port=server.port)
            await c.connect()
            words = (
                [int(pressure * 100)]
                + registers_for(current, "float32", "little")
                + registers_for(speed, "int32")
            )
            await c.write_registers(0, words, device_id=1)
            c.close()

        await write(3.5, 21.25, -1750)
        await _until(
            lambda: 3.5 in _values(sink).get(("pump-02", "discharge_pressure"), []),
            what="the first poll",
        )
        v = _values(sink)
        assert v[("pump-02", "motor_current")][-1] == 21.25
        assert v[("pump-02", "shaft_speed")][-1] == -1750
        assert v[("pump-02", "bearing_temp")][-1] == pytest.approx(-10.0)
        assert ("pump-01", "bearing_temp") not in v  # the bad register delivered nothing
        # the device restarts: the adapter reconnects by itself and reads on
        port = server.port
        await server.stop()
        await asyncio.sleep(0.5)
        server = ModbusTestServer(n_holding=20, port=port)
        await server.start()
        await write(4.25, 22.5, 1800)
        await _until(
            lambda: 4.25 in _values(sink).get(("pump-02", "discharge_pressure"), []),
            what="a poll after the restart",
        )
        assert adapter.status.reconnects >= 1
        stop.set()
        await task
        await server.stop()

    asyncio.run(main())
    dead = _dead(lake)
    bad = [d for d in dead if d["reason"] == "modbus_error"]
    assert len(bad) == 1 and bad[0]["sensor_id"] == "bearing_temp"
    assert "register 150" in bad[0]["detail"] and bad[0]["asset_id"] == "pump-01"
    status = read_statuses(tmp_path / "home")[0]
    assert status["adapter_id"] == "plc" and status["reconnects"] >= 1


# -- OPC UA ------------------------------------------------------------------------------------
def test_opcua_wrong_type_restart_and_backfill(tmp_path, monkeypatch):
    """Through a session secured as the plant file's defaults say (Basic256Sha256,
    SignAndEncrypt, a login, the server's certificate in the trust list)."""
    lake = _lake(tmp_path)
    tags = {"pump-01": ["bearing_temp", "motor_current", "label"]}
    temp, current, label = (f"ns=2;s=pump-01.{s}" for s in tags["pump-01"])
    home = tmp_path / "home"
    monkeypatch.setenv("PLANTPULSE_SCADA_USERNAME", "plantpulse")
    monkeypatch.setenv("PLANTPULSE_SCADA_PASSWORD", "s3cret")
    users = {"plantpulse": "s3cret"}

    async def main() -> None:
        server = OpcuaTestServer(tags, strings=(label,), users=users, cert_dir=tmp_path / "srv")
        await server.start()
        trust_certificate(home, server.certificate, "scada")
        found = await browse(server.url, home, auth=("plantpulse", "s3cret"))
        assert {f["node"] for f in found} == {temp, current}  # the text tag is no sensor
        assert "asset: pump-01, sensor: bearing_temp" in proposal_yaml(server.url, found)
        spec = OpcuaSpec.model_validate(
            {
                "id": "scada",
                "kind": "opcua",
                "endpoint": server.url,
                "credentials": "scada",
                "sampling_ms": 0,
                "publishing_ms": 50,
                "reconnect_max_s": 0.5,
                "flush_ms": 50,
                "bindings": [
                    {"node": temp, "asset": "pump-01", "sensor": "bearing_temp"},
                    {"node": current, "asset": "pump-01", "sensor": "motor_current", "scale": 2.0},
                    {"node": label, "asset": "pump-01", "sensor": "discharge_pressure"},
                    {"node": "ns=2;s=pump-01.nothing", "asset": "pump-01", "sensor": "shaft_speed"},
                ],
            }
        )
        sink = DecodeSink(keep=True)

        async def start() -> tuple[OpcuaAdapter, asyncio.Event, asyncio.Task]:
            adapter = OpcuaAdapter(
                spec.model_copy(update={"endpoint": server.url}), home, lake, sink
            )
            stop = asyncio.Event()
            task = asyncio.create_task(adapter.run(stop))
            await _until(lambda: adapter.status.connected, 20, "a connection")
            return adapter, stop, task

        adapter, stop, task = await start()
        for i in range(5):
            await server.write({temp: 40.0 + i, current: 10.0 + i})
            await asyncio.sleep(0.1)
        await _until(
            lambda: 44.0 in _values(sink).get(("pump-01", "bearing_temp"), []), what="live values"
        )
        assert 28.0 in _values(sink)[("pump-01", "motor_current")]  # scaled: 14 x 2
        # the adapter goes away (an outage); the server keeps recording history
        stop.set()
        await task
        gap_start = time.time()
        for i in range(5):
            await server.write({temp: 60.0 + i})
            await asyncio.sleep(0.05)
        adapter, stop, task = await start()
        await _until(
            lambda: (
                adapter.status.backfilled >= 5
                and len([x for x in _values(sink)[("pump-01", "bearing_temp")] if x >= 60]) >= 5
            ),
            20,
            "the backfill",
        )
        await asyncio.sleep(0.3)  # nothing more comes (no value twice)
        got = _values(sink)[("pump-01", "bearing_temp")]
        assert [x for x in got if x >= 60] == [60.0, 61.0, 62.0, 63.0, 64.0]  # in order, once
        assert adapter.status.last_reading_ts_us >= gap_start * 1e6
        # the server restarts (its history is gone, its certificate the same): the adapter
        # reconnects and reads on
        port = server.port
        await server.stop()
        server = OpcuaTestServer(
            tags, port=port, strings=(label,), users=users, cert_dir=tmp_path / "srv"
        )
        await server.start()
        await _until(
            lambda: adapter.status.reconnects >= 1 and adapter.status.connected,
            30,
            "a reconnection",
        )
        await asyncio.sleep(0.3)
        await server.write({temp: 99.0})
        await _until(
            lambda: 99.0 in _values(sink).get(("pump-01", "bearing_temp"), []),
            what="a value after the restart",
        )
        stop.set()
        await task
        await server.stop()

    asyncio.run(main())
    dead = _dead(lake)
    reasons = {(d["reason"], d["sensor_id"]) for d in dead}
    assert ("wrong_type", "discharge_pressure") in reasons
    assert ("unknown_node", "shaft_speed") in reasons
    assert not any(d["reason"] == "buffer_overflow" for d in dead)


# -- Sparkplug B ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spb_broker(tmp_path_factory):
    """Mosquitto with a Sparkplug host user and an edge user (readwrite spBv1.0/#), and an
    adapter ``plc`` that may write ``plantpulse/+/plc`` (as ``plantpulse up`` sets it up)."""
    directory = tmp_path_factory.mktemp("mosquitto-spb")
    port = free_port()
    conf = write_config(
        directory,
        port,
        {},
        acl={
            "host": ["topic readwrite spBv1.0/#"],
            "edge": ["topic readwrite spBv1.0/#"],
            "plc": ["topic write plantpulse/+/plc"],
        },
    )
    proc = subprocess.Popen(
        [ensure_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port)
    users = json.loads((directory / "credentials.json").read_text())
    yield port, users
    proc.terminate()
    proc.wait(10)


def test_sparkplug_births_gap_malformed_and_wrong_type(tmp_path, spb_broker, monkeypatch):
    port, users = spb_broker
    monkeypatch.setenv("PLANTPULSE_HOST_USERNAME", "host")
    monkeypatch.setenv("PLANTPULSE_HOST_PASSWORD", users["host"])
    lake = _lake(tmp_path)
    spec = SparkplugSpec.model_validate(
        {
            "id": "edge",
            "kind": "sparkplug",
            "endpoint": f"mqtt://127.0.0.1:{port}",
            "credentials": "host",
            "group": "plant1",
            "flush_ms": 50,
            "reconnect_max_s": 0.5,
            "bindings": [
                {
                    "device": "*",
                    "metric": "Pump/BearingTemp",
                    "asset": "{device}",
                    "sensor": "bearing_temp",
                },
                {
                    "device": "*",
                    "metric": "Pump/Speed",
                    "asset": "{device}",
                    "sensor": "shaft_speed",
                    "scale": 60.0,
                },
                {
                    "device": "pump-01",
                    "metric": "Pump/Mode",
                    "asset": "pump-01",
                    "sensor": "discharge_pressure",
                },
            ],
        }
    )

    async def main() -> None:
        sink = DecodeSink(keep=True)
        adapter = SparkplugAdapter(spec, tmp_path / "home", lake, sink)
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop))
        await _until(lambda: adapter.status.connected, 10, "the broker")
        edge = SparkplugEdge(
            "127.0.0.1",
            port,
            "plant1",
            "node-1",
            {
                "pump-01": ["Pump/BearingTemp", "Pump/Speed", "Pump/Mode"],
                "pump-02": ["Pump/BearingTemp", "Pump/Speed"],
            },
            auth=("edge", users["edge"]),
        )
        await asyncio.to_thread(edge.births)
        t0 = int(time.time() * 1000) - 10_000
        for k in range(5):
            await asyncio.to_thread(
                edge.data,
                "pump-01",
                {"Pump/BearingTemp": 40.0 + k, "Pump/Speed": 29.5},
                t0 + k * 100,
            )
        # a gap: two messages never arrive
        edge.seq = (edge.seq + 2) % 256
        await asyncio.to_thread(edge.data, "pump-02", {"Pump/BearingTemp": 50.0}, t0 + 600)
        await _until(lambda: edge.rebirths >= 1, 10, "a rebirth request after the gap")
        # a malformed payload, and a text metric bound to a sensor (the wrong type)
        await asyncio.sleep(2.1)  # the rebirth limit: one per node every 2 s
        await asyncio.to_thread(
            edge.publish, "spBv1.0/plant1/DDATA/node-1/pump-01", b"\xff\xff not protobuf"
        )
        await _until(lambda: edge.rebirths >= 2, 10, "a rebirth request after the garbage")
        await asyncio.to_thread(
            edge.data, "pump-01", {"Pump/Mode": "AUTO", "Pump/BearingTemp": 45.0}, t0 + 700
        )
        await _until(
            lambda: 45.0 in _values(sink).get(("pump-01", "bearing_temp"), []),
            what="the metrics beside the wrong one",
        )
        edge.close()
        stop.set()
        await task
        return adapter

    adapter = asyncio.run(main())
    dead = _dead(lake)
    reasons = [d["reason"] for d in dead]
    assert reasons.count("sequence_gap") == 1 and reasons.count("malformed") == 1
    assert reasons.count("wrong_type") == 1
    gap = next(d for d in dead if d["reason"] == "sequence_gap")
    assert "2 message(s) of node node-1 missing" in gap["detail"]
    assert next(d for d in dead if d["reason"] == "malformed")["raw"] == b"\xff\xff not protobuf"
    wrong = next(d for d in dead if d["reason"] == "wrong_type")
    assert wrong["sensor_id"] == "discharge_pressure" and "AUTO" in wrong["raw"].decode()
    assert adapter.status.rebirths_requested >= 2


def test_sparkplug_metric_timestamps_and_aliases(tmp_path, spb_broker, monkeypatch):
    """Each metric keeps its own timestamp; data by alias resolves through the birth."""
    port, users = spb_broker
    monkeypatch.setenv("PLANTPULSE_HOST_USERNAME", "host")
    monkeypatch.setenv("PLANTPULSE_HOST_PASSWORD", users["host"])
    spec = SparkplugSpec.model_validate(
        {
            "id": "edge2",
            "kind": "sparkplug",
            "endpoint": f"mqtt://127.0.0.1:{port}",
            "credentials": "host",
            "group": "plant2",
            "flush_ms": 50,
            "bindings": [
                {"device": "*", "metric": "T", "asset": "{device}", "sensor": "bearing_temp"}
            ],
        }
    )

    async def main() -> DecodeSink:
        sink = DecodeSink(keep=True)
        adapter = SparkplugAdapter(spec, tmp_path / "home", None, sink)
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop))
        await _until(lambda: adapter.status.connected, 10, "the broker")
        edge = SparkplugEdge(
            "127.0.0.1", port, "plant2", "n", {"pump-03": ["T"]}, auth=("edge", users["edge"])
        )
        await asyncio.to_thread(edge.births)
        await asyncio.to_thread(edge.data, "pump-03", {"T": 41.5}, 1_767_225_600_123)
        await _until(lambda: sink.readings >= 2, what="the readings")  # birth value + data
        edge.close()
        stop.set()
        await task
        return sink

    sink = asyncio.run(main())
    ts = np.concatenate([d.ts for d in sink.decoded])
    assert 1_767_225_600_123_000 in ts.tolist()
    assert _values(sink)[("pump-03", "bearing_temp")][-1] == 41.5


def test_a_restarted_sparkplug_adapter_resumes_from_its_marks(tmp_path):
    """What the flush committed (aliases, sequence numbers, last timestamps) is where a new
    adapter on the same state directory starts: a redelivered message that was durable is
    acknowledged and not read again, the next one is read by alias without a rebirth."""
    from adapters.proto.sparkplug_b_pb2 import Payload

    spec = SparkplugSpec.model_validate(
        {
            "id": "spb",
            "kind": "sparkplug",
            "endpoint": "mqtt://127.0.0.1:1",
            "group": "g",
            "bindings": [{"device": "*", "metric": "T", "asset": "{device}", "sensor": "temp"}],
        }
    )
    t0 = 1_767_225_600_000

    def data(seq: int, k: int) -> bytes:
        p = Payload(seq=seq, timestamp=t0 + k)
        p.metrics.add(alias=1, timestamp=t0 + k, datatype=10, double_value=float(k))
        return p.SerializeToString()

    first = SparkplugAdapter(spec, tmp_path, None, CountSink())
    first.on_message("spBv1.0/g/NBIRTH/n", Payload(seq=0, timestamp=t0).SerializeToString())
    birth = Payload(seq=1, timestamp=t0)
    birth.metrics.add(name="T", alias=1, datatype=10, double_value=0.0)
    first.on_message("spBv1.0/g/DBIRTH/n/pump-01", birth.SerializeToString())
    for k in range(1, 6):  # seq 2..6
        first.on_message("spBv1.0/g/DDATA/n/pump-01", data(k + 1, k), mid=k, qos=1)
    first.flush()
    first.buffer.close()
    # the process dies; the broker delivers again the last two it had not seen acknowledged
    again = SparkplugAdapter(spec, tmp_path, None, CountSink())
    again.on_message("spBv1.0/g/DDATA/n/pump-01", data(5, 4), mid=1, qos=1, dup=True)
    again.on_message("spBv1.0/g/DDATA/n/pump-01", data(6, 5), mid=2, qos=1, dup=True)
    again.on_message("spBv1.0/g/DDATA/n/pump-01", data(7, 6), mid=3, qos=1, dup=True)  # new
    again.on_message("spBv1.0/g/DDATA/n/pump-01", data(8, 7), mid=4, qos=1)
    assert again.redelivered == 2 and again.status.readings_in == 2  # k 6 and 7, once each
    assert dict(again.dead.by_reason) == {} and again.rebirths == []  # no gap, aliases known
    assert [mid for mid, _ in again._acks] == [1, 2, 3, 4]  # every one acknowledged


def test_the_trust_list_takes_pinned_certificates_and_what_a_trusted_ca_signed(tmp_path):
    from cryptography import x509

    from adapters.security import ServerTrust, application_certificate

    plant_ca = broker_tls(tmp_path / "plant-pki")  # a CA and a server certificate it signed
    signed = x509.load_pem_x509_certificate(plant_ca.cert.read_bytes())
    own, _ = application_certificate(tmp_path / "server", "urn:x", server=True)
    own_cert = x509.load_der_x509_certificate(own.read_bytes())
    stranger, _ = application_certificate(tmp_path / "other", "urn:y", server=True)
    stranger_cert = x509.load_der_x509_certificate(stranger.read_bytes())
    pinned = tmp_path / "trusted"
    pinned.mkdir()
    (pinned / "server.der").write_bytes(own.read_bytes())
    (pinned / "server.key").write_text("not a certificate: skipped")
    trust = ServerTrust([pinned, plant_ca.ca])
    assert trust.trusts(own_cert) and trust.trusts(signed)
    assert not trust.trusts(stranger_cert)
    assert not ServerTrust([]).trusts(own_cert)  # nothing is trusted on first use


# -- MQTT over TLS ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """Mosquitto as the set-up writes it with a TLS listener beside the loopback one."""
    directory = tmp_path_factory.mktemp("mosquitto-tls")
    port, tls_port = free_port(), free_port()
    conf = write_config(
        directory,
        port,
        {},
        acl={
            "host": ["topic readwrite spBv1.0/#"],
            "edge": ["topic readwrite spBv1.0/#"],
            "plc": ["topic write plantpulse/+/plc"],
        },
        tls=("127.0.0.1", tls_port),
    )
    proc = subprocess.Popen(
        [ensure_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(tls_port)
    users = json.loads((directory / "credentials.json").read_text())
    yield port, tls_port, users, directory / "tls" / "ca.crt"
    proc.terminate()
    proc.wait(10)


def test_mqtt_logins_are_checked_on_both_listeners_and_tls_verifies_the_broker(
    tmp_path, tls_broker
):
    port, tls_port, users, ca = tls_broker
    plc = ("plc", users["plc"])
    assert mqtt_login_attempt(port) == "Not authorized"  # anonymous
    assert mqtt_login_attempt(tls_port, tls_ca=ca) == "Not authorized"
    assert mqtt_login_attempt(tls_port, ("plc", "guess"), tls_ca=ca) == "Not authorized"
    assert mqtt_login_attempt(tls_port, plc, tls_ca=ca) == "accepted"
    assert mqtt_login_attempt(port, plc) == "accepted"
    assert mqtt_login_attempt(tls_port, plc) != "accepted"  # plain MQTT on the TLS port
    other_ca = broker_tls(tmp_path / "another-installation").ca
    refused = mqtt_login_attempt(tls_port, plc, tls_ca=other_ca)
    assert "CERTIFICATE_VERIFY_FAILED" in refused  # a broker this CA did not sign: not trusted
    key = (ca.parent / "server.key").stat().st_mode
    assert stat.S_IMODE(key) == 0o600
    assert "tls_version tlsv1.2" in (ca.parent.parent / "mosquitto.conf").read_text()


def test_sparkplug_and_the_stream_sink_over_tls(tmp_path, tls_broker, monkeypatch):
    """An edge node publishing over TLS, the Sparkplug adapter reading over TLS, and the
    adapter's sink forwarding over TLS into the stream's broker, seen by a TLS subscriber."""
    import paho.mqtt.client as mqtt

    from adapters.sinks import MqttSink

    port, tls_port, users, ca = tls_broker
    monkeypatch.setenv("PLANTPULSE_HOST_USERNAME", "host")
    monkeypatch.setenv("PLANTPULSE_HOST_PASSWORD", users["host"])
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.username_pw_set("worker", users["worker"])
    sub.tls_set(ca_certs=str(ca))
    sub.on_message = lambda c, u, msg: got.append(msg.payload)
    sub.connect("127.0.0.1", tls_port)
    sub.subscribe("plantpulse/#", qos=1)
    sub.loop_start()
    sink = MqttSink(
        "127.0.0.1", tls_port, "plantpulse-adapter-plc", ("plc", users["plc"]), tls_ca=ca
    )
    spec = SparkplugSpec.model_validate(
        {
            "id": "edge-tls",
            "kind": "sparkplug",
            "endpoint": f"mqtt://127.0.0.1:{tls_port}",
            "credentials": "host",
            "group": "tls1",
            "tls": True,
            "tls_ca": str(ca),
            "flush_ms": 50,
            "bindings": [
                {"device": "*", "metric": "T", "asset": "{device}", "sensor": "bearing_temp"}
            ],
        }
    )

    async def main() -> SparkplugAdapter:
        adapter = SparkplugAdapter(spec, tmp_path / "home", None, DecodeSink(keep=True))
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop))
        await _until(lambda: adapter.status.connected, 10, "the broker over TLS")
        edge = SparkplugEdge(
            "127.0.0.1", tls_port, "tls1", "n", {"pump-04": ["T"]}, ("edge", users["edge"]), ca
        )
        await asyncio.to_thread(edge.births)
        await asyncio.to_thread(edge.data, "pump-04", {"T": 42.5}, 1_767_225_600_000)
        await _until(lambda: adapter.status.readings_in >= 2, what="the readings over TLS")
        await _until(lambda: sink.connected, 10, "the sink over TLS")
        payload = encode_arrow(
            "pump-04", np.array(["bearing_temp"], object), np.array([1], np.int64), np.ones(1)
        )
        await asyncio.to_thread(sink.send, "plc", [(1, "plantpulse/pump-04/plc", payload, 1)])
        await _until(lambda: len(got) >= 1, 10, "the subscriber over TLS")
        edge.close()
        stop.set()
        await task
        return adapter

    try:
        adapter = asyncio.run(main())
    finally:
        sink.close()
        sub.loop_stop()
        sub.disconnect()
    assert _values(adapter.forwarder.sink)[("pump-04", "bearing_temp")][-1] == 42.5
    assert got[0][:4] == b"PPA1"  # the stream's Arrow payload, through the TLS listener


# -- the store-and-forward buffer ---------------------------------------------------------------
def test_buffer_is_bounded_and_overflow_is_recorded(tmp_path):
    """The stream is down: the buffer grows to its bound, no further; the oldest messages go to
    dead_letter (payload kept) and are counted; when the stream is back the rest drains."""
    lake = _lake(tmp_path)
    spec = ModbusSpec.model_validate(
        {
            "id": "plc",
            "kind": "modbus",
            "endpoint": "tcp://127.0.0.1:1",
            "buffer_mb": 0.05,
            "bindings": [{"register": 0, "asset": "pump-02", "sensor": "discharge_pressure"}],
        }
    )
    sink = DecodeSink()
    sink.available = False
    adapter = ModbusAdapter(spec, tmp_path / "home", lake, sink)
    adapter.forwarder.start()
    t0 = 1_767_225_600_000_000
    emitted = 0
    for k in range(40):
        ts = t0 + (np.arange(100) + k * 100) * 100_000
        adapter.emit("pump-02", "discharge_pressure", ts, np.full(100, 3.0))
        emitted += 100
        adapter.flush()
        assert adapter.buffer.bytes <= adapter.buffer.max_bytes
    assert adapter.buffer.overflow_readings > 0
    adapter.dead.flush()
    adapter.write_status()
    overflow = [d for d in _dead(lake) if d["reason"] == "buffer_overflow"]
    assert len(overflow) == adapter.buffer.overflow_messages
    assert sum(int(d["raw"][:4] == b"PPA1") for d in overflow) == len(overflow)
    kept = adapter.buffer.readings
    assert kept + adapter.buffer.overflow_readings == emitted  # every reading accounted for
    sink.available = True
    deadline = time.monotonic() + 10
    while adapter.buffer.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    adapter.forwarder.stop()
    assert sink.readings == kept and adapter.buffer.messages == 0
    # the buffer, reopened, still knows its overflow (it is on disk)
    adapter.buffer.close()
    again = DiskBuffer(tmp_path / "home" / "adapters" / "plc" / "buffer.sqlite", 1000)
    assert again.overflow_readings == emitted - kept
    table = rows(read_statuses(tmp_path / "home"), time.time_ns() // 1000)
    assert table[0]["adapter"] == "plc" and table[0]["overflow"] == emitted - kept


# -- into the stream --------------------------------------------------------------------------
def test_modbus_readings_reach_the_lake_through_the_broker_and_the_stream(tmp_path, spb_broker):
    """The adapter forwards into the stream's broker (as its own user, numbered messages); the
    MQTT stream decodes the Arrow payloads and writes every reading once."""
    import threading

    from bytewax.testing import run_main

    from adapters.sinks import MqttSink
    from bytewax_flows.mqtt import MQTTSource
    from bytewax_flows.sinks import DeltaSink
    from bytewax_flows.telemetry import build_flow

    port, users = spb_broker
    lake = Lake(tmp_path / "lake")
    source = MQTTSource(port=port, idle_stop_s=4.0, username="worker", password=users["worker"])
    done = threading.Event()

    def stream() -> None:
        try:
            run_main(build_flow(source, DeltaSink(lake.uri, max_rows=10_000, max_age_s=0.2)))
        finally:
            done.set()

    async def main() -> ModbusAdapter:
        server = ModbusTestServer(n_holding=10)
        await server.start()
        spec = ModbusSpec.model_validate(
            {
                "id": "plc",
                "kind": "modbus",
                "endpoint": f"tcp://127.0.0.1:{server.port}",
                "poll_ms": 100,
                "flush_ms": 100,
                "bindings": [
                    {
                        "register": 0,
                        "scale": 0.01,
                        "asset": "pump-02",
                        "sensor": "discharge_pressure",
                    },
                    {
                        "register": 1,
                        "type": "float32",
                        "asset": "pump-02",
                        "sensor": "motor_current",
                    },
                ],
            }
        )
        from pymodbus.client import AsyncModbusTcpClient

        c = AsyncModbusTcpClient("127.0.0.1", port=server.port)
        await c.connect()
        await c.write_registers(0, [350, *registers_for(21.5, "float32")], device_id=1)
        c.close()
        await asyncio.to_thread(start_stream)
        sink = MqttSink("127.0.0.1", port, "plantpulse-adapter-plc", ("plc", users["plc"]))
        adapter = ModbusAdapter(spec, tmp_path / "home", lake, sink)
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop))
        await _until(lambda: adapter.status.readings_forwarded >= 20, 20, "forwarding")
        stop.set()
        await task
        sink.close()
        await server.stop()
        return adapter

    def start_stream() -> None:
        threading.Thread(target=stream, daemon=True).start()
        time.sleep(1.5)  # the worker connects and subscribes

    adapter = asyncio.run(main())
    assert done.wait(60), "the stream did not stop after its input went idle"
    forwarded = adapter.status.readings_forwarded
    assert forwarded == adapter.status.readings_in and adapter.buffer.messages == 0
    readings = lake.read("readings")
    assert len(readings) == forwarded  # every reading once
    assert set(readings["sensor_id"]) == {"discharge_pressure", "motor_current"}
    assert set(readings["asset_id"]) == {"pump-02"}
    assert readings.loc[readings["sensor_id"] == "motor_current", "value"].eq(21.5).all()
    assert lake.count("dead_letter") == 0


def test_up_runs_the_adapters_with_their_own_broker_users(tmp_path):
    from plantpulse_cli.up import adapter_acl, services

    acl = adapter_acl(str(EXAMPLE), 1883)
    assert acl["plc-modbus"] == ["topic write plantpulse/pump-02/plc-modbus"]  # its assets
    assert "topic readwrite spBv1.0/plant1/#" in acl["sparkplug"]
    running = services(
        "127.0.0.1",
        3000,
        ui=False,
        mqtt=("/usr/sbin/mosquitto", 1883),
        home=str(tmp_path),
        adapters=str(EXAMPLE),
    )
    argv = {s.name: s.argv for s in running}
    for adapter in ("scada-opcua", "plc-modbus", "edge-sparkplug"):  # a process each
        assert argv[f"adapter-{adapter}"][1:] == [
            "-m", "adapters.run", str(EXAMPLE), "--broker-port", "1883", "--only", adapter,
        ]  # fmt: skip
    assert all(s.restart for s in running if s.name.startswith("adapter-"))
    users = json.loads((tmp_path / "mosquitto" / "credentials.json").read_text())
    assert {"worker", "scada-opcua", "plc-modbus", "edge-sparkplug", "sparkplug"} <= set(users)


def test_cli_adapters_status_and_browse_errors(tmp_path, monkeypatch, capsys):
    from plantpulse_cli.main import main

    monkeypatch.setenv("PLANTPULSE_HOME", str(tmp_path))
    assert main(["adapters", "status"]) == 0
    assert "no adapter has run" in capsys.readouterr().out
    assert main(["adapters", "browse", "http://nowhere"]) == 2
    assert "not an OPC UA endpoint" in capsys.readouterr().err
    assert main(["adapters", "browse", f"opc.tcp://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot browse") and "Traceback" not in err


# -- the integrator's path: plantpulse up --adapters, an adapter killed mid-stream ---------------
def test_up_with_adapters_survives_a_kill_of_every_adapter_mid_stream(tmp_path):
    """``plantpulse up --adapters PLANT.yaml`` as processes over a real OPC UA server, Modbus
    device and Sparkplug edge node (``bench.adapters.kill_restart``, the bench's ``kill``
    part).  The broker is frozen (the buffers fill), every adapter is SIGKILLed, ``up`` starts
    them again: each OPC UA value and Sparkplug metric written lands in ``readings`` exactly
    once (the buffer resent, the gap read from the server's history, the broker's
    unacknowledged messages read once), no Modbus reading twice."""
    from bench.adapters import kill_restart

    run = kill_restart(tmp_path)
    out, counts, readings = run["up_output"], run["counts"], run["readings"]
    assert "adapter-scada exited with code -9; starting it again" in out, out[-3000:]
    assert "adapter-edge exited with code -9; starting it again" in out
    assert counts["kill_adapters_restarted"] == counts["kill_adapters_killed"] == 3
    for asset in ("opc-01", "plc-01", "edge-01"):  # no reading twice
        mine = readings[readings["asset_id"] == asset]
        assert not mine.duplicated(["sensor_id", "us"]).any(), asset
    assert counts["kill_readings_duplicated"] == 0
    # OPC UA: every value written since the adapter first read is there once, none other
    opc = readings[(readings["asset_id"] == "opc-01") & (readings["sensor_id"] == "level_a")]
    got = dict(zip(opc["us"], opc["value"], strict=True))
    wanted = {ts: v for ts, v in run["written"] if ts >= min(got)}
    assert {ts: got.get(ts) for ts in wanted} == wanted  # none lost (the gap came from history)
    assert set(got) - set(wanted) <= {min(got)}  # at most the value current at the first read
    assert min(got) <= run["first_session"]  # from its very first session on
    # Sparkplug: every metric the broker acknowledged is there once
    spb = readings[readings["asset_id"] == "edge-01"]
    spb_a = spb[spb["sensor_id"] == "level_a"]
    a = dict(zip(spb_a["us"], spb_a["value"], strict=True))
    published = run["published"]
    assert {ts * 1000: a.get(ts * 1000) for ts, _, _ in published} == {
        ts * 1000: v for ts, v, _ in published
    }
    assert len(spb) == 2 * len(published) + 2  # the data, and the births' values
    assert counts["kill_readings_lost"] == 0
    # the buffers held messages when the adapters died; they went out after the restart
    assert run["held"]["scada"] > 0 and run["held"]["plc"] > 0
    assert counts["kill_opcua_backfilled"] > 0  # the values written while it was down
    # a resend of what the stream already had is the only dead letter: recorded, not kept
    assert set(run["dead_letter_reasons"]) <= {"out_of_sequence"}


def test_cli_trusts_a_server_only_with_the_fingerprint_its_owner_gave(
    tmp_path, monkeypatch, capsys
):
    from adapters.security import fingerprint, opcua_dir
    from plantpulse_cli.main import main

    monkeypatch.setenv("PLANTPULSE_HOME", str(tmp_path / "home"))
    server = OpcuaTestServer({"pump-01": ["bearing_temp"]}, cert_dir=tmp_path / "srv")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    try:
        fp = fingerprint(server.certificate)
        assert main(["adapters", "trust", server.url]) == 0
        shown = capsys.readouterr().out
        assert fp in shown and "not trusted yet" in shown
        assert not (opcua_dir(tmp_path / "home") / "trusted").exists()
        assert main(["adapters", "trust", server.url, "--fingerprint", "AB:CD"]) == 2
        assert "not the fingerprint given" in capsys.readouterr().err
        assert main(["adapters", "trust", server.url, "--fingerprint", fp.lower()]) == 0
        [pinned] = (opcua_dir(tmp_path / "home") / "trusted").iterdir()
        assert pinned.read_bytes() == server.certificate
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
