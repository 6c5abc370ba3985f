"""Outbound against real servers on loopback: a Mosquitto subscriber sees each asset's state
(JSON and Sparkplug B), an asyncua client reads the alert state from the outbound OPC UA
server, and a CMMS webhook that fails twice gets exactly one work order, also across a
restart of the deliverer.  The stream is not run here: rows are appended to the lake's
``scores`` and ``alerts`` tables as the stream writes them (bench.outbound runs it all)."""

from __future__ import annotations

import asyncio
import http.server
import json
import queue
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from asyncua import Client, ua

from adapters.opcua import secure_client
from adapters.proto import DataType
from adapters.proto import sparkplug_b_pb2 as spb
from adapters.security import opcua_dir, trust_certificate
from dataplane.alerts import AlertPolicy
from lake import Lake
from outbound import probes
from outbound.__main__ import main as outbound_main
from outbound.opcua import VARIABLES
from outbound.service import Outbound
from outbound.state import StateBook, alert_key
from outbound.tail import TableTail
from plant import PlantError, load_plant
from plantpulse_cli.broker import OUTBOUND, ensure_mosquitto, wait_for_port, write_config
from tests.conftest import T0_US

OPEN_AT = AlertPolicy().anomaly_open_at
"""The fused score at which a channel without its own alarm level opens (health 50 %)."""

PLANT = """\
plant: outbound-test
sensor_kinds:
  temperature: {{unit: degC, range: [-40.0, 200.0], rate_hz: 1.0}}
sites:
  - id: hall-1
    assets:
      - {{id: pump-01, sensors: [{{id: bearing_temp, kind: temperature}}]}}
      - {{id: pump-02, sensors: [{{id: bearing_temp, kind: temperature}}]}}
outbound:
  poll_s: 0.1
{targets}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plant(tmp_path: Path, targets: str):
    path = tmp_path / "plant.yaml"
    path.write_text(PLANT.format(targets=targets))
    return load_plant(path)


def _score(lake: Lake, asset: str, t_us: int, score: float) -> None:
    lake.append(
        "scores",
        {
            "asset_id": [asset],
            "window_end": [t_us],
            "anomaly_score": [score],
            "prediction": [None],
            "model_name": ["river:StandardScaler|mean-squared-z"],
            "model_version": ["online"],
            "feature_version": [1],
            "latency_ms": [1.0],
        },
    )


def _alert(
    lake: Lake,
    asset: str,
    opened_us: int,
    status: str = "open",
    severity: str = "warning",
    updated_us: int | None = None,
) -> str:
    aid = f"{asset}-{opened_us}"
    updated = updated_us or opened_us
    lake.append(
        "alerts",
        {
            "alert_id": [aid],
            "asset_id": [asset],
            "opened_ts": [opened_us],
            "closed_ts": [updated if status == "closed" else None],
            "updated_ts": [updated],
            "severity": [severity],
            "status": [status],
            "summary": [f"{asset}: vibration unlike this machine's normal; anomaly score 30.0"],
            "top_features": [
                [
                    {"feature": "env_bpfo_1", "contribution": 21.0},
                    {"feature": "vib_kurtosis", "contribution": 5.5},
                ]
            ],
            "suspected_cause": [None],
            "downstream_effects": [None],
        },
    )
    return aid


def _deliveries(lake: Lake, target: str) -> list[dict]:
    if not lake.exists("deliveries"):
        return []
    rows = lake.read_arrow("deliveries", filters=[("target", "=", target)]).to_pylist()
    return sorted(rows, key=lambda r: (r["ts"], r["attempt"]))


def _until(check, timeout_s: float = 15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s")


# -- pure: the state book -------------------------------------------------------------------
def test_alert_rows_fold_idempotently_into_one_event_per_state(lake: Lake):
    book = StateBook(site_of=lambda a: "hall-1")
    row = {
        "alert_id": "pump-01-1",
        "asset_id": "pump-01",
        "opened_ts": 1,
        "closed_ts": None,
        "updated_ts": 1,
        "severity": "warning",
        "status": "open",
        "summary": "s",
        "top_features": [],
    }
    escalated = {**row, "updated_ts": 5, "severity": "critical"}
    closed = {**row, "updated_ts": 9, "status": "closed", "closed_ts": 9}
    _, events = book.fold_alerts([closed, row, escalated])  # any order
    assert [e.kind for e in events] == ["open", "escalate", "close"]
    assert book.assets["pump-01"].alert_status == "normal"
    changed, again = book.fold_alerts([row, escalated, closed])  # read again (compaction)
    assert again == [] and changed == set()
    assert book.fold_scores(
        [
            {
                "asset_id": "pump-01",
                "window_end": 3,
                "anomaly_score": OPEN_AT,
                "prediction": None,
                "model_name": None,
                "model_version": None,
            }
        ]
    )
    assert book.assets["pump-01"].health == 50.0  # at the opening threshold
    assert not book.fold_scores(
        [
            {
                "asset_id": "pump-01",
                "window_end": 2,
                "anomaly_score": 0.0,
                "prediction": None,
                "model_name": None,
                "model_version": None,
            }
        ]
    )  # older: ignored


def test_the_tail_reads_only_new_files_and_compaction_changes_nothing(lake: Lake):
    tail = TableTail(lake, "alerts")
    assert tail.poll() is None  # no table yet
    _alert(lake, "pump-01", T0_US)
    assert tail.poll().num_rows == 1
    assert tail.poll() is None
    _alert(lake, "pump-02", T0_US + 1)
    assert tail.poll()["asset_id"].to_pylist() == ["pump-02"]
    book = StateBook()
    _, events = book.fold_alerts(lake.read_arrow("alerts").to_pylist())
    lake.compact("alerts")
    again = tail.poll()  # the compacted file holds both rows again
    assert again is not None and again.num_rows == 2
    assert book.fold_alerts(again.to_pylist()) == (set(), []) and len(events) == 2


# -- configuration ------------------------------------------------------------------------------
def test_a_bad_outbound_section_names_its_line(tmp_path: Path):
    with pytest.raises(PlantError, match=r"plant.yaml:11: outbound.webhook.url: .*https"):
        _plant(tmp_path, "  webhook: {url: ftp://cmms}")
    with pytest.raises(PlantError, match="unknown key 'colour'"):
        _plant(tmp_path, "  opcua: {colour: red}")


def test_outbound_without_a_section_is_a_one_line_error(tmp_path: Path, capsys):
    path = tmp_path / "plain.yaml"
    path.write_text(PLANT.format(targets="").replace("outbound:\n  poll_s: 0.1\n", ""))
    assert outbound_main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no outbound: section" in err and "\n" not in err


# -- MQTT and Sparkplug B ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """A real Mosquitto as the set-up configures it (authentication, ACLs)."""
    directory = tmp_path_factory.mktemp("mosquitto")
    port = _free_port()
    conf = write_config(directory, port, {"simulator": ["pump-01", "pump-02"]})
    proc = subprocess.Popen(
        [ensure_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port)
    users = json.loads((directory / "credentials.json").read_text())
    yield port, users
    proc.terminate()
    proc.wait(10)


def _subscriber(port: int, auth: tuple[str, str], topics: list[str]) -> queue.Queue:
    got: queue.Queue = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set(*auth)
    subscribed = threading.Event()
    c.on_connect = lambda cl, *_: [cl.subscribe(t, qos=1) for t in topics]
    c.on_subscribe = lambda *_: subscribed.set()
    c.on_message = lambda cl, u, msg: got.put((msg.topic, msg.payload, msg.retain))
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert subscribed.wait(10)
    got.client = c  # type: ignore[attr-defined]
    return got


def _next(got: queue.Queue, topic_part: str, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            topic, payload, retain = got.get(timeout=0.2)
        except queue.Empty:
            continue
        if topic_part in topic:
            return topic, payload, retain
    raise AssertionError(f"no message on {topic_part} within {timeout_s} s")


def test_a_subscriber_sees_each_assets_state_and_sparkplug_metrics(
    tmp_path: Path, lake: Lake, broker
):
    port, users = broker
    auth = (OUTBOUND, users[OUTBOUND])
    plant = _plant(tmp_path, f"  mqtt: {{port: {port}, min_interval_s: 0}}")
    _score(lake, "pump-01", T0_US, 2.0)
    aid = _alert(lake, "pump-01", T0_US + 1_000_000, severity="critical")
    spark = _subscriber(port, auth, ["spBv1.0/#"])
    service = Outbound(plant, lake, mqtt_auth=auth)
    service.start()
    try:
        _, payload, _ = _next(spark, "/NBIRTH/plantpulse-outbound")
        birth = spb.Payload.FromString(payload)
        assert {m.name for m in birth.metrics} == {"bdSeq", "Node Control/Rebirth"}
        assert birth.seq == 0
        topic, payload, _ = _next(spark, "/DBIRTH/")
        assert topic == "spBv1.0/outbound-test/DBIRTH/plantpulse-outbound/pump-01"
        metrics = {m.name: m for m in spb.Payload.FromString(payload).metrics}
        assert metrics["Alert/State"].string_value == "open"
        assert metrics["Alert/Severity"].string_value == "critical"
        assert metrics["Alert/Active"].boolean_value is True
        assert metrics["RUL"].is_null  # no RUL model scores this asset
        assert metrics["Health"].datatype == DataType.Double
        alias = metrics["Alert/State"].alias
        # a dashboard subscribing later still gets the state: it is retained
        states = _subscriber(port, auth, ["plantpulse-out/#"])
        topic, payload, retain = _next(states, "pump-01")
        assert topic == "plantpulse-out/hall-1/pump-01/state" and retain
        state = json.loads(payload)
        assert state["alert"] == {
            **state["alert"],
            "state": "open",
            "alert_id": aid,
            "severity": "critical",
            "active": True,
        }
        assert state["anomaly_score"] == 2.0 and 0 < state["health"] <= 100
        # the alert closes: the JSON state and a DDATA (aliases only) say so
        _alert(lake, "pump-01", T0_US + 1_000_000, status="closed", updated_us=T0_US + 9_000_000)
        _, payload, _ = _next(states, "pump-01")
        assert json.loads(payload)["alert"]["state"] == "normal"
        _, payload, _ = _next(spark, "/DDATA/plantpulse-outbound/pump-01")
        data = {m.alias: m for m in spb.Payload.FromString(payload).metrics}
        assert data[alias].string_value == "normal" and not data[alias].name
        states.client.disconnect()  # type: ignore[attr-defined]
    finally:
        service.stop()
        spark.client.disconnect()  # type: ignore[attr-defined]
    rows = _deliveries(lake, "mqtt")
    assert [(r["key"], r["status"]) for r in rows] == [
        (alert_key(aid, "open", "critical"), "delivered"),
        (alert_key(aid, "closed", ""), "delivered"),
    ]
    assert {r["key"] for r in _deliveries(lake, "sparkplug")} == {r["key"] for r in rows}


# -- OPC UA ------------------------------------------------------------------------------------
def _opcua_login(home: Path, user: str = "scada") -> tuple[str, str]:
    """The password the set-up generated for ``user``, and the server's certificate trusted
    (what an integrator does once: ``plantpulse adapters trust`` or copying the file)."""
    trust_certificate(home, (opcua_dir(home) / "server" / "cert.der").read_bytes(), "outbound")
    return user, json.loads((opcua_dir(home) / "credentials.json").read_text())[user]


def test_an_opcua_client_reads_the_alert_state_from_the_outbound_server(tmp_path: Path, lake: Lake):
    port = _free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/plantpulse"
    plant = _plant(tmp_path, f"  opcua: {{endpoint: '{endpoint}'}}")
    _score(lake, "pump-01", T0_US, 30.0)
    aid = _alert(lake, "pump-01", T0_US + 1_000_000)
    service = Outbound(plant, lake, home=tmp_path)
    service.start()
    auth = _opcua_login(tmp_path)

    async def read(names: list[str]) -> dict[str, ua.DataValue]:
        async with await secure_client(endpoint, tmp_path, auth=auth) as client:
            ns = await client.get_namespace_index("urn:plantpulse:outbound-test")
            out = {}
            for name in names:
                node = client.get_node(ua.NodeId(name, ns))
                out[name] = await node.read_data_value(raise_on_bad_status=False)
            path = await client.nodes.objects.get_child(
                [f"{ns}:outbound-test", f"{ns}:hall-1", f"{ns}:pump-01", f"{ns}:AlertState"]
            )
            out["browsed"] = await path.read_data_value()
            return out

    try:
        values = _until(
            lambda: (
                (
                    v := asyncio.run(
                        read(
                            [
                                "pump-01.AlertState",
                                "pump-01.AlertSeverity",
                                "pump-01.AlertId",
                                "pump-01.Health",
                                "pump-02.Health",
                                "pump-01.RUL",
                            ]
                        )
                    )
                )["pump-01.AlertState"].Value.Value
                == "open"
                and v
            )
        )
        assert values["browsed"].Value.Value == "open"  # by browse path too
        assert values["pump-01.AlertSeverity"].Value.Value == "warning"
        assert values["pump-01.AlertId"].Value.Value == aid
        assert values["pump-01.Health"].Value.Value == pytest.approx(
            100 * OPEN_AT / (OPEN_AT + 30), abs=0.01
        )
        for unknown in ("pump-02.Health", "pump-01.RUL"):  # never scored / no RUL model
            assert values[unknown].StatusCode.value == ua.StatusCodes.BadWaitingForInitialData
        _alert(lake, "pump-01", T0_US + 1_000_000, status="closed", updated_us=T0_US + 20_000_000)
        _until(
            lambda: (
                asyncio.run(read(["pump-01.AlertState"]))["pump-01.AlertState"].Value.Value
                == "normal"
            )
        )
    finally:
        service.stop()
    assert [r["status"] for r in _deliveries(lake, "opcua")] == ["delivered", "delivered"]


def test_the_outbound_opcua_server_refuses_anonymous_wrong_passwords_writes_and_no_security(
    tmp_path: Path, lake: Lake
):
    """Secure by default: only Basic256Sha256 endpoints (Sign, SignAndEncrypt), sessions only
    for the set-up's users; every attempt is a real session over TCP."""
    port = _free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/plantpulse"
    plant = _plant(tmp_path, f"  opcua: {{endpoint: '{endpoint}', users: [scada, hmi]}}")
    _score(lake, "pump-01", T0_US, 30.0)
    service = Outbound(plant, lake, home=tmp_path)
    service.start()
    user, password = _opcua_login(tmp_path)
    hmi = _opcua_login(tmp_path, "hmi")
    assert stat.S_IMODE((opcua_dir(tmp_path) / "credentials.json").stat().st_mode) == 0o600
    assert password not in (opcua_dir(tmp_path) / "users").read_text()  # the server keeps hashes
    nodes = [service.opcua.node_id("pump-01", name) for name, _ in VARIABLES]

    async def attempts() -> dict[str, Any]:
        offered = await Client(endpoint, timeout=10).connect_and_get_server_endpoints()
        return {
            "offered": offered,
            "encrypted": await probes.session(endpoint, tmp_path, auth=(user, password)),
            "signed": await probes.session(endpoint, tmp_path, security="Sign", auth=hmi),
            "anonymous": await probes.session(endpoint, tmp_path),
            "anonymous_signed": await probes.session(endpoint, tmp_path, security="Sign"),
            "wrong_password": await probes.session(endpoint, tmp_path, auth=(user, "guess")),
            "unknown_user": await probes.session(endpoint, tmp_path, auth=("admin", password)),
            "no_security": await probes.session(endpoint, tmp_path, security="None", auth=hmi),
            "unsecured_channel": await probes.unsecured_session(endpoint, (user, password)),
            "unsecured_anonymous": await probes.unsecured_session(endpoint),
            "writes": await probes.writes(endpoint, tmp_path, nodes, auth=(user, password)),
            "health": await probes.session(endpoint, tmp_path, auth=(user, password)),
        }

    try:
        got = asyncio.run(attempts())
        health = asyncio.run(_read_value(endpoint, tmp_path, (user, password), nodes[0]))
    finally:
        service.stop()
    policies = {(e.SecurityPolicyUri.rsplit("#")[-1], e.SecurityMode.name) for e in got["offered"]}
    assert policies == {("Basic256Sha256", "Sign"), ("Basic256Sha256", "SignAndEncrypt")}
    tokens = {t.TokenType.name for e in got["offered"] for t in e.UserIdentityTokens}
    assert tokens == {"UserName"}  # no anonymous token on any endpoint
    assert got["encrypted"].accepted and got["signed"].accepted
    for name in ("anonymous", "anonymous_signed", "wrong_password", "unknown_user"):
        assert not got[name].accepted, name
    assert got["anonymous"].detail == "BadIdentityTokenRejected"
    assert got["wrong_password"].detail == "BadUserAccessDenied"
    assert not got["no_security"].accepted and "No matching endpoints" in got["no_security"].detail
    # a client forcing a channel without security gets nothing, even with the right password
    assert not got["unsecured_channel"].accepted and not got["unsecured_anonymous"].accepted
    assert len(got["writes"]) == len(VARIABLES)
    assert not any(w.accepted for w in got["writes"])
    assert {w.detail for w in got["writes"]} == {"BadUserAccessDenied"}
    assert health == pytest.approx(
        100 * OPEN_AT / (OPEN_AT + 30), abs=0.01
    )  # still the outbound's value


async def _read_value(endpoint: str, home: Path, auth: tuple[str, str], nid: str) -> Any:
    async with await secure_client(endpoint, home, auth=auth) as client:
        return await client.get_node(nid).read_value()


def test_an_insecure_outbound_server_needs_a_reason_and_then_says_so(tmp_path: Path, lake: Lake):
    port = _free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/plantpulse"
    for targets in (
        f"  opcua: {{endpoint: '{endpoint}', security: [None]}}",
        f"  opcua: {{endpoint: '{endpoint}', allow_anonymous: true}}",
    ):
        with pytest.raises(PlantError) as err:
            _plant(tmp_path, targets)
        assert err.value.field == "outbound.opcua" and "say why in insecure_reason" in str(
            err.value
        )
        assert "\n" not in str(err.value)
    plant = _plant(
        tmp_path,
        f"  opcua: {{endpoint: '{endpoint}', security: [SignAndEncrypt, None], "
        "allow_anonymous: true, insecure_reason: 'HMI panel on an isolated cell network'}",
    )
    service = Outbound(plant, lake, home=tmp_path)
    service.start()
    try:
        anonymous = asyncio.run(probes.session(endpoint, tmp_path, security="None"))
        nodes = [service.opcua.node_id("pump-01", "Health")]
        written = asyncio.run(probes.writes(endpoint, tmp_path, nodes, auth=None, security="None"))
    finally:
        service.stop()
    assert anonymous.accepted  # what the plant file asked for, with its reason
    assert [w.accepted for w in written] == [False]  # still read-only


# -- the CMMS webhook ---------------------------------------------------------------------------
class _Receiver(http.server.BaseHTTPRequestHandler):
    """A CMMS that refuses the first ``fail`` POSTs (503) and accepts the rest."""

    fail = 2
    seen: list[tuple[str, dict]] = []
    accepted: list[tuple[str, dict]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers["Idempotency-Key"]
        type(self).seen.append((key, body))
        if len(type(self).seen) <= type(self).fail:
            self.send_response(503)
        elif key in {k for k, _ in type(self).accepted}:
            self.send_response(409)  # a duplicate would be refused, and fail the test below
        else:
            type(self).accepted.append((key, body))
            self.send_response(201)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def cmms():
    _Receiver.fail, _Receiver.seen, _Receiver.accepted = 2, [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/work-orders"
    server.shutdown()
    server.server_close()


def test_a_cmms_that_fails_twice_gets_one_work_order_even_across_a_restart(
    tmp_path: Path, lake: Lake, cmms: str
):
    plant = _plant(
        tmp_path,
        f"  webhook: {{url: '{cmms}', backoff_s: 0.05, "
        f"frames_link: 'http://hmi/frames?alert={{alert_id}}'}}",
    )
    _score(lake, "pump-01", T0_US, 30.0)
    aid = _alert(lake, "pump-01", T0_US + 1_000_000)
    service = Outbound(plant, lake)
    service.start()
    assert service.webhook.wait_idle(20)
    service.stop()
    key = alert_key(aid, "open", "warning")
    assert len(_Receiver.seen) == 3 and {k for k, _ in _Receiver.seen} == {key}
    assert len(_Receiver.accepted) == 1
    order = _Receiver.accepted[0][1]
    assert order["event"] == "open" and order["asset_id"] == "pump-01"
    assert order["evidence"]["top_features"][0] == {"feature": "env_bpfo_1", "contribution": 21.0}
    assert f"retained_because = 'alert:{aid}'" in order["evidence"]["frames_query"]
    assert order["evidence"]["frames_link"] == f"http://hmi/frames?alert={aid}"
    rows = _deliveries(lake, "webhook")
    assert [(r["attempt"], r["status"], r["code"]) for r in rows] == [
        (1, "retry", 503),
        (2, "retry", 503),
        (3, "delivered", 201),
    ]
    assert {r["key"] for r in rows} == {key}

    # a restart finds the alert still open: nothing is sent again; its closing is
    again = Outbound(plant, lake)
    again.start()
    try:
        time.sleep(0.5)
        assert again.webhook.wait_idle(10) and len(_Receiver.seen) == 3
        _alert(lake, "pump-01", T0_US + 1_000_000, status="closed", updated_us=T0_US + 30_000_000)
        _until(lambda: len(_Receiver.accepted) == 2)
    finally:
        again.stop()
    assert _Receiver.accepted[1][1]["event"] == "close"
    assert [r["status"] for r in _deliveries(lake, "webhook")] == [
        "retry",
        "retry",
        "delivered",
        "delivered",
    ]


def test_a_refused_work_order_fails_at_once_and_is_recorded(tmp_path: Path, lake: Lake):
    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(422)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    plant = _plant(tmp_path, f"  webhook: {{url: '{url}', backoff_s: 0.05}}")
    _alert(lake, "pump-02", T0_US)
    service = Outbound(plant, lake)
    service.start()
    try:
        assert service.webhook.wait_idle(10)
    finally:
        service.stop()
        server.shutdown()
        server.server_close()
    rows = _deliveries(lake, "webhook")
    assert [(r["attempt"], r["status"], r["code"]) for r in rows] == [(1, "failed", 422)]
    assert "422" in rows[0]["error"]


# -- plantpulse up ----------------------------------------------------------------------------
def test_up_runs_outbound_only_for_a_plant_with_the_section(tmp_path: Path, monkeypatch):
    from plantpulse_cli.up import services, wants_outbound

    assert not wants_outbound()  # the demo plant sends nothing out
    monkeypatch.setenv("PLANTPULSE_PLANT", str(_plant(tmp_path, "  opcua: {}").path))
    assert wants_outbound()
    running = services(
        "127.0.0.1",
        3000,
        ui=False,
        mqtt=("mosquitto", _free_port()),
        home=str(tmp_path),
        outbound=True,
    )
    [out] = [s for s in running if s.name == "outbound"]
    assert out.argv[1:] == ["-m", "outbound"]
    users = json.loads((tmp_path / "mosquitto" / "credentials.json").read_text())
    assert out.env == {
        "PLANTPULSE_OUTBOUND_MQTT_USERNAME": OUTBOUND,
        "PLANTPULSE_OUTBOUND_MQTT_PASSWORD": users[OUTBOUND],
    }
