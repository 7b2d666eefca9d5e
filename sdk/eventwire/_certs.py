"""Certificates for a TLS deployment: a private CA, a server certificate, client certificates.

``eventwire tls init`` calls :func:`init_certificates`. Keys are ECDSA P-256 (what every TLS
stack speaks, nats-server's Go included), written as unencrypted PKCS#8 PEM (nats-server
reads no encrypted keys) with mode 0600; certificates with mode 0644. Nothing is ever
overwritten: a directory that holds any of the files is refused as a whole, before anything
is written. The server certificate is valid for both TLS roles (server and client), so that
nodes of a cluster can present it to each other on their routes (mutual TLS).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from eventwire_security._files import write_atomic

from ._errors import EventwireError, InvalidArgument, checked_name

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Sequence

CA_FILE, CA_KEY_FILE = "ca.pem", "ca-key.pem"
SERVER_FILE, SERVER_KEY_FILE = "server.pem", "server-key.pem"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 365
_CA_DAYS = 3650
_DNS_NAME = re.compile(
    r"(?=.{1,253}\Z)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate a peer whose clock is a little behind


class CertificateError(EventwireError):
    """Certificates cannot be written (files exist, the directory is unusable)."""


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A client certificate and its key (``TLS(cert=..., key=...)``)."""

    name: str
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """What :func:`init_certificates` wrote: the CA, the server's pair, the clients'."""

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    hosts: tuple[str, ...]
    clients: tuple[ClientCertificate, ...]


def check_hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    """``hosts`` (DNS names or IP addresses) with the defaults added, each once."""
    if isinstance(hosts, str):
        raise InvalidArgument("expected a sequence of host names, not a string", field="hosts")
    checked: list[str] = []
    for host in (*hosts, *DEFAULT_HOSTS):
        if not isinstance(host, str) or not (_is_ip(host) or _DNS_NAME.fullmatch(host)):
            raise InvalidArgument(f"{host!r} is not a DNS name or an IP address", field="hosts")
        checked.append(host.lower())
    return tuple(dict.fromkeys(checked))


def init_certificates(
    directory: str | os.PathLike[str],
    *,
    hosts: Iterable[str] = (),
    clients: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
) -> CertificateFiles:
    """Write a new CA, a server certificate for ``hosts`` (``localhost`` and ``127.0.0.1``
    always included) and one client certificate per name of ``clients`` to ``directory``."""
    names = check_hosts(hosts)
    if isinstance(clients, str):
        raise InvalidArgument("expected a sequence of client names", field="clients")
    clients = tuple(dict.fromkeys(checked_name("clients", name) for name in clients))
    if type(days) is not int or not 1 <= days <= _CA_DAYS:
        raise InvalidArgument(f"{days!r} is not a number of days (1-{_CA_DAYS})", field="days")
    base = Path(directory)
    files = CertificateFiles(
        base, base / CA_FILE, base / CA_KEY_FILE, base / SERVER_FILE, base / SERVER_KEY_FILE,
        names, tuple(_client_files(base, name) for name in clients),
    )  # fmt: skip
    _refuse_existing(files)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca_certificate(ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _leaf((ca, ca_key), server_key, "eventwire server", hosts=names, days=days)
    written = [
        (files.ca, ca, ca_key, files.ca_key),
        (files.server_cert, server, server_key, files.server_key),
    ]
    for client in files.clients:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf((ca, ca_key), key, client.name, days=days)
        written.append((client.cert, cert, key, client.key))
    _make_dir(base)
    for cert_path, cert, key, key_path in written:
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _client_files(base: Path, name: str) -> ClientCertificate:
    return ClientCertificate(name, base / f"client-{name}.pem", base / f"client-{name}-key.pem")


def _refuse_existing(files: CertificateFiles) -> None:
    paths = [files.ca, files.ca_key, files.server_cert, files.server_key]
    paths += [path for client in files.clients for path in (client.cert, client.key)]
    taken = [str(path) for path in paths if path.exists() or path.is_symlink()]
    if taken:
        raise CertificateError(
            f"refusing to overwrite {', '.join(taken)}: choose another directory "
            "or remove the old files first"
        )


def _make_dir(base: Path) -> None:
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(f"cannot create {base}: {exc.strerror or exc}") from exc
    if not base.is_dir():
        raise CertificateError(f"{base} is not a directory")


def _write(path: Path, data: bytes, mode: int) -> None:
    try:
        write_atomic(path, data, mode=mode, exclusive=True)
    except FileExistsError as exc:
        raise CertificateError(f"refusing to overwrite {path}") from exc
    except OSError as exc:
        raise CertificateError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "eventwire"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = _name("eventwire CA")
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    return (
        _builder(name, name, key.public_key(), _CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    days: int,
) -> x509.Certificate:
    """A certificate issued by ``issuer``: a server's (also usable as a client's, on cluster
    routes) when it names ``hosts``, else a client's."""
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    purposes = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if hosts:
        purposes.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    ca, ca_key = issuer
    issuer_key = ca_key.public_key()
    builder = (
        _builder(_name(common_name), ca.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
        )
    )
    if hosts:
        names: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(host)) if _is_ip(host) else x509.DNSName(host)
            for host in hosts
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())
