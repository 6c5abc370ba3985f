"""What every benchmark shares: arguments, the machine description, the table and the JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lake import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    p.add_argument(
        "--quick", action="store_true", help="a seconds-long run that proves the script works"
    )
    p.add_argument(
        "--data", default=None, help="data directory (default: PLANTPULSE_DATA or ../shared/data)"
    )
    p.add_argument("--out", default=None, help=f"JSON output (default: bench/results/{name}.json)")
    return p


def data_dir(arg: str | None) -> str:
    path = arg or Settings.from_env().data_dir
    if not Path(path).is_dir():
        sys.exit(f"error: data directory {path} does not exist; pass --data or set PLANTPULSE_DATA")
    return path


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.processor() or platform.machine()}, Python {platform.python_version()}"


def report(
    name: str,
    metrics: Mapping[str, float],
    targets: Mapping[str, str],
    *,
    quick: bool,
    out: str | None = None,
    title: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Print the metrics as a table (with targets and met/missed) and write the JSON result."""
    table = Table(title=title or f"bench.{name}" + (" (quick)" if quick else ""))
    for col in ("metric", "value", "target", "met"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for key, value in metrics.items():
        target = targets.get(key, "")
        table.add_row(
            key,
            f"{value:,.4g}" if isinstance(value, float) else str(value),
            target,
            _met(value, target),
        )
    Console(width=160).print(table)
    result = {
        "name": name,
        "machine": machine(),
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "targets": dict(targets),
        **({"details": extra} if extra else {}),
    }
    path = Path(out) if out else RESULTS / (f"{name}.quick.json" if quick else f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return result


def _met(value: float, target: str) -> str:
    if not target:
        return ""
    op, _, number = target.partition(" ")
    bound = float(number)
    ok = value >= bound if op == ">=" else value <= bound if op == "<=" else None
    return "" if ok is None else ("yes" if ok else "NO")


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def replay_into_lake(timelines: dict, lake_dir: str | None = None, plant: Any = None):
    """Replay per-asset message timelines through the real telemetry flow (as fast as
    possible) into a fresh lake, with ``plant`` (default: the default plant); returns the
    ``Lake``."""
    import tempfile

    from bytewax.testing import run_main

    from bytewax_flows.replay import ReplaySource
    from bytewax_flows.telemetry import get_flow
    from lake import Lake

    lake = Lake(lake_dir or tempfile.mkdtemp(prefix="plantpulse-bench-lake-"))
    run_main(get_flow(ReplaySource(timelines), lake.uri, plant=plant))
    return lake


def point_metrics(flag, truth) -> dict[str, float]:
    """Point-wise F1, FAR (false positive rate) and MAR (missed alarm rate), SKAB's definitions."""
    flag, truth = np.asarray(flag, bool), np.asarray(truth, bool)
    tp, fp = int((flag & truth).sum()), int((flag & ~truth).sum())
    fn, tn = int((~flag & truth).sum()), int((~flag & ~truth).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"f1": f1, "far": fp / max(fp + tn, 1), "mar": fn / max(fn + tp, 1)}


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (bound to port 0 together, then released)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def cluster_argv(
    target: str,
    processes: int,
    recovery: str | Path | None = None,
    snapshot_s: int = 1,
    addresses: str | None = None,
) -> list[list[str]]:
    """The command line of each process of a Bytewax cluster running ``target``
    (``python -m bytewax.run target -i I -a ADDRESSES``, one worker per process, on loopback);
    with ``recovery`` (a store made by ``bytewax.recovery.init_db_dir``), snapshots every
    ``snapshot_s`` and no backup delay."""
    argv = [sys.executable, "-m", "bytewax.run", target]
    if recovery is not None:
        argv += ["-r", str(recovery), "-s", str(snapshot_s), "-b", "0"]
    if processes == 1:
        return [argv]
    addresses = addresses or ";".join(f"127.0.0.1:{p}" for p in free_ports(processes))
    return [argv + ["-i", str(i), "-a", addresses] for i in range(processes)]


def start_cluster(
    target: str,
    processes: int,
    env: Mapping[str, str] | None = None,
    recovery: str | Path | None = None,
    snapshot_s: int = 1,
    log: Path | None = None,
    cwd: Path | None = None,
) -> list[Any]:
    """Start the processes of a Bytewax cluster running ``target`` (``cluster_argv``), each in
    a session of its own, output appended to ``log`` (default: this process's output)."""
    import subprocess

    out = open(log, "ab") if log else None  # noqa: SIM115 (kept by the children)
    return [
        subprocess.Popen(
            argv,
            cwd=cwd or Path(__file__).resolve().parents[1],
            env=dict(env or os.environ),
            stdout=out,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=True,
        )
        for argv in cluster_argv(target, processes, recovery, snapshot_s)
    ]
