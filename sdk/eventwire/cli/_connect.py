"""The one way CLI commands connect to NATS.

A command either opens a :class:`~eventwire.Bus` (:func:`open_bus`) or, for the admin tasks
that need a bare JetStream context (audit log, keyring bucket, stream diffs), a short-lived
connection (:func:`nats_connection`, :func:`jetstream`): no reconnects, the SDK's fail-fast
first connect (refused credentials or connection: a typed error at once), nats-py errors
mapped to ``EventwireError`` subclasses, and credentials never shown (:func:`redact_url`).
TLS settings come from ``EVENTWIRE_TLS_CA`` / ``_CERT`` / ``_KEY`` / ``_HOSTNAME``.

This module is the CLI's only door into the SDK's private modules (``ruff`` TID251 is
ignored for it in ``pyproject.toml``): every other CLI module uses the public API.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from eventwire import TLS, Bus, connect
from eventwire._connection import connect_nats, redact_url
from eventwire._errors import describe, mapped_nats_errors

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext

CONNECT_TIMEOUT = 5.0
CLI_NAME = "eventwire-cli"

__all__ = [
    "CONNECT_TIMEOUT",
    "describe",
    "jetstream",
    "nats_connection",
    "open_bus",
    "redact_url",
]


def open_bus(
    url: str, *, tenant: str, root: str, name: str = CLI_NAME, registry_ttl: float = 15.0
) -> Bus:
    """A bus for one command (``async with``); it provisions what is missing, as any bus.
    ``registry_ttl`` is the deployment's (the registry bucket is declared with it)."""
    return connect(
        url, tenant=tenant, root=root, name=name, connect_timeout=CONNECT_TIMEOUT,
        tls=TLS.from_env(), registry_ttl=registry_ttl,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def nats_connection(url: str, *, name: str = CLI_NAME) -> AsyncIterator[NatsClient]:
    """A plain nats-py connection for one command, closed on exit; nats-py errors raised
    inside the block leave as typed ``EventwireError`` subclasses."""
    nc = await connect_nats(url, name, CONNECT_TIMEOUT, reconnect=False, tls=TLS.from_env())
    try:
        with mapped_nats_errors(f"talking to {redact_url(url)}"):
            yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def jetstream(url: str, *, name: str = CLI_NAME) -> AsyncIterator[JetStreamContext]:
    """:func:`nats_connection`'s JetStream context."""
    async with nats_connection(url, name=name) as nc:
        yield nc.jetstream()
