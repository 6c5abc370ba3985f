"""A local Mosquitto broker for ``plantpulse up --mqtt`` and the tests: installed by
``scripts/install-mosquitto.sh`` when missing, configured under the state directory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["BrokerError", "ensure_mosquitto", "write_config", "wait_for_port"]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-mosquitto.sh"


class BrokerError(RuntimeError):
    """Mosquitto cannot be installed or started (the message says what to do)."""


def ensure_mosquitto() -> str:
    """The path of the ``mosquitto`` binary, installing the Debian package if needed."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                           if Path("/usr/sbin/mosquitto").exists() else None)
    if found:
        return found
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BrokerError(done.stderr.strip() or f"{SCRIPT} failed")
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def write_config(directory: Path, port: int) -> Path:
    """A loopback-only listener; no per-client queue limit, so the broker never drops QoS 1
    messages on its own (bursts are the stream's circuit breaker's job, which records them)."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 0\n"
        "max_inflight_messages 0\n"
    )
    return conf


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise BrokerError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout_s:g} s")
