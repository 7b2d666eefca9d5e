"""Handler slots shared by subscriptions of different priorities.

The rule: while events of several priorities wait for a slot, slots go to them in the
proportion of their weights (high 16, normal 4, low 1 by default), interleaved smoothly
(nginx's smooth weighted round-robin); within one priority, first come first served. So
under load high-priority events are handled before normal and low ones, and a waiting low
one still gets one slot in every 21 (or 17 against high alone): nobody starves. A priority
with nothing waiting takes nothing from the others; an idle gate admits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from typing import TYPE_CHECKING

from ._errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping


class Priority(enum.StrEnum):
    """How urgent a subscription's events are."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


DEFAULT_WEIGHTS: Mapping[Priority, int] = {Priority.HIGH: 16, Priority.NORMAL: 4, Priority.LOW: 1}


def priority_of(value: str | Priority) -> Priority:
    """A :class:`Priority` from its name; :class:`InvalidArgument` otherwise."""
    try:
        return Priority(value)
    except ValueError:
        names = ", ".join(p.value for p in Priority)
        raise InvalidArgument(f"must be one of {names}, got {value!r}", field="priority") from None


class PriorityGate:
    """``slots`` concurrent handlers, handed out by priority (see the module docstring)."""

    def __init__(self, slots: int, weights: Mapping[Priority, int] = DEFAULT_WEIGHTS) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise InvalidArgument(f"must be an int >= 1, got {slots!r}", field="slots")
        if set(weights) != set(Priority) or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in weights.values()
        ):
            raise InvalidArgument(
                f"needs an int >= 1 for each of high, normal, low, got {dict(weights)!r}",
                field="weights",
            )
        self.slots = slots
        self.weights = dict(weights)
        self._free = slots
        self._waiting: dict[Priority, deque[asyncio.Future[None]]] = {p: deque() for p in Priority}
        self._current: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self.granted: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._granting = False

    @property
    def in_use(self) -> int:
        return self.slots - self._free

    def waiting(self, priority: Priority | None = None) -> int:
        """Callers waiting for a slot (of one priority, or all)."""
        if priority is not None:
            return len(self._waiting[priority])
        return sum(len(q) for q in self._waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, priority: Priority) -> AsyncIterator[None]:
        """Hold one slot for the block."""
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, priority: Priority) -> None:
        if self._free and not self.waiting():
            self._free -= 1
            self.granted[priority] += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[priority].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as it was cancelled: pass the slot on
            elif future in self._waiting[priority]:
                self._waiting[priority].remove(future)
            raise

    def release(self) -> None:
        """Give a slot back. The next waiter is chosen on the loop's next turn, so that the
        caller, if it goes on to wait for another slot, is among those the rule weighs
        (else a busy high-priority subscription would alternate with a low one)."""
        self._free += 1
        if self.waiting() and not self._granting:
            self._granting = True
            asyncio.get_running_loop().call_soon(self._grant)

    def _grant(self) -> None:
        self._granting = False
        while self._free and (priority := self._next()) is not None:
            future = self._waiting[priority].popleft()
            if not future.done():
                self._free -= 1
                self.granted[priority] += 1
                future.set_result(None)

    def _next(self) -> Priority | None:
        """Smooth weighted round-robin over the priorities that have waiters."""
        ready = [p for p in Priority if self._waiting[p]]
        if not ready:
            return None
        for p in ready:
            self._current[p] += self.weights[p]
        chosen = max(ready, key=lambda p: self._current[p])
        self._current[chosen] -= sum(self.weights[p] for p in ready)
        return chosen
