"""Certificates, trust and users for every listener and client at the edge, generated at set-up
under the state directory (``<home>/opcua/``, ``<home>/mosquitto/tls/``).

- **OPC UA application instance certificates** (``application_certificate``): one for the
  outbound server (``<home>/opcua/server/``) and one for the inbound adapters as clients
  (``<home>/opcua/client/``), self-signed as OPC UA Part 6 asks (the application URI in the
  subject alternative names, key and extended key usage for a server or a client), made with
  asyncua's own ``asyncua.crypto.cert_gen``.  A plant with its own PKI puts its certificate and
  key in their place (same file names); an expired one is made again.
- **Trust of OPC UA servers** (``server_trust``): a client accepts a server only if the server's
  certificate (or the CA that issued it) is in its trust list: the files and folders the plant
  file names, and ``<home>/opcua/trusted/`` (``plantpulse adapters trust URL`` puts a server's
  certificate there after showing its fingerprint).  Nothing is trusted on first use.
- **Users of the outbound OPC UA server** (``ensure_users``, ``UserFile``): a password is
  generated per user name the plant file declares; the clients' copy goes to
  ``<home>/opcua/credentials.json`` (owner-only, the broker set-up's shape), the server reads
  only salted scrypt hashes (``<home>/opcua/users``).
- **TLS for the MQTT broker** (``broker_tls``): a CA of the installation and a server certificate
  it signed for the broker's host names; clients verify the broker against the CA
  (``<home>/mosquitto/tls/ca.crt``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lake.credentials import read_logins, write_private

__all__ = [
    "CLIENT_URI",
    "ServerTrust",
    "TlsFiles",
    "UserFile",
    "application_certificate",
    "broker_tls",
    "ensure_users",
    "fingerprint",
    "opcua_dir",
    "server_trust",
    "trust_certificate",
]

log = logging.getLogger(__name__)

CLIENT_URI = "urn:plantpulse:adapters"
"""The application URI of the inbound adapters as OPC UA clients (in their certificate)."""

VALID_DAYS = 5 * 365
"""Validity of a generated certificate; an expired one is generated again at the next start
(its fingerprint changes: the peers that pinned it must trust the new one)."""


def opcua_dir(home: str | Path) -> Path:
    """Where the OPC UA identities, trust list and users of an installation live."""
    return Path(home) / "opcua"


def _hostnames(extra: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses a certificate of this machine names."""
    names = dict.fromkeys(["localhost", socket.gethostname(), *extra])
    dns, ips = [], []
    for n in names:
        if not n:
            continue
        try:
            ipaddress.ip_address(n)
            ips.append(n)
        except ValueError:
            dns.append(n)
    return dns, list(dict.fromkeys(["127.0.0.1", *ips]))


def _alt_names(uri: str | None, hosts: Iterable[str]) -> list[x509.GeneralName]:
    dns, ips = _hostnames(hosts)
    out: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)] if uri else []
    out += [x509.DNSName(d) for d in dns]
    out += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    return out


def _still_good(cert_path: Path, key_path: Path, uri: str | None) -> bool:
    try:
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError):
        return False
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return False
    if uri is None:
        return True
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return uri in san.get_values_for_type(x509.UniformResourceIdentifier)


def application_certificate(
    directory: str | Path, app_uri: str, *, server: bool, hosts: Iterable[str] = ()
) -> tuple[Path, Path]:
    """``(cert.der, key.pem)`` of an OPC UA application in ``directory``: kept while valid for
    ``app_uri``, else generated (self-signed, RSA 2048, SHA-256: what Basic256Sha256 needs).
    ``hosts``: further host names or addresses the certificate names (the endpoint's host)."""
    from asyncua.crypto import cert_gen

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.der", directory / "key.pem"
    if _still_good(cert_path, key_path, app_uri):
        return cert_path, key_path
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        app_uri,
        {"organizationName": "PlantPulse"},
        _alt_names(app_uri, hosts),
        [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH],
        days=VALID_DAYS,
    )
    write_private(key_path, cert_gen.dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    log.info("generated the OPC UA certificate of %s in %s", app_uri, directory)
    return cert_path, key_path


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """SHA-256 fingerprint of a certificate (DER bytes or parsed), as ``AB:CD:...``."""
    if isinstance(cert, bytes):
        cert = x509.load_der_x509_certificate(cert)
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def trust_certificate(home: str | Path, der: bytes, name: str) -> Path:
    """Put a server certificate (DER) in the installation's trust list; returns its path."""
    directory = opcua_dir(home) / "trusted"
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "server"
    path = directory / f"{safe}.der"
    path.write_bytes(der)
    return path


def server_trust(home: str | Path, extra: Iterable[str | Path] = ()) -> list[Path]:
    """The trust list of the adapters as OPC UA clients: ``<home>/opcua/trusted/`` and the
    files or folders ``extra`` names (those that exist)."""
    out = [opcua_dir(home) / "trusted", *map(Path, extra)]
    return [p for p in out if p.exists()]


# -- users of the outbound OPC UA server -----------------------------------------------------
def _hash(password: str, salt: bytes) -> str:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1).hex()


def ensure_users(home: str | Path, names: Iterable[str]) -> Path:
    """Passwords for the user ``names`` (kept if they exist, generated otherwise) in
    ``<home>/opcua/credentials.json`` for the clients, and their salted scrypt hashes in
    ``<home>/opcua/users`` for the server; both owner-only.  Returns the users file."""
    directory = opcua_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    creds = directory / "credentials.json"
    known = read_logins(creds) or {}
    users = {n: str(known.get(n) or secrets.token_urlsafe(24)) for n in dict.fromkeys(names)}
    write_private(creds, json.dumps(users, indent=1) + "\n")
    hashed = {}
    for name, password in users.items():
        salt = secrets.token_bytes(16)
        hashed[name] = {"salt": salt.hex(), "scrypt": _hash(password, salt)}
    path = directory / "users"
    write_private(path, json.dumps(hashed, indent=1) + "\n")
    return path


@dataclass
class UserFile:
    """The hashed users of the outbound OPC UA server (``<home>/opcua/users``)."""

    users: dict[str, dict[str, str]]

    @classmethod
    def read(cls, path: str | Path) -> UserFile:
        entries = read_logins(path)
        if entries is None:
            raise ConnectionError(f"no OPC UA users file {path}: run the set-up (plantpulse up)")
        return cls({k: v for k, v in entries.items() if isinstance(v, dict)})

    def check(self, username: str | None, password: str | None) -> bool:
        """Whether ``password`` is ``username``'s (constant time in the password)."""
        entry = self.users.get(username or "")
        if entry is None or password is None:
            return False
        try:
            salt = bytes.fromhex(entry["salt"])
        except (KeyError, ValueError):
            return False
        return hmac.compare_digest(_hash(password, salt), entry.get("scrypt", ""))


# -- TLS for the MQTT broker -----------------------------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS listener: the CA clients verify it with, its certificate and key."""

    ca: Path
    cert: Path
    key: Path


def _pem_cert_ok(path: Path, ca: x509.Certificate | None = None) -> x509.Certificate | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return None
    if ca is not None and cert.issuer != ca.subject:
        return None
    return cert


def _builder(subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey, days: int):
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def broker_tls(directory: str | Path, hosts: Iterable[str] = ()) -> TlsFiles:
    """The broker's TLS files in ``directory`` (``ca.crt``, ``ca.key``, ``server.crt``,
    ``server.key``): kept while valid, else generated: a CA of this installation, and a server
    certificate it signs for ``localhost``, this machine's name, 127.0.0.1 and ``hosts``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    ca_key_path = directory / "ca.key"
    ca = _pem_cert_ok(files.ca)
    if ca is None or not ca_key_path.exists():
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PlantPulse"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"PlantPulse broker CA {socket.gethostname()}"
                ),
            ]
        )
        ca = (
            _builder(name, name, ca_key, VALID_DAYS * 2)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        write_private(ca_key_path, _key_pem(ca_key))
        files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        files.cert.unlink(missing_ok=True)  # a new CA: the server certificate goes with it
    if _pem_cert_ok(files.cert, ca) is None or not files.key.exists():
        signer = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        if not isinstance(signer, rsa.RSAPrivateKey):
            raise ValueError(f"{ca_key_path}: not the RSA key of the broker's CA")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname())])
        cert = (
            _builder(subject, ca.subject, key, VALID_DAYS)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_alt_names(None, hosts)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
            .sign(signer, hashes.SHA256())
        )
        write_private(files.key, _key_pem(key))
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        log.info("generated the broker's TLS certificate in %s", directory)
    return files


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- trust of OPC UA servers -----------------------------------------------------------------
def _load_certs(path: Path) -> list[x509.Certificate]:
    """The certificates in a file (DER, or PEM with one or more) or in a folder's ``*.der``,
    ``*.pem``, ``*.crt`` files (keys beside them are not certificates: skipped)."""
    if path.is_dir():
        return [
            c
            for p in sorted(path.iterdir())
            if p.suffix.lower() in (".der", ".pem", ".crt")
            for c in _load_certs(p)
        ]
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        return []


class ServerTrust:
    """A client's trust list of OPC UA servers, used as asyncua's ``certificate_validator``:
    a server is accepted when its certificate is in the list, or was issued (signed) by a CA
    certificate in it, is within its validity and names the server's application URI.  Else
    the session is refused with ``BadCertificateUntrusted`` and the certificate's fingerprint
    in the log and in ``refused`` (what ``plantpulse adapters trust`` would add)."""

    def __init__(self, locations: Iterable[Path]):
        self.locations = [Path(p) for p in locations]
        self.certs = [c for p in self.locations for c in _load_certs(p)]
        self.pinned = {c.fingerprint(hashes.SHA256()) for c in self.certs}
        self.refused: list[str] = []

    def trusts(self, cert: x509.Certificate) -> bool:
        if cert.fingerprint(hashes.SHA256()) in self.pinned:
            return True
        for ca in self.certs:
            if ca.subject != cert.issuer:
                continue
            try:
                if not ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                    continue
                cert.verify_directly_issued_by(ca)
            except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False

    async def __call__(self, cert: x509.Certificate, server: Any) -> None:
        from asyncua import ua
        from asyncua.common.utils import ServiceError

        now = dt.datetime.now(dt.UTC)
        fp = fingerprint(cert)
        if not self.trusts(cert):
            self.refused.append(fp)
            log.error(
                "OPC UA server %s: certificate %s is not in the trust list (%s)",
                getattr(server, "ApplicationUri", "?"),
                fp,
                ", ".join(map(str, self.locations)) or "empty",
            )
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise ServiceError(ua.StatusCodes.BadCertificateTimeInvalid)
        uri = getattr(server, "ApplicationUri", None)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise ServiceError(ua.StatusCodes.BadCertificateInvalid) from None
        if uri and uri not in san.get_values_for_type(x509.UniformResourceIdentifier):
            raise ServiceError(ua.StatusCodes.BadCertificateUriInvalid)
