"""Connecting to NATS: time-boxed at first, reconnecting forever once connected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.client import DEFAULT_INBOX_PREFIX
from nats.aio.client import Client as NatsClient

from ._errors import ConnectionFailed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("eventwire.bus")


async def connect_nats(
    url: str,
    name: str,
    timeout: float,
    reconnected: Callable[[], Awaitable[None]],
    inbox_prefix: str | None = None,
) -> NatsClient:
    """Connect within ``timeout``; once connected, reconnect forever (servers restart)."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %r", exc)

    async def on_disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats: disconnected from %s", url)

    async def on_reconnected() -> None:
        log.info("nats: reconnected to %s", url)
        await reconnected()

    nc = NatsClient()
    try:
        async with asyncio.timeout(timeout):
            await nc.connect(
                [part.strip() for part in url.split(",") if part.strip()],
                name=name,
                connect_timeout=max(1, min(int(timeout), 2)),
                max_reconnect_attempts=-1,
                # nats-py annotates int but sleeps for a float; half a second shortens failover.
                reconnect_time_wait=0.5,  # type: ignore[arg-type]
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                inbox_prefix=inbox_prefix or DEFAULT_INBOX_PREFIX,
            )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        with contextlib.suppress(nats.errors.Error, AssertionError):  # never connected
            await nc.close()
        raise ConnectionFailed(f"cannot connect to {url} within {timeout}s: {exc!r}") from exc
    return nc
