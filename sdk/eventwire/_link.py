"""What an open bus holds (:class:`Link`), and how its connection is let go."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from ._auditing import Auditor
    from ._codec import Codec
    from ._dlq import DeadLetterQueue
    from ._idempotency import ProcessedIds
    from ._publisher import AckedPublisher
    from ._seen import SeenIds

log = logging.getLogger("eventwire.bus")
# Seconds a close waits for the connection to drain (flush acks and publishes) before
# closing it anyway: a server lost under the close must not hold it up.
_DRAIN_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Link:
    """What an open bus holds: the connection and everything opened on it."""

    nc: Client
    js: JetStreamContext
    codec: Codec
    publisher: AckedPublisher
    auditor: Auditor
    processed: ProcessedIds
    seen: SeenIds | None
    dlq: DeadLetterQueue


async def close_connection(nc: Client) -> None:
    """Drain ``nc`` (flush what is buffered) for at most ``_DRAIN_WAIT`` seconds, then close
    it. Without a server to flush to, what is buffered (acks, requests) is dropped, with a
    warning: the server redelivers what was not acknowledged."""
    if nc.is_closed:
        return
    try:
        if nc.is_connected:
            async with asyncio.timeout(_DRAIN_WAIT):
                await nc.drain()
    finally:
        if not nc.is_closed:
            if not nc.is_connected and (unsent := _drop_unsendable(nc)):
                log.warning("closing without a server: %d buffered bytes (acks) not sent", unsent)
            await nc.close()


def _drop_unsendable(nc: Client) -> int:
    """Forget what ``nc`` buffered while disconnected; returns how many bytes.

    nats-py's close writes buffered data to the lost connection's transport, which raises,
    and then skips its cleanup: the tasks of its subscriptions would never end."""
    unsent = nc.pending_data_size
    nc._pending = []
    nc._pending_data_size = 0
    return unsent
