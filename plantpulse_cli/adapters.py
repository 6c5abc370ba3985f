"""``plantpulse adapters status`` (each adapter's connection, lag and buffer, from the status
files the adapters write under the state directory) and ``plantpulse adapters browse URL``
(an OPC UA server's numeric variables as a proposed plant-file ``adapters:`` entry)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from plantpulse_cli.checks import UsageError

STALE_S = 5.0  # a status older than this: the adapter is not running


def add_parser(sub: Any) -> None:
    p = sub.add_parser("adapters", help="protocol adapters: status, browse an OPC UA server")
    asub = p.add_subparsers(dest="adapters_command", required=True)
    st = asub.add_parser("status", help="each adapter's connection, lag and buffer")
    st.add_argument("--json", action="store_true")
    br = asub.add_parser("browse", help="an OPC UA server's variables as plant-file bindings")
    br.add_argument("url", help="opc.tcp://host:port[/path]")
    br.add_argument("--id", default="opcua-1", help="the adapter id to propose")
    br.add_argument("--depth", type=int, default=6)


def _mb(n: Any) -> str:
    return "-" if n is None else f"{n / 1024 / 1024:.1f}"


def rows(statuses: list[dict[str, Any]], now_us: int) -> list[dict[str, Any]]:
    out = []
    for s in statuses:
        age = (now_us - int(s.get("updated_us") or 0)) / 1e6
        state = (
            "not running"
            if age > STALE_S
            else "connected"
            if s.get("connected")
            else "reconnecting"
        )
        lag = s.get("lag_s")
        fwd = s.get("forward_lag_s")
        out.append(
            {
                "adapter": s["adapter_id"],
                "kind": s["kind"],
                "endpoint": s["endpoint"],
                "state": state,
                "reconnects": s.get("reconnects", 0),
                "lag_s": "-" if lag is None else f"{lag:.2f}",
                "stream": "up" if s.get("sink_connected") else "down",
                "buffer": f"{s.get('buffer_messages', 0)} msgs, {_mb(s.get('buffer_bytes'))} of "
                f"{_mb(s.get('buffer_bound_bytes'))} MB",
                "buffered_for_s": "-" if fwd is None else f"{fwd:.1f}",
                "overflow": s.get("overflow_readings", 0),
                "readings": s.get("readings_in", 0),
                "dead_letters": s.get("dead_letters", 0),
                "last_error": (s.get("last_error") or "")[:60],
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    if args.adapters_command == "status":
        from adapters.core import read_statuses
        from lake import Settings

        home = Settings.from_env().home
        statuses = read_statuses(home)
        if args.json:
            print(json.dumps(statuses, indent=2))
            return 0
        table = rows(statuses, time.time_ns() // 1000)
        if not table:
            print(f"no adapter has run under {home} (plantpulse up --adapters PLANT.yaml)")
            return 0
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"adapters under {home}", title_justify="left")
        for col in table[0]:
            t.add_column(col)
        for r in table:
            t.add_row(*[str(v) for v in r.values()])
        Console(width=220).print(t)
        return 0
    import asyncio

    from adapters.opcua import browse, proposal_yaml

    if not args.url.startswith("opc.tcp://"):
        raise UsageError(f"{args.url!r} is not an OPC UA endpoint (opc.tcp://host:port)")
    try:
        found = asyncio.run(browse(args.url, max_depth=args.depth))
    except (OSError, TimeoutError, ConnectionError) as exc:
        raise UsageError(f"cannot browse {args.url}: {exc or type(exc).__name__}") from None
    print(proposal_yaml(args.url, found, args.id), end="")
    return 0
