"""A durable pull consumer loop: pull, verify, dispatch in order, ack by the handler's outcome.

Success acks. An exception naks with the retry policy's delay; once the policy's deliveries
are spent, or at once for :class:`Unprocessable` (and the handler's declared terminal
errors), the event goes to the dead-letter queue and is terminated. Long handlers keep
their message with in-progress acks, and so do messages pulled ahead that wait for a
handler (else the server delivers them again while they are held here). A consumer
instance that dies on the last delivery is covered too: the server's max-deliveries
advisory dead-letters the event.

The loop is supervised (``_supervisor``): if talking to NATS fails under it (an ack on a
lost connection, a full outbound buffer), the run ends, is logged and counted
(``stats.restarts``), and a new run pulls again once the connection is back; what it had
not acknowledged is redelivered by the server. Any other error, or a connection closed for
good, fails the subscription: logged, ``state`` FAILED, ``on_failure`` callbacks called,
and ``close()`` raises :class:`ResourceFailed`.

Creating or binding the consumer is ``_consumer_setup``'s, the failure outcomes (retry,
dead letter) ``_consumer_failures``', the in-progress acks ``_consumer_keepalive``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from ._batches import Batch
from ._codec import Rejection, received
from ._consumer_failures import Failures
from ._consumer_keepalive import keep_alive
from ._consumer_setup import DurableConsumer
from ._errors import (
    BusyResource,
    InvalidEvent,
    Unprocessable,
)
from ._lanes import KeyLanes
from ._observe import observed_handler
from ._options import consumer_config
from ._options import durable_name as durable_name  # noqa: PLC0414 - re-export
from ._pull import Pull
from ._resource import ResourceState, StatefulResource
from ._seen import Claim, event_key
from ._settle import Settler, ack, nak, term
from ._subjects import check_pattern, to_wire
from ._supervisor import Loop, is_transport_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription
    from nats.js.api import ConsumerConfig

    from ._codec import Received
    from ._event import Event
    from ._options import ConsumerPlan, ConsumerWiring, SubscribeOptions
    from ._priority import Priority, PriorityGate
    from ._resource import Steps
    from ._start import StartGate

log = logging.getLogger("eventwire.consumer")
# How often a run that waits for the connection looks again (a reconnect also wakes it).
_RECONNECT_POLL = 0.25


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
    dead_lettered: int = 0
    duplicates: int = 0
    restarts: int = 0  # runs of the loop ended by a NATS error and started again
    errors: int = 0  # events the consumer itself failed on (dead-lettered as consumer-error)


class Subscription(StatefulResource):
    """Delivers events matching ``pattern`` to ``handler`` from a durable consumer.

    Success acks; an exception naks with a delay; an event that fails verification is
    terminated and never reaches the handler. ``options.max_in_flight`` bounds concurrent
    handlers; with 1 (the default) events are handled one at a time in stream order.
    ``async with`` it, or ``await start()`` and ``await stop()``; ``state`` says where it
    is, ``stats`` what it did (readable after it stopped).
    """

    def __init__(
        self,
        wiring: ConsumerWiring,
        pattern: str,
        handler: Callable[[Event], Awaitable[None]],
        *,
        plan: ConsumerPlan,
        options: SubscribeOptions,
    ) -> None:
        self.pattern = check_pattern(pattern)
        self.durable = plan.name
        self.options = options
        super().__init__(f"subscription {self.durable!r}", log)
        self.stats = SubscriptionStats()
        self._plan = plan
        self._nc = wiring.nc
        self._codec = wiring.codec
        self._stream = wiring.stream
        self._server_side = DurableConsumer(wiring.js, wiring.stream, self.durable)
        self._handler = observed_handler(handler, self.durable)
        self._max_in_flight = options.max_in_flight
        self._batch = options.pull_batch
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self._stopping = False
        self._retry = options.retry
        self._failures = Failures(
            self.durable, wiring.dead_letters, wiring.js, wiring.stream, options.retry,
            (Unprocessable, InvalidEvent, *options.terminal), self.stats, options.key_order,
        )  # fmt: skip
        self._processed = wiring.processed if options.idempotent else None
        self._seen = wiring.seen if options.replay_check else None
        self._may_consume = wiring.may_consume
        self._sealing_key = wiring.sealing_key
        self._lanes = KeyLanes() if options.key_order else None
        self._batch_handler: Callable[[Batch], Awaitable[None]] | None = None
        self._priority_gate: tuple[PriorityGate, Priority] | None = None
        self._in_flight: dict[int, tuple[Msg, float]] = {}  # by id(msg): Msg is unhashable
        self._waiting: dict[int, Msg] = {}  # the batch's messages no handler took yet
        self._released: dict[int, Msg] = {}  # handed back (naked) by the stop: never handled
        self._batch_held: list[Msg] = []  # given to the batch handler, not settled yet
        self._pull: Pull | None = None  # the current run's
        self._settler: Settler | None = None  # the current run's, if idempotent
        self._advisories: NatsSubscription | None = None
        self._provision = wiring.provision
        self._reconnected = asyncio.Event()
        self._watchers: list[Callable[[Subscription, BaseException], None]] = []
        self._lookback = wiring.lookback if self._seen is not None else None
        self._gate: StartGate | None = None  # a start point: events before it only claimed
        self._loop = Loop(
            f"eventwire-consumer:{self.durable}", self._consume,
            transient=self._may_pass, on_failure=self._failed_for_good, logger=log,
        )  # fmt: skip

    def prioritize(self, gate: PriorityGate, priority: Priority) -> None:
        """Before it starts: take handler slots from ``gate`` (shared with other
        subscriptions) at ``priority``; events are then handled one at a time, in order."""
        if self.state is not ResourceState.NEW:
            raise BusyResource(
                f"{self._life.name}: choose the priority before it starts", state=self.state
            )
        self._priority_gate = (gate, priority)

    def use_batches(self, handler: Callable[[Batch], Awaitable[None]]) -> None:
        """Deliver batches to ``handler`` instead of events one by one (before start)."""
        if self.state is not ResourceState.NEW:
            raise BusyResource(
                f"{self._life.name}: choose batches before it starts", state=self._life.state
            )
        self._batch_handler = handler

    def on_failure(self, callback: Callable[[Subscription, BaseException], None]) -> None:
        """Call ``callback(subscription, error)`` (on the event loop) if it fails for good."""
        self._watchers.append(callback)

    def _config(self) -> ConsumerConfig:
        return consumer_config(
            self._codec.root, self.pattern, self._plan, self.options, reserve=not self._provision
        )

    async def start(self) -> None:
        """Create (or bind to) the durable consumer and start delivering."""
        await self._start()

    async def stop(self) -> None:
        """Stop fetching, let in-flight handlers finish, then unsubscribe. Safe twice;
        raises :class:`ResourceFailed` if the loop had died (see the module doc)."""
        await self.close()

    async def _open(self) -> None:
        if self._provision:
            await self._create()
        else:  # use the consumer an admin provisioned, if its settings are the code's
            self._gate = await self._server_side.bind(self._config(), pattern=self.pattern)
        self._loop.start()

    async def _create(self) -> None:
        self._gate = await self._server_side.create(
            self._config(), start=self.options.start, lookback=self._lookback
        )
        self._advisories = await self._nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self._stream}.{self.durable}",
            cb=self._failures.on_max_deliveries,
        )

    async def _shutdown(self, steps: Steps) -> None:
        self._stopping = True
        if self._pull is not None:
            await steps.run("releasing unhandled messages", self._release_pull)
        await steps.run("stopping the consumer loop", self._loop.stop)
        if self._advisories is not None:
            await steps.run("unsubscribing from advisories", self._advisories.unsubscribe)

    async def _release_pull(self) -> None:
        """Hand back at once what was pulled and not handed to a handler yet: the pull's
        buffer and the current batch's messages still waiting (kept alive with in-progress
        acks, they would otherwise wait for the handler in flight); the dispatch loop skips
        those it meets afterwards."""
        held = list(self._waiting.values())
        self._released.update(self._waiting)
        self._waiting = {}
        if self._pull is not None:
            held += await self._pull.close()
        await _nak_all(held)

    def _may_pass(self, exc: BaseException) -> bool:
        """A NATS error on a connection that may come back: run again."""
        return is_transport_error(exc) and not self._nc.is_closed

    def _failed_for_good(self, error: BaseException) -> None:
        self._background_failed(error)
        for callback in self._watchers:
            try:
                callback(self, error)
            except Exception:
                log.exception("%s: on_failure callback %r failed", self.durable, callback)

    async def _consume(self) -> None:
        """One run of the loop: pull, dispatch, keep long handlers alive; returns once
        the subscription stops (its pull closed and every handler returned)."""
        if self._pull is not None:  # a restart: what the last run held is redelivered
            self.stats.restarts += 1
            self._in_flight.clear()
            self._waiting = {}
            self._released = {}
            await self._until_connected()
        if self._stopping:
            return
        self._pull = pull = Pull(
            self._nc, stream=self._stream, consumer=self.durable, batch=self._batch
        )
        await pull.open()
        async with asyncio.TaskGroup() as group:
            alive = keep_alive(self._nc, self.options.ack_wait, self._in_flight, self._held)
            keepalive = group.create_task(alive, name=f"eventwire-wpi:{self.durable}")
            try:
                await self._run(pull)
            finally:
                keepalive.cancel()

    async def _until_connected(self) -> None:
        """Wait while the connection is being re-established (or the subscription stops)."""
        while (self._nc.is_reconnecting or self._nc.is_connecting) and not self._stopping:
            self._reconnected.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_RECONNECT_POLL):
                    await self._reconnected.wait()

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
                self._waiting = {id(msg): msg for msg in taken}
                try:
                    msgs, results = await self._screen(taken)
                    if (fresh := await self._refuse_replays(msgs, results)) is None:
                        continue
                    if self._batch_handler is not None:
                        await self._deliver_batch(msgs, results)
                        continue
                    for index, (msg, result) in enumerate(zip(msgs, results, strict=True)):
                        if self._stopping:
                            await _nak_all([m for m in msgs[index:] if id(m) not in self._released])
                            await self._done(len(msgs) - index)
                            break
                        await self._deliver(msg, result, group, fresh=fresh[index])
                finally:
                    self._waiting = {}  # each was handed to a handler or settled

    async def _screen(self, taken: list[Msg]) -> tuple[list[Msg], list[Event | Rejection]]:
        """Open each message (verify, validate, place, time) and refuse what the policy or a
        broken seal refuses. A message the consumer itself fails on is dead-lettered here
        (see ``Failures.broken``); the others go on."""
        kept: list[Msg] = []
        items: list[Received] = []
        for msg in taken:
            try:
                items.append(received(msg))
            except Exception as exc:
                await self._broken(msg, exc)
                continue
            kept.append(msg)
        msgs: list[Msg] = []
        results: list[Event | Rejection] = []
        for msg, opened in zip(kept, await self._codec.open_batch(items), strict=True):
            try:
                if isinstance(opened, Exception):
                    raise opened
                one = [opened]
                if self._may_consume is not None:
                    self._refuse_by_policy(one)
                self._unseal(one)
            except Exception as exc:
                await self._broken(msg, exc)
                continue
            msgs.append(msg)
            results.append(one[0])
        return msgs, results

    async def _broken(self, msg: Msg, exc: Exception) -> None:
        """The consumer's own failure on ``msg``: dead-lettered (see ``Failures.broken``)."""
        self.stats.delivered += 1
        await self._failures.broken(msg, exc)
        await self._done(1)

    async def _deliver_batch(self, msgs: list[Msg], results: list[Event | Rejection]) -> None:
        """One call of the batch handler, then one ack decision per event."""
        assert self._batch_handler is not None
        valid: list[tuple[Msg, Event]] = []
        self._waiting = {}  # handed to the batch handler: the stop no longer hands them back
        for msg, result in zip(msgs, results, strict=True):
            if id(msg) in self._released:  # handed back by the stop while it was screened
                continue
            if self._gate is not None and not self._gate.passes(msg):
                await ack(msg)  # before the start point: only claimed
                continue
            self.stats.delivered += 1
            if isinstance(result, Rejection):
                self.stats.rejected += 1
                await term(msg)
            elif self._provision or not await self._failures.last_delivery(msg):
                valid.append((msg, result))
        batch = Batch([event for _, event in valid])
        self._batch_held = [msg for msg, _ in valid]  # kept alive while the handler runs
        try:
            if batch.events:
                await self._batch_handler(batch)
        except Exception as exc:
            batch.failures = {event.id: exc for event in batch.events}
        finally:
            self._batch_held = []
        for msg, event in valid:
            error = batch.failures.get(event.id)
            if error is None:
                self.stats.handled += 1
                await ack(msg)
            else:
                self.stats.failed += 1
                await self._failures.failed(msg, event, error, msg.metadata.num_delivered or 1)
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
                self.durable, claims, within=min(10.0, self.options.ack_wait),
                interrupted=self._pull.interrupted,
            )  # fmt: skip
        except Exception as exc:  # nats errors, no answer in time, or a bug: the batch waits
            level = logging.DEBUG if self._stopping else logging.WARNING  # a stop ends the round
            log.log(level, "%s: replay claims failed (%r); retrying the batch", self.durable, exc)
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
        if id(msg) in self._released:  # handed back by the stop while it was screened
            await self._done(1)
            return
        if self._gate is not None and not self._gate.passes(msg):
            await ack(msg)  # before the start point: only claimed (see ``_start``)
            await self._done(1)
            return
        self.stats.delivered += 1
        if isinstance(result, Rejection):
            self.stats.rejected += 1
            await term(msg)
            await self._done(1)
            return
        if not self._provision and await self._failures.last_delivery(msg):
            await self._done(1)
            return
        if fresh:
            self._fresh.add(id(msg))  # until _handle returns
        if self._priority_gate is not None:
            gate, priority = self._priority_gate
            async with gate.slot(priority):
                await self._handle(msg, result)
        elif self._max_in_flight == 1:
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

    async def _handle_in_slot(self, msg: Msg, event: Event) -> None:
        try:
            await self._handle(msg, event)
        finally:
            self._slots.release()

    async def _handle(self, msg: Msg, event: Event) -> None:
        """Run the handler and settle the message by its outcome. Never raises (but
        cancelled): a failure of the consumer's own is ``Failures.broken``."""
        if id(msg) in self._released:  # handed back by the stop while it waited for a slot
            await self._done(1)
            return
        self._in_flight[id(msg)] = (msg, time.monotonic())
        self._waiting.pop(id(msg), None)
        deliveries = 0  # read from the message only when something fails
        settling = False
        try:
            while True:
                try:
                    recorded = await self._attempt(msg, event)
                except Exception as exc:
                    self.stats.failed += 1
                    deliveries = deliveries or msg.metadata.num_delivered or 1
                    if not await self._failures.retry_in_place(event, exc, deliveries):
                        await self._failures.failed(msg, event, exc, deliveries)
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
            await self._failures.broken(msg, exc)
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

    def reset_pull(self) -> None:
        """After a reconnect: pulls waiting on the server may be gone, so pull again (and
        a run waiting for the connection goes on), and claims or records sent on the old
        connection may never be answered: send again."""
        self._reconnected.set()
        if self._pull is not None:
            self._pull.reset()
        if self._settler is not None:
            self._settler.reconnected()

    def _held(self) -> list[Msg]:
        """What was pulled and waits for a handler slot, or is in the batch handler's hands."""
        return [
            *self._waiting.values(),
            *self._batch_held,
            *(self._pull.buffered() if self._pull else ()),
        ]
