"""Replay protection at consume: a replay is the same event id at a *different* stream
sequence.

Each consumer claims the id of every event it receives, every time it receives it (first
delivery or not): a KV create in the bucket ``<root>-seen`` under
``<consumer>.<seen_key(tenant, source, id)>`` (a hash: an id is never used raw as a key)
whose value is the event's stream sequence, sent as a JetStream publish with
``Nats-Expected-Last-Subject-Sequence: 0`` and pipelined for a whole batch. If the id was
claimed before ("wrong last sequence"), the claim is read back: the same stream sequence
is the same message delivered again (after a nak, a lost ack, or a server crash that
forgot the delivery and counts it as a first delivery again), never a replay; another
sequence is a replay.

Claims expire after the replay window's horizon, past which the event's own ``iat`` /
``exp`` refuse a replay anyway. Within the stream's duplicate window a replayed publish is
already dropped by JetStream.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from eventwire_security import seen_bucket, seen_key

from ._buckets import open_bucket
from ._streams import seen_config

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from nats.js import JetStreamContext
    from nats.js.api import PubAck
    from nats.js.kv import KeyValue

    from ._event import Event
    from ._publisher import AckedPublisher

log = logging.getLogger("eventwire.consumer")
_WRONG_LAST_SEQUENCE = 10071
CLAIM_WAIT = 5.0  # seconds for a round of claims (and the reads of those claimed before)


def event_key(event: Event) -> str:
    """An event's KV key (after the consumer's name) for its claim and its handled-id
    record: a hash of its tenant, source and id (``<tenant>.<32 hex>``), so whatever id a
    signer chose, the key is valid, and ids of different sources never collide."""
    return seen_key(event.tenant, event.source, event.id)


class Claim(enum.Enum):
    """What a consumer's claim on an event id found."""

    NEW = "new"  # no claim before: the first time this consumer sees the event
    AGAIN = "again"  # claimed before at the same stream sequence: a redelivery
    REPLAY = "replay"  # claimed before at another stream sequence: a replay


class ClaimsUnanswered(TimeoutError):
    """A round of claims got no (complete) answer in time, or was interrupted by a reconnect:
    nothing can be concluded, the round may be sent again (claims are idempotent)."""


class SeenIds:
    """Claims of event ids with the stream sequence they were received at, per consumer."""

    def __init__(
        self, js: JetStreamContext, kv: KeyValue, publisher: AckedPublisher, bucket: str
    ) -> None:
        self._js = js
        self._kv = kv
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
        kv = await open_bucket(js, config, create=create)
        return cls(js, kv, publisher, bucket)

    async def claim(
        self,
        consumer: str,
        claims: Sequence[tuple[str, int]],
        *,
        timeout: float = CLAIM_WAIT,
        interrupt: asyncio.Event | None = None,
    ) -> list[Claim]:
        """Claim each ``(event_key, stream sequence)`` for ``consumer``; one verdict each.

        Raises :class:`ClaimsUnanswered` if the bucket does not answer within ``timeout``,
        or once ``interrupt`` is set (the connection was replaced: answers may never come),
        and ``nats.errors.Error`` if it answers with another error. Sending the same claims
        again is safe: a claim stored before, at the same sequence, is :attr:`Claim.AGAIN`.
        """
        if not claims:
            return []
        work = asyncio.ensure_future(self._round(consumer, claims))
        stop = None if interrupt is None else asyncio.ensure_future(interrupt.wait())
        waits = {work} if stop is None else {work, stop}
        try:
            done, _ = await asyncio.wait(
                waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waits:
                task.cancel()
            await asyncio.wait(waits)
        if work not in done:
            why = "interrupted by a reconnect" if stop in done else f"not answered in {timeout}s"
            raise ClaimsUnanswered(f"replay claims {why}")
        return work.result()

    async def claim_until_answered(
        self,
        consumer: str,
        claims: Sequence[tuple[str, int]],
        *,
        within: float,
        interrupted: Callable[[], asyncio.Event],
    ) -> list[Claim]:
        """:meth:`claim`, sent again until it is answered, for up to ``within`` seconds: at
        once when ``interrupted()`` (the event of the current connection) is set by a
        reconnect, after a short pause when the bucket answers with an error (no
        responders while its stream recovers after a restart or elects a leader). Raises
        the last error when the time is up, :class:`ClaimsUnanswered` at once if
        ``interrupted()`` is already set (the consumer is stopping)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        for attempt in itertools.count():
            interrupt = interrupted()
            if interrupt.is_set():
                raise ClaimsUnanswered("the consumer is stopping")
            try:
                wait = max(0.05, deadline - loop.time())
                return await self.claim(consumer, claims, timeout=wait, interrupt=interrupt)
            except (ClaimsUnanswered, nats.errors.Error) as exc:
                if loop.time() >= deadline:
                    raise
                log.info("%s: replay claims failed (%r), claiming again", consumer, exc)
            if not interrupt.is_set():
                await asyncio.sleep(min(0.5, 0.02 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _round(self, consumer: str, claims: Sequence[tuple[str, int]]) -> list[Claim]:
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for key, seq in claims:
                subject = f"{self._prefix}{consumer}.{key}"
                futures.append(await self._publisher.publish(subject, str(seq).encode(), headers))
            await asyncio.wait(futures)
        finally:
            for future in futures:
                future.cancel()  # those still waiting (the round was cancelled)
        verdicts = [_created(future) for future in futures]
        conflicts = [index for index, verdict in enumerate(verdicts) if verdict is None]
        found = await asyncio.gather(
            *(self._claimed_at(consumer, claims[i][0]) for i in conflicts), return_exceptions=True
        )  # every read ends before the first error is raised: none is left running
        for index, at in zip(conflicts, found, strict=True):
            if isinstance(at, BaseException):
                raise at
            if at is None:  # expired or forgotten since: send the round again
                raise ClaimsUnanswered(f"claim {claims[index][0]} vanished while read back")
            verdicts[index] = Claim.AGAIN if at == claims[index][1] else Claim.REPLAY
        return [Claim.REPLAY if verdict is None else verdict for verdict in verdicts]

    async def _claimed_at(self, consumer: str, key: str) -> int | None:
        """The stream sequence an existing claim names (-1 if unreadable), None if gone."""
        try:
            entry = await self._kv.get(f"{consumer}.{key}")
        except nats.js.errors.KeyNotFoundError:
            return None
        try:
            return int((entry.value or b"").decode("ascii"))
        except ValueError:  # UnicodeDecodeError too: not a claim of this SDK
            return -1  # never the sequence of a message

    async def forget(self, consumer: str, tenant: str, source: str, event_id: str) -> None:
        """Drop ``consumer``'s claim on an event so that it accepts the event once more at
        a new stream sequence (a dead letter being redriven to the consumer that gave up)."""
        subject = f"{self._prefix}{consumer}.{seen_key(tenant, source, event_id)}"
        await self._js.purge_stream(self._stream, subject=subject)


def _created(future: asyncio.Future[PubAck]) -> Claim | None:
    """NEW if the claim was stored, None if one existed ("wrong last sequence")."""
    if future.cancelled():  # the publisher closed under it
        raise ClaimsUnanswered("replay claim cancelled")
    error = future.exception()
    if error is None:
        return Claim.NEW
    if isinstance(error, nats.js.errors.APIError) and error.err_code == _WRONG_LAST_SEQUENCE:
        return None
    raise error
