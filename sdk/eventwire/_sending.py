"""Getting signed events stored: the JetStream ack, retries, the outbox, pipelining.

:class:`Sender` is the bus's send path once an event is signed: one event is sent and
retried with the same bytes until JetStream acknowledges it (de-duplication makes the
retries safe); a server that cannot be reached hands the event to the outbox, if the bus
has one, or raises :class:`PublishUnreachable`; many events are pipelined, at most a window
of them awaiting their ack. While the outbox holds events, new ones queue behind them so
that the publish order is kept.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from ._errors import describe
from ._outbox import OutboxFull, PublishUnreachable
from ._publisher import acquire_slot, publish_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.js.api import PubAck

    from ._codec import Signed
    from ._outbox import Outbox
    from ._publisher import AckedPublisher


@dataclass(frozen=True, slots=True)
class PublishAck:
    """JetStream stored the event: where, at which sequence, and whether it was a duplicate."""

    event_id: str
    subject: str
    stream: str
    seq: int
    duplicate: bool
    queued: bool = False
    """True: the server was unreachable and the event waits in the bus's outbox (``seq``
    is 0); it is sent, with the same bytes and message id, once the server is back."""


class Sender:
    """The send path of one bus (see the module docstring)."""

    def __init__(self, stream: str, outbox: Outbox | None, leader_wait: float) -> None:
        self._stream = stream
        self.outbox = outbox
        self._leader_wait = leader_wait

    @property
    def queueing(self) -> bool:
        """Whether events wait in the outbox (new ones then queue behind them)."""
        return self.outbox is not None and self.outbox.pending > 0

    async def send(
        self, publisher: AckedPublisher, signed: Signed, *, timeout: float, attempts: int
    ) -> PublishAck:
        """Store ``signed``, retrying transient failures; queued if the server is gone."""
        if self.outbox is not None and self.outbox.pending:  # behind those: order kept
            return self._queued(signed, f"{self.outbox.pending} event(s) wait in the outbox")
        try:
            ack = await publisher.publish_acked(
                signed.wire_subject,
                signed.body,
                signed.headers,
                timeout=timeout,
                attempts=attempts,
                leader_wait=self._leader_wait,
            )
        except nats.js.errors.APIError as exc:
            raise publish_error(exc, signed.subject) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            return self._unreachable(signed, exc, attempts)
        return PublishAck(signed.event_id, signed.subject, ack.stream, ack.seq, bool(ack.duplicate))

    async def send_many(
        self,
        publisher: AckedPublisher,
        chunks: AsyncIterator[list[Signed]],
        *,
        window: int,
        timeout: float,
    ) -> list[PublishAck]:
        """Pipeline the signed events of ``chunks`` (signed lazily, chunk by chunk), at most
        ``window`` awaiting their ack; the acks in order (see ``Bus.publish_many``)."""
        slots = asyncio.Semaphore(window)
        sent: list[tuple[Signed, asyncio.Future[PubAck]]] = []
        signed: Signed | None = None
        try:
            async for chunk in chunks:
                for signed in chunk:
                    await acquire_slot(slots, sent, timeout)
                    future = await publisher.publish(
                        signed.wire_subject, signed.body, signed.headers, slots.release
                    )
                    sent.append((signed, future))
        except BaseException as exc:
            for _, future in sent:
                future.cancel()  # the caller gets the error; nobody waits for these acks
            if isinstance(exc, nats.errors.Error | asyncio.TimeoutError) and signed is not None:
                raise publish_error(exc, signed.subject) from exc
            raise
        return await self._collect_acks(publisher, sent, timeout)

    async def _collect_acks(
        self,
        publisher: AckedPublisher,
        sent: list[tuple[Signed, asyncio.Future[PubAck]]],
        timeout: float,
    ) -> list[PublishAck]:
        """Await every ack; events whose pipelined publish failed are sent again one by one."""
        pending = [future for _, future in sent if not future.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for future in late:
                future.set_exception(TimeoutError())
        acks = []
        for item, future in sent:
            error = future.exception()
            if error is None:
                ack = future.result()
                acks.append(
                    PublishAck(
                        item.event_id, item.subject, ack.stream, ack.seq, bool(ack.duplicate)
                    )
                )
            elif isinstance(error, nats.js.errors.APIError):
                raise publish_error(error, item.subject) from error
            else:
                acks.append(await self.send(publisher, item, timeout=timeout, attempts=4))
        return acks

    def _unreachable(self, signed: Signed, exc: BaseException, attempts: int) -> PublishAck:
        """The server could not take ``signed``: queued in the outbox, or the typed error."""
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            reason = "no stream answered (no responders)"
        else:
            reason = f"no ack from the stream ({describe(exc)}) after {attempts} attempt(s)"
        if self.outbox is None:
            raise PublishUnreachable(
                f"the server is unreachable ({reason}); nothing is queued without an outbox",
                subject=signed.subject,
                event_id=signed.event_id,
            ) from exc
        try:
            return self._queued(signed, reason)
        except OutboxFull as full:
            raise full from exc

    def _queued(self, signed: Signed, reason: str) -> PublishAck:
        assert self.outbox is not None
        self.outbox.queue(signed, reason)
        return PublishAck(signed.event_id, signed.subject, self._stream, 0, False, queued=True)
