"""A durable pull consumer loop: fetch, verify in parallel, dispatch in order, ack by outcome."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Self

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ._codec import Rejection
from ._errors import NotRunning, StreamConfigError
from ._pull import Pull
from ._subjects import check_pattern, to_wire

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from ._codec import Codec
    from ._event import Event

log = logging.getLogger("eventwire.consumer")
_RETRY_DELAY = 1.0


async def _nak_all(msgs: list[Msg]) -> None:
    for msg in msgs:
        with contextlib.suppress(nats.errors.Error):
            await msg.nak()


@dataclass
class SubscriptionStats:
    delivered: int = 0
    handled: int = 0
    failed: int = 0
    rejected: int = 0


def durable_name(owner: str, pattern: str) -> str:
    """A stable consumer name for ``owner`` consuming ``pattern``."""
    digest = hashlib.sha256(pattern.encode()).hexdigest()[:12]
    return f"{owner}-{digest}"


class Subscription:
    """Delivers events matching ``pattern`` to ``handler`` from a durable consumer.

    Success acks; an exception naks with a delay; an event that fails verification is
    terminated and never reaches the handler. ``max_in_flight`` bounds concurrent handlers;
    with 1 (the default) events are handled one at a time in stream order.
    """

    def __init__(
        self,
        *,
        nc: Client,
        js: JetStreamContext,
        codec: Codec,
        stream: str,
        pattern: str,
        handler: Callable[[Event], Awaitable[None]],
        durable: str,
        max_in_flight: int = 1,
        batch: int = 64,
        start: Literal["all", "new"] = "all",
        ack_wait: float = 30.0,
    ) -> None:
        if max_in_flight < 1 or batch < 1:
            raise ValueError("max_in_flight and batch must be at least 1")
        self.pattern = check_pattern(pattern)
        self.durable = durable
        self.stats = SubscriptionStats()
        self._nc = nc
        self._js = js
        self._pull: Pull | None = None
        self._codec = codec
        self._stream = stream
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._batch = max(batch, max_in_flight)
        self._start = start
        self._ack_wait = ack_wait
        self._slots = asyncio.Semaphore(max_in_flight)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def _config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            name=self.durable,
            description=f"eventwire: {self.pattern}",
            filter_subject=to_wire(self._codec.root, self.pattern),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            # room for the batches queued for dispatch plus the one being fetched
            max_ack_pending=max(1000, self._batch * 8 + self._max_in_flight),
            deliver_policy=DeliverPolicy.ALL if self._start == "all" else DeliverPolicy.NEW,
        )

    async def start(self) -> None:
        if self._task is not None:
            raise NotRunning("subscription already started")
        try:
            await self._js.add_consumer(self._stream, self._config())
        except nats.js.errors.BadRequestError as exc:
            raise StreamConfigError(
                f"consumer {self.durable!r} exists with other settings: {exc.description}"
            ) from None
        pull = Pull(self._nc, stream=self._stream, consumer=self.durable, batch=self._batch)
        await pull.open()
        self._pull = pull
        self._task = asyncio.create_task(self._run(pull), name=f"eventwire:{self.durable}")

    async def stop(self) -> None:
        """Stop fetching, let in-flight handlers finish, then unsubscribe. Safe twice."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        if self._pull is not None:
            await _nak_all(await self._pull.close())
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self, pull: Pull) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                while msgs := await pull.next_batch():
                    results = self._codec.open_many([(m.data, m.subject) for m in msgs])
                    for index, (msg, result) in enumerate(zip(msgs, results, strict=True)):
                        if self._stopping:
                            await _nak_all(msgs[index:])
                            await self._done(len(msgs) - index)
                            break
                        await self._deliver(msg, result, group)
        finally:
            await _nak_all(await pull.close())

    async def _done(self, count: int) -> None:
        if self._pull is not None:
            await self._pull.done(count)

    async def _deliver(self, msg: Msg, result: Event | Rejection, group: asyncio.TaskGroup) -> None:
        self.stats.delivered += 1
        if isinstance(result, Rejection):
            self.stats.rejected += 1
            await msg.term()
            await self._done(1)
        elif self._max_in_flight == 1:
            await self._handle(msg, result)
        else:
            await self._slots.acquire()
            group.create_task(self._handle_in_slot(msg, result))

    async def _handle_in_slot(self, msg: Msg, event: Event) -> None:
        try:
            await self._handle(msg, event)
        finally:
            self._slots.release()

    async def _handle(self, msg: Msg, event: Event) -> None:
        try:
            await self._handler(event)
        except Exception:
            self.stats.failed += 1
            log.exception("handler for %s failed on event %s", self.pattern, event.id)
            await msg.nak(delay=_RETRY_DELAY)
        else:
            self.stats.handled += 1
            await msg.ack()
        await self._done(1)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
