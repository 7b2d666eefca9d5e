"""A continuous JetStream pull: keeps batches requested ahead, notices silence, re-pulls.

nats-py's ``fetch`` waits for every message with its own timer task, which costs more than
the rest of the path; here messages arrive on a callback and are handed over in batches.
The server is asked for ``batch`` more whenever what is requested plus what is held falls
to ``batch`` or less, so at most ``2 * batch`` messages are outstanding (back-pressure).
Idle heartbeats tell a quiet consumer from a lost pull (server restart, leader change):
after ``3 * heartbeat`` without a word the pull is issued again. After a reconnect
(:meth:`Pull.reset`) it is issued again at once, whether the caller is waiting for a batch
or busy with the last one, and whoever waits for answers to requests sent on the old
connection is told (:meth:`Pull.interrupted`): those answers may never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

import nats.errors

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription

log = logging.getLogger("eventwire.consumer")
_EXPIRES = 30.0
_HEARTBEAT = 2.0
_STATUS = "Status"
_DESCRIPTION = "Description"
_PENDING_MESSAGES = "Nats-Pending-Messages"


class Pull:
    """Messages of one durable consumer, in delivery order, batch by batch."""

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        consumer: str,
        batch: int,
        api_prefix: str = "$JS.API",
        heartbeat: float = _HEARTBEAT,
    ) -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._consumer = consumer
        self._batch = batch
        self._heartbeat = heartbeat
        self._inbox = nc.new_inbox()
        self._buffer: list[Msg] = []
        self._arrived = asyncio.Event()
        self._requested = 0
        self._held = 0
        self._last_word = time.monotonic()
        self._sub: NatsSubscription | None = None
        self._closed = False
        self._reset = asyncio.Event()  # set (and replaced) by the next reset()

    async def open(self) -> None:
        self._sub = await self._nc.subscribe(
            self._inbox, cb=self._on_message, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        await self._pull_more()

    async def close(self) -> list[Msg]:
        """Stop pulling; return what arrived but was never taken (for the caller to nak)."""
        self._closed = True
        self._reset.set()  # and for good: whoever waits on interrupted() stops waiting
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                log.debug("consumer %s: unsubscribe failed", self._consumer, exc_info=True)
        left, self._buffer = self._buffer, []
        self._arrived.set()
        return left

    async def next_batch(self) -> list[Msg]:
        """Wait for messages; return what arrived (at least one, at most ``batch``: two
        pull requests may be answered before the caller takes them), or [] once closed."""
        while not self._buffer and not self._closed:
            self._arrived.clear()
            await self._check_alive()  # first: a reset while the caller was busy pulls now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), self._heartbeat)
        taken, self._buffer = self._buffer[: self._batch], self._buffer[self._batch :]
        self._held += len(taken)
        return taken

    def buffered(self) -> list[Msg]:
        """The messages that arrived and were not taken yet."""
        return list(self._buffer)

    async def done(self, count: int) -> None:
        """``count`` taken messages were acked, naked or terminated: room to pull more."""
        self._held -= count
        await self._pull_more()

    async def _pull_more(self) -> None:
        if self._closed or self._requested + self._held + len(self._buffer) > self._batch:
            return
        request = {
            "batch": self._batch,
            "expires": int(_EXPIRES * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        self._requested += self._batch
        try:
            await self._nc.publish(self._next_subject, json.dumps(request).encode(), self._inbox)
        except nats.errors.Error as exc:
            self._requested -= self._batch
            log.warning("consumer %s: pull request failed: %r", self._consumer, exc)

    def reset(self) -> None:
        """After a reconnect: forget outstanding requests and pull again at once (the next
        :meth:`next_batch`, or the one waiting now, sends the request)."""
        self._requested = 0
        self._last_word = 0.0
        self._arrived.set()
        if not self._closed:
            self._reset.set()
            self._reset = asyncio.Event()

    def interrupted(self) -> asyncio.Event:
        """An event that the next :meth:`reset` (a reconnect) sets, already set once
        :meth:`close` was called."""
        return self._reset

    async def _check_alive(self) -> None:
        if time.monotonic() - self._last_word > 3 * self._heartbeat:
            log.info("consumer %s: no word from the server, pulling again", self._consumer)
            self._requested = 0
            self._last_word = time.monotonic()
            await self._pull_more()

    async def _on_message(self, msg: Msg) -> None:
        self._last_word = time.monotonic()
        status = msg.headers.get(_STATUS) if msg.headers else None
        if not status:
            self._requested = max(0, self._requested - 1)
            self._buffer.append(msg)
            self._arrived.set()
            return
        if status == "100":
            return  # idle heartbeat (or flow control, unused for pulls)
        await self._on_status(status, msg)

    async def _on_status(self, status: str, msg: Msg) -> None:
        headers = msg.headers or {}
        if status in ("404", "408"):
            # The request ended; the server says how many of it went unfilled.
            unfilled = int(headers.get(_PENDING_MESSAGES, self._batch))
            self._requested = max(0, self._requested - unfilled)
        else:  # 409 leadership change / consumer deleted / max waiting, 503, ...
            log.warning("consumer %s: %s %s", self._consumer, status, headers.get(_DESCRIPTION, ""))
            self._requested = 0
            await asyncio.sleep(0.05)
        await self._pull_more()
