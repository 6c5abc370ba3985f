"""``plantpulse up``: the Dagster webserver and daemon plus one streaming worker, on localhost.

Each service runs as a child process in its own session (process group); Ctrl-C (or SIGTERM)
stops them all, and if one dies the others are stopped too.  Stopping a service stops its whole
process group, so what it started itself (the ``dagster api grpc`` code server of the webserver
and of the daemon) does not outlive it.

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
from dataclasses import dataclass
from pathlib import Path

from lake import Lake, Settings
from plantpulse_cli.broker import ensure_mosquitto, publishers_for, wait_for_port, write_config
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
"""
LOCK_FILE = "up.lock"


@dataclass
class Service:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None  # this service's own variables, over the common ones

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
        """Ctrl-C to the service's process group; SIGKILL if it has not exited in ``timeout``.
        Then whatever is left of the group (children the service started) gets SIGTERM, and
        SIGKILL after ``grace_s``: the group is empty when this returns."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
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
        for run in runs:
            try:
                instance.run_coordinator.cancel_run(run.run_id)
            except Exception as exc:  # a run that ended meanwhile, or a code server gone
                log.warning("could not cancel run %s: %s", run.run_id, exc)
        ending = RunsFilter(
            run_ids=[r.run_id for r in runs], statuses=[*active, DagsterRunStatus.CANCELING]
        )
        deadline = time.monotonic() + wait_s
        while runs and instance.get_runs_count(ending) and time.monotonic() < deadline:
            time.sleep(0.5)
    if runs:
        log.info("canceled %d Dagster run(s) before stopping", len(runs))
    return [r.run_id for r in runs]


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
) -> list[Service]:
    """The processes to run.  With ``mqtt=(mosquitto binary, port)``: the broker (with
    authentication, its files under ``<home>/mosquitto``), the stream reading from it with
    Bytewax recovery in ``<home>/recovery-mqtt`` (alert state and duplicate tracking survive a
    restart; the broker delivers again what was not yet durable), and the simulated fleet
    publishing to it.  With ``adapters`` (a plant file): the protocol adapters it declares,
    each publishing into the broker as its own user (``python -m adapters.run``).  With
    ``outbound`` (the plant file has an ``outbound:`` section): the outbound process, logging in
    to the broker as its ``outbound`` user."""
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
            state / "mosquitto", mqtt[1], publishers, acl=adapter_acl(adapters, mqtt[1])
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
        out.append(
            Service("adapters", [py, "-m", "adapters.run", adapters, "--broker-port", str(mqtt[1])])
        )
    if (
        mqtt is None and technician
    ):  # confirms alerts on machines the simulator faulted, late or never
        out.append(Service("technician", [py, "-m", "plantpulse_cli.technician"]))
    if outbound:
        out.append(Service("outbound", [py, "-m", "outbound"], env=_outbound_env(mqtt, home)))
    if ui:
        out += [
            Service("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", *code]),
            Service(
                "dagster-webserver",
                [str(bin_dir / "dagster-webserver"), *code, "-h", host, "-p", str(port)],
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
        return _run(settings, host, port, ui, duration_s, mqtt_port, technician, adapters)


def _run(
    settings: Settings,
    host: str,
    port: int,
    ui: bool,
    duration_s: float | None,
    mqtt_port: int | None,
    technician: bool,
    adapters: str | None = None,
) -> int:
    prepare(settings, mqtt=mqtt_port is not None)
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
        print(f"PlantPulse is up. Dagster UI: http://{host}:{port}  lake: {settings.lake_uri}")
        print(f"Logs in {log_dir}. Press Ctrl-C to stop.")
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not stop["now"] and (deadline is None or time.monotonic() < deadline):
            dead = [s for s in running if s.proc is not None and s.proc.poll() is not None]
            if dead:
                for s in dead:
                    print(
                        f"error: {s.name} exited with code {s.proc.returncode if s.proc else '?'};"
                        f" see {log_dir / (s.name + '.log')}",
                        file=sys.stderr,
                    )
                code = 1
                break
            time.sleep(0.5)
    finally:
        print("stopping ...")
        if ui:
            try:
                cancel_runs(settings.dagster_home)
            except Exception as exc:  # the services stop whatever happens here
                log.warning("could not cancel the Dagster runs: %s", exc)
        for svc in reversed(running):
            svc.stop()
        for signum, handler in old.items():
            signal.signal(signum, handler)
    return code
