"""Scale-out: readings/s of ``bench.plant``'s plant-shaped load through the real telemetry flow
as a Bytewax cluster of 1, 2 and 4 processes (``python -m bytewax.run -i I -a ADDRESSES`` on
loopback, one worker each), with the speedup over one process, into a local lake and into an S3
lake (moto's S3 server on a loopback port, delta-rs with conditional puts, as ``tests/test_s3.py``).

The load is ``bench.plant``'s: 500 assets x 20 scalar sensors at 10 Hz plus 50 vibration
sensors (1 s frames at 12.8 kHz) from eight gateway partitions, in one message shape (default
``multi``: one multi-sensor message per asset per 100 ms).  Readings/s are the scalar readings
committed to ``readings`` over the time from the first reading processed to the last
``readings`` commit (``bench.plant.throughput``); every run must commit every reading.

``python -m bench.scale [--quick] [--shape multi|ten|one] [--processes 1,2,4] [--lakes local,s3]``
(quick: 40 assets, 3 s of event time, 1 and 2 processes).  The machine's load average is printed
and stored beside the figures: on a shared machine they are pessimistic.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.common import free_ports, parser, report
from bench.plant import SCALAR_HZ, SHAPES, measure, write_timelines

TARGETS = {"speedup_2p": ">= 1.7", "speedup_4p": ">= 1.7"}


@contextlib.contextmanager
def moto_s3(log: Path | None = None) -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port; yields the ``AWS_*`` environment reaching it.
    Its output goes to ``log`` (discarded without one), whose tail a start-up failure quotes."""
    port = free_ports(1)[0]
    with open(log, "wb") if log else open(os.devnull, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-2000:] if log else ""
                    raise RuntimeError(f"moto's S3 server did not start {tail}") from None
                time.sleep(0.1)
        yield {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
    finally:
        proc.terminate()
        proc.wait(10)


def _s3_lake(env: dict[str, str]) -> str:
    import boto3

    bucket = f"scale-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/lake"


def run(
    lake_uri: str, env: dict[str, str], folder: Path, processes: int, expected: int
) -> dict[str, float]:
    """One cluster run over the timeline files in ``folder`` into a fresh lake
    (``bench.plant.measure``), checked to commit every reading."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # this process reads the lake too
    try:
        result = measure(lake_uri, folder, processes, env)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if result["readings"] != expected:
        raise RuntimeError(
            f"{processes} processes on {lake_uri}: {result['readings']:.0f} readings committed, "
            f"{expected} sent"
        )
    return result


def main(argv: list[str] | None = None) -> dict:
    p = parser("scale", __doc__.splitlines()[0])
    p.add_argument("--shape", default="multi", choices=SHAPES)
    p.add_argument("--seconds", type=int, default=None, help="seconds of event time per run")
    p.add_argument("--processes", default=None, help="process counts (default 1,2,4)")
    p.add_argument("--lakes", default="local,s3", help="local, s3 or both")
    a = p.parse_args(argv)
    n_assets, n_sensors, n_vib = (40, 20, 4) if a.quick else (500, 20, 50)
    seconds = a.seconds or (3 if a.quick else 10)
    counts = [int(x) for x in (a.processes or ("1,2" if a.quick else "1,2,4")).split(",")]
    metrics: dict[str, float] = {}
    load: dict[str, list[float]] = {}
    expected = n_assets * n_sensors * SCALAR_HZ * seconds
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        folder = Path(tmp) / "timelines"
        write_timelines(folder, a.shape, seconds, n_assets, n_sensors, n_vib)
        for kind in a.lakes.split(","):
            with contextlib.ExitStack() as stack:
                env = stack.enter_context(moto_s3()) if kind == "s3" else {}
                prefix = "" if kind == "local" else f"{kind}_"
                for procs in counts:
                    uri = _s3_lake(env) if kind == "s3" else f"{tmp}/{kind}-{procs}p"
                    r = run(uri, env, folder, procs, expected)
                    load[f"{prefix}{procs}p"] = [
                        round(r["load_before"], 2),
                        round(r["load_during"], 2),
                    ]
                    metrics[f"{prefix}readings_per_s_{procs}p"] = r["readings_per_s"]
                    metrics[f"{prefix}readings_per_cpu_s_{procs}p"] = r["readings_per_cpu_s"]
                    metrics[f"{prefix}peak_rss_mb_{procs}p"] = r["peak_rss_mb"]
                    print(
                        f"{kind} lake, {procs} process(es): {r['readings_per_s']:,.0f} readings/s "
                        f"(load average {r['load_before']:.1f} before, up to "
                        f"{r['load_during']:.1f} during)",
                        flush=True,
                    )
                base = metrics.get(f"{prefix}readings_per_s_1p")
                for procs in counts:
                    if base and procs > 1:
                        metrics[f"{prefix}speedup_{procs}p"] = (
                            metrics[f"{prefix}readings_per_s_{procs}p"] / base
                        )
    targets = {k: v for k, v in TARGETS.items() if k in metrics}
    if "s3_speedup_2p" in metrics:
        targets["s3_speedup_2p"] = TARGETS["speedup_2p"]
    print(
        f"uptime: load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} cores"
    )
    return report(
        "scale",
        metrics,
        targets,
        quick=a.quick,
        out=a.out,
        extra={
            "shape": a.shape,
            "assets": n_assets,
            "scalar_sensors_per_asset": n_sensors,
            "vibration_sensors": n_vib,
            "seconds_of_event_time": seconds,
            "load_average_before_during_max": load,
        },
    )


if __name__ == "__main__":
    main()
