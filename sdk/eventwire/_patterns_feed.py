"""The keyed, event-time, exactly-once loop under pattern detectors and windowed streams.

An *engine* (patterns or windows) keeps one JSON state per key; this module feeds it the
verified events of a durable pull consumer, keeps the watermark, stores the states and
publishes what the engine outputs. How a restart neither loses nor repeats anything:

1. A batch of at most ``batch`` messages is fetched (the consumer allows no more unacked:
   a slow engine or sink slows the pull; memory holds one batch and the open states).
2. Each event is verified (refused ones are counted and audited by the bus and skipped);
   with a bus policy, one the identity's agent may not consume is refused as
   ``policy-denied``; with the bus's replay protection, its id is claimed at its stream
   sequence (a copy published again is refused as ``already-seen``, never counted twice).
   Then it is given its key and event time; one older than the watermark is *late*:
   counted and dropped.
3. After the batch, the watermark advances the states (closing windows, firing absences).
4. Outputs are published with a deterministic ``Nats-Msg-Id`` (``bus.publish_report``),
   so one published again after a crash is dropped by the stream as a duplicate; then
   the engine's callbacks (``on_match``, ``sink``) get them.
5. The changed states are written, each a signed document in the KV bucket
   ``<root>-projections`` (key ``<kind>.<name>-<hash of the key>``) with the stream
   sequence of the last event applied to it; then a signed meta document with the
   sequence of the whole batch and the watermark; then idle states are deleted; then the
   batch is acknowledged. On redelivery an event at or below its key's (or the meta's)
   sequence is skipped, so each event changes each state once. Messages a crashed loop
   held come back after ``ack_wait`` seconds.

Watermark: ``max event time seen - lateness``; it never goes back. Time must pass for
windows to close and absences to fire even when no event comes: with ``idle`` set, after
``idle`` seconds (wall clock) without an event the watermark moves on with the wall clock
from the last event's time. It is stored with the states, so a restart resumes from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventwire_security import Actor, EventwireError
from eventwire_security._layout import consumer_name

from ._aggregates import bus_codec
from ._codec import Rejection, received
from ._errors import InvalidArgument, checked_name, mapped_nats_errors
from ._event import Event
from ._patterns import count, seconds
from ._seen import Claim, event_key
from ._snapshots import (
    Snapshot,
    SnapshotPlace,
    open_snapshots,
    projections_config,
    read_snapshot,
    write_snapshot,
)
from ._subjects import consumer_filters
from ._watch import start_watch, stop_watch

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable
    from types import TracebackType

    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from eventwire_security import Identity

    from ._bus import Bus
    from ._kinds import CustomEvent
    from ._link import Link

log = logging.getLogger("eventwire.patterns")
State = dict[str, Any]
Start = Literal["all", "new"]
_META = "meta"
_HASH_CHARS = 24
_TICK = 0.5


class ProcessingStopped(EventwireError):
    """The detector or windowed stream ``name`` stopped on an error (the cause)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} stopped processing")
        self.name = name


@dataclass(frozen=True, slots=True)
class Output:
    """An event to publish once: ``key`` is its ``Nats-Msg-Id``."""

    item: CustomEvent
    key: str
    causation_id: str | None = None
    correlation_id: str | None = None
    detail: Any = None  # what the engine's ``emitted`` gets back (a PatternMatch...)


class Engine(Protocol):
    def subjects(self) -> list[str]: ...
    def fresh(self) -> State: ...
    def feed(self, key: str, state: State, event: Event, at: float) -> list[Output]: ...
    def advance(self, key: str, state: State, watermark: float) -> list[Output]: ...
    def deadline(self, state: State) -> float | None: ...
    def idle(self, state: State) -> bool: ...
    async def emitted(self, outputs: list[Output]) -> None: ...


def default_key(event: Event) -> str:
    """An event's key: its partition key, else its correlation id."""
    return event.partitionkey or event.correlationid


def signed_time(event: Event) -> float:
    """An event's event time: the signed ``time`` claim, in seconds since the epoch."""
    return event.time.timestamp()


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedSettings:
    """How a keyed loop reads: see :class:`~eventwire.PatternDetector`."""

    name: str
    kind: str
    identity: Identity
    key: Callable[[Event], str] = default_key
    event_time: Callable[[Event], float] = signed_time
    lateness: float = 0.0
    idle: float | None = None
    batch: int = 64
    start: Start = "all"
    ack_wait: float = 30.0

    def __post_init__(self) -> None:
        checked_name("name", self.name)
        for name in ("key", "event_time"):
            if not callable(getattr(self, name)):
                raise InvalidArgument("must be a function of the event", field=name)
        lateness = self.lateness
        if isinstance(lateness, bool) or not isinstance(lateness, int | float):
            raise InvalidArgument(f"must be seconds >= 0, got {lateness!r}", field="lateness")
        if not 0 <= lateness < math.inf:
            raise InvalidArgument(f"must be seconds >= 0, got {lateness!r}", field="lateness")
        if self.idle is not None:
            seconds(self.idle, field="idle")
        count(self.batch, field="batch")
        seconds(self.ack_wait, field="ack_wait")
        if self.start not in ("all", "new"):
            raise InvalidArgument(f"must be 'all' or 'new', got {self.start!r}", field="start")


class Watermark:
    """``max event time - lateness``, moved on by the wall clock while idle; monotonic."""

    def __init__(self, lateness: float, idle: float | None) -> None:
        self.lateness, self.idle = lateness, idle
        self.value = -math.inf
        self._latest = -math.inf
        self._arrived = time.monotonic()

    def observe(self, at: float) -> None:
        self._latest = max(self._latest, at)
        self._arrived = time.monotonic()
        self.value = max(self.value, self._latest - self.lateness)

    def restore(self, value: float) -> None:
        self.value = max(self.value, value)
        self._latest = max(self._latest, value + self.lateness)
        self._arrived = time.monotonic()

    def tick(self) -> None:
        quiet = time.monotonic() - self._arrived
        if self.idle is not None and quiet >= self.idle and math.isfinite(self._latest):
            self.value = max(self.value, self._latest - self.lateness + quiet)


@dataclass(slots=True)
class Entry:
    key: str
    state: State
    seq: int = 0
    deadline: float | None = None


@dataclass(slots=True)
class ProcessingCounters:
    """What a keyed loop did: events ``applied``, ``late`` (dropped: older than the
    watermark), ``skipped`` (no key or event time), ``duplicates`` (redeliveries of
    applied events), ``refused`` (failed verification), ``published`` outputs."""

    applied: int = 0
    late: int = 0
    skipped: int = 0
    duplicates: int = 0
    refused: int = 0
    published: int = 0
    batches: list[int] = field(default_factory=list, repr=False)


async def _all(steps: Iterable[Coroutine[Any, Any, object]]) -> None:
    """Run ``steps`` concurrently, wait for every one, then raise the first failure."""
    outcomes = await asyncio.gather(*steps, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def bus_link(bus: Bus, doing: str) -> Link:
    """What the open bus holds (its codec, its replay claims); ClosedResource if closed."""
    return bus._running(doing)


def _hashed(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:_HASH_CHARS]


class KeyedFeed:
    """The loop itself, an async context manager (see the module's documentation)."""

    def __init__(self, bus: Bus, engine: Engine, settings: FeedSettings) -> None:
        self.bus, self.engine, self.settings = bus, engine, settings
        self.counters = ProcessingCounters()
        self.clock = Watermark(settings.lateness, settings.idle)
        self.states: dict[str, Entry] = {}
        self.position = 0  # the stream sequence of the last batch stored
        self._bucket: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure: ProcessingStopped | None = None
        self._progress = asyncio.Condition()
        self._durable = ""
        self._never = asyncio.Event()  # replay claims are never interrupted: a stop cancels
        self._may_consume: Callable[[str], bool] = lambda subject: True

    @property
    def _js(self) -> JetStreamContext:
        return self.bus.jetstream

    def _place(self, ident: str) -> SnapshotPlace:
        source = self.settings.identity.principal.source
        name = f"{self.settings.name}-{ident}"
        return SnapshotPlace(self.bus.tenant, self.bus.root, self.settings.kind, name, {source})

    async def __aenter__(self) -> Self:
        config = projections_config(self.bus.root, replicas=self.bus.replicas)
        self._bucket = await open_snapshots(self._js, config, create=self.bus.provisions)
        if self.bus.policy is not None:  # the identity's agent reads as itself
            principal = self.settings.identity.principal
            compiled = self.bus.policy.for_actor(Actor(principal.tenant, principal.agent))
            self._may_consume = compiled.may_consume
        await self._restore()
        sub = await self._subscribe()
        self._task = asyncio.get_running_loop().create_task(self._run(sub))
        return self

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
        if self._failure is not None and error is None:
            raise self._failure

    async def _restore(self) -> None:
        assert self._bucket is not None
        prefix = f"{self.settings.kind}.{self.settings.name}-"
        keys = []
        with mapped_nats_errors(f"list the states of {self.settings.name!r}"):
            watcher = await start_watch(
                self._bucket.watch(f"{self.settings.kind}.>", ignore_deletes=True, meta_only=True)
            )
            try:
                async for entry in watcher:
                    if entry is None:
                        break
                    keys.append(entry.key)
            finally:
                await stop_watch(watcher)
        keyring = bus_codec(self.bus, "restore states").keyring
        for kv_key in keys:
            ident = kv_key.removeprefix(prefix)
            if not kv_key.startswith(prefix) or "-" in ident:
                continue
            snapshot = await read_snapshot(self._bucket, self._place(ident), keyring)
            if snapshot is None:
                continue
            if ident == _META:
                self.position = snapshot.seq
                self.clock.restore(snapshot.at)
            elif isinstance(snapshot.state, dict) and isinstance(snapshot.state.get("key"), str):
                stored: Any = snapshot.state  # our own signed document: {"key", "state"}
                entry = Entry(stored["key"], stored["state"], snapshot.seq)
                entry.deadline = self.engine.deadline(entry.state)
                self.states[entry.key] = entry

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        bus, settings = self.bus, self.settings
        patterns = sorted(set(self.engine.subjects()))
        filters = sorted(
            {f for p in patterns for f in consumer_filters(bus.root, p, bus.partitions)}
        )
        self._durable = durable = consumer_name(
            settings.name, f"{settings.kind}:{','.join(patterns)}"
        )
        config = ConsumerConfig(
            durable_name=durable,
            description=f"eventwire {settings.kind} {settings.name}",
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_ack_pending=settings.batch,
            deliver_policy=DeliverPolicy.ALL if settings.start == "all" else DeliverPolicy.NEW,
        )
        with mapped_nats_errors(f"open the consumer of {settings.name!r}"):
            if bus.provisions:
                await self._js.add_consumer(bus.stream, config)
            return await self._js.pull_subscribe_bind(durable, bus.stream)

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        try:
            while True:
                await self._batch(await self._fetch(sub))
        except Exception as exc:  # the bus, the server, a sink or a key function: stop, say why
            log.error(
                "%s %s stopped: %r", self.settings.kind, self.settings.name, exc, exc_info=exc
            )
            failure = ProcessingStopped(self.settings.name)
            failure.__cause__ = exc
            self._failure = failure
            await self._notify()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """The next batch: none after a quiet tick; none, after a pause, while the
        connection is down (the bus reconnects); :class:`ClosedResource` once it closed."""
        try:
            return await sub.fetch(self.settings.batch, timeout=_TICK)
        except nats.errors.TimeoutError:
            return []
        except (nats.errors.Error, OSError) as exc:
            if self.bus.connection.is_closed:
                raise
            log.warning(
                "%s %s: fetch failed (%r), retrying", self.settings.kind, self.settings.name, exc
            )
            await asyncio.sleep(_TICK)
            return []

    async def _batch(self, msgs: list[Msg]) -> None:
        outputs: list[Output] = []
        dirty: set[str] = set()
        last = max([self.position, *(msg.metadata.sequence.stream for msg in msgs)])
        for seq, event in await self._opened(msgs):
            outputs += self._take(event, seq, dirty)
        self.clock.tick()
        outputs += self._advance(dirty)
        if outputs:
            await self._publish(outputs)
            await self.engine.emitted(outputs)
        before = self.position
        await self._store(dirty, last)
        for msg in msgs:
            with mapped_nats_errors("acknowledge"):
                await msg.ack()
        if msgs or before != self.position or outputs:
            self.counters.batches.append(len(msgs))
            await self._notify()

    async def _opened(self, msgs: list[Msg]) -> list[tuple[int, Event]]:
        """The batch's new messages, verified (refusals counted and audited by the bus),
        without replays: with the bus's replay protection each event id is claimed at its
        stream sequence (as subscriptions do, see ``_seen``); one claimed at another
        sequence is a copy published again, refused as ``already-seen``."""
        link = bus_link(self.bus, "read events")
        fresh = [msg for msg in msgs if msg.metadata.sequence.stream > self.position]
        self.counters.duplicates += len(msgs) - len(fresh)
        results = await link.codec.open_batch([received(m) for m in fresh], record=False)
        opened: list[tuple[int, Msg, Event]] = []
        for msg, one in zip(fresh, results, strict=True):
            if isinstance(one, Exception):
                raise one  # the codec's own failure (a bug), as when it raised
            seq, result = msg.metadata.sequence.stream, one
            if isinstance(result, Event) and not self._may_consume(result.subject):
                detail = f"{self.settings.identity.principal.source} may not consume it"
                result = Rejection("policy-denied", detail, msg.subject, result.signer_kid)
            if isinstance(result, Event):
                opened.append((seq, msg, result))
            else:
                link.codec.record(result)
                self.counters.refused += 1
        if link.seen is None or not opened:
            return [(seq, event) for seq, _, event in opened]
        claims = [(event_key(event), seq) for seq, _, event in opened]
        verdicts = await link.seen.claim_until_answered(
            self._durable, claims, within=10.0, interrupted=lambda: self._never
        )
        kept = []
        for (seq, msg, event), verdict in zip(opened, verdicts, strict=True):
            if verdict is Claim.REPLAY:
                detail = f"event {event.id} from {event.source} seen before stream seq {seq}"
                link.codec.record(Rejection("already-seen", detail, msg.subject, event.signer_kid))
                self.counters.refused += 1
            else:
                kept.append((seq, event))
        return kept

    def _take(self, result: Event, seq: int, dirty: set[str]) -> list[Output]:
        try:
            key, at = self.settings.key(result), float(self.settings.event_time(result))
        except Exception:
            log.warning(
                "%s: no key or event time for %s", self.settings.name, result.id, exc_info=True
            )
            self.counters.skipped += 1
            return []
        entry = self.states.get(key)
        if entry is not None and seq <= entry.seq:
            self.counters.duplicates += 1
            return []
        if at < self.clock.value or not math.isfinite(at):
            self.counters.late += 1
            log.info(
                "%s: late event %s (%s < watermark %s)",
                self.settings.name,
                result.id,
                at,
                self.clock.value,
            )
            return []
        self.clock.observe(at)
        if entry is None:
            entry = self.states[key] = Entry(key, self.engine.fresh())
        outputs = self.engine.feed(key, entry.state, result, at)
        entry.seq = seq
        entry.deadline = self.engine.deadline(entry.state)
        dirty.add(key)
        self.counters.applied += 1
        return outputs

    def _advance(self, dirty: set[str]) -> list[Output]:
        watermark = self.clock.value
        outputs: list[Output] = []
        for key, entry in self.states.items():
            if entry.deadline is not None and entry.deadline <= watermark:
                outputs += self.engine.advance(key, entry.state, watermark)
                entry.deadline = self.engine.deadline(entry.state)
                dirty.add(key)
        return outputs

    async def _publish(self, outputs: list[Output]) -> None:
        for output in outputs:
            await self.bus.publish_report(
                output.item,
                identity=self.settings.identity,
                key=output.key,
                causation_id=output.causation_id,
                correlation_id=output.correlation_id,
            )
            self.counters.published += 1

    async def _store(self, dirty: set[str], last: int) -> None:
        assert self._bucket is not None
        identity, wm = self.settings.identity, self.clock.value
        bucket = self._bucket
        idle = [key for key in dirty if self.engine.idle(self.states[key].state)]
        writes = []
        for key in dirty.difference(idle):
            entry = self.states[key]
            document = Snapshot(0, entry.seq, 0.0, {"key": key, "state": entry.state})
            writes.append(write_snapshot(bucket, self._place(_hashed(key)), document, identity))
        await _all(writes)  # the states of different keys are independent: in parallel
        if last == self.position and not dirty:
            return
        meta = Snapshot(0, last, wm if math.isfinite(wm) else 0.0, None)
        await write_snapshot(bucket, self._place(_META), meta, identity)  # after the states
        self.position = last
        for key in idle:
            del self.states[key]
        with mapped_nats_errors("delete idle states"):
            await _all([bucket.delete(self._place(_hashed(key)).key) for key in idle])

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def wait_for(self, seq: int) -> None:
        """Wait until the events up to stream sequence ``seq`` are applied and stored
        (wrap it in ``asyncio.timeout``); :class:`ProcessingStopped` if the loop stopped."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.position >= seq or bool(self._failure))
        if self._failure is not None:
            raise self._failure


class FeedProcessor:
    """What a pattern detector and a windowed stream share: a :class:`KeyedFeed` run as an
    async context manager, its counters, watermark and position."""

    _feed: KeyedFeed

    @property
    def counters(self) -> ProcessingCounters:
        """Events applied, late, skipped, duplicate, refused; outputs published."""
        return self._feed.counters

    @property
    def watermark(self) -> float:
        return self._feed.clock.value

    @property
    def position(self) -> int:
        """The stream sequence up to which events are applied and stored."""
        return self._feed.position

    async def wait_for(self, seq: int) -> None:
        """Wait until the events up to stream sequence ``seq`` are applied and stored."""
        await self._feed.wait_for(seq)

    async def __aenter__(self) -> Self:
        await self._feed.__aenter__()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._feed.__aexit__(kind, error, traceback)
