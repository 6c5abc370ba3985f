"""Container health checks (run as ``python docker/healthcheck.py <check> [arg]``).

``http URL``  the URL answers 2xx (Dagster UI ``/server_info``, MLflow ``/health``);
``lake``      the stream committed to ``readings`` in the last ``PLANTPULSE_HEALTH_MAX_AGE_S``
              seconds (default 120): the worker's cluster is moving data into the lake.
Exit 0 healthy, 1 unhealthy, with one line saying why.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request


def check_http(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local URL
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{url} answered {response.status}")
    return f"{url} answers"


def check_lake() -> str:
    from lake import Lake

    max_age = float(os.environ.get("PLANTPULSE_HEALTH_MAX_AGE_S", "120"))
    lake = Lake.from_env()
    if not lake.exists("readings"):
        raise RuntimeError(f"no readings table at {lake.uri} yet")
    last = lake.history("readings", limit=1)[0]
    age = time.time() - last["timestamp"] / 1000
    if age > max_age:
        raise RuntimeError(f"last readings commit {age:.0f} s ago (> {max_age:.0f} s)")
    return f"last readings commit {age:.0f} s ago"


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["http"] and len(argv) == 2:
            print(check_http(argv[1]))
        elif argv == ["lake"]:
            print(check_lake())
        else:
            print("usage: healthcheck.py http URL | lake", file=sys.stderr)
            return 2
    except Exception as exc:  # a health check reports, it never raises
        print(f"unhealthy: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
