"""Settling delivered messages: ack, nak or term without letting a lost connection stop
the consumer, and for an idempotent consumer, record the handled event, then ack.

A message whose ack, nak or term cannot be sent (the connection is closed or reconnecting)
is logged and left to the server, which delivers it again after its ack wait; the loop
goes on with the next one.

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

# the message, its event key, the record's ack (None: not sent) and until when to wait for it
_Item = tuple["Msg", str, "asyncio.Future[PubAck] | None", float]


async def ack(msg: Msg) -> bool:
    """Acknowledge ``msg``; False (logged) if that could not be sent."""
    try:
        await msg.ack()
    except nats.errors.Error as exc:
        return _unsent("ack", msg, exc)
    return True


async def nak(msg: Msg, delay: float | None = None) -> bool:
    """Ask for ``msg`` again (after ``delay`` seconds); False (logged) if not sent."""
    try:
        await msg.nak(delay=delay)
    except nats.errors.Error as exc:
        return _unsent("nak", msg, exc)
    return True


async def term(msg: Msg) -> bool:
    """Never deliver ``msg`` again; False (logged) if that could not be sent."""
    try:
        await msg.term()
    except nats.errors.Error as exc:
        return _unsent("term", msg, exc)
    return True


def _unsent(what: str, msg: Msg, exc: nats.errors.Error) -> bool:
    log.warning("%s of the message on %s not sent (%r); the server decides", what, msg.subject, exc)
    return False


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
        # event key -> whether its record was stored, resolved when it is settled
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self._sent: set[asyncio.Future[PubAck]] = set()  # records not yet settled

    async def record(self, msg: Msg, key: str) -> None:
        """Send the record of the event with :func:`event_key` ``key`` now; :meth:`run`
        settles ``msg`` once it is stored."""
        await self._room.acquire()
        loop = asyncio.get_running_loop()
        self._pending[key] = loop.create_future()
        deadline = loop.time() + _RECORD_WAIT
        future: asyncio.Future[PubAck] | None = None  # None: written again by run()
        try:
            future = await self._processed.mark_later(self._consumer, key)
        except nats.errors.Error:
            pass
        else:
            self._sent.add(future)
        self._queue.put_nowait((msg, key, future, deadline))

    def reconnected(self) -> None:
        """The connection was replaced: acks of records sent before may never come, so
        those records are written again now instead of after their wait."""
        for future in self._sent:
            future.cancel()

    async def outcome(self, key: str) -> bool | None:
        """For an event whose record is still being settled, wait and say whether it was
        stored; None if none is. A redelivery (its ack was late, say during an election)
        must not run the handler again while the first run's record is on its way."""
        pending = self._pending.get(key)
        return None if pending is None else await asyncio.shield(pending)

    def close(self) -> None:
        """:meth:`run` returns after settling what was recorded before."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        while (item := await self._queue.get()) is not None:
            msg, key, future, deadline = item
            stored = False
            try:
                stored = await _stored(future, deadline) or await self._write_again(key)
                await self._settled(msg, stored)
            finally:
                if future is not None:
                    self._sent.discard(future)
                self._room.release()
                outcome = self._pending.pop(key, None)
                if outcome is not None and not outcome.done():
                    outcome.set_result(stored)

    async def _write_again(self, key: str) -> bool:
        """Keep trying through an outage rather than let the event run twice."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                await self._processed.mark(self._consumer, key)
                return True
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("%s: recording %s failed (%r), retrying", self._consumer, key, exc)
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        log.error("%s: could not record %s; it will be redelivered", self._consumer, key)
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
