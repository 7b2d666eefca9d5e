"""Settling the handled events of an idempotent consumer: record the id, then ack.

The record of a handled event id must be stored before the event is acknowledged (else a
redelivery after a lost ack would run the handler again). Waiting for each record's
round trip before handling the next event limits a consumer to one event per round trip,
so records are sent as events are handled and a :class:`Settler` task acknowledges each
event, in order, once its record is stored. Records that fail are written again through
the outage; after that the event is naked (and, redelivered, handled again).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import nats.errors

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.msg import Msg
    from nats.js.api import PubAck

    from ._idempotency import ProcessedIds

log = logging.getLogger("eventwire.consumer")
_RECORD_WAIT = 5.0  # seconds for a pipelined record's ack before writing it again
_ATTEMPTS = 30

# the message, its event id, the record's ack (None: not sent) and until when to wait for it
_Item = tuple["Msg", str, "asyncio.Future[PubAck] | None", float]


class Settler:
    """Acks handled events once their records are stored; at most ``depth`` unsettled."""

    def __init__(
        self,
        processed: ProcessedIds,
        consumer: str,
        settled: Callable[[Msg, bool], Awaitable[None]],
        depth: int,
    ) -> None:
        self._processed = processed
        self._consumer = consumer
        self._settled = settled
        self._room = asyncio.Semaphore(depth)
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        # event id -> whether its record was stored, resolved when it is settled
        self._pending: dict[str, asyncio.Future[bool]] = {}

    async def record(self, msg: Msg, event_id: str) -> None:
        """Send the record of ``event_id`` now; :meth:`run` settles ``msg`` once stored."""
        await self._room.acquire()
        loop = asyncio.get_running_loop()
        self._pending[event_id] = loop.create_future()
        deadline = loop.time() + _RECORD_WAIT
        try:
            future = await self._processed.mark_later(self._consumer, event_id)
        except nats.errors.Error:
            future = None  # written again by run()
        self._queue.put_nowait((msg, event_id, future, deadline))

    async def outcome(self, event_id: str) -> bool | None:
        """For an event whose record is still being settled, wait and say whether it was
        stored; None if none is. A redelivery (its ack was late, say during an election)
        must not run the handler again while the first run's record is on its way."""
        pending = self._pending.get(event_id)
        return None if pending is None else await asyncio.shield(pending)

    def close(self) -> None:
        """:meth:`run` returns after settling what was recorded before."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        while (item := await self._queue.get()) is not None:
            msg, event_id, future, deadline = item
            stored = False
            try:
                stored = await _stored(future, deadline) or await self._write_again(event_id)
                await self._settled(msg, stored)
            finally:
                self._room.release()
                outcome = self._pending.pop(event_id, None)
                if outcome is not None and not outcome.done():
                    outcome.set_result(stored)

    async def _write_again(self, event_id: str) -> bool:
        """Keep trying through an outage rather than let the event run twice."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                await self._processed.mark(self._consumer, event_id)
                return True
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("%s: recording %s failed (%r), retrying", self._consumer, event_id, exc)
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        log.error("%s: could not record %s; it will be redelivered", self._consumer, event_id)
        return False


async def _stored(future: asyncio.Future[PubAck] | None, deadline: float) -> bool:
    """Whether the pipelined record was acknowledged by ``deadline`` (loop time): records
    sent together are given up on together, not one ``_RECORD_WAIT`` after another."""
    if future is None:
        return False
    wait = deadline - asyncio.get_running_loop().time()
    if not future.done() and wait > 0:
        await asyncio.wait((future,), timeout=wait)
    return future.done() and not future.cancelled() and future.exception() is None
