"""Keeping a consumer's held messages alive: the server redelivers a message not
acknowledged within ``ack_wait``, so messages held here longer (a long handler, or pulled
ahead and waiting for a handler slot or in a batch) get in-progress acks (+WPI)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import nats.errors

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg

# How often a run looks whether its connection was closed for good.
_CLOSED_POLL = 1.0


async def keep_alive(
    nc: Client,
    ack_wait: float,
    in_flight: dict[int, tuple[Msg, float]],
    held: Callable[[], list[Msg]],
) -> None:
    """Tell the server that long-running handlers (``in_flight``: each message and when its
    handler started) are still at work, and so are the ``held`` messages waiting for one;
    raise :class:`ConnectionClosedError` once the connection was closed for good (nothing
    would ever arrive again)."""
    interval = ack_wait / 3
    last = time.monotonic()
    while True:
        await asyncio.sleep(min(interval, _CLOSED_POLL))
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        now = time.monotonic()
        if now - last < interval:
            continue
        last = now
        for msg, started in list(in_flight.values()):
            if now - started >= interval:
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()
        for msg in held():  # pulled ahead and waiting for a handler slot, or in a batch
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()
