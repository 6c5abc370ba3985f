"""A local Mosquitto broker for ``plantpulse up --mqtt`` and the tests: installed by
``scripts/install-mosquitto.sh`` when missing, configured under the state directory with
authentication, per-client topic ACLs and memory limits, and optionally a TLS listener for
clients on other machines (certificates generated at set-up, ``adapters.security.broker_tls``).
"""

from __future__ import annotations

import getpass
import json
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from lake.credentials import write_private

__all__ = [
    "BrokerError",
    "LIMITS",
    "WORKER",
    "OUTBOUND",
    "ensure_mosquitto",
    "publishers_for",
    "wait_for_subscription",
    "write_config",
    "wait_for_port",
]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-mosquitto.sh"


class BrokerError(RuntimeError):
    """Mosquitto cannot be installed or started (the message says what to do)."""


def ensure_mosquitto() -> str:
    """The path of the ``mosquitto`` binary, installing the Debian package if needed."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found:
        return found
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BrokerError(done.stderr.strip() or f"{SCRIPT} failed")
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


WORKER = "worker"
"""The username the stream workers log in with (read-only on ``plantpulse/#``)."""

OUTBOUND = "outbound"
"""The username of the outbound process (``outbound.mqtt``): its per-asset state topics
(``plantpulse-out/#``) and its Sparkplug B edge node (``spBv1.0/#``)."""

LIMITS = {
    # outgoing QoS 1 messages in flight per MQTT 3 client (an MQTT 5 client sets its own with
    # Receive Maximum: the workers ask for 2,000); also the most a publisher may have unacked
    "max_inflight_messages": 1000,
    # per client session beyond what is in flight: the broker holds a burst back here instead
    # of pushing it into a worker; beyond either limit a QoS 1 message is dropped and counted
    # ($SYS/broker/publish/messages/dropped, which worker 0 records in dead_letter)
    "max_queued_messages": 100_000,
    "max_queued_bytes": 256 * 1024 * 1024,
    # twice the payload decoder's limit: 4-8 MiB reach dead_letter as ``oversized``, larger ones
    # are refused at the broker (an MQTT 5 publisher gets the reason code)
    "message_size_limit": 8 * 1024 * 1024,
}


LOG_TYPES = ("error", "warning", "notice", "information", "subscribe")
"""What the broker logs: its defaults, and each subscription (``wait_for_subscription``)."""


def wait_for_subscription(log: Path, topic: str, timeout_s: float = 120.0) -> bool:
    """Wait until the broker's log (``log``) shows a subscription to ``topic`` (a line
    ``<time>: <client> <qos> <topic>``); False when it did not within ``timeout_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        if any(line.endswith(f" {topic}") for line in lines):
            return True
        time.sleep(0.2)
    return False


def publishers_for(plant: Any, simulated: list[str] | None = None) -> dict[str, list[str]]:
    """The broker's publishers as the plant file declares them: one login per site (its
    gateway), allowed to write the topics of that site's assets, and ``simulator`` for those of
    the simulated fleet's assets (``simulated``) the plant declares, if any.  An asset the plant
    declares only by a ``match`` pattern has no fixed topic to grant: its ids must come
    concretely (``simulated``)."""
    out: dict[str, list[str]] = {}
    for asset in plant.assets.values():
        if asset.match is None:
            out.setdefault(f"site-{asset.site}", []).append(asset.asset_id)
    declared = [a for a in simulated or () if plant.asset(a) is not None]
    if declared:
        out["simulator"] = declared
    return out


def write_config(
    directory: Path,
    port: int,
    publishers: dict[str, list[str]] | None = None,
    limits: dict[str, int] | None = None,
    acl: dict[str, list[str]] | None = None,
    tls: tuple[str, int] | None = None,
) -> Path:
    """A loopback-only listener with authentication: a password file (``mosquitto_passwd``)
    with the ``worker`` user and one user per publisher, and ACLs by topic (a publisher may
    write only ``plantpulse/<asset>/#`` of its own assets; workers read ``plantpulse/#``).
    The generated passwords go to ``credentials.json`` beside them, readable by the owner only
    (where ``bytewax_flows.mqtt.credentials`` finds them).  ``publishers`` maps a publisher's
    name to its asset ids (default: the simulator, for the demo fleet).  Queue and size limits
    bound the broker's memory (``LIMITS``, updated with ``limits``).  ``acl`` adds users with
    their own ACL lines (``topic readwrite spBv1.0/#`` for a Sparkplug host or edge node;
    ``topic write plantpulse/+/<adapter>`` for a protocol adapter feeding the stream).  With
    ``tls=(address, port)`` a second listener takes TLS connections there (TLS 1.2 or newer,
    the same users and ACLs), its certificate signed by a CA of this installation generated in
    ``<directory>/tls/`` (``ca.crt`` is what clients verify the broker with); the plain
    listener stays on loopback."""
    directory.mkdir(parents=True, exist_ok=True)
    if publishers is None:
        publishers = {"simulator": ["pump-01", "pump-02", "pump-03"]}
    acl = acl or {}
    for name in [WORKER, OUTBOUND, *publishers, *acl]:
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise BrokerError(f"MQTT user {name!r}: use letters, digits, '-', '_' and '.'")
    creds_path = directory / "credentials.json"
    try:
        known = json.loads(creds_path.read_text())
    except (OSError, ValueError):
        known = {}
    users = {
        name: known.get(name) or secrets.token_urlsafe(24)
        for name in dict.fromkeys([WORKER, OUTBOUND, *publishers, *acl])
    }
    write_private(creds_path, json.dumps(users, indent=1) + "\n")
    passwd = directory / "passwd"
    write_private(passwd, "".join(f"{u}:{pw}\n" for u, pw in users.items()))
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    done = subprocess.run([tool, "-U", str(passwd)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BrokerError(f"mosquitto_passwd -U {passwd} failed: {done.stderr.strip()}")
    lines = [
        f"user {WORKER}",
        "topic read plantpulse/#",
        "topic read $SYS/broker/publish/messages/dropped",
        "",
        f"user {OUTBOUND}",
        "topic readwrite plantpulse-out/#",
        "topic readwrite spBv1.0/#",
        "",
    ]
    for name, assets in publishers.items():
        lines.append(f"user {name}")
        for asset in assets:
            if not asset or any(c in asset for c in "/+#"):
                raise BrokerError(f"asset id {asset!r} cannot be an MQTT topic level")
            lines.append(f"topic write plantpulse/{asset}/#")
        lines.append("")
    for name, rules in acl.items():
        lines += [f"user {name}", *rules, ""]
    write_private(directory / "acl", "\n".join(lines))
    listeners = f"listener {port} 127.0.0.1\n"
    if tls is not None:
        from adapters.security import broker_tls

        address, tls_port = tls
        files = broker_tls(directory / "tls", [address] if address not in ("", "0.0.0.0") else [])
        listeners += (
            f"listener {tls_port} {address}\n"
            f"cafile {files.ca}\ncertfile {files.cert}\nkeyfile {files.key}\n"
            "tls_version tlsv1.2\n"
        )
    conf = directory / "mosquitto.conf"
    conf.write_text(
        listeners + "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"acl_file {directory / 'acl'}\n"
        # as the account that starts it (when that is root, mosquitto would otherwise switch to
        # the 'mosquitto' user, who cannot read these owner-only files)
        f"user {getpass.getuser()}\n"
        "persistence false\n"
        # subscriptions in the log: ``up`` starts the publishers once the stream has subscribed
        # (a message published before any subscription is dropped by the broker)
        + "".join(f"log_type {t}\n" for t in LOG_TYPES)
        + "sys_interval 2\n"
        + "".join(f"{k} {v}\n" for k, v in {**LIMITS, **(limits or {})}.items())
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
