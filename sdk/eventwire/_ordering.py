"""Event-time order: a handler wrapper that buffers events and releases them by their
signed ``time`` claim, with bounded out-of-orderness (a watermark).

The wrapper parks each delivery (the consumer's handler call) in a heap keyed by event
time; nothing is acknowledged while parked, so a crash loses nothing: the stream
redelivers what was held. The watermark is the latest event time seen minus
``max_lateness``; events at or below it are released in event-time order (ties: arrival
order) and handed to the handler one at a time. The buffer is bounded: when it holds
``capacity`` events the earliest is released (in order, before the watermark passes it).
A stream quiet for ``idle`` seconds (wall clock) releases everything held. An event older
than one already released is late and follows ``late``: ``"deliver"`` (handled right
after what was released, out of order), ``"drop"`` (acked unhandled) or ``"dead-letter"``
(:class:`Unprocessable`: dead-lettered at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ._errors import InvalidArgument, Unprocessable
from ._ordering_metrics import count_early, count_late

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._event import Event

    Handler = Callable[[Event], Awaitable[None]]

LatePolicy = Literal["deliver", "drop", "dead-letter"]
_LATE = ("deliver", "drop", "dead-letter")


@dataclass
class OrderStats:
    """What an order buffer did: events released in order, released because the buffer
    was full or the stream idle, late ones by policy, redeliveries passed straight on."""

    released: int = 0
    at_capacity: int = 0
    idle_flushes: int = 0
    late_delivered: int = 0
    late_dropped: int = 0
    late_dead_lettered: int = 0
    redelivered: int = 0
    held_max: int = 0
    late_ids: list[str] = field(default_factory=list)


def seconds_of(name: str, value: object, *, zero: bool) -> float:
    """``value`` as a finite number of seconds (> 0, or >= 0 with ``zero``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"must be a number of seconds, got {value!r}", field=name)
    if not (value >= 0 if zero else value > 0) or not value < math.inf:
        raise InvalidArgument(
            f"must be seconds {'>=' if zero else '>'} 0, got {value!r}", field=name
        )
    return float(value)


class Turnstile:
    """Lets released deliveries through one at a time, in the order they were released."""

    def __init__(self) -> None:
        self._issued = 0
        self._next = 0
        self._done: set[int] = set()
        self._waiting: dict[int, asyncio.Future[None]] = {}

    def ticket(self) -> int:
        self._issued += 1
        return self._issued - 1

    async def wait(self, ticket: int) -> None:
        if ticket != self._next:
            self._waiting[ticket] = asyncio.get_running_loop().create_future()
            await self._waiting[ticket]

    def leave(self, ticket: int) -> None:
        """``ticket`` is done (handled, failed or cancelled): let the next one through."""
        self._waiting.pop(ticket, None)
        self._done.add(ticket)
        while self._next in self._done:
            self._done.discard(self._next)
            self._next += 1
        waiter = self._waiting.pop(self._next, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Held:
    __slots__ = ("event", "key", "released")

    def __init__(self, event: Event, key: tuple[float, int]) -> None:
        self.event = event
        self.key = key
        self.released: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def __lt__(self, other: _Held) -> bool:
        return self.key < other.key


class EventTimeOrder:
    """Deliver events in event-time order, tolerating ``max_lateness`` seconds of disorder.

    Wrap a handler and subscribe with ``max_in_flight`` >= ``capacity`` (the consumer's
    handler slots are the buffer)::

        order = EventTimeOrder(max_lateness=5.0, late="dead-letter")
        bus.subscribe("custom.sensor.>", order.wrap(handle), durable="readings",
                      max_in_flight=order.capacity)

    With fewer slots than ``capacity`` the buffer fills the slots and the ``idle`` timer
    releases it. One instance serves one subscription. ``stats`` counts what it did.
    """

    def __init__(
        self,
        *,
        max_lateness: float,
        late: LatePolicy = "deliver",
        capacity: int = 256,
        idle: float = 1.0,
    ) -> None:
        self.max_lateness = seconds_of("max_lateness", max_lateness, zero=True)
        self.idle = seconds_of("idle", idle, zero=False)
        if late not in _LATE:
            raise InvalidArgument(f"must be one of {', '.join(_LATE)}, got {late!r}", field="late")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InvalidArgument(f"must be an int >= 1, got {capacity!r}", field="capacity")
        self.late: LatePolicy = late
        self.capacity = capacity
        self.stats = OrderStats()
        self._heap: list[_Held] = []
        self._arrivals = 0
        self._max_seen = -math.inf
        self._frontier = -math.inf  # event time of the latest released event
        self._last_arrival = time.monotonic()
        self._released: OrderedDict[str, None] = OrderedDict()  # recent ids, for redeliveries
        self._turnstile = Turnstile()

    @property
    def held(self) -> int:
        """Events parked in the buffer now."""
        return len(self._heap)

    @property
    def watermark(self) -> float:
        """Seconds since the epoch: events at or before it are released."""
        return self._max_seen - self.max_lateness

    def flush(self) -> None:
        """Release everything held, in order (e.g. before stopping the subscription, whose
        stop waits for its handlers: else the ``idle`` timer releases them)."""
        self._release(lambda _: True)

    def wrap(self, handler: Handler) -> Handler:
        """``handler``, called in event-time order."""

        async def ordered(event: Event) -> None:
            await self._deliver(event, handler)

        ordered.__qualname__ = getattr(handler, "__qualname__", "handler")
        return ordered

    async def _deliver(self, event: Event, handler: Handler) -> None:
        if event.id in self._released:
            self.stats.redelivered += 1  # its handler failed before: retried as it comes
            await handler(event)
            return
        when = event.time.timestamp()
        self._last_arrival = time.monotonic()
        if when < self._frontier:
            await self._late(event, handler)
            return
        self._arrivals += 1
        held = _Held(event, (when, self._arrivals))
        heapq.heappush(self._heap, held)
        self.stats.held_max = max(self.stats.held_max, len(self._heap))
        self._max_seen = max(self._max_seen, when)
        self._release(lambda first: first.key[0] <= self.watermark)
        if len(self._heap) >= self.capacity:
            self.stats.at_capacity += 1
            count_early("capacity", 1)
            self._release_one()
        await self._in_turn(await self._parked(held), event, handler)

    async def _in_turn(self, ticket: int, event: Event, handler: Handler) -> None:
        """Run ``handler`` once the deliveries released before ``ticket`` were handled."""
        try:
            await self._turnstile.wait(ticket)
            await handler(event)
        finally:
            self._turnstile.leave(ticket)

    async def _parked(self, held: _Held) -> int:
        """Wait until ``held`` is released (its turnstile ticket); release all when idle."""
        try:
            while not held.released.done():
                quiet = time.monotonic() - self._last_arrival
                if quiet >= self.idle:
                    self.stats.idle_flushes += 1
                    count_early("idle", len(self._heap))
                    self._release(lambda _: True)
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(held.released), self.idle - quiet)
        except asyncio.CancelledError:
            self._forget(held)
            raise
        return held.released.result()

    def _forget(self, held: _Held) -> None:
        """A parked delivery was cancelled (the subscription stops): unacked, it comes back."""
        if held.released.done():
            self._turnstile.leave(held.released.result())
        elif held in self._heap:  # released ones stay known: their redelivery is not late
            self._heap.remove(held)
            heapq.heapify(self._heap)

    def _release(self, due: Callable[[_Held], bool]) -> None:
        while self._heap and due(self._heap[0]):
            self._release_one()

    def _release_one(self) -> None:
        held = heapq.heappop(self._heap)
        self._frontier = max(self._frontier, held.key[0])
        self._released[held.event.id] = None
        while len(self._released) > 4 * self.capacity:
            self._released.popitem(last=False)
        self.stats.released += 1
        held.released.set_result(self._turnstile.ticket())

    async def _late(self, event: Event, handler: Handler) -> None:
        count_late(self.late)
        if len(self.stats.late_ids) < 1000:
            self.stats.late_ids.append(event.id)
        if self.late == "drop":
            self.stats.late_dropped += 1
            return
        if self.late == "dead-letter":
            self.stats.late_dead_lettered += 1
            raise Unprocessable(
                f"late event: time {event.time.isoformat()} is before events already delivered "
                f"(max_lateness {self.max_lateness} s)"
            )
        self.stats.late_delivered += 1
        await self._in_turn(self._turnstile.ticket(), event, handler)
