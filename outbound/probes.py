"""What a client on the plant network can try against an OPC UA server, measured by trying:
sessions without a login, with a wrong password, over a channel without security, and writes
to its variables.  ``bench.outbound`` counts what the outbound server accepted of these (all
must be refused) and the tests assert it; each attempt is a real session over TCP.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from asyncua import Client, ua

from adapters.opcua import secure_client

__all__ = ["Attempt", "session", "unsecured_session", "writes"]


@dataclass(frozen=True)
class Attempt:
    """The outcome of one attempt: ``accepted``, else the server's refusal (or the client's,
    when the server offers nothing it could use)."""

    accepted: bool
    detail: str


def _refusal(exc: BaseException) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        return ua.StatusCode(ua.UInt32(exc.code)).name
    return f"{type(exc).__name__}: {exc}"[:200]


async def _read_something(client: Client) -> None:
    """A read every session may do (the server's namespace array): refused, the session is
    of no use."""
    await client.get_node(ua.NodeId(ua.Int32(ua.ObjectIds.Server_NamespaceArray))).read_value()


async def session(
    url: str,
    home: str | Path,
    *,
    security: str = "SignAndEncrypt",
    auth: tuple[str, str] | None = None,
) -> Attempt:
    """Open a session (``auth`` None: anonymous) in ``security`` mode and read the namespace
    array; accepted only if the read is answered."""
    try:
        client = await secure_client(url, home, security=security, auth=auth, timeout=10)
        await client.connect()
    except Exception as exc:  # noqa: BLE001 - every way of being refused is an outcome
        return Attempt(False, _refusal(exc))
    try:
        await _read_something(client)
        return Attempt(True, "read answered")
    except Exception as exc:  # noqa: BLE001
        return Attempt(False, _refusal(exc))
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


class _IgnoresEndpoints(Client):
    """A client that uses a channel without security whatever endpoints the server offers
    (what a careless or hostile one does; asyncua's refuses)."""

    @staticmethod
    def find_endpoint(
        endpoints: Iterable[ua.EndpointDescription],
        security_mode: ua.MessageSecurityMode,
        policy_uri: str,
    ) -> ua.EndpointDescription:
        return next(iter(endpoints))


async def unsecured_session(url: str, auth: tuple[str, str] | None = None) -> Attempt:
    """A session on a channel without security (anonymous, or logging in with ``auth``), then
    a read: accepted only if the read is answered."""
    client = _IgnoresEndpoints(url, timeout=10)
    if auth is not None:
        client.set_user(auth[0])
        client.set_password(auth[1])
    try:
        await client.connect()
    except Exception as exc:  # noqa: BLE001
        return Attempt(False, _refusal(exc))
    try:
        await _read_something(client)
        return Attempt(True, "read answered on a channel without security")
    except Exception as exc:  # noqa: BLE001
        return Attempt(False, _refusal(exc))
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def writes(
    url: str,
    home: str | Path,
    nodes: Iterable[str],
    *,
    auth: tuple[str, str] | None,
    security: str = "SignAndEncrypt",
) -> list[Attempt]:
    """Write each node (NodeId strings) with a value of its own type in one session; one
    attempt per node (all refused when the session itself is)."""
    nodes = list(nodes)
    try:
        client = await secure_client(url, home, security=security, auth=auth, timeout=10)
        await client.connect()
    except Exception as exc:  # noqa: BLE001
        return [Attempt(False, f"no session: {_refusal(exc)}")] * len(nodes)
    out = []
    try:
        for nid in nodes:
            node = client.get_node(nid)
            try:
                vtype = await node.read_data_type_as_variant_type()
                value = {
                    ua.VariantType.Double: 1.0,
                    ua.VariantType.Boolean: True,
                    ua.VariantType.DateTime: ua.DateTime.now(),
                }.get(vtype, "written by a client")
                await node.write_value(ua.DataValue(ua.Variant(value, vtype)))
                out.append(Attempt(True, f"{nid} written"))
            except Exception as exc:  # noqa: BLE001
                out.append(Attempt(False, _refusal(exc)))
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
    return out
