"""Projections (CQRS read models): catch up from a checkpoint, then follow live.

A projection applies the verified events matching a pattern, in stream order, to a read
model (any class with ``apply``, ``snapshot`` and ``restore``, like an aggregate). Its read
model and its checkpoint (the stream sequence of the last event applied) are one signed
document, written with one KV put per batch (KV bucket ``<root>-projections``, key
``projection.<name>``; see ``_snapshots``). They cannot disagree: a projection that stops
between two writes, or is killed, restarts from the last document and applies exactly the
events after its sequence again, to the model as it was at that sequence, so no event is
applied twice to the stored model and none is skipped.

Events are pulled 256 at a time by an ephemeral consumer (no acks) starting after the
projection's position, so what it holds is bounded however long the stream: rebuilding a
million events keeps memory flat (``benchmarks/bench_projections.py``). A delivery missing
from its consumer sequence, or a consumer the server lost, makes it follow again from the
last event it took. A batch is written after ``batch`` events or as soon as the projection
has caught up (no event pending). Events the codec refuses (forged, misplaced...) are
counted and audited by the bus like any refused event, and skipped. A model whose
``apply`` raises stops the projection (``on_error="stop"``, the default):
:meth:`Projection.wait_for` and leaving the ``async with`` raise :class:`ProjectionFailed`,
and what was applied since the last write is not stored. With ``on_error="dead-letter"``
the event is dead-lettered and the projection goes on (see ``_projection_errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Generic, Self

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventwire_security import EventwireError
from eventwire_security._layout import events_stream_name, pattern_problem, to_wire

from ._aggregates import A, bus_codec
from ._codec import received
from ._errors import BusyResource, InvalidArgument, checked_name, mapped_nats_errors
from ._event import Event
from ._projection_errors import (
    FAILED,
    REFUSED,
    ErrorPolicy,
    ProjectionOnError,
    ProjectionStats,
    dead_letter,
)
from ._snapshots import (
    Snapshot,
    SnapshotPlace,
    open_snapshots,
    projections_config,
    read_snapshot,
    write_snapshot,
)

if TYPE_CHECKING:
    from types import TracebackType

    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from eventwire_security import Identity

    from ._bus import Bus
    from ._codec import Codec, Rejection

    _Sub = JetStreamContext.PullSubscription

__all__ = ["Feed", "Projection", "ProjectionFailed"]

log = logging.getLogger("eventwire.projections")
# Messages per pull: what the projection holds at most, so memory stays flat however long
# the stream (a push consumer's flow-control window let a slow reader buffer tens of MB).
_PULL = 256
_PULL_WAIT = 5.0  # seconds a pull waits for new events once caught up
_IDLE = 60.0  # seconds before the server drops the reader's ephemeral consumer
_KIND = "projection"


class ProjectionFailed(EventwireError):
    """The projection ``name`` stopped at the event at stream ``seq``: its model raised on
    it (``on_error="stop"``), or it was the ``max_failures``-th dead letter in a row, or it
    could not be dead-lettered; the cause is chained."""

    def __init__(self, name: str, seq: int) -> None:
        super().__init__(f"projection {name!r} stopped at stream sequence {seq}")
        self.name = name
        self.seq = seq


class Feed:
    """What a projection reads: the events whose logical subject matches ``pattern``
    (NATS wildcards), its checkpoint written every ``batch`` events (and when caught up)."""

    __slots__ = ("batch", "pattern")

    def __init__(self, pattern: str, *, batch: int = 100) -> None:
        problem = pattern_problem(pattern, families=True)
        if problem is not None:
            raise InvalidArgument(problem, field="pattern")
        if isinstance(batch, bool) or not isinstance(batch, int) or not 0 < batch <= 100_000:
            raise InvalidArgument(f"must be an int from 1 to 100000, got {batch!r}", field="batch")
        self.pattern = pattern
        self.batch = batch


class Projection(Generic[A]):
    """A read model of class ``model`` named ``name`` (a token), built from ``feed`` on
    ``bus``; its checkpoints are signed as ``identity`` (and only its own are trusted).

    ``async with Projection(...) as projection``: restores the last checkpoint, catches up
    from there, then follows live until the block ends (which writes a last checkpoint).
    ``projection.state`` is the read model, ``projection.position`` the stream sequence of
    the last event it processed, ``projection.stored`` that of the last checkpoint.

    ``on_error``: what an event whose ``apply`` raises does, ``"stop"`` the projection
    (default) or go to the ``"dead-letter"`` queue while the projection goes on;
    ``max_failures`` (with ``"dead-letter"``): stop after that many dead letters in a row.
    ``projection.stats`` counts dead letters, failures and refused events.
    """

    def __init__(  # noqa: PLR0913 - public constructor: the bus and model, then keywords
        self,
        bus: Bus,
        model: type[A],
        *,
        name: str,
        identity: Identity,
        feed: Feed,
        on_error: ProjectionOnError = "stop",
        max_failures: int | None = None,
    ) -> None:
        self.name = checked_name("name", name)
        self._policy = ErrorPolicy(self.name, on_error, max_failures)
        self.bus, self.model, self.identity, self.feed = bus, model, identity, feed
        self.stats = ProjectionStats()
        self._held: list[Event] = []  # applied since the last checkpoint ("dead-letter")
        self.state: A = model()
        self.position = 0
        self.stored = 0
        self.applied = 0
        self._dirty = 0
        self._failure: ProjectionFailed | None = None
        self._progress = asyncio.Condition()
        self._bucket: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._delivered = 0

    @property
    def _js(self) -> JetStreamContext:
        return self.bus.jetstream

    @property
    def _place(self) -> SnapshotPlace:
        return SnapshotPlace(
            self.bus.tenant, self.bus.root, _KIND, self.name, {self.identity.principal.source}
        )

    async def __aenter__(self) -> Self:
        config = projections_config(self.bus.root, replicas=self.bus.replicas)
        self._bucket = await open_snapshots(self._js, config, create=self.bus.provisions)
        keyring = bus_codec(self.bus, "start a projection").keyring
        checkpoint = await read_snapshot(self._bucket, self._place, keyring)
        self._held.clear()
        if checkpoint is not None:
            self.state = self.model.restore(checkpoint.state)
            self.position = self.stored = checkpoint.seq
            self.applied = checkpoint.version
        sub = await self._subscribe(self.position)
        self._task = asyncio.get_running_loop().create_task(self._follow(sub))
        return self

    async def _subscribe(self, after: int) -> _Sub:
        """An ephemeral pull consumer from the event after stream sequence ``after``."""
        wire = to_wire(self.bus.root, self.feed.pattern)
        self._delivered = 0  # the consumer sequence of the last message pulled
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1,
            ack_policy=AckPolicy.NONE, inactive_threshold=_IDLE,
        )  # fmt: skip
        with mapped_nats_errors(f"follow {wire}"):
            return await self._js.pull_subscribe(
                wire, stream=events_stream_name(self.bus.root), config=config,
                pending_msgs_limit=16 * _PULL,
            )  # fmt: skip

    async def _pulled(self, sub: _Sub) -> tuple[_Sub, list[Msg]]:
        """The next messages in order (none after a quiet wait), and the subscription to
        go on with: a new one after the last good message if the pull failed (consumer
        lost) or a delivery is missing (the client dropped one: its queue was full)."""
        try:
            messages = await sub.fetch(_PULL, timeout=_PULL_WAIT)
        except nats.errors.TimeoutError:
            return sub, []
        except nats.errors.Error as exc:
            log.warning("projection %s: pull failed (%r), following again", self.name, exc)
            await asyncio.sleep(0.5)
            return await self._again(sub, self.position), []
        for index, message in enumerate(messages):
            self._delivered += 1
            if message.metadata.sequence.consumer != self._delivered:
                log.warning("projection %s: a delivery is missing, following again", self.name)
                good = messages[:index]
                after = good[-1].metadata.sequence.stream if good else self.position
                return await self._again(sub, after), good
        return sub, messages

    async def _again(self, sub: _Sub, after: int) -> _Sub:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        return await self._subscribe(after)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._failure is None and self._dirty:
            await self._checkpoint(self.position)
        if self._failure is not None and error is None:
            raise self._failure

    async def _follow(self, sub: _Sub) -> None:
        codec = bus_codec(self.bus, "run a projection")
        try:
            while True:
                sub, messages = await self._pulled(sub)
                items = [received(message) for message in messages]
                opened = await codec.open_batch(items, record=False)  # recorded if refused
                for message, result in zip(messages, opened, strict=True):
                    if not await self._take(codec, message, result):
                        return
        except EventwireError as exc:  # the connection, the server, a checkpoint write
            log.error("projection %s stopped: %s", self.name, exc)
            await self._fail(exc)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _take(
        self, codec: Codec, message: Msg, result: Event | Rejection | Exception
    ) -> bool:
        """Apply one opened message; False once the projection has stopped."""
        if isinstance(result, Exception):
            raise result  # the codec's own failure (a bug), as when it raised
        meta = message.metadata
        seq = meta.sequence.stream
        failure: Exception | None = None  # the error of an event dead-lettered
        if isinstance(result, Event):
            failure = await self._apply(result, message)
        else:
            await self._refused(codec, result, message)
        if self._failure is not None:
            return False
        self._dirty += 1
        if failure is not None or self._dirty >= self.feed.batch or not meta.num_pending:
            await self._checkpoint(seq)  # past a dead letter at once: never seen again
        self.position = seq  # after the checkpoint: a waiter sees it stored when caught up
        await self._notify()
        if failure is not None and self._policy.exhausted():
            await self._fail(failure, seq)
            return False
        return True

    async def _apply(self, event: Event, message: Msg) -> Exception | None:
        """None once applied; the error once dead-lettered (or the projection stopped)."""
        seq = message.metadata.sequence.stream
        try:
            self.state.apply(event)
        except Exception as exc:
            log.exception("projection %s: the model failed at sequence %d", self.name, seq)
            self.stats.failed += 1
            if not self._policy.dead_letters:
                await self._fail(exc, seq)
                return exc
            if await self._dead_letter(message, FAILED, f"{type(exc).__name__}: {exc}"):
                await self._without(seq)
            return exc
        self.applied += 1
        self._policy.in_a_row = 0
        if self._policy.dead_letters:
            self._held.append(event)
        return None

    async def _without(self, seq: int) -> None:
        """The read model rebuilt without the event that failed: the last checkpoint, and
        the events applied since then applied again (``apply`` may have changed the model
        before it raised). If the model fails on one of those again, the projection stops."""
        self._policy.in_a_row += 1
        try:
            self.state = await self._restored()
            for held in self._held:
                self.state.apply(held)
        except Exception as again:
            log.exception("projection %s: the model failed rebuilding it", self.name)
            await self._fail(again, seq)

    async def _restored(self) -> A:
        """The read model of the last checkpoint (a new model if there is none yet)."""
        if not self.stored:
            return self.model()
        assert self._bucket is not None
        keyring = bus_codec(self.bus, "rebuild a projection").keyring
        checkpoint = await read_snapshot(self._bucket, self._place, keyring)
        if checkpoint is None or checkpoint.seq != self.stored:
            raise ProjectionFailed(self.name, self.stored)  # changed under it: give up
        return self.model.restore(checkpoint.state)

    async def _refused(self, codec: Codec, refusal: Rejection, message: Msg) -> None:
        codec.record(refusal)  # counted and audited by the bus
        self.stats.refused += 1
        if self._policy.dead_letters:
            await self._dead_letter(message, REFUSED, f"{refusal.reason}: {refusal.detail}")

    async def _dead_letter(self, message: Msg, reason: str, error: str) -> bool:
        """Store the event in the dead-letter queue; False if it was not stored (the
        projection stops before its checkpoint passes the event)."""
        seq = message.metadata.sequence.stream
        try:
            dlq = self.bus.dead_letters
            await dead_letter(dlq, message, projection=self.name, reason=reason, error=error)
        except EventwireError as exc:  # DeadLetterError, or the bus is closed
            log.error("projection %s: could not dead-letter sequence %d: %s", self.name, seq, exc)
            await self._fail(exc, seq)
            return False
        self.stats.dead_lettered += 1
        log.error(
            "projection %s: event at sequence %d dead-lettered (%s): %s",
            self.name, seq, reason, error,
        )  # fmt: skip
        return True

    async def _checkpoint(self, seq: int) -> None:
        """One signed KV write: the read model and the sequence ``seq`` it reflects."""
        assert self._bucket is not None
        snapshot = Snapshot(self.applied, seq, 0.0, self.state.snapshot())
        await write_snapshot(self._bucket, self._place, snapshot, self.identity)
        self.stored, self._dirty = seq, 0
        self._held.clear()

    async def _fail(self, cause: BaseException, seq: int | None = None) -> None:
        failure = ProjectionFailed(self.name, self.position + 1 if seq is None else seq)
        failure.__cause__ = cause
        self._failure = failure
        await self._notify()

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def wait_for(self, seq: int) -> None:
        """Wait until the events up to stream sequence ``seq`` are processed (wrap it in
        ``asyncio.timeout``); :class:`ProjectionFailed` if the projection stopped."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.position >= seq or bool(self._failure))
        if self._failure is not None:
            raise self._failure

    async def reset(self) -> None:
        """Forget the stored read model and checkpoint, so that the next start rebuilds
        from the first event (:class:`BusyResource` while it runs)."""
        if self._task is not None:
            raise BusyResource(f"projection {self.name!r} is running: reset it when stopped")
        config = projections_config(self.bus.root, replicas=self.bus.replicas)
        bucket = await open_snapshots(self._js, config, create=self.bus.provisions)
        with mapped_nats_errors(f"reset projection {self.name!r}"):
            await bucket.purge(self._place.key)
        self.state, self.position, self.stored, self.applied = self.model(), 0, 0, 0
        self._dirty, self._failure = 0, None
        self._held.clear()
        self._policy.in_a_row = 0

    async def lag(self) -> int:
        """How many stream sequences the projection is behind the stream's last one (an
        upper bound on the events it has not processed yet)."""
        with mapped_nats_errors("read the events stream"):
            info = await self._js.stream_info(events_stream_name(self.bus.root))
        return max(0, int(info.state.last_seq) - self.position)
