"""TLS for the client side: what ``connect(..., tls=...)`` takes, and what a failure says.

:class:`TLS` names a CA file to trust (``None``: the system's trust store), an optional client
certificate and key (for a server that verifies clients), and the host name the server's
certificate must carry (default: the URL's host). An :class:`ssl.SSLContext` is taken as is.

A connection asked to use TLS never falls back to plaintext: nats-py upgrades to TLS only
when the server's INFO says ``tls_required``, so :class:`TLSAwareClient` refuses a server that
does not say it *before* sending the credentials (what nats.go's ``Secure()`` option does).
Every TLS failure is a :class:`TLSFailed`, which names the server (without credentials) and
says which side to fix.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client as NatsClient

from ._errors import ConnectionFailed, InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_PREFIX = "EVENTWIRE_TLS_"
_ENV_FIELDS = ("ca", "cert", "key", "hostname")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.:-]{0,252})")


class TLSFailed(ConnectionFailed):
    """The TLS handshake failed or could not happen: the server's certificate is not signed
    by a trusted CA, is not valid for the host, has expired; the server requires a client
    certificate; or the server does not offer TLS. ``reason`` says which (no credentials)."""

    def __init__(self, message: str, *, url: str | None = None, reason: str) -> None:
        super().__init__(message, url=url)
        self.reason = reason


class PlaintextRefused(nats.errors.SecureConnWantedError):
    """Raised inside nats-py when a server does not require TLS from a TLS client."""

    def __str__(self) -> str:
        return "nats: the server does not offer TLS (the connection would be plaintext)"


@dataclass(frozen=True, slots=True)
class TLS:
    """How to check the server (``ca``: a PEM file of CA certificates; ``None`` trusts the
    system's store) and, for a server that verifies clients, the client's ``cert`` and
    ``key`` (PEM files; the key readable by its owner only). ``hostname``: the name the
    server's certificate must be valid for, when it differs from the URL's host."""

    ca: str | os.PathLike[str] | None = None
    cert: str | os.PathLike[str] | None = None
    key: str | os.PathLike[str] | None = None
    hostname: str | None = None

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise InvalidArgument(f"{name} must be a file path", field="tls")
        if (self.cert is None) != (self.key is None):
            raise InvalidArgument("a client certificate needs its key and vice versa", field="tls")
        if self.hostname is not None and not (
            isinstance(self.hostname, str) and _HOSTNAME.fullmatch(self.hostname)
        ):
            raise InvalidArgument(f"{self.hostname!r} is not a host name", field="tls")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TLS | None:
        """From ``EVENTWIRE_TLS_CA``, ``EVENTWIRE_TLS_CERT``, ``EVENTWIRE_TLS_KEY`` and
        ``EVENTWIRE_TLS_HOSTNAME`` (what the CLI uses); ``None`` when none is set."""
        env = os.environ if environ is None else environ
        values = {name: env.get(f"{ENV_PREFIX}{name.upper()}") or None for name in _ENV_FIELDS}
        return cls(**values) if any(values.values()) else None

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2 or later, the server's certificate and host checked."""
        for path in (self.ca, self.cert, self.key):
            if path is not None and not Path(path).is_file():
                raise InvalidArgument(f"no such file: {os.fspath(path)}", field="tls")
        try:
            context = ssl.create_default_context(cafile=_path(self.ca))
            if self.cert is not None and self.key is not None:
                _check_key_mode(Path(self.key))
                context.load_cert_chain(os.fspath(self.cert), os.fspath(self.key))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            detail = f"cannot load the TLS files: {_reason(exc)}"
            raise InvalidArgument(detail, field="tls") from exc
        return context


def _path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


def _check_key_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise InvalidArgument(
            f"{path} is readable by others (mode {mode:04o}): chmod 600 it", field="tls"
        )


def client_tls(tls: TLS | ssl.SSLContext | None) -> tuple[ssl.SSLContext | None, str | None]:
    """The context and host name nats-py gets for ``connect(..., tls=tls)``."""
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls, None
    if not isinstance(tls, TLS):
        raise InvalidArgument(
            f"expected eventwire.TLS or ssl.SSLContext, got {type(tls).__name__}", field="tls"
        )
    return tls.context(), tls.hostname


def new_client(secure: bool) -> NatsClient:
    """A nats-py client (:class:`TLSAwareClient`); with ``secure``, one that refuses a server
    not requiring TLS."""
    return TLSAwareClient(require_tls=secure)


class ClientCertificateRefused(ssl.SSLError):
    """The server ended the connection right after the TLS handshake."""

    def __str__(self) -> str:
        return "the server closed the connection after the TLS handshake"


class TLSAwareClient(NatsClient):
    """nats-py's client, with TLS mended. With ``require_tls`` it never talks plaintext: a
    server's INFO without ``tls_required`` (at connect and at every reconnect) ends the
    attempt before CONNECT carries credentials.

    In TLS 1.3 the server checks the client's certificate after the client has finished
    its handshake, and a server that requires one usually resets the connection before the
    client reads its alert: a connection lost once TLS is up, before the server answered
    CONNECT, is reported as :class:`ClientCertificateRefused` (or the alert, if it arrived).
    """

    def __init__(self, *, require_tls: bool) -> None:
        super().__init__()
        self.require_tls = require_tls

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and self.require_tls and not info.get("tls_required"):
            raise PlaintextRefused
        await super()._process_info(info, initial_connection)

    async def _process_connect_init(self) -> None:
        try:
            await super()._process_connect_init()
            _mark_over_ssl(self)
        except (OSError, nats.errors.UnexpectedEOF) as exc:
            reader, writer = _streams(self)
            if writer is None or writer.get_extra_info("ssl_object") is None:
                _release_plain_stream(writer)
                raise  # before TLS was up: the handshake failed, or the connection was lost
            if isinstance(exc, ssl.SSLError):
                raise
            alert = reader.exception() if reader is not None else None
            if isinstance(alert, ssl.SSLError):
                raise alert from exc
            raise ClientCertificateRefused from exc


def _release_plain_stream(writer: Any) -> None:
    """After a failed handshake asyncio has closed the socket, but the plain stream's
    protocol, detached by ``start_tls``, never hears of it, and nats-py's close waits for
    it: forever. Tell it."""
    protocol = getattr(writer, "_protocol", None)
    if isinstance(protocol, asyncio.StreamReaderProtocol) and writer.transport.is_closing():
        protocol.connection_lost(None)


def _mark_over_ssl(client: NatsClient) -> None:
    """nats-py upgrades its stream to TLS without telling the stream's protocol, which then
    makes asyncio log "returning true from eof_received() has no effect when using ssl"
    whenever the server closes the connection; the protocol's own flag silences it."""
    _, writer = _streams(client)
    protocol = getattr(writer, "_protocol", None)
    if writer is None or writer.get_extra_info("ssl_object") is None:
        return
    if isinstance(protocol, asyncio.StreamReaderProtocol) and hasattr(protocol, "_over_ssl"):
        protocol._over_ssl = True


def _streams(client: NatsClient) -> tuple[Any, Any]:
    """nats-py's TCP transport's stream reader and writer (``None`` where it has none)."""
    transport = getattr(client, "_transport", None)
    return getattr(transport, "_io_reader", None), getattr(transport, "_io_writer", None)


def is_tls_failure(exc: BaseException) -> bool:
    """Whether nats-py's error is a failed or refused TLS handshake."""
    return isinstance(exc, ssl.SSLError | PlaintextRefused)


def tls_failed(shown: str, cause: BaseException) -> TLSFailed:
    """The :class:`TLSFailed` for ``cause`` (:func:`is_tls_failure`) at server ``shown``."""
    reason, hint = _explain(cause)
    return TLSFailed(f"cannot connect to {shown}: TLS: {reason} ({hint})", url=shown, reason=reason)


_CA_HINT = "pass the CA that signed the server's certificate: tls=eventwire.TLS(ca=...)"
_CLIENT_HINT = "the server verifies clients: pass TLS(ca=..., cert=..., key=...)"
_UNKNOWN_CA = "the server does not trust the client certificate's CA"
# OpenSSL's X509_V_ERR_* codes of a failed verification of the server's certificate.
_VERIFY_HINTS = {
    10: "the server needs a new certificate",  # expired
    18: _CA_HINT,  # self-signed leaf
    19: _CA_HINT,  # self-signed CA in the chain
    20: _CA_HINT,  # unable to get the local issuer
    62: "connect by a name the certificate holds, or set TLS(hostname=...)",  # host mismatch
}
# OpenSSL's reasons for an alert from the server.
_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": ("the server requires a client certificate", _CLIENT_HINT),
    "SSLV3_ALERT_BAD_CERTIFICATE": ("the server refused the client certificate", _CLIENT_HINT),
    "TLSV1_ALERT_UNKNOWN_CA": (_UNKNOWN_CA, _CLIENT_HINT),
    "SSLV3_ALERT_HANDSHAKE_FAILURE": ("the server refused the handshake", _CLIENT_HINT),
    "WRONG_VERSION_NUMBER": ("the server does not speak TLS here", "check the port"),
}


def _explain(cause: BaseException) -> tuple[str, str]:
    if isinstance(cause, PlaintextRefused):
        return "the server does not offer TLS", "use its TLS port, or connect without tls="
    if isinstance(cause, ClientCertificateRefused):
        reason = "the server requires a client certificate, or refused the one given"
        return reason, "pass TLS(ca=..., cert=..., key=...) with a certificate of its CA"
    if isinstance(cause, ssl.SSLCertVerificationError):
        message = (cause.verify_message or "").rstrip(".") or _reason(cause)
        hint = _VERIFY_HINTS.get(cause.verify_code, "check the server's certificate")
        return f"the server's certificate is not accepted: {message}", hint
    alert = _ALERTS.get(str(getattr(cause, "reason", "")))
    return alert if alert is not None else (_reason(cause), "check the TLS settings")


def _reason(exc: BaseException) -> str:
    """What OpenSSL said, without its ``[SSL: ...]`` prefix and ``(_ssl.c:1006)`` suffix."""
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    text = re.sub(r"\s*\(_ssl\.c:\d+\)\s*$", "", text)
    return re.sub(r"^\[[A-Z]+: [A-Z0-9_]+\]\s*", "", text) or type(exc).__name__
