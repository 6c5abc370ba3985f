"""``plantpulse up``: the Dagster webserver and daemon plus one streaming worker, on localhost.

Each service runs as a child process in its own session; Ctrl-C (or SIGTERM) stops them all,
and if one dies the others are stopped too, so nothing is left running in the background.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lake import Lake, Settings
from plantpulse_cli.broker import ensure_mosquitto, wait_for_port, write_config

log = logging.getLogger(__name__)

DAGSTER_YAML = """\
# written by `plantpulse up`: local instance, no telemetry (this machine may be offline)
telemetry:
  enabled: false
"""


@dataclass
class Service:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        out = open(log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 (lives as long as the child)
        self.proc = subprocess.Popen(
            self.argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


SNAPSHOT_S = 2
"""Bytewax epoch/snapshot interval: the sink commits at least this often, and a restarted worker
resumes from the last snapshot (the sink's offset-keyed commits drop what was already written)."""


def mqtt_recovery_dir(settings: Settings) -> Path:
    """The MQTT stream's own Bytewax recovery store (its flow's steps and partitions are not the
    simulator flow's, so the two cannot share one)."""
    return Path(settings.home) / "recovery-mqtt"


def init_recovery(directory: Path) -> None:
    """A Bytewax recovery store with one partition, created on first start only (later starts
    resume from it)."""
    if not directory.exists():
        from bytewax.recovery import init_db_dir

        directory.mkdir(parents=True)
        init_db_dir(directory, 1)


def prepare(settings: Settings, mqtt: bool = False) -> None:
    """Create the state directory, the Dagster instance, the lake's tables and the stream's
    recovery store (with ``mqtt``, the MQTT stream's)."""
    init_recovery(mqtt_recovery_dir(settings) if mqtt else Path(settings.recovery_dir))
    Path(settings.dagster_home).mkdir(parents=True, exist_ok=True)
    yaml = Path(settings.dagster_home) / "dagster.yaml"
    if not yaml.exists():
        yaml.write_text(DAGSTER_YAML)
    # create the instance's storage once, here: the webserver and the daemon racing to create
    # it on a fresh DAGSTER_HOME fails one of them ("table alembic_version already exists")
    from dagster import DagsterInstance

    with DagsterInstance.from_config(settings.dagster_home):
        pass
    # the same for the MLflow store, which the stream and the Dagster daemon both open
    from models.registry import client

    client(settings.mlflow_tracking_uri).search_experiments(max_results=1)
    Lake(settings.lake_uri).create_tables()


def services(
    host: str,
    port: int,
    ui: bool = True,
    recovery_dir: str | None = None,
    mqtt: tuple[str, int] | None = None,
    home: str | None = None,
) -> list[Service]:
    """The processes to run.  With ``mqtt=(mosquitto binary, port)``: the broker (with
    authentication, its files under ``<home>/mosquitto``), the stream reading from it with
    Bytewax recovery in ``<home>/recovery-mqtt`` (alert state and duplicate tracking survive a
    restart; the broker delivers again what was not yet durable), and the simulated fleet
    publishing to it."""
    py, code = sys.executable, ["-m", "dagster_project.definitions"]
    bin_dir = Path(py).parent
    flow = "bytewax_flows.telemetry:flow"
    out: list[Service] = []
    if mqtt is not None:
        state = Path(home) if home else Path(recovery_dir or "./recovery").parent
        conf = write_config(state / "mosquitto", mqtt[1])
        out.append(Service("mosquitto", [mqtt[0], "-c", str(conf)]))
        flow = f"bytewax_flows.mqtt:mqtt_flow('127.0.0.1', {mqtt[1]})"
        recovery_dir = str(state / "recovery-mqtt")
    stream = [py, "-m", "bytewax.run", flow, "-s", str(SNAPSHOT_S)]
    if recovery_dir:
        stream += ["-r", recovery_dir, "-b", "0"]
    out.append(Service("stream", stream))
    if mqtt is not None:
        out.append(Service("publisher", [py, "-m", "bytewax_flows.mqtt", "--port", str(mqtt[1])]))
    if ui:
        out += [
            Service("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", *code]),
            Service(
                "dagster-webserver",
                [str(bin_dir / "dagster-webserver"), *code, "-h", host, "-p", str(port)],
            ),
        ]
    return out


def up(
    host: str = "127.0.0.1",
    port: int = 3000,
    ui: bool = True,
    duration_s: float | None = None,
    mqtt_port: int | None = None,
) -> int:
    """Run the services until Ctrl-C (or for ``duration_s``); returns the exit code."""
    settings = Settings.from_env()
    prepare(settings, mqtt=mqtt_port is not None)
    mqtt = (ensure_mosquitto(), mqtt_port) if mqtt_port is not None else None
    env = {**os.environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    if mqtt is not None:  # the stream and the publisher log in with what the set-up generates
        env["PLANTPULSE_MQTT_CREDENTIALS"] = str(Path(settings.home) / "mosquitto"
                                                 / "credentials.json")
    log_dir = Path(settings.home) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    running = services(host, port, ui, settings.recovery_dir, mqtt, settings.home)
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
        for svc in reversed(running):
            svc.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    return code
