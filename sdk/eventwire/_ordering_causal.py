"""Causal order: a handler wrapper that holds an event until every event it causally
depends on (by its signed ``vclock`` claim) was handled here.

The receiver keeps, per source, how many of its clocked events it has handled (``D``). An
event from source ``j`` with clock ``V`` is ready when ``V[j] == D[j] + 1`` (the sender's
previous events were handled) and ``V[k] <= D[k]`` for every other source ``k`` (what the
sender had seen was handled) -- the causal delivery rule of Birman, Schiper and Stephenson.
``D[j]`` advances when the handler returns, so a failed handler holds its dependents until
its retry succeeds. Nothing is acknowledged while held (a crash loses nothing).

An event held ``timeout`` seconds is counted in ``stats.held_too_long`` and settled by
``on_timeout``: ``"deliver"`` (handled anyway; :meth:`CausalOrder.gap` tells what was
missing) or ``"dead-letter"`` (:class:`Unprocessable`, dead-lettered at once). Either way
the receiver gives up on what was missing (``D`` advances to the event's clock), so one lost
event costs one timeout, not one per dependent; if it arrives later it is handled at once
(``stats.stale``). The state is in memory: a restarted receiver's first clocked event of a
source waits one timeout (then ``D`` catches up). The receiver must see every clocked event
of the sources it orders (subscribe to the subjects they publish with their clocks).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._errors import InvalidArgument, Unprocessable
from ._ordering import seconds_of
from ._ordering_metrics import count_held, count_held_too_long

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from ._event import Event
    from ._vclock import Clock

    Handler = Callable[[Event], Awaitable[None]]

CausalTimeout = Literal["deliver", "dead-letter"]
_POLICIES = ("deliver", "dead-letter")
_GAPS_KEPT = 1000


@dataclass
class CausalStats:
    """What a causal buffer did: events handled, those that waited for a cause, those held
    too long (then forced or dead-lettered), unclocked and stale ones passed straight on."""

    handled: int = 0
    held: int = 0
    held_too_long: int = 0
    forced: int = 0
    dead_lettered: int = 0
    unclocked: int = 0
    stale: int = 0
    waiting_max: int = 0


class CausalOrder:
    """Deliver clocked events in causal order (events without ``vclock`` pass straight on).

    ``clock``: the receiving source's own :class:`Clock`, merged with every event's clock
    before its handler runs, so what the handler publishes with it follows what it handled::

        clock = Clock(identity.principal.source)
        causal = CausalOrder(timeout=10.0, clock=clock)
        bus.subscribe("chat.>", causal.wrap(handle), durable="chat", max_in_flight=64)

    One instance per receiver (it may wrap the handlers of several subscriptions, e.g. the
    partitions of ``subscribe_partitioned``). ``max_in_flight`` bounds what can be held.
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        on_timeout: CausalTimeout = "deliver",
        clock: Clock | None = None,
    ) -> None:
        self.timeout = seconds_of("timeout", timeout, zero=False)
        if on_timeout not in _POLICIES:
            detail = f"must be one of {', '.join(_POLICIES)}, got {on_timeout!r}"
            raise InvalidArgument(detail, field="on_timeout")
        self.on_timeout: CausalTimeout = on_timeout
        self.clock = clock
        self.stats = CausalStats()
        self._handled: dict[str, int] = {}
        self._waiting: dict[asyncio.Future[None], Event] = {}
        self._gaps: OrderedDict[str, dict[str, int]] = OrderedDict()

    @property
    def handled(self) -> dict[str, int]:
        """Per source, how many of its clocked events were handled here (or given up on)."""
        return dict(self._handled)

    @property
    def waiting(self) -> int:
        """Events held now."""
        return len(self._waiting)

    def gap(self, event: Event) -> dict[str, int]:
        """For an event delivered after its timeout: per source, how many of the events it
        depended on were missing (empty for events delivered in causal order)."""
        return dict(self._gaps.get(event.id, {}))

    def wrap(self, handler: Handler) -> Handler:
        """``handler``, called in causal order."""

        async def causal(event: Event) -> None:
            await self._deliver(event, handler)

        causal.__qualname__ = getattr(handler, "__qualname__", "handler")
        return causal

    def _missing(self, clock: Mapping[str, int], source: str) -> dict[str, int]:
        """What ``clock``'s event (from ``source``) waits for: source -> events missing."""
        gap = {}
        for key, count in clock.items():
            needed = count - 1 if key == source else count
            behind = needed - self._handled.get(key, 0)
            if behind > 0:
                gap[key] = behind
        return gap

    async def _deliver(self, event: Event, handler: Handler) -> None:
        clock, source = event.vclock, event.source
        if clock is None:
            self.stats.unclocked += 1
            await self._handle(event, handler)
            return
        if clock[source] <= self._handled.get(source, 0):
            self.stats.stale += 1  # handled before (a redelivery) or given up on
            await self._handle(event, handler)
            return
        if self._missing(clock, source):
            await self._hold(event, clock)
        await self._handle(event, handler)
        self._settle(source, clock[source])

    async def _hold(self, event: Event, clock: Mapping[str, int]) -> None:
        """Wait until ``event`` is ready; at the timeout, give up on what it misses."""
        self.stats.held += 1
        count_held()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[ready] = event
        self.stats.waiting_max = max(self.stats.waiting_max, len(self._waiting))
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.timeout)
            return
        except TimeoutError:
            if ready.done():
                return
        finally:
            self._waiting.pop(ready, None)
        self._timed_out(event, clock)

    def _timed_out(self, event: Event, clock: Mapping[str, int]) -> None:
        self.stats.held_too_long += 1
        count_held_too_long(self.on_timeout)
        gap = self._missing(clock, event.source)
        for key, count in clock.items():
            given_up = count - 1 if key == event.source else count
            self._handled[key] = max(self._handled.get(key, 0), given_up)
        self._wake()
        if self.on_timeout == "dead-letter":
            self.stats.dead_lettered += 1
            self._settle(event.source, clock[event.source])
            raise Unprocessable(f"causal dependencies missing after {self.timeout} s: {gap}")
        self.stats.forced += 1
        self._gaps[event.id] = gap
        while len(self._gaps) > _GAPS_KEPT:
            self._gaps.popitem(last=False)

    async def _handle(self, event: Event, handler: Handler) -> None:
        if self.clock is not None:
            self.clock.observe(event)
        await handler(event)
        self.stats.handled += 1

    def _settle(self, source: str, count: int) -> None:
        """``source``'s event number ``count`` was handled: wake what became ready."""
        self._handled[source] = max(self._handled.get(source, 0), count)
        self._wake()

    def _wake(self) -> None:
        for ready, event in list(self._waiting.items()):
            clock = event.vclock
            assert clock is not None  # only clocked events wait
            if not ready.done() and not self._missing(clock, event.source):
                ready.set_result(None)
                del self._waiting[ready]
