"""Replay protection at consume: each consumer claims the id of every event it receives
for the first time; a second first-time arrival of the same id is a replay.

Claims are KV creates in the bucket ``<root>-seen`` (a JetStream publish with
``Nats-Expected-Last-Subject-Sequence: 0``), pipelined for a whole batch. They expire after
the replay window's horizon, past which the event's own ``iat``/``exp`` refuse it anyway. A
JetStream redelivery (delivery count > 1) is never a replay and is not claimed again.
Within the stream's duplicate window a replayed publish is already dropped by JetStream.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors

from eventwire_security import seen_bucket, seen_key

from ._buckets import open_bucket
from ._streams import seen_config

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from ._event import Event
    from ._publisher import AckedPublisher

_WRONG_LAST_SEQUENCE = 10071


class SeenIds:
    """First-delivery claims of event ids, per consumer."""

    def __init__(self, js: JetStreamContext, publisher: AckedPublisher, bucket: str) -> None:
        self._js = js
        self._publisher = publisher
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        publisher: AckedPublisher,
        root: str,
        horizon: float,
        replicas: int = 1,
        *,
        create: bool = True,
    ) -> SeenIds:
        bucket = seen_bucket(root)
        config = seen_config(root, horizon=horizon, replicas=replicas)
        await open_bucket(js, config, create=create)
        return cls(js, publisher, bucket)

    async def claim(self, consumer: str, events: list[Event], timeout: float = 5.0) -> list[bool]:
        """For each event, True if this consumer had not seen its id, False for a replay.

        Raises ``nats.errors.Error`` / ``TimeoutError`` if the bucket cannot answer: the
        caller then treats the batch as not yet processable.
        """
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        futures = [
            await self._publisher.publish(
                f"{self._prefix}{consumer}.{seen_key(e.tenant, e.source, e.id)}", b"", headers
            )
            for e in events
        ]
        _, late = await asyncio.wait(futures, timeout=timeout) if futures else (set(), set())
        for future in late:
            future.cancel()
        if late:
            raise TimeoutError("replay claims not acknowledged in time")
        return [_claimed(future) for future in futures]

    async def forget(self, consumer: str, tenant: str, source: str, event_id: str) -> None:
        """Drop ``consumer``'s claim on an event so that it accepts the event once more
        (a dead letter being redriven to the consumer that gave up on it)."""
        subject = f"{self._prefix}{consumer}.{seen_key(tenant, source, event_id)}"
        await self._js.purge_stream(self._stream, subject=subject)


def _claimed(future: asyncio.Future[Any]) -> bool:
    error = future.exception()
    if error is None:
        return True
    if isinstance(error, nats.js.errors.APIError) and error.err_code == _WRONG_LAST_SEQUENCE:
        return False
    raise error
