"""A durable pull consumer loop: pull, verify, dispatch in order, ack by the handler's outcome.

Success acks. An exception naks with the retry policy's delay; once the policy's deliveries
are spent, or at once for :class:`Unprocessable` (and the handler's declared terminal
errors), the event goes to the dead-letter queue and is terminated. Long handlers keep
their message with in-progress acks. A consumer instance that dies on the last delivery is
covered too: the server's max-deliveries advisory dead-letters the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ._batches import Batch
from ._codec import Rejection
from ._errors import (
    ConfigError,
    DeadLetterError,
    InvalidEvent,
    NotProvisioned,
    NotRunning,
    StreamConfigError,
    Unprocessable,
)
from ._lanes import KeyLanes
from ._pull import Pull
from ._resource import AsyncResource
from ._retry import DEFAULT_RETRY, RetryPolicy
from ._seen import Claim, event_key
from ._settle import Settler, ack, nak, term
from ._subjects import check_pattern, to_wire

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription
    from nats.js import JetStreamContext

    from eventwire_security import SealingKey

    from ._codec import Codec
    from ._dlq import DeadLetterQueue
    from ._event import Event
    from ._idempotency import ProcessedIds
    from ._seen import SeenIds

log = logging.getLogger("eventwire.consumer")


async def _nak_all(msgs: list[Msg]) -> None:
    for msg in msgs:
        with contextlib.suppress(nats.errors.Error):
            await msg.nak()


def _stored(msg: Msg) -> float:
    """When the stream stored ``msg``: the server's timestamp, which no client sets."""
    return msg.metadata.timestamp.timestamp()


@dataclass
class SubscriptionStats:
    delivered: int = 0
    handled: int = 0
    failed: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    errors: int = 0  # events the consumer itself failed on (dead-lettered as consumer-error)


def durable_name(owner: str, pattern: str) -> str:
    """A stable consumer name for ``owner`` consuming ``pattern``."""
    digest = hashlib.sha256(pattern.encode()).hexdigest()[:12]
    return f"{owner}-{digest}"


def consumer_config(
    root: str,
    durable: str,
    pattern: str,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    ack_wait: float = 30.0,
    batch: int = 64,
    max_in_flight: int = 1,
    start: Literal["all", "new"] = "all",
    reserve: bool = False,
    filters: list[str] | None = None,
    max_ack_pending: int | None = None,
) -> ConsumerConfig:
    """The durable consumer of a subscription. ``filters``: wire filter subjects (default:
    the pattern under the root); ``max_ack_pending`` (default: room for the batches queued
    for dispatch plus the one being fetched). With ``reserve`` (consumers an admin
    provisions for agents that only bind) the server allows one delivery more than
    ``retry``: the SDK dead-letters an event that comes back that last time (its previous
    consumer died without an outcome), since such an agent may not read the stream to act
    on the server's max-deliveries advisory."""
    filters = filters or [to_wire(root, pattern)]
    return ConsumerConfig(
        durable_name=durable,
        name=durable,
        description=f"eventwire: {pattern}",
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending or max(1000, max(batch, max_in_flight) * 8 + max_in_flight),
        max_deliver=retry.max_deliveries + (1 if reserve else 0),
        deliver_policy=DeliverPolicy.ALL if start == "all" else DeliverPolicy.NEW,
    )


# Settings a bind-only subscription checks on the provisioned consumer (others may differ).
_BOUND = ("filter_subject", "filter_subjects", "ack_policy", "ack_wait", "max_deliver")
# A user without the right to a consumer gets no answer, only a permissions violation.
_BIND_WAIT = 3.0


class Subscription(AsyncResource):
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
        retry: RetryPolicy = DEFAULT_RETRY,
        terminal: tuple[type[BaseException], ...] = (),
        dead_letters: DeadLetterQueue,
        processed: ProcessedIds | None = None,
        seen: SeenIds | None = None,
        may_consume: Callable[[str], bool] | None = None,
        sealing_key: SealingKey | None = None,
        key_order: bool = False,
        provision: bool = True,
        filters: list[str] | None = None,
        max_ack_pending: int | None = None,
    ) -> None:
        if max_in_flight < 1 or batch < 1 or ack_wait <= 0:
            raise ConfigError("max_in_flight and batch must be >= 1, ack_wait > 0")
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
        self._retry = retry
        self._terminal = (Unprocessable, InvalidEvent, *terminal)
        self._dlq = dead_letters
        self._processed = processed
        self._seen = seen
        self._may_consume = may_consume
        self._sealing_key = sealing_key
        self._lanes = KeyLanes() if key_order else None
        self._batch_handler: Callable[[Batch], Awaitable[None]] | None = None
        self._in_flight: dict[int, tuple[Msg, float]] = {}  # by id(msg): Msg is unhashable
        self._keepalive: asyncio.Task[None] | None = None
        self._advisories: NatsSubscription | None = None
        self._settler: Settler | None = None
        self._provision = provision
        self._filters = filters  # see consumer_config
        self._max_ack_pending = max_ack_pending

    def use_batches(self, handler: Callable[[Batch], Awaitable[None]]) -> None:
        """Deliver batches to ``handler`` instead of events one by one (before start)."""
        if self._task is not None:
            raise NotRunning("choose batches before the subscription starts")
        self._batch_handler = handler

    def _config(self) -> ConsumerConfig:
        return consumer_config(
            self._codec.root, self.durable, self.pattern,
            retry=self._retry, ack_wait=self._ack_wait, batch=self._batch,
            max_in_flight=self._max_in_flight, start=self._start, reserve=not self._provision,
            filters=self._filters, max_ack_pending=self._max_ack_pending,
        )  # fmt: skip

    async def start(self) -> None:
        if self._task is not None:
            raise NotRunning("subscription already started")
        if self._provision:
            await self._create()
        else:
            await self._bind()
        pull = Pull(self._nc, stream=self._stream, consumer=self.durable, batch=self._batch)
        await pull.open()
        self._pull = pull
        self._task = asyncio.create_task(self._run(pull), name=f"eventwire:{self.durable}")
        self._keepalive = asyncio.create_task(self._keep_alive(), name=f"wpi:{self.durable}")

    async def _create(self) -> None:
        try:
            await self._js.add_consumer(self._stream, self._config())
        except nats.js.errors.BadRequestError as exc:
            raise StreamConfigError(
                f"consumer {self.durable!r} exists with other settings: {exc.description}"
            ) from None
        self._advisories = await self._nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self._stream}.{self.durable}",
            cb=self._on_max_deliveries,
        )

    async def _bind(self) -> None:
        """Use the consumer an admin provisioned, if its settings are the code's."""
        try:
            info = await self._js.consumer_info(self._stream, self.durable, timeout=_BIND_WAIT)
        except (nats.js.errors.NotFoundError, nats.errors.TimeoutError) as exc:
            why = "is not" if isinstance(exc, nats.js.errors.NotFoundError) else "may not be"
            raise NotProvisioned(
                f"consumer {self.durable!r} for {self.pattern!r} {why} provisioned on "
                f"{self._stream!r} (no answer: absent, or this user may not use it); an admin "
                "creates it (`eventwire tenant provision`, eventwire.provision_agent) for "
                "patterns the policy lets the agent consume, exactly as the policy writes them"
            ) from None
        wanted = self._config()
        differs = [
            f"{name}: server has {getattr(info.config, name)!r}, code wants "
            f"{getattr(wanted, name)!r}"
            for name in _BOUND
            if getattr(info.config, name) != getattr(wanted, name)
        ]
        if differs:
            raise StreamConfigError(f"consumer {self.durable!r} differs: " + "; ".join(differs))

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
        keepalive, self._keepalive = self._keepalive, None
        if keepalive is not None:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        if self._advisories is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._advisories.unsubscribe()

    async def _run(self, pull: Pull) -> None:
        try:
            if self._processed is None:
                await self._dispatch(pull)
                return
            settler = Settler(self._processed, self.durable, self._settled, self._batch * 2)
            async with asyncio.TaskGroup() as group:
                group.create_task(settler.run(), name=f"eventwire-settle:{self.durable}")
                self._settler = settler
                try:
                    await self._dispatch(pull)  # returns once every handler has returned
                finally:
                    settler.close()
        finally:
            await _nak_all(await pull.close())

    async def _dispatch(self, pull: Pull) -> None:
        self._fresh: set[int] = set()  # messages being handled whose replay claim was new
        async with asyncio.TaskGroup() as group:
            while taken := await pull.next_batch():
                msgs, results = await self._screen(taken)
                if (fresh := await self._refuse_replays(msgs, results)) is None:
                    continue
                if self._batch_handler is not None:
                    await self._deliver_batch(msgs, results)
                    continue
                for index, (msg, result) in enumerate(zip(msgs, results, strict=True)):
                    if self._stopping:
                        await _nak_all(msgs[index:])
                        await self._done(len(msgs) - index)
                        break
                    await self._deliver(msg, result, group, fresh=fresh[index])

    async def _screen(self, taken: list[Msg]) -> tuple[list[Msg], list[Event | Rejection]]:
        """Open each message (verify, validate, place, time) and refuse what the policy or a
        broken seal refuses. A message the consumer itself fails on is dead-lettered here
        (see :meth:`_broken`); the others go on."""
        msgs: list[Msg] = []
        results: list[Event | Rejection] = []
        for msg in taken:
            try:
                one = self._codec.open_many([(msg.data, msg.headers, msg.subject, _stored(msg))])
                if self._may_consume is not None:
                    self._refuse_by_policy(one)
                self._unseal(one)
            except Exception as exc:
                self.stats.delivered += 1
                await self._broken(msg, exc)
                await self._done(1)
                continue
            msgs.append(msg)
            results.append(one[0])
        return msgs, results

    async def _broken(self, msg: Msg, exc: Exception) -> None:
        """Not the event's outcome but the consumer's own failure on it (a bug): logged,
        counted, and the event dead-lettered as ``consumer-error``, kept to be redriven."""
        self.stats.errors += 1
        log.error("%s: failed on the event at %s", self.durable, msg.subject, exc_info=exc)
        error = f"{type(exc).__name__}: {exc}"
        await self._dead_letter(msg, "consumer-error", error, msg.metadata.num_delivered or 1)

    async def _deliver_batch(self, msgs: list[Msg], results: list[Event | Rejection]) -> None:
        """One call of the batch handler, then one ack decision per event."""
        assert self._batch_handler is not None
        valid: list[tuple[Msg, Event]] = []
        for msg, result in zip(msgs, results, strict=True):
            self.stats.delivered += 1
            if isinstance(result, Rejection):
                self.stats.rejected += 1
                await term(msg)
            elif self._provision or not await self._last_delivery(msg):
                valid.append((msg, result))
        batch = Batch([event for _, event in valid])
        try:
            if batch.events:
                await self._batch_handler(batch)
        except Exception as exc:
            batch.failures = {event.id: exc for event in batch.events}
        for msg, event in valid:
            error = batch.failures.get(event.id)
            if error is None:
                self.stats.handled += 1
                await ack(msg)
            else:
                self.stats.failed += 1
                await self._failed(msg, event, error, msg.metadata.num_delivered or 1)
        await self._done(len(msgs))

    def _unseal(self, results: list[Event | Rejection]) -> None:
        """Open sealed data addressed to this consumer's key; a broken seal is refused."""
        for index, event in enumerate(results):
            if isinstance(event, Rejection) or not event.sealed:
                continue
            opened = (
                event if self._sealing_key is None else self._codec.unseal(event, self._sealing_key)
            )
            if isinstance(opened, Rejection):
                self._codec.record(opened)
            results[index] = opened

    def _refuse_by_policy(self, results: list[Event | Rejection]) -> None:
        assert self._may_consume is not None
        for index, event in enumerate(results):
            if not isinstance(event, Rejection) and not self._may_consume(event.subject):
                refusal = Rejection(
                    "policy-denied", f"may not consume {event.subject!r}",
                    to_wire(self._codec.root, event.subject), event.signer_kid,
                )  # fmt: skip
                self._codec.record(refusal)
                results[index] = refusal

    async def _refuse_replays(
        self, msgs: list[Msg], results: list[Event | Rejection]
    ) -> list[bool] | None:
        """Claim the id of every event at its stream sequence, whatever its delivery count;
        an id claimed at another sequence is a replay, refused. Returns which claims were
        new (such an event was never handled here), or None (after naking the batch) if
        the claims could not be made.
        """
        if self._seen is None or self._pull is None or not msgs:
            return [False] * len(msgs)
        events = [(i, r) for i, r in enumerate(results) if not isinstance(r, Rejection)]
        claims = [(event_key(event), msgs[i].metadata.sequence.stream) for i, event in events]
        try:
            verdicts = await self._seen.claim_until_answered(
                self.durable, claims, within=min(10.0, self._ack_wait),
                interrupted=self._pull.interrupted,
            )  # fmt: skip
        except Exception as exc:  # nats errors, no answer in time, or a bug: the batch waits
            log.warning("%s: replay claims failed (%r); retrying the batch", self.durable, exc)
            for msg in msgs:
                await nak(msg, delay=1.0)
            await self._done(len(msgs))
            return None
        fresh = [False] * len(msgs)
        for (index, event), verdict, (_, seq) in zip(events, verdicts, claims, strict=True):
            fresh[index] = verdict is Claim.NEW
            if verdict is Claim.REPLAY:
                detail = f"event {event.id} from {event.source} seen before stream seq {seq}"
                refusal = Rejection("already-seen", detail, msgs[index].subject, event.signer_kid)
                self._codec.record(refusal)
                results[index] = refusal
        return fresh

    async def _done(self, count: int) -> None:
        if self._pull is not None:
            await self._pull.done(count)

    async def _deliver(
        self, msg: Msg, result: Event | Rejection, group: asyncio.TaskGroup, *, fresh: bool
    ) -> None:
        """Refuse a rejection, or hand the event to :meth:`_handle`; ``fresh`` if its replay
        claim was new (it cannot have been handled here before)."""
        self.stats.delivered += 1
        if isinstance(result, Rejection):
            self.stats.rejected += 1
            await term(msg)
            await self._done(1)
            return
        if not self._provision and await self._last_delivery(msg):
            await self._done(1)
            return
        if fresh:
            self._fresh.add(id(msg))  # until _handle returns
        if self._max_in_flight == 1:
            await self._handle(msg, result)
        else:
            await self._slots.acquire()
            if self._lanes is not None and result.partitionkey is not None:
                event = result
                self._lanes.run(
                    group, result.partitionkey, lambda: self._handle_in_slot(msg, event)
                )
            else:
                group.create_task(self._handle_in_slot(msg, result))

    async def _last_delivery(self, msg: Msg) -> bool:
        """The reserve delivery of a provisioned consumer: the previous one had no outcome
        (its consumer died), and the retry policy's deliveries are spent: dead-letter it."""
        deliveries = msg.metadata.num_delivered or 1
        if deliveries <= self._retry.max_deliveries:
            return False
        error = "no outcome on the last delivery (handler crashed or timed out)"
        log.error("%s: event at %s dead-lettered (max-deliveries)", self.durable, msg.subject)
        await self._dead_letter(msg, "max-deliveries", error, deliveries - 1)
        return True

    async def _handle_in_slot(self, msg: Msg, event: Event) -> None:
        try:
            await self._handle(msg, event)
        finally:
            self._slots.release()

    async def _handle(self, msg: Msg, event: Event) -> None:
        """Run the handler and settle the message by its outcome. Never raises (but
        cancelled): a failure of the consumer's own is :meth:`_broken`."""
        self._in_flight[id(msg)] = (msg, time.monotonic())
        deliveries = 0  # read from the message only when something fails
        settling = False
        try:
            while True:
                try:
                    recorded = await self._attempt(msg, event)
                except Exception as exc:
                    self.stats.failed += 1
                    deliveries = deliveries or msg.metadata.num_delivered or 1
                    if not await self._retry_in_place(event, exc, deliveries):
                        await self._failed(msg, event, exc, deliveries)
                        return
                    deliveries += 1
                else:
                    if recorded and self._settler is not None:
                        await self._settler.record(msg, event_key(event))
                        settling = True  # the settler acks it once the record is stored
                    else:
                        await ack(msg)
                    return
        except Exception as exc:
            await self._broken(msg, exc)
        finally:
            self._fresh.discard(id(msg))
            if not settling:
                del self._in_flight[id(msg)]
                await self._done(1)

    async def _attempt(self, msg: Msg, event: Event) -> bool:
        """Run the handler unless the event was handled before; True if it ran and its
        id is to be recorded (an idempotent consumer)."""
        if self._processed is not None and await self._handled_before(msg, event):
            self.stats.duplicates += 1
            return False
        await self._handler(event)
        self.stats.handled += 1
        return self._processed is not None

    async def _settled(self, msg: Msg, recorded: bool) -> None:
        """The settler's verdict on a handled event: ack once its record is stored, else
        nak it (it will be handled again, which is what the record could not prevent)."""
        try:  # unsent: redelivered, then skipped as handled
            if recorded:
                await ack(msg)
            else:
                await nak(msg, delay=self._retry.delay(msg.metadata.num_delivered or 1))
        finally:
            self._in_flight.pop(id(msg), None)
            await self._done(1)

    async def _handled_before(self, msg: Msg, event: Event) -> bool:
        """Whether the event was recorded as handled. One whose replay claim was new cannot
        have been (this consumer never received its id), so only the others (redeliveries,
        whatever their delivery count says) and consumers without replay protection ask
        the bucket."""
        assert self._processed is not None
        if id(msg) in self._fresh:
            return False
        key = event_key(event)
        if self._settler is not None and await self._settler.outcome(key):
            return True  # its first run's record was on its way, and is stored now
        return await self._processed.seen(self.durable, key)

    async def _retry_in_place(self, event: Event, exc: Exception, deliveries: int) -> bool:
        """With key order, a keyed event is retried here, holding back its key's lane,
        instead of going back to the server (which would let later events overtake it)."""
        if self._lanes is None or event.partitionkey is None:
            return False
        if isinstance(exc, self._terminal) or self._retry.exhausted(deliveries):
            return False
        await asyncio.sleep(self._retry.delay(deliveries))
        return True

    def reset_pull(self) -> None:
        """After a reconnect: pulls waiting on the server may be gone, so pull again, and
        claims or records sent on the old connection may never be answered: send again."""
        if self._pull is not None:
            self._pull.reset()
        if self._settler is not None:
            self._settler.reconnected()

    async def _failed(self, msg: Msg, event: Event, exc: Exception, deliveries: int) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, self._terminal):
            reason = "unprocessable"
        elif self._retry.exhausted(deliveries):
            reason = "max-deliveries"
        else:
            delay = self._retry.delay(deliveries)
            log.warning(
                "%s: event %s failed (delivery %d), retry in %.2fs: %s",
                self.durable, event.id, deliveries, delay, error,
            )  # fmt: skip
            await nak(msg, delay=delay)
            return
        log.error("%s: event %s dead-lettered (%s): %s", self.durable, event.id, reason, error)
        await self._dead_letter(msg, reason, error, deliveries)

    async def _dead_letter(self, msg: Msg, reason: str, error: str, deliveries: int) -> None:
        """Store the event in the dead-letter queue, then terminate it; if it cannot be
        stored, ask for it again later (it is never terminated without a dead letter)."""
        try:
            await self._dlq.put(
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
            await nak(msg, delay=self._retry.max_delay)
            return
        self.stats.dead_lettered += 1
        await term(msg)

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """The server gave up on an event whose last delivery had no outcome (a crash)."""
        try:
            notice = json.loads(advisory.data)
            stream_seq, deliveries = int(notice["stream_seq"]), int(notice["deliveries"])
            stored = await self._js.get_msg(self._stream, stream_seq)
            await self._dlq.put(
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

    async def _keep_alive(self) -> None:
        """Tell the server that long-running handlers are still at work (+WPI)."""
        interval = self._ack_wait / 3
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for msg, started in list(self._in_flight.values()):
                if now - started >= interval:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()

    async def _open(self) -> None:  # ``async with`` starts and stops it
        await self.start()

    async def close(self) -> None:
        await self.stop()
