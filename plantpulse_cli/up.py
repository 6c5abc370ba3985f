"""``plantpulse up``: the Dagster webserver and daemon plus one streaming worker, on localhost.

Each service runs as a child process in its own session (process group); Ctrl-C (or SIGTERM)
stops them all, and if one dies the others are stopped too.  Stopping a service stops its whole
process group, so what it started itself (the ``dagster api grpc`` code server of the webserver
and of the daemon) does not outlive it.

Edge processes are supervised: the protocol adapters and outbound, if they die (a crash, a
kill -9), are started again at once (their buffers and delivery records are on disk), at most
``RESTARTS`` times in ``RESTART_WINDOW_S``; any other service dying stops everything.

One ``plantpulse up`` per state directory: the launcher holds an exclusive lock on
``$PLANTPULSE_HOME/up.lock`` while it runs, and checks that the UI (and broker) port is free
before starting anything, so a second launch is refused with a message and leaves the first
running.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lake import Lake, Settings
from plantpulse_cli.broker import (
    ensure_mosquitto,
    publishers_for,
    wait_for_port,
    wait_for_subscription,
    write_config,
)
from plantpulse_cli.checks import UsageError

log = logging.getLogger(__name__)

DAGSTER_YAML_MARK = "# written by `plantpulse up`"
DAGSTER_YAML = f"""\
{DAGSTER_YAML_MARK} (rewritten at each start; delete this line to keep your own edits)
# local instance, no telemetry (this machine may be offline)
telemetry:
  enabled: false
# The daemon's run queue (the default QueuedRunCoordinator): at most two runs at a time on this
# small machine, one validation day and one retrain at a time; the rest wait in the queue.
concurrency:
  runs:
    max_concurrent_runs: 2
    tag_concurrency_limits:
      - key: plantpulse/queue
        value: validate_day
        limit: 1
      - key: plantpulse/queue
        value: retrain
        limit: 1
# Run monitoring fails a run whose worker has not started in time: Dagster's 3 minutes fail
# runs on a small loaded machine, where a worker takes that long to start and import
run_monitoring:
  enabled: true
  start_timeout_seconds: 600
"""
LOCK_FILE = "up.lock"


RESTARTS, RESTART_WINDOW_S = 5, 60.0
"""A supervised service that dies more often than this is given up on (``up`` stops)."""


@dataclass
class Service:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None  # this service's own variables, over the common ones
    # Ctrl-C to the service's own process first (not its whole group): the Dagster daemon then
    # stops its threads before its code server goes, instead of ticking a sensor against a code
    # server the same Ctrl-C already stopped (a failed tick in the UI)
    leader_first: bool = False
    restart: bool = False  # started again when it dies (see ``supervise``)
    restarts: list[float] = field(default_factory=list)  # when it was restarted (monotonic)

    def may_restart(self) -> bool:
        """Whether a supervised service that died may be started again now."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
        return self.restart and len(self.restarts) < RESTARTS

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        out = open(log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 (lives as long as the child)
        self.proc = subprocess.Popen(
            self.argv,
            env={**env, **(self.env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, timeout: float = 20.0, grace_s: float = 5.0) -> None:
        """Ctrl-C to the service's process group (to its own process, ``leader_first``); SIGKILL
        if it has not exited in ``timeout``.
        Then whatever is left of the group (children the service started) gets SIGTERM, and
        SIGKILL after ``grace_s``: the group is empty when this returns."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                if self.leader_first:
                    self.proc.send_signal(signal.SIGINT)
                else:
                    os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        stop_group(self.proc.pid, grace_s)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group has no process left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal (cannot happen for our own children)
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running."""
    return _signal_group(pgid, 0)


def stop_group(pgid: int, grace_s: float = 5.0) -> None:
    """Stop every process left in group ``pgid``: SIGTERM, then SIGKILL after ``grace_s``."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.1)
    if _signal_group(pgid, signal.SIGKILL):
        log.warning("process group %d did not stop on SIGTERM within %g s; killed", pgid, grace_s)
        deadline = time.monotonic() + 5.0
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


@contextlib.contextmanager
def state_lock(home: str) -> Iterator[Path]:
    """Hold the exclusive ``up`` lock of the state directory ``home`` (``UsageError`` when
    another launcher holds it).  The lock is the kernel's (flock): it goes with the process,
    so a killed launcher leaves no stale lock behind."""
    path = Path(home) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(
            f"cannot use the state directory {home} ({exc.strerror or exc}); set PLANTPULSE_HOME"
            " to a writable directory"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise UsageError(
                f"another `plantpulse up` (pid {holder}) is already running on {home}; stop it"
                " first (Ctrl-C), or set PLANTPULSE_HOME to another state directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def check_port_free(host: str, port: int, what: str, option: str) -> None:
    """``UsageError`` when something already listens on ``host:port``."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"{what} port {host}:{port} is already in use ({exc.strerror or exc}); is another"
                f" PlantPulse running? Stop it or choose another port with {option}"
            ) from None


STREAM_TOPIC = "$share/plantpulse/plantpulse/#"
"""The stream's subscription (``bytewax_flows.mqtt``: its shared group and topic)."""

SNAPSHOT_S = 2
"""Bytewax epoch/snapshot interval: the sink commits at least this often, and a restarted worker
resumes from the last snapshot (the sink's offset-keyed commits drop what was already written)."""


def mqtt_recovery_dir(settings: Settings) -> Path:
    """The MQTT stream's own Bytewax recovery store (its flow's steps and partitions are not the
    simulator flow's, so the two cannot share one)."""
    return Path(settings.home) / "recovery-mqtt"


def init_recovery(directory: Path) -> bool:
    """A Bytewax recovery store with one partition, created on first start only (later starts
    resume from it); True when it was created now."""
    if directory.exists():
        return False
    from bytewax.recovery import init_db_dir

    directory.mkdir(parents=True)
    init_db_dir(directory, 1)
    return True


SIMULATION_EPOCH = "simulation_epoch_us"
"""File in the state directory: when the current recovery store (and so the live simulated
fleet's clock) was created, in µs since the epoch."""


def write_dagster_yaml(dagster_home: str) -> Path:
    """The instance configuration: written when missing, and rewritten when it is still the
    launcher's own (so an old state directory gets the current run queue limits)."""
    yaml = Path(dagster_home) / "dagster.yaml"
    if not yaml.exists() or yaml.read_text().startswith(DAGSTER_YAML_MARK):
        yaml.write_text(DAGSTER_YAML)
    return yaml


def prepare(settings: Settings, mqtt: bool = False) -> None:
    """Create the state directory, the Dagster instance, the lake's tables and the stream's
    recovery store (with ``mqtt``, the MQTT stream's).  The lake first: a mistyped
    PLANTPULSE_LAKE fails in a second, before the slow set-up of the Dagster and MLflow stores."""
    Lake(settings.lake_uri).create_tables()
    if mqtt:
        init_recovery(mqtt_recovery_dir(settings))
    elif init_recovery(Path(settings.recovery_dir)):
        # a fresh recovery store: the simulated fleet starts its clock anew (the technician
        # finds each machine's start from the first reading after this moment)
        Path(settings.home, SIMULATION_EPOCH).write_text(f"{time.time_ns() // 1000}\n")
    Path(settings.dagster_home).mkdir(parents=True, exist_ok=True)
    write_dagster_yaml(settings.dagster_home)
    # create the instance's storage once, here: the webserver and the daemon racing to create
    # it on a fresh DAGSTER_HOME fails one of them ("table alembic_version already exists")
    from dagster import DagsterInstance

    with DagsterInstance.from_config(settings.dagster_home):
        pass
    # the same for the MLflow store, which the stream and the Dagster daemon both open
    from models.registry import client

    client(settings.mlflow_tracking_uri).search_experiments(max_results=1)


CANCEL_WAIT_S = 30.0
"""How long ``plantpulse up`` waits, when it stops, for the Dagster runs it canceled to end."""


def cancel_runs(dagster_home: str, wait_s: float = CANCEL_WAIT_S) -> list[str]:
    """Cancel the Dagster runs still queued or in progress, before the services stop, and wait up
    to ``wait_s`` for them to end: stopping the daemon would otherwise kill their workers, and
    the UI would show a user's Ctrl-C as failed runs.  Returns the ids of the canceled runs."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    active = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    ]
    with DagsterInstance.from_config(dagster_home) as instance:
        runs = instance.get_runs(RunsFilter(statuses=active))
        if not runs:
            return []
        for run in runs:
            try:
                instance.run_coordinator.cancel_run(run.run_id)
            except Exception as exc:  # a run that ended meanwhile, or a code server gone
                log.warning("could not cancel run %s: %s", run.run_id, exc)
        ending = RunsFilter(
            run_ids=[r.run_id for r in runs], statuses=[*active, DagsterRunStatus.CANCELING]
        )
        deadline = time.monotonic() + wait_s
        while instance.get_runs_count(ending) and time.monotonic() < deadline:
            time.sleep(0.5)
    log.info("canceled %d Dagster run(s) before stopping", len(runs))
    return [r.run_id for r in runs]


def close_runs(dagster_home: str) -> list[str]:
    """After the services stopped: record as canceled any run that did not end (one a sensor
    queued between ``cancel_runs`` and the daemon's stop, or whose worker went with it), so none
    is left queued for the next start or shown running forever.  Returns their ids."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    unfinished = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ]
    with DagsterInstance.from_config(dagster_home) as instance:
        runs = instance.get_runs(RunsFilter(statuses=unfinished))
        for run in runs:
            instance.report_run_canceled(
                run, message="`plantpulse up` stopped while this run was queued or in progress"
            )
    return [r.run_id for r in runs]


def stop_order(running: list[Service]) -> list[Service]:
    """The order services stop in: the Dagster daemon first (no sensor starts a run after
    ``cancel_runs``), then the others in the reverse of their start."""
    return sorted(reversed(running), key=lambda svc: svc.name != "dagster-daemon")


def services(
    host: str,
    port: int,
    ui: bool = True,
    recovery_dir: str | None = None,
    mqtt: tuple[str, int] | None = None,
    home: str | None = None,
    technician: bool = True,
    adapters: str | None = None,
    outbound: bool = False,
    mqtt_tls: tuple[str, int] | None = None,
) -> list[Service]:
    """The processes to run.  With ``mqtt=(mosquitto binary, port)``: the broker (with
    authentication, its files under ``<home>/mosquitto``), the stream reading from it with
    Bytewax recovery in ``<home>/recovery-mqtt`` (alert state and duplicate tracking survive a
    restart; the broker delivers again what was not yet durable), and the simulated fleet
    publishing to it.  With ``adapters`` (a plant file): the protocol adapters it declares,
    each in its own process (``adapter-<id>``: ``python -m adapters.run --only <id>``),
    publishing into the broker as its own user.  With
    ``outbound`` (the plant file has an ``outbound:`` section): the outbound process, logging in
    to the broker as its ``outbound`` user.  With ``mqtt_tls=(address, port)`` the broker also
    listens with TLS there (``plantpulse_cli.broker.write_config``).  Adapters and outbound are
    restarted when they die."""
    py, code = sys.executable, ["-m", "dagster_project.definitions"]
    bin_dir = Path(py).parent
    flow = "bytewax_flows.telemetry:flow"
    out: list[Service] = []
    if mqtt is not None:
        state = Path(home) if home else Path(recovery_dir or "./recovery").parent
        from physics.simulator import default_fleet
        from plant import default_plant

        # logins and topic ACLs from the plant file: readings only for the assets it declares
        publishers = publishers_for(default_plant(), default_fleet().asset_ids)
        conf = write_config(
            state / "mosquitto",
            mqtt[1],
            publishers,
            acl=adapter_acl(adapters, mqtt[1]),
            tls=mqtt_tls,
        )
        out.append(Service("mosquitto", [mqtt[0], "-c", str(conf)]))
        flow = f"bytewax_flows.mqtt:mqtt_flow('127.0.0.1', {mqtt[1]})"
        recovery_dir = str(state / "recovery-mqtt")
    stream = [py, "-m", "bytewax.run", flow, "-s", str(SNAPSHOT_S)]
    if recovery_dir:
        stream += ["-r", recovery_dir, "-b", "0"]
    out.append(Service("stream", stream))
    if mqtt is not None and "simulator" in publishers:  # the plant declares the simulated fleet
        out.append(Service("publisher", [py, "-m", "bytewax_flows.mqtt", "--port", str(mqtt[1])]))
    if mqtt is not None and adapters is not None:
        from plant import load_plant

        for spec in load_plant(adapters).adapters:  # one process each (a GIL, a crash domain)
            argv = [py, "-m", "adapters.run", adapters, "--broker-port", str(mqtt[1])]
            out.append(Service(f"adapter-{spec.id}", [*argv, "--only", spec.id], restart=True))
    if (
        mqtt is None and technician
    ):  # confirms alerts on machines the simulator faulted, late or never
        out.append(Service("technician", [py, "-m", "plantpulse_cli.technician"]))
    if outbound:
        out.append(
            Service("outbound", [py, "-m", "outbound"], env=_outbound_env(mqtt, home), restart=True)
        )
    if ui:
        out += [
            Service(
                "dagster-daemon",
                [str(bin_dir / "dagster-daemon"), "run", *code],
                leader_first=True,
            ),
            Service(
                "dagster-webserver",
                [str(bin_dir / "dagster-webserver"), *code, "-h", host, "-p", str(port)],
                leader_first=True,
            ),
        ]
    return out


def adapter_acl(plant_file: str | None, port: int) -> dict[str, list[str]]:
    """Broker users for a plant's adapters: each writes ``plantpulse/<asset>/<its id>`` for the
    assets it is bound to; a Sparkplug
    adapter on this broker reads and commands ``spBv1.0/<group>/#`` as its credentials' user,
    beside which a ``sparkplug-edge`` user may publish there (the edge nodes)."""
    if plant_file is None:
        return {}
    from plant import load_plant

    out: dict[str, list[str]] = {}
    for spec in load_plant(plant_file).adapters:
        # the topics of the assets it is bound to (a templated Sparkplug asset, ``{device}``,
        # is any asset: the stream still takes only assets the plant declares, each on its
        # own topic)
        assets = sorted({b.asset for b in spec.bindings})
        out[spec.id] = (
            [f"topic write plantpulse/+/{spec.id}"]
            if any("{" in a for a in assets)
            else [f"topic write plantpulse/{a}/{spec.id}" for a in assets]
        )
        if spec.kind == "sparkplug" and spec.endpoint.endswith(f":{port}"):
            rules = [
                f"topic readwrite spBv1.0/{spec.group}/#",
                f"topic readwrite spBv1.0/STATE/{spec.host_id}",
            ]
            out.setdefault(spec.credentials or spec.id, []).extend(rules)
            out.setdefault("sparkplug-edge", []).append(f"topic readwrite spBv1.0/{spec.group}/#")
    return out


def _outbound_env(mqtt: tuple[str, int] | None, home: str | None) -> dict[str, str]:
    """The outbound process's broker login: the set-up's ``outbound`` user when ``up`` runs the
    broker (else whatever ``PLANTPULSE_OUTBOUND_MQTT_*`` the environment has)."""
    if mqtt is None or home is None:
        return {}
    import json

    from plantpulse_cli.broker import OUTBOUND

    users = json.loads((Path(home) / "mosquitto" / "credentials.json").read_text())
    return {
        "PLANTPULSE_OUTBOUND_MQTT_USERNAME": OUTBOUND,
        "PLANTPULSE_OUTBOUND_MQTT_PASSWORD": users[OUTBOUND],
    }


def edge_setup(home: str) -> list[str]:
    """The identities the plant's edge needs, generated when missing (what the broker's set-up
    does for its users): the outbound OPC UA server's certificate and users, the adapters'
    OPC UA client certificate.  Returns what an integrator needs to know, one line each."""
    from adapters.security import CLIENT_URI, application_certificate, fingerprint, opcua_dir
    from plant import default_plant

    plant = default_plant()
    notes = []
    spec = plant.outbound.opcua if plant.outbound is not None else None
    if spec is not None:
        from outbound.opcua import ServerSecurity

        sec = ServerSecurity.from_spec(spec, plant.name, home)
        notes.append(
            f"outbound OPC UA {spec.endpoint}: {'/'.join(sec.modes)}, users "
            f"{', '.join(spec.users)} (passwords in {opcua_dir(home) / 'credentials.json'}), "
            f"certificate SHA-256 {fingerprint(sec.certificate.read_bytes())}"
        )
    if any(a.kind == "opcua" and a.security != "None" for a in plant.adapters):
        cert, _ = application_certificate(opcua_dir(home) / "client", CLIENT_URI, server=False)
        notes.append(
            f"OPC UA adapters' client certificate {cert} (SHA-256 "
            f"{fingerprint(cert.read_bytes())}): the servers they read must trust it; they "
            f"trust the servers whose certificates are in {opcua_dir(home) / 'trusted'}"
        )
    return notes


def wants_outbound() -> bool:
    """Whether the plant (``PLANTPULSE_PLANT``, else the demo plant) has an ``outbound:``
    section."""
    from plant import default_plant

    return default_plant().outbound is not None


def up(
    host: str = "127.0.0.1",
    port: int = 3000,
    ui: bool = True,
    duration_s: float | None = None,
    mqtt_port: int | None = None,
    technician: bool = True,
    adapters: str | None = None,
    mqtt_tls: tuple[str, int] | None = None,
) -> int:
    """Run the services until Ctrl-C (or for ``duration_s``); returns the exit code."""
    settings = Settings.from_env()
    if adapters is not None:  # checked before anything starts; the stream uses its contracts
        from plant import set_default_plant

        set_default_plant(adapters)
    with state_lock(settings.home):
        if ui:
            check_port_free(host, port, "the Dagster UI", "--port")
        if mqtt_port is not None:
            check_port_free("127.0.0.1", mqtt_port, "the MQTT broker", "--mqtt PORT")
        if mqtt_tls is not None:
            check_port_free(*mqtt_tls, "the MQTT broker's TLS", "--mqtt-tls [HOST:]PORT")
        return _run(settings, host, port, ui, duration_s, mqtt_port, technician, adapters, mqtt_tls)


def _run(
    settings: Settings,
    host: str,
    port: int,
    ui: bool,
    duration_s: float | None,
    mqtt_port: int | None,
    technician: bool,
    adapters: str | None = None,
    mqtt_tls: tuple[str, int] | None = None,
) -> int:
    prepare(settings, mqtt=mqtt_port is not None)
    edge = edge_setup(settings.home)
    mqtt = (ensure_mosquitto(), mqtt_port) if mqtt_port is not None else None
    env = {**os.environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    if mqtt is not None:  # the stream and the publisher log in with what the set-up generates
        env["PLANTPULSE_MQTT_CREDENTIALS"] = str(
            Path(settings.home) / "mosquitto" / "credentials.json"
        )
        env.setdefault("PLANTPULSE_ADAPTER_CREDENTIALS", env["PLANTPULSE_MQTT_CREDENTIALS"])
    log_dir = Path(settings.home) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    running = services(
        host,
        port,
        ui,
        settings.recovery_dir,
        mqtt,
        settings.home,
        technician,
        adapters,
        outbound=wants_outbound(),
        mqtt_tls=mqtt_tls if mqtt is not None else None,
    )
    stop = {"now": False}

    def _stop(signum: int, _frame: object) -> None:
        stop["now"] = True

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        for svc in running:
            svc.start(env, log_dir)
            log.info("started %s (pid %s)", svc.name, svc.proc.pid if svc.proc else "?")
            if svc.name == "mosquitto" and mqtt is not None:
                wait_for_port(mqtt[1])
            # what is published before the stream's first subscription is dropped by the
            # broker: the publishers and adapters start once it subscribed (its session then
            # keeps what comes while it is away)
            if (
                svc.name == "stream"
                and mqtt is not None
                and not wait_for_subscription(log_dir / "mosquitto.log", STREAM_TOPIC)
            ):
                log.warning("the stream has not subscribed yet; starting the publishers")
        print(f"PlantPulse is up. Dagster UI: http://{host}:{port}  lake: {settings.lake_uri}")
        if mqtt_tls is not None and mqtt is not None:
            ca = Path(settings.home) / "mosquitto" / "tls" / "ca.crt"
            print(f"MQTT over TLS on {mqtt_tls[0]}:{mqtt_tls[1]} (clients verify it with {ca})")
        for note in edge:
            print(note)
        print(f"Logs in {log_dir}. Press Ctrl-C to stop.")
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not stop["now"] and (deadline is None or time.monotonic() < deadline):
            if not supervise(running, env, log_dir):
                code = 1
                break
            time.sleep(0.2)
    finally:
        print("stopping ...")
        if ui:
            try:
                cancel_runs(settings.dagster_home)
            except Exception as exc:  # the services stop whatever happens here
                log.warning("could not cancel the Dagster runs: %s", exc)
        for svc in stop_order(running):
            svc.stop()
        if ui:
            try:
                close_runs(settings.dagster_home)
            except Exception as exc:
                log.warning("could not close the Dagster runs: %s", exc)
        for signum, handler in old.items():
            signal.signal(signum, handler)
    return code


def supervise(running: list[Service], env: dict[str, str], log_dir: Path) -> bool:
    """Start again the supervised services that died (what was left of their process group
    stopped first); False when a service died that may not be restarted."""
    for s in running:
        if s.proc is None or s.proc.poll() is None:
            continue
        why = f"{s.name} exited with code {s.proc.returncode}"
        if not s.may_restart():
            print(f"error: {why}; see {log_dir / (s.name + '.log')}", file=sys.stderr)
            return False
        stop_group(s.proc.pid, grace_s=2.0)
        s.restarts.append(time.monotonic())
        print(f"{why}; starting it again ({len(s.restarts)} in {RESTART_WINDOW_S:g} s)")
        s.start(env, log_dir)
        log.info("restarted %s (pid %s)", s.name, s.proc.pid if s.proc else "?")
    return True
