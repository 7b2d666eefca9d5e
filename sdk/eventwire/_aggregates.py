"""Event-sourced aggregates: append with optimistic concurrency, load by replay, snapshots.

The events of one aggregate are signed events like any other, on one logical subject,
``custom.es.<kind>.<id>``, in the tenant's events stream (see ``_layout``). They get the
same signatures, de-duplication, replicas and declared topology as every event, and
subscribers (projections) read them with ``bus.subscribe("custom.es.<kind>.*", ...)``.

* Version: how many events the aggregate has (0: none yet). An append names the version
  it was decided on (``expected``); the store sends it with JetStream's
  ``Nats-Expected-Last-Subject-Sequence`` (the stream sequence of the aggregate's last
  event), so the server refuses it if anything was appended since, and the store raises
  :class:`ConcurrencyConflict` carrying the current version.
* Load: the verified snapshot if any, then every later event of the subject, each verified
  by the bus's codec (signature, tenant, root, subject, the time it was stored); a refused
  event raises :class:`AggregateCorrupted` (never skipped: a state built without one of
  its events is wrong), as does an event id seen twice (a replayed event).
* As of: ``version=n`` stops after n events, ``as_of=t`` after the last event the stream
  stored at or before ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, Self, TypeVar

import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from eventwire_security import EventwireError
from eventwire_security._layout import aggregate_subject, events_stream_name, to_wire

from ._codec import received
from ._errors import InvalidArgument, mapped_nats_errors
from ._event import Event
from ._kinds import CustomEvent
from ._snapshots import (
    Snapshot,
    SnapshotPlace,
    open_snapshots,
    read_snapshot,
    snapshots_config,
    write_snapshot,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue
    from pydantic import JsonValue

    from eventwire_security import Identity, Keyring

    from ._bus import Bus
    from ._codec import Codec

__all__ = [
    "Aggregate",
    "AggregateCorrupted",
    "AggregateStore",
    "Change",
    "ConcurrencyConflict",
    "Loaded",
    "SnapshotPolicy",
]

_WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF
_READ_TIMEOUT = 5.0


class ConcurrencyConflict(EventwireError):
    """An append was decided on ``expected`` events, but the aggregate has ``current``."""

    def __init__(self, aggregate: str, expected: int, current: int) -> None:
        super().__init__(
            f"{aggregate}: appended at version {expected}, but it is at version {current}"
        )
        self.aggregate = aggregate
        self.expected = expected
        self.current = current


class AggregateCorrupted(EventwireError):
    """An event stored for the aggregate was refused on load (``reason``, at ``seq``)."""

    def __init__(self, aggregate: str, seq: int, reason: str, detail: str) -> None:
        super().__init__(
            f"{aggregate}: event at stream sequence {seq} refused: {reason} ({detail})"
        )
        self.aggregate = aggregate
        self.seq = seq
        self.reason = reason
        self.detail = detail


class Aggregate(Protocol):
    """What an aggregate class provides: a constructor without arguments (the state before
    any event), ``apply`` (one verified event), and a JSON snapshot and its inverse."""

    def __init__(self) -> None: ...

    def apply(self, event: Event) -> None: ...

    def snapshot(self) -> JsonValue: ...

    @classmethod
    def restore(cls, state: JsonValue) -> Self: ...


A = TypeVar("A", bound=Aggregate)


@dataclass(frozen=True, slots=True)
class Change:
    """One event to append: its CloudEvents ``type`` and JSON ``data``."""

    type: str
    data: JsonValue = None


@dataclass(frozen=True, slots=True)
class Loaded(Generic[A]):
    """An aggregate's state after ``version`` events (the last at stream sequence ``seq``);
    ``replayed``: how many events were applied after the snapshot (if one was used)."""

    state: A
    version: int
    seq: int
    replayed: int


def bus_codec(bus: Bus, doing: str) -> Codec:
    """The bus's codec: aggregate events are signed and verified like any other."""
    return bus._running(doing).codec


def _count(value: object, field: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgument(f"must be an int >= {minimum}, got {value!r}", field=field)
    return value


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When to snapshot and whose snapshots to use. With ``every`` = n > 0, a load that
    replayed n or more events after the last snapshot stores a new one (signed by the
    store's identity). Snapshots signed by the agents in ``writers`` (sources,
    ``tenant/agent``; default: the store's own agent) are used, others ignored."""

    every: int = 0
    writers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _count(self.every, "every", minimum=0)
        if isinstance(self.writers, str) or not all(isinstance(w, str) for w in self.writers):
            raise InvalidArgument("must be a tuple of sources (tenant/agent)", field="writers")


class AggregateStore(Generic[A]):
    """The aggregates of one ``kind`` (a subject token, e.g. ``account``) of class
    ``factory``, appended as ``identity`` on ``bus``; ``snapshots`` says when to snapshot
    (:class:`SnapshotPolicy`; default never)."""

    def __init__(
        self,
        bus: Bus,
        factory: type[A],
        *,
        kind: str,
        identity: Identity,
        snapshots: SnapshotPolicy | None = None,
    ) -> None:
        try:
            aggregate_subject(kind, "probe")
        except EventwireError as exc:
            raise InvalidArgument(str(exc), field="kind") from None
        policy = SnapshotPolicy() if snapshots is None else snapshots
        self.bus = bus
        self.factory = factory
        self.kind = kind
        self.identity = identity
        self.snapshot_every = policy.every
        self._writers = frozenset(policy.writers) or {identity.principal.source}
        self._snapshots: KeyValue | None = None

    def subject(self, aggregate_id: str) -> str:
        """The logical subject of the aggregate's events (:class:`InvalidArgument` if the
        id is not a subject token)."""
        try:
            return aggregate_subject(self.kind, aggregate_id)
        except EventwireError as exc:
            raise InvalidArgument(str(exc), field="aggregate_id") from None

    def _wire(self, aggregate_id: str) -> str:
        return to_wire(self.bus.root, self.subject(aggregate_id))

    @property
    def _js(self) -> JetStreamContext:
        return self.bus.jetstream

    @property
    def _stream(self) -> str:
        return events_stream_name(self.bus.root)

    async def version(self, aggregate_id: str) -> int:
        """How many events the aggregate has now (0 for one that does not exist yet)."""
        wire = self._wire(aggregate_id)
        with mapped_nats_errors(f"count the events of {wire}"):
            info = await self._js.stream_info(self._stream, subjects_filter=wire)
        return int((info.state.subjects or {}).get(wire, 0))

    async def _last_seq(self, wire: str) -> int:
        try:
            with mapped_nats_errors(f"read the last event of {wire}"):
                message = await self._js.get_last_msg(self._stream, wire)
        except EventwireError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return 0
            raise
        return int(message.seq or 0)

    async def append(self, aggregate_id: str, changes: Sequence[Change], *, expected: int) -> int:
        """Append ``changes`` (in order) to an aggregate decided on at version ``expected``;
        returns the new version. :class:`ConcurrencyConflict` (with the current version)
        if the aggregate has moved on. Several changes are sent one after another, each
        expecting the previous: not atomic, but never interleaved with another writer's."""
        _count(expected, "expected", minimum=0)
        if not changes:
            raise InvalidArgument("nothing to append", field="changes")
        subject = self.subject(aggregate_id)
        items = [CustomEvent(subject, change.type, change.data) for change in changes]
        wire = to_wire(self.bus.root, subject)
        last = await self._last_seq(wire)  # first the sequence, then the count (see README)
        current = await self.version(aggregate_id)
        if current != expected:
            raise ConcurrencyConflict(subject, expected, current)
        self.bus._check_publish(self.identity, None, subject)
        codec = bus_codec(self.bus, "append to an aggregate")
        for offset, item in enumerate(items):
            signed = codec.sign(item, self.identity)
            headers = {**signed.headers, "Nats-Expected-Last-Subject-Sequence": str(last)}
            try:
                with mapped_nats_errors(f"append to {subject}"):
                    ack = await self._js.publish(
                        wire, signed.body, stream=self._stream, headers=headers
                    )
            except EventwireError as exc:
                cause = exc.__cause__
                if isinstance(cause, nats.js.errors.APIError) and (
                    cause.err_code == _WRONG_LAST_SEQUENCE
                ):
                    now = await self.version(aggregate_id)
                    raise ConcurrencyConflict(subject, expected + offset, now) from cause
                raise
            last = ack.seq
        return expected + len(items)

    async def load(
        self, aggregate_id: str, *, version: int | None = None, as_of: datetime | None = None
    ) -> Loaded[A]:
        """The aggregate's state: now, after its first ``version`` events, or as the stream
        stood at ``as_of`` (the time each event was stored). Every event is verified."""
        if version is not None:
            _count(version, "version", minimum=0)
        cutoff = None if as_of is None else _timestamp(as_of)
        wire = self._wire(aggregate_id)
        last = await self._last_seq(wire)
        snapshot = await self._usable_snapshot(aggregate_id, version, cutoff, last)
        state = self.factory() if snapshot is None else self.factory.restore(snapshot.state)
        start = Snapshot(0, 0, 0.0, None) if snapshot is None else snapshot
        replay = _Replay(state, start.version, start.seq, version, cutoff)
        if last > start.seq and not replay.full:
            await self._replay(wire, replay, last)
        loaded = Loaded(replay.state, replay.version, replay.seq, replay.applied)
        if version is None and cutoff is None:
            await self._maybe_snapshot(aggregate_id, loaded, replay.at, start.version)
        return loaded

    async def _usable_snapshot(
        self, aggregate_id: str, version: int | None, cutoff: float | None, last: int
    ) -> Snapshot | None:
        if not self.snapshot_every or last == 0:
            return None
        bucket = await self._bucket()
        found = await read_snapshot(bucket, self._place(aggregate_id), self._keyring)
        if found is None or found.seq > last:
            return None
        if version is not None and found.version > version:
            return None
        if cutoff is not None and found.at > cutoff:
            return None
        return found

    async def _maybe_snapshot(
        self, aggregate_id: str, loaded: Loaded[A], at: float, covered: int
    ) -> None:
        if not self.snapshot_every or loaded.version - covered < self.snapshot_every:
            return
        snapshot = Snapshot(loaded.version, loaded.seq, at, loaded.state.snapshot())
        await write_snapshot(
            await self._bucket(), self._place(aggregate_id), snapshot, self.identity
        )

    async def _bucket(self) -> KeyValue:
        if self._snapshots is None:
            config = snapshots_config(self.bus.root, replicas=self.bus.replicas)
            self._snapshots = await open_snapshots(self._js, config, create=self.bus.provisions)
        return self._snapshots

    @property
    def _keyring(self) -> Keyring:
        return bus_codec(self.bus, "load an aggregate").keyring

    def _place(self, aggregate_id: str) -> SnapshotPlace:
        return SnapshotPlace(self.bus.tenant, self.bus.root, self.kind, aggregate_id, self._writers)

    async def _replay(self, wire: str, replay: _Replay[A], last: int) -> None:
        """Apply the subject's events after ``replay.seq`` up to ``last`` (or the limit)."""
        codec = bus_codec(self.bus, "load an aggregate")
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=replay.seq + 1
        )
        with mapped_nats_errors(f"replay {wire}"):
            sub = await self._js.subscribe(
                wire, stream=self._stream, ordered_consumer=True, config=config
            )
        try:
            while True:
                with mapped_nats_errors(f"replay {wire}"):
                    message = await sub.next_msg(timeout=_READ_TIMEOUT)
                seq = message.metadata.sequence.stream
                if not replay.take(_stored_at(message)):
                    return
                replay.apply(self._verified(codec, message, wire), seq, _stored_at(message))
                if seq >= last or replay.full:
                    return
        finally:
            with mapped_nats_errors(f"stop replaying {wire}"):
                await sub.unsubscribe()

    def _verified(self, codec: Codec, message: Msg, wire: str) -> Event:
        seq = message.metadata.sequence.stream
        result = codec.open(*received(message))
        if isinstance(result, Event):
            return result
        codec.record(result)
        raise AggregateCorrupted(wire, seq, result.reason, result.detail)


class _Replay(Generic[A]):
    """A replay in progress: the state, how far it got, and where it must stop."""

    def __init__(
        self, state: A, version: int, seq: int, limit: int | None, cutoff: float | None
    ) -> None:
        self.state, self.version, self.seq = state, version, seq
        self.limit, self.cutoff = limit, cutoff
        self.applied = 0
        self.at = 0.0
        self._ids: set[str] = set()

    @property
    def full(self) -> bool:
        return self.limit is not None and self.version >= self.limit

    def take(self, stored_at: float) -> bool:
        """Whether an event stored at ``stored_at`` is inside the asked-for time."""
        return self.cutoff is None or stored_at <= self.cutoff

    def apply(self, event: Event, seq: int, stored_at: float) -> None:
        if event.id in self._ids:
            raise AggregateCorrupted(event.subject, seq, "replay", f"event id {event.id} again")
        self._ids.add(event.id)
        self.state.apply(event)
        self.version, self.seq, self.at = self.version + 1, seq, stored_at
        self.applied += 1


def _stored_at(message: Msg) -> float:
    stamp = message.metadata.timestamp
    return stamp.timestamp()


def _timestamp(value: datetime) -> float:
    if value.tzinfo is None:
        raise InvalidArgument("must be timezone-aware (e.g. datetime.now(UTC))", field="as_of")
    return value.timestamp()
