"""Exactly-once effect: ids of processed events, kept in a KV bucket for a window.

JetStream de-duplicates publishes (the message id is derived from the signed bytes) and
delivers at least once. A consumer that records each event id after its handler succeeded,
and skips ids it has recorded, applies each event once, as long as a redelivery comes
within the window. What it cannot cover: a crash after the handler's side effect and
before the record (that event is applied again), so handlers with outside effects should
still be idempotent themselves, or record their effect and the id together.

Records are keyed ``<consumer>.<event_key(event)>``: a hash of the event's tenant, source and
id, never the id itself (a signer chooses it; ``"a b"`` or ``"a..b"`` are no valid keys).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.js.errors

from eventwire_security import processed_bucket

from ._buckets import open_bucket
from ._errors import NotRunning
from ._streams import processed_config

if TYPE_CHECKING:
    import asyncio

    from nats.js import JetStreamContext
    from nats.js.api import PubAck
    from nats.js.kv import KeyValue

    from ._publisher import AckedPublisher

DEFAULT_WINDOW = 24 * 3600.0


class ProcessedIds:
    """Which (consumer, event) pairs were processed within the window; events are named by
    their :func:`~eventwire._seen.event_key`."""

    def __init__(self, kv: KeyValue, bucket: str, publisher: AckedPublisher | None = None) -> None:
        self._kv = kv
        self._prefix = f"$KV.{bucket}."
        self._publisher = publisher

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        root: str,
        window: float = DEFAULT_WINDOW,
        replicas: int = 1,
        *,
        create: bool = True,
        publisher: AckedPublisher | None = None,
    ) -> ProcessedIds:
        config = processed_config(root, window=window, replicas=replicas)
        kv = await open_bucket(js, config, create=create)
        return cls(kv, processed_bucket(root), publisher)

    async def seen(self, consumer: str, key: str) -> bool:
        """Whether ``consumer`` recorded the event with :func:`event_key` ``key``."""
        try:
            await self._kv.get(f"{consumer}.{key}")
        except nats.js.errors.KeyNotFoundError:
            return False
        return True

    async def mark(self, consumer: str, key: str) -> None:
        await self._kv.put(f"{consumer}.{key}", b"")

    async def mark_later(self, consumer: str, key: str) -> asyncio.Future[PubAck]:
        """Send the record now; the future resolves once it is stored (pipelined)."""
        if self._publisher is None:
            raise NotRunning("pipelined records need the bus's publisher")
        return await self._publisher.publish(f"{self._prefix}{consumer}.{key}", b"", {})
