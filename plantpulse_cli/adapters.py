"""``plantpulse adapters status`` (each adapter's connection, lag and buffer, from the status
files the adapters write under the state directory), ``plantpulse adapters trust URL`` (an OPC
UA server's certificate, shown with its fingerprint, put in the adapters' trust list) and
``plantpulse adapters browse URL`` (an OPC UA server's numeric variables as a proposed
plant-file ``adapters:`` entry)."""

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
    tr = asub.add_parser("trust", help="trust an OPC UA server's certificate (after checking it)")
    tr.add_argument("url", help="opc.tcp://host:port[/path]")
    tr.add_argument("--name", default=None, help="file name in the trust list (default: host)")
    tr.add_argument(
        "--fingerprint",
        default=None,
        help="the SHA-256 fingerprint the server's owner gave you: trusted only if it matches "
        "(without it, the fingerprint is shown and nothing is trusted)",
    )
    br = asub.add_parser("browse", help="an OPC UA server's variables as plant-file bindings")
    br.add_argument("url", help="opc.tcp://host:port[/path]")
    br.add_argument("--id", default="opcua-1", help="the adapter id to propose")
    br.add_argument("--depth", type=int, default=6)
    br.add_argument(
        "--security", choices=["SignAndEncrypt", "Sign", "None"], default="SignAndEncrypt"
    )
    br.add_argument(
        "--credentials", default=None, help="name of the login (as in a plant file's credentials:)"
    )


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

    from asyncua.ua import UaError

    from adapters.opcua import browse, proposal_yaml, server_certificate
    from adapters.security import fingerprint, trust_certificate
    from adapters.sinks import credentials
    from lake import Settings

    if not args.url.startswith("opc.tcp://"):
        raise UsageError(f"{args.url!r} is not an OPC UA endpoint (opc.tcp://host:port)")
    home = Settings.from_env().home
    try:
        if args.adapters_command == "trust":
            der, uri = asyncio.run(server_certificate(args.url))
            fp = fingerprint(der)
            print(f"{args.url}: {uri}\ncertificate SHA-256 {fp}")
            wanted = (args.fingerprint or "").replace(":", "").upper()
            if not wanted:
                print(
                    "not trusted yet: compare it with the server's, then run again with --fingerprint"
                )
                return 0
            if wanted != fp.replace(":", ""):
                raise UsageError(
                    f"{args.url} presents {fp}, not the fingerprint given: not trusted"
                )
            name = args.name or (
                args.url.removeprefix("opc.tcp://").split("/")[0].replace(":", "_")
            )
            print(f"trusted: {trust_certificate(home, der, name)}")
            return 0
        auth = credentials(args.credentials, home)
        found = asyncio.run(
            browse(args.url, home, max_depth=args.depth, auth=auth, security=args.security)
        )
    except (OSError, TimeoutError, ConnectionError, UaError) as exc:
        raise UsageError(
            f"cannot {args.adapters_command} {args.url}: {exc or type(exc).__name__}"
        ) from None
    print(proposal_yaml(args.url, found, args.id), end="")
    return 0
