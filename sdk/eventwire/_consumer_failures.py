"""What becomes of an event its handler failed on, or that the consumer itself could not
handle: a retry (in place, or by the server after the retry policy's delay), or the
dead-letter queue, then termination (an event is never terminated without a dead letter).
Also the events the server gave up on, told by its max-deliveries advisory."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors

from ._errors import DeadLetterError
from ._observe import count_retried
from ._settle import nak, term

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from ._consumer import SubscriptionStats
    from ._dlq import DeadLetterQueue
    from ._event import Event
    from ._retry import RetryPolicy

log = logging.getLogger("eventwire.consumer")


@dataclass(slots=True)
class Failures:
    """The failure outcomes of consumer ``durable`` (counted in its ``stats``): ``retry``
    spaces and bounds deliveries, ``terminal`` errors dead-letter at once, and with
    ``keyed`` (key order) a keyed event is retried in place."""

    durable: str
    dlq: DeadLetterQueue
    js: JetStreamContext
    stream: str
    retry: RetryPolicy
    terminal: tuple[type[BaseException], ...]
    stats: SubscriptionStats
    keyed: bool

    async def broken(self, msg: Msg, exc: Exception) -> None:
        """Not the event's outcome but the consumer's own failure on it (a bug): logged,
        counted, and the event dead-lettered as ``consumer-error``, kept to be redriven."""
        self.stats.errors += 1
        log.error("%s: failed on the event at %s", self.durable, msg.subject, exc_info=exc)
        error = f"{type(exc).__name__}: {exc}"
        await self.dead_letter(msg, "consumer-error", error, msg.metadata.num_delivered or 1)

    async def last_delivery(self, msg: Msg) -> bool:
        """The reserve delivery of a provisioned consumer: the previous one had no outcome
        (its consumer died), and the retry policy's deliveries are spent: dead-letter it."""
        deliveries = msg.metadata.num_delivered or 1
        if deliveries <= self.retry.max_deliveries:
            return False
        error = "no outcome on the last delivery (handler crashed or timed out)"
        log.error("%s: event at %s dead-lettered (max-deliveries)", self.durable, msg.subject)
        await self.dead_letter(msg, "max-deliveries", error, deliveries - 1)
        return True

    async def retry_in_place(self, event: Event, exc: Exception, deliveries: int) -> bool:
        """With key order, a keyed event is retried here, holding back its key's lane,
        instead of going back to the server (which would let later events overtake it)."""
        if not self.keyed or event.partitionkey is None:
            return False
        if isinstance(exc, self.terminal) or self.retry.exhausted(deliveries):
            return False
        count_retried(self.durable)
        await asyncio.sleep(self.retry.delay(deliveries))
        return True

    async def failed(self, msg: Msg, event: Event, exc: Exception, deliveries: int) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, self.terminal):
            reason = "unprocessable"
        elif self.retry.exhausted(deliveries):
            reason = "max-deliveries"
        else:
            delay = self.retry.delay(deliveries)
            log.warning(
                "%s: event %s failed (delivery %d), retry in %.2fs: %s",
                self.durable, event.id, deliveries, delay, error,
            )  # fmt: skip
            count_retried(self.durable)
            await nak(msg, delay=delay)
            return
        log.error("%s: event %s dead-lettered (%s): %s", self.durable, event.id, reason, error)
        await self.dead_letter(msg, reason, error, deliveries)

    async def dead_letter(self, msg: Msg, reason: str, error: str, deliveries: int) -> None:
        """Store the event in the dead-letter queue, then terminate it; if it cannot be
        stored, ask for it again later (it is never terminated without a dead letter)."""
        try:
            await self.dlq.put(
                msg.data,
                subject=msg.subject,
                original_headers=msg.headers,
                consumer=self.durable,
                stream_seq=msg.metadata.sequence.stream,
                reason=reason,
                error=error,
                deliveries=deliveries,
            )
        except Exception as exc:  # DeadLetterError, or a letter it could not even build
            if not isinstance(exc, DeadLetterError):
                self.stats.errors += 1
            log.error("%s: could not dead-letter (%r); will retry", self.durable, exc)
            await nak(msg, delay=self.retry.max_delay)
            return
        self.stats.dead_lettered += 1
        await term(msg)

    async def on_max_deliveries(self, advisory: Msg) -> None:
        """The server gave up on an event whose last delivery had no outcome (a crash)."""
        try:
            notice = json.loads(advisory.data)
            stream_seq, deliveries = int(notice["stream_seq"]), int(notice["deliveries"])
            stored = await self.js.get_msg(self.stream, stream_seq)
            await self.dlq.put(
                stored.data or b"",
                subject=stored.subject or "",
                original_headers=stored.headers,
                consumer=self.durable,
                stream_seq=stream_seq,
                reason="max-deliveries",
                error="no outcome on the last delivery (handler crashed or timed out)",
                deliveries=deliveries,
            )
        except (ValueError, KeyError, TypeError, nats.errors.Error, DeadLetterError):
            log.exception("%s: could not dead-letter after a max-deliveries advisory", self.durable)
            return
        self.stats.dead_lettered += 1
