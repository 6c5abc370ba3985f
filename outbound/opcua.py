"""An OPC UA server (asyncua) showing each asset's health, anomaly score, RUL and alert state
to a SCADA or HMI.

Address space: one namespace per plant (``urn:plantpulse:<plant>`` unless the plant file names
another), under ``Objects`` an object for the plant, a folder per site and an object per asset,
with these variables (string node ids ``ns=<plant ns>;s=<asset_id>.<Name>``, stable across
restarts, so an HMI can bind to them)::

    Health        Double    percent, 100 = normal (``outbound.state.health_from``)
    AnomalyScore  Double    the online detector's score of the newest window
    RUL           Double    remaining useful life from the RUL champion, when it scores
    AlertState    String    "normal" or "open"
    AlertActive   Boolean
    AlertSeverity String    "", "warning" or "critical"
    AlertId       String
    AlertSummary  String    what is wrong, in words
    ScoredAt      DateTime  event time of the newest score

Values not known yet carry the status ``BadWaitingForInitialData``.  Assets declared in the
plant file exist from the start; an asset a ``match`` pattern stands for appears when it is
first scored.  The server runs its own event loop on a thread; ``update`` hands it a state and
returns at once (the caller, the outbound loop, never waits on a client).

Security (``ServerSecurity``, from the plant file's ``outbound.opcua`` and the state directory):
endpoints only with the Basic256Sha256 policy in the modes the file allows (Sign and
SignAndEncrypt by default; ``None`` only with a reason), the server's own application
certificate generated at set-up (``adapters.security``), sessions only for the users the file
names, each checked against the hashed passwords the set-up wrote (no anonymous session unless
the file allows it, with a reason).  Every node is read-only to clients twice over: the
variables' access level has no write bit, and the permission rules refuse write, call and
node-management requests of any client role.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from asyncua import Server, ua
from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, User, UserRole
from asyncua.crypto.security_policies import SecurityPolicyFactory, SecurityPolicyNone
from asyncua.server.user_managers import UserManager

from adapters.security import UserFile, application_certificate, ensure_users, opcua_dir
from outbound.state import AssetState

__all__ = ["OpcUaServer", "ServerSecurity", "VARIABLES", "app_uri"]

log = logging.getLogger(__name__)

_V = ua.VariantType
VARIABLES: tuple[tuple[str, ua.VariantType], ...] = (
    ("Health", _V.Double),
    ("AnomalyScore", _V.Double),
    ("RUL", _V.Double),
    ("AlertState", _V.String),
    ("AlertActive", _V.Boolean),
    ("AlertSeverity", _V.String),
    ("AlertId", _V.String),
    ("AlertSummary", _V.String),
    ("ScoredAt", _V.DateTime),
)
_WAITING = ua.StatusCode(ua.UInt32(ua.StatusCodes.BadWaitingForInitialData))
_DEFAULTS = {
    _V.Double: 0.0,
    _V.String: "",
    _V.Boolean: False,
    _V.DateTime: dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
}
_MODES = {
    "SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "None": ua.SecurityPolicyType.NoSecurity,
}


def _nid(identifier: str, ns: int) -> ua.NodeId:
    """A string NodeId (asyncua annotates its fields with its own encoding types)."""
    return ua.NodeId(ua.String(identifier), ua.Int16(ns))


def _now() -> ua.DateTime:
    return ua.DateTime.now(dt.UTC)


def app_uri(plant: str) -> str:
    """The outbound server's application URI (in its certificate)."""
    return f"urn:plantpulse:outbound:{plant}"


@dataclass(frozen=True)
class ServerSecurity:
    """How the outbound server is secured: its certificate and key, the message security
    modes of its endpoints, its users' password hashes, whether anonymous sessions exist."""

    certificate: Path
    private_key: Path
    modes: tuple[str, ...]
    users: UserFile
    allow_anonymous: bool = False

    @classmethod
    def from_spec(cls, spec: Any, plant: str, home: str | Path) -> ServerSecurity:
        """From the plant file's ``outbound.opcua`` (``spec``); the certificate and the users'
        passwords are made under ``<home>/opcua/`` when missing (what the set-up does)."""
        host = urlparse(spec.endpoint).hostname or "127.0.0.1"
        cert, key = application_certificate(
            opcua_dir(home) / "server", app_uri(plant), server=True, hosts=[host]
        )
        users = UserFile.read(ensure_users(home, spec.users))
        return cls(cert, key, tuple(spec.security), users, bool(spec.allow_anonymous))


class _Users(UserManager):
    """Sessions for the users of the password file; anonymous ones only when allowed."""

    def __init__(self, security: ServerSecurity):
        self.security = security

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:  # anonymous (X509 user tokens are not offered)
            return User(role=UserRole.Anonymous) if self.security.allow_anonymous else None
        if self.security.users.check(username, password):
            return User(role=UserRole.User, name=username)
        log.warning("outbound OPC UA: refused a session for user %r (wrong password)", username)
        return None


_WRITES = {
    ua.ObjectIds.WriteRequest_Encoding_DefaultBinary,
    ua.ObjectIds.CallRequest_Encoding_DefaultBinary,
    ua.ObjectIds.HistoryUpdateRequest_Encoding_DefaultBinary,
}


class _Refuse(SimpleRoleRuleset):
    """Rules of a channel without security on a server that has no such endpoint."""

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        return False


class ReadOnlyRules(SimpleRoleRuleset):
    """Clients read, browse and subscribe; no role may write, call methods or change nodes
    (asyncua's default rules let a user write)."""

    def __init__(self) -> None:
        super().__init__()
        read = {ua.NodeId(ua.Int32(t)) for t in USER_TYPES if t not in _WRITES}
        self._permission_dict = {
            UserRole.Admin: set(read),
            UserRole.User: set(read),
            UserRole.Anonymous: set(read),  # reached only when the plant allows anonymous
        }


def _values(state: AssetState) -> dict[str, Any]:
    """The variables' values of ``state`` (None: not known)."""

    def finite(v: float | None) -> float | None:
        return v if v is not None and math.isfinite(v) else None

    return {
        "Health": finite(state.health),
        "AnomalyScore": finite(state.anomaly_score),
        "RUL": finite(state.rul),
        "AlertState": state.alert_status,
        "AlertActive": state.alert_active,
        "AlertSeverity": state.severity,
        "AlertId": state.alert_id or "",
        "AlertSummary": state.summary,
        "ScoredAt": None
        if state.scored_us is None
        else dt.datetime.fromtimestamp(state.scored_us / 1e6, dt.UTC),
    }


class OpcUaServer:
    """The outbound OPC UA server of one plant; ``start`` returns once it listens."""

    def __init__(
        self,
        endpoint: str,
        plant: str,
        sites: dict[str, str],
        security: ServerSecurity,
        namespace: str | None = None,
    ):
        self.endpoint, self.plant, self.security = endpoint, plant, security
        self.namespace = namespace or f"urn:plantpulse:{plant}"
        self.declared = dict(sites)  # asset_id -> site, created at start
        self.ns = 0
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._root: Any = None
        self._sites: dict[str, Any] = {}
        self._nodes: dict[str, dict[str, ua.NodeId]] = {}
        self._written: dict[str, dict[str, Any]] = {}
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, timeout_s: float = 120.0) -> None:
        """Start the server thread; returns once it listens (asyncua loads the standard address
        space first: seconds, more on a loaded machine)."""
        self._thread = threading.Thread(target=self._run, name="outbound-opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the OPC UA server did not start on {self.endpoint}")
        if self._error is not None:
            raise RuntimeError(
                f"the OPC UA server could not start on {self.endpoint}: {self._error}"
            ) from self._error

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(), or logged once it had started
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("the OPC UA server stopped")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        sec = self.security
        server = self._server = Server(user_manager=_Users(sec))
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"PlantPulse outbound: {self.plant}")
        await server.set_application_uri(app_uri(self.plant))
        await server.load_certificate(str(sec.certificate))
        await server.load_private_key(str(sec.private_key))
        server.set_security_policy([_MODES[m] for m in sec.modes], ReadOnlyRules())
        tokens: list[type] = [ua.UserNameIdentityToken]
        if sec.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        self.ns = await server.register_namespace(self.namespace)
        self._root = await server.nodes.objects.add_object(
            _nid(self.plant, self.ns), ua.QualifiedName(self.plant, self.ns)
        )
        for asset, site in self.declared.items():
            await self._asset_nodes(asset, site)
        await server.start()
        if "None" not in sec.modes:
            # asyncua opens a channel without security to every client (discovery needs it:
            # GetEndpoints) and would then serve a session on it as if a None endpoint existed;
            # such a channel gets rules that refuse every service of a session.  (Server's
            # policy list is private in asyncua 2.1; the binary server reads the same list.)
            server._policies.append(
                SecurityPolicyFactory(
                    SecurityPolicyNone, ua.MessageSecurityMode.None_, permission_ruleset=_Refuse()
                )
            )
        self.port = server.bserver.port if server.bserver else urlparse(self.endpoint).port
        log.info(
            "outbound OPC UA server on %s (namespace %s = %d; security %s; users %s%s)",
            self.endpoint,
            self.namespace,
            self.ns,
            "/".join(sec.modes),
            ", ".join(sorted(sec.users.users)) or "none",
            "; anonymous allowed" if sec.allow_anonymous else "",
        )
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await server.stop()

    # -- the address space ----------------------------------------------------------------------
    def _running(self) -> Server:
        if self._server is None:
            raise RuntimeError("the outbound OPC UA server is not running")
        return self._server

    async def _asset_nodes(self, asset: str, site: str) -> dict[str, ua.NodeId]:
        nodes = self._nodes.get(asset)
        if nodes is not None:
            return nodes
        folder = self._sites.get(site)
        if folder is None:
            folder = self._sites[site] = await self._root.add_folder(
                _nid(f"{self.plant}/{site}", self.ns), ua.QualifiedName(site, self.ns)
            )
        obj = await folder.add_object(_nid(asset, self.ns), ua.QualifiedName(asset, self.ns))
        nodes = {}
        for name, vtype in VARIABLES:
            # add_variable leaves the access level at CurrentRead: clients cannot write
            var = await obj.add_variable(
                _nid(f"{asset}.{name}", self.ns),
                ua.QualifiedName(name, self.ns),
                _DEFAULTS[vtype],
                varianttype=vtype,
            )
            await self._running().write_attribute_value(
                var.nodeid, ua.DataValue(ua.Variant(), StatusCode=_WAITING)
            )
            nodes[name] = var.nodeid
        self._nodes[asset] = nodes
        return nodes

    def node_id(self, asset: str, name: str) -> str:
        """The node id of variable ``name`` of ``asset``, as a string (``ns=2;s=pump-01.Health``)."""
        return _nid(f"{asset}.{name}", self.ns).to_string()

    # -- updates --------------------------------------------------------------------------------
    def update(
        self, state: AssetState, done: Callable[[BaseException | None], None] | None = None
    ) -> None:
        """Show ``state``; ``done`` is called (on the server's thread) once it is visible."""
        if self._loop is None:
            return
        future: Future = asyncio.run_coroutine_threadsafe(self._write(state), self._loop)

        def finished(f: Future) -> None:
            exc = f.exception()
            if exc is not None:
                log.error("OPC UA update of %s failed: %s", state.asset_id, exc)
            if done is not None:
                done(exc)

        future.add_done_callback(finished)

    async def _write(self, state: AssetState) -> None:
        nodes = await self._asset_nodes(state.asset_id, state.site)
        before = self._written.setdefault(state.asset_id, {})
        now = _now()
        for (name, vtype), value in zip(VARIABLES, _values(state).values(), strict=True):
            if name in before and before[name] == value:
                continue
            before[name] = value
            if value is None:  # not known (yet): a null value, and the status says why
                data = ua.DataValue(
                    ua.Variant(), StatusCode=_WAITING, SourceTimestamp=now, ServerTimestamp=now
                )
            else:
                data = ua.DataValue(
                    ua.Variant(value, vtype), SourceTimestamp=now, ServerTimestamp=now
                )
            await self._running().write_attribute_value(nodes[name], data)
