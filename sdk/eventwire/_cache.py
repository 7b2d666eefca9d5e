"""A two-level cache of recent verified events and of projection read models.

L1 is an in-process LRU of verified :class:`Event` objects (and restored read models). L2 is
a JetStream KV bucket (default ``<root>-cache``) shared by every process, holding an
event's *signed bytes and headers* exactly as the stream stored them, under
``subject.<hash>`` (the latest event of a subject) and ``id.<tenant>.<hash>`` (by source and
id). Nothing is trusted from L2: every read verifies the bytes again with the bus's codec
and checks that the event is the one the key names, so a tampered or misplaced entry is
refused (counted, audited like any refused event) and the lookup goes on to the source.
What verification cannot prove is freshness: an older genuine event put back under its
subject's key would verify. Freshness comes from invalidation.

Invalidation by events: the cache follows ``pattern`` with an ordered consumer from the
stream's end; each new verified event evicts its subject from L1 and is written through to
L2 (both keys). Each checkpoint a projection writes evicts that projection's read model
from L1 (a second ordered consumer on the projections bucket). After a reconnect or a
missed message the consumers are made again after the last sequence they delivered
(nats-py's ordered consumers), so no invalidation is skipped; if one cannot be applied (L2
unwritable), L1 is cleared. Only subjects under ``pattern`` are cached: others would never
be invalidated.

Where it does not pay: every followed event costs a verification and two KV writes, so a
subject written more often than it is read costs more than reading the stream's last
message (``latest`` does that on a miss); measure with ``benchmarks/bench_projections.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any, Self

import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from eventwire_security import seen_key
from eventwire_security._layout import cache_bucket, events_stream_name, projections_bucket

from ._aggregates import A, bus_codec
from ._cache_lru import LRU, CacheStats
from ._errors import ConfigError, EventwireError, InvalidArgument, mapped_nats_errors
from ._event import Event
from ._metrics import METRICS
from ._snapshots import SnapshotPlace, open_snapshots, projections_config, read_snapshot
from ._streams import CACHE_TTL, cache_config
from ._subjects import check_pattern, check_subject, matches, to_wire

if TYPE_CHECKING:
    from types import TracebackType

    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from ._bus import Bus
    from ._codec import Codec

    _Sub = JetStreamContext.PushSubscription

__all__ = ["CacheStats", "EventCache"]

log = logging.getLogger("eventwire.cache")
_IN_FLIGHT = 256  # events the follower verifies and writes through at once
_Stored = tuple[bytes, dict[str, str] | None, str, float]  # data, headers, wire subject, time


def _hash(*parts: str) -> str:
    material = json.dumps(list(parts), ensure_ascii=True).encode("ascii")
    return hashlib.sha256(material).hexdigest()[:32]


class EventCache:
    """Recent verified events of ``pattern`` by subject (:meth:`latest`) or by source and id
    (:meth:`get`), and projection read models (:meth:`read_model`), in an L1 LRU of
    ``capacity`` entries in front of the L2 KV bucket ``bucket`` (entries kept ``ttl``
    seconds). ``async with EventCache(bus, "custom.>") as cache``; ``cache.stats`` counts."""

    def __init__(
        self,
        bus: Bus,
        pattern: str,
        *,
        capacity: int = 1024,
        bucket: str | None = None,
        ttl: float = CACHE_TTL,
    ) -> None:
        if bus.partitions:
            raise ConfigError("EventCache reads a subject's last event: not on a partitioned bus")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 1e9:
            raise InvalidArgument(f"must be seconds > 0, got {ttl!r}", field="ttl")
        self.bus, self.pattern = bus, check_pattern(pattern)
        self.bucket = bucket or cache_bucket(bus.root)
        self.ttl = float(ttl)
        self.stats = CacheStats()
        self._l1: LRU[tuple[str, str], Any] = LRU(capacity)
        self._l2: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._models: set[tuple[str, str]] = set()  # L1 keys of read models

    @property
    def _js(self) -> JetStreamContext:
        return self.bus.jetstream

    @property
    def _codec(self) -> Codec:
        return bus_codec(self.bus, "use the event cache")

    async def __aenter__(self) -> Self:
        config = cache_config(self.bucket, ttl=self.ttl, replicas=self.bus.replicas)
        self._l2 = await open_snapshots(self._js, config, create=self.bus.provisions)
        await open_snapshots(
            self._js, projections_config(self.bus.root, replicas=self.bus.replicas),
            create=self.bus.provisions,
        )  # fmt: skip
        events = await self._follow(to_wire(self.bus.root, self.pattern), self.bus.stream)
        bucket = projections_bucket(self.bus.root)
        models = await self._follow(f"$KV.{bucket}.projection.>", f"KV_{bucket}")
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(events, self._on_event), name="eventwire-cache-events"),
            loop.create_task(self._run(models, self._on_checkpoint), name="eventwire-cache-models"),
        ]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, subject: str, stream: str) -> _Sub:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        with mapped_nats_errors(f"follow {subject}"):
            return await self._js.subscribe(
                subject, stream=stream, ordered_consumer=True, config=config
            )

    async def _run(self, sub: _Sub, handle: Any) -> None:
        """Hand every message to ``handle``, up to ``_IN_FLIGHT`` at once (their L2 writes
        pipelined, sent in arrival order on the one connection, so a later event's write
        lands last); a failure is logged and L1 cleared (it may be stale from then on)."""
        slots = asyncio.Semaphore(_IN_FLIGHT)
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    with mapped_nats_errors("follow for the event cache"):
                        msg = await sub.next_msg(timeout=None)
                    await slots.acquire()
                    group.create_task(self._one(handle, msg, slots))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _one(self, handle: Any, msg: Msg, slots: asyncio.Semaphore) -> None:
        try:
            await handle(msg)
        except EventwireError as exc:
            log.warning("event cache: invalidation failed (%s); L1 cleared", exc)
            self._l1.clear()
        finally:
            slots.release()

    def _count(self, level: str) -> None:
        setattr(self.stats, level, getattr(self.stats, level) + 1)
        if METRICS is not None:
            METRICS.cache_lookups.labels(self.bucket, level).inc()

    async def _on_event(self, msg: Msg) -> None:
        meta = msg.metadata
        stored = (msg.data, msg.headers, msg.subject, meta.timestamp.timestamp())
        event = self._open(stored)
        if event is None:
            return
        if self._l1.pop(("subject", event.subject)):
            self.stats.invalidated += 1
        await self._write(event, stored)
        self._l1.pop(("subject", event.subject))  # what a read put back meanwhile is stale

    async def _on_checkpoint(self, msg: Msg) -> None:
        name = msg.subject.rsplit(".", 1)[-1]
        for key in [key for key in self._models if key[1].split("\n")[0] == name]:
            self._models.discard(key)
            if self._l1.pop(key):
                self.stats.invalidated += 1

    def _open(self, stored: _Stored) -> Event | None:
        """The verified event, or None (the refusal recorded by the codec)."""
        data, headers, subject, at = stored
        result = self._codec.open(data, headers, subject, at)
        if isinstance(result, Event):
            return result
        self._codec.record(result)
        return None

    async def _write(self, event: Event, stored: _Stored) -> None:
        """Store the signed bytes and headers in L2 under both of the event's keys."""
        assert self._l2 is not None
        data, headers, subject, at = stored
        record = json.dumps(
            {"s": subject, "h": headers or {}, "d": base64.b64encode(data).decode(), "t": at}
        ).encode()
        with mapped_nats_errors(f"write the event cache {self.bucket!r}"):
            try:
                async with asyncio.TaskGroup() as both:  # neither is left running on a failure
                    both.create_task(self._l2.put(self._subject_key(event.subject), record))
                    both.create_task(self._l2.put(self._id_key(event.source, event.id), record))
            except ExceptionGroup as failed:
                raise failed.exceptions[0] from None  # mapped to an EventwireError here
        self.stats.written += 2

    def _subject_key(self, subject: str) -> str:
        return f"subject.{_hash(subject)}"

    def _id_key(self, source: str, event_id: str) -> str:
        return f"id.{seen_key(self.bus.tenant, source, event_id)}"

    async def latest(self, subject: str) -> Event | None:
        """The latest verified event of logical ``subject``: L1, L2, then the stream's last
        message on that subject (None if it has none, or it is refused)."""
        check_subject(subject)
        if not matches(self.pattern, subject):
            detail = f"{subject!r} is not under the cache's pattern {self.pattern!r}"
            raise InvalidArgument(detail, field="subject")
        key = ("subject", subject)
        if (found := self._l1.get(key)) is not None:
            self._count("l1")
            return found  # type: ignore[no-any-return]  # L1 holds events under subject keys
        event = await self._from_l2(self._subject_key(subject), lambda e: e.subject == subject)
        if event is None:
            event = await self._from_stream(subject)
        if event is not None:
            self._l1.put(key, event)
        return event

    async def get(self, source: str, event_id: str) -> Event | None:
        """The verified event ``event_id`` of ``source`` (``tenant/agent``), if either level
        holds it (events enter as they are followed, or read by :meth:`latest`)."""
        if not isinstance(source, str) or not isinstance(event_id, str) or not event_id:
            raise InvalidArgument("source and event_id must be non-empty strings", field="id")
        key = ("id", f"{source}\n{event_id}")
        if (found := self._l1.get(key)) is not None:
            self._count("l1")
            return found  # type: ignore[no-any-return]  # L1 holds events under id keys

        def same(event: Event) -> bool:
            return event.source == source and event.id == event_id

        event = await self._from_l2(self._id_key(source, event_id), same)
        if event is None:
            self._count("misses")
            return None
        self._l1.put(key, event)
        return event

    async def _from_l2(self, key: str, belongs: Any) -> Event | None:
        assert self._l2 is not None
        try:
            with mapped_nats_errors(f"read the event cache {self.bucket!r}"):
                entry = await self._l2.get(key)
        except EventwireError as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyNotFoundError):
                return None
            raise
        stored = _decoded(entry.value or b"")
        event = None if stored is None else self._open(stored)
        if event is None or not belongs(event):
            self._count("refused")
            log.warning("event cache: refused the L2 entry %s (tampered or misplaced)", key)
            return None
        self._count("l2")
        return event

    async def _from_stream(self, subject: str) -> Event | None:
        wire = to_wire(self.bus.root, subject)
        stream = events_stream_name(self.bus.root)
        with mapped_nats_errors(f"read the last event on {wire}"):
            try:
                raw = await self._js.get_msg(stream, subject=wire)
            except nats.js.errors.NotFoundError:
                raw = None
        if raw is None or raw.data is None:
            self._count("misses")
            return None
        at = raw.time.timestamp() if raw.time is not None else None
        stored = (raw.data, raw.headers, raw.subject or wire, at or 0.0)
        event = self._open(stored)
        if event is None:
            self._count("misses")
            return None
        self._count("source")
        with contextlib.suppress(EventwireError):  # a cache that cannot write still reads
            await self._write(event, stored)
        return event

    async def read_model(self, name: str, model: type[A], *, signer: str) -> A | None:
        """Projection ``name``'s read model as of its last checkpoint, restored as ``model``
        (only a checkpoint signed by ``signer``, ``tenant/agent``, is used); L1, then the
        projections bucket. Evicted when the projection writes its next checkpoint."""
        key = ("projection", f"{name}\n{signer}")
        if (found := self._l1.get(key)) is not None:
            self._count("l1")
            return found  # type: ignore[no-any-return]  # L1 holds models under projection keys
        config = projections_config(self.bus.root, replicas=self.bus.replicas)
        bucket = await open_snapshots(self._js, config, create=self.bus.provisions)
        place = SnapshotPlace(self.bus.tenant, self.bus.root, "projection", name, {signer})
        checkpoint = await read_snapshot(bucket, place, self._codec.keyring)
        if checkpoint is None:
            self._count("misses")
            return None
        self._count("source")
        state = model.restore(checkpoint.state)
        self._models.add(key)
        self._l1.put(key, state)
        return state


def _decoded(value: bytes) -> _Stored | None:
    """An L2 record's signed bytes, headers, wire subject and stored time (None if it is
    not one: the entry was tampered with)."""
    try:
        record = json.loads(value)
        data = base64.b64decode(record["d"], validate=True)
        headers, subject, at = record["h"], record["s"], record["t"]
    except (ValueError, KeyError, TypeError):
        return None
    if not (isinstance(headers, dict) and isinstance(subject, str)):
        return None
    if isinstance(at, bool) or not isinstance(at, int | float):
        return None
    return data, {str(k): str(v) for k, v in headers.items()}, subject, float(at)
