"""Connecting to NATS: fail fast at first, then (for a bus) reconnect forever.

The first connect gives up at once when the server refuses the credentials, or when every
server of the URL refused the connection (nothing listens there), and otherwise after
``timeout`` seconds; each way is a typed :class:`ConnectionFailed`. Credentials in a URL
(``nats://user:password@host``, or a token) never appear in a message or a log line:
:func:`redact_url` shows them as ``***``. With ``tls``, a failed handshake (or a server
without TLS) is a :class:`~eventwire._tls.TLSFailed` at once, and plaintext never happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.client import DEFAULT_INBOX_PREFIX
from nats.aio.client import Client as NatsClient

from ._errors import (
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionRefused,
    ConnectTimeout,
    HostNotFound,
    InvalidArgument,
    describe,
    is_authentication_failure,
)
from ._tls import TLS, client_tls, is_tls_failure, new_client, tls_failed

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

log = logging.getLogger("eventwire.bus")
_CLOSE_TIMEOUT = 0.25
_CONNECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_connection_name(name: str) -> str:
    """A client name (shown by the server, and the actor of the bus's audit records)."""
    if not isinstance(name, str) or not _CONNECTION_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{name!r} is not a connection name (1-128 of A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit)",
            field="name",
        )
    return name


def redact_url(url: str) -> str:
    """``url`` (one server or a comma-separated list) with any credentials shown as ``***``."""
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    host, slash, path = rest.partition("/")
    if "@" in host:
        host = "***@" + host.rpartition("@")[2]
    return f"{scheme}{sep}{host}{slash}{path}"


def server_urls(url: str) -> list[str]:
    """The servers of a comma-separated URL; :class:`InvalidArgument` if there are none."""
    if not isinstance(url, str):
        raise InvalidArgument(f"expected a string, got {type(url).__name__}", field="url")
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise InvalidArgument("no server in the URL", field="url")
    return servers


class _GiveUp(Exception):
    """Raised from nats-py's error callback to end a first connect that cannot succeed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


class _FirstConnect:
    """What the first connect has met so far; decides when to give up early."""

    def __init__(self, servers: int) -> None:
        self.servers = servers
        self.refused = 0
        self.last: BaseException | None = None
        self.over = False  # connected, or given up: errors from here on are only logged
        self.connected = False

    def failed(self, exc: BaseException) -> None:
        self.last = exc
        # Refused credentials; a failed TLS handshake, which is the same CA and certificate
        # everywhere (and nats-py would hang closing it before trying the next server).
        if is_authentication_failure(exc) or is_tls_failure(exc):
            self._give_up(exc)
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
            self.refused += 1  # refused, or no such host: asking again will not help
            if self.refused >= self.servers:
                self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        self.over = True
        raise _GiveUp(exc)


async def connect_nats(
    url: str,
    name: str,
    timeout: float,
    reconnected: Callable[[], Awaitable[None]] | None = None,
    inbox_prefix: str | None = None,
    *,
    reconnect: bool = True,
    tls: TLS | ssl.SSLContext | None = None,
) -> NatsClient:
    """Connect within ``timeout``; once connected, reconnect forever (servers restart),
    or with ``reconnect=False`` (a short-lived command) close on the first disconnect.
    With ``tls`` (:class:`TLS` or an ``ssl.SSLContext``) only over TLS."""
    servers, shown = server_urls(url), redact_url(url)
    context, hostname = client_tls(tls)
    first = _FirstConnect(len(servers))

    async def on_error(exc: Exception) -> None:
        if not first.over:
            first.failed(exc)
        elif not nc.is_closed:
            log.warning("nats: %r", exc)

    async def on_disconnected() -> None:
        if first.connected and not (nc.is_closed or nc.is_draining):
            log.warning("nats: disconnected from %s", shown)

    async def on_reconnected() -> None:
        log.info("nats: reconnected to %s", shown)
        if reconnected is not None:
            await reconnected()

    nc = new_client(secure=context is not None)
    try:
        async with asyncio.timeout(timeout):
            await nc.connect(
                servers,
                name=name,
                connect_timeout=max(1, min(int(timeout), 2)),
                allow_reconnect=reconnect,
                max_reconnect_attempts=-1,
                # nats-py annotates int but sleeps for a float; half a second shortens failover.
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # see the line above
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                inbox_prefix=inbox_prefix or DEFAULT_INBOX_PREFIX,
                tls=context,
                tls_hostname=hostname,
            )
    except BaseException as exc:  # also cancelled (Ctrl-C): nothing may stay half-open
        first.over = True
        await _close_unconnected(nc)
        if not isinstance(exc, _GiveUp | nats.errors.Error | OSError):  # OSError: timeouts too
            raise
        cause = exc.cause if isinstance(exc, _GiveUp) else first.last or exc
        raise _connect_error(shown, timeout, exc, cause) from cause
    first.over = first.connected = True
    return nc


async def _close_unconnected(nc: NatsClient) -> None:
    """Close a client whose first connect failed, without waiting long: after a TLS upgrade
    that failed midway nats-py's close may wait for a stream that never reports its end
    (``_tls`` mends the cases it knows), and the socket is closed already."""
    with contextlib.suppress(nats.errors.Error, AssertionError, TimeoutError):
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await nc.close()


def _connect_error(
    shown: str, timeout: float, exc: BaseException, cause: BaseException
) -> ConnectionFailed | InvalidArgument:
    if "invalid connect url" in str(cause):  # nats-py's words for a URL it cannot parse
        return InvalidArgument(f"{shown} is not a NATS URL ({describe(cause)})", field="url")
    if is_tls_failure(cause):
        return tls_failed(shown, cause)
    if is_authentication_failure(cause):
        return AuthenticationFailed(
            f"cannot connect to {shown}: the server refused the credentials ({describe(cause)})",
            url=shown,
        )
    if isinstance(exc, TimeoutError) and not isinstance(exc, nats.errors.Error):
        detail = "" if cause is exc else f" (last error: {describe(cause)})"
        return ConnectTimeout(f"cannot connect to {shown} within {timeout}s{detail}", url=shown)
    if isinstance(cause, ConnectionRefusedError):
        reason = "connection refused (is the server running, on this port?)"
        return ConnectionRefused(f"cannot connect to {shown}: {reason}", url=shown)
    if isinstance(cause, socket.gaierror):
        reason = f"the host name does not resolve ({cause.strerror or cause})"
        return HostNotFound(f"cannot connect to {shown}: {reason}", url=shown)
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else describe(cause)
    return ConnectionFailed(f"cannot connect to {shown}: {reason}", url=shown)
