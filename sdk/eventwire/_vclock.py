"""Vector clocks for causal order: the signed ``vclock`` claim and a publisher's :class:`Clock`.

An entry counts the events one source (``tenant/agent``) published with its clock. A clock
ticks its own entry on every publish and takes the element-wise maximum of the clocks of
the events its owner handled (:meth:`Clock.observe`), so an event's clock is greater than
the clock of every event that happened before it (Lamport's happened-before), and two
events whose clocks are incomparable are concurrent.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Literal

from ._errors import InvalidArgument, InvalidEvent
from ._event import check_vclock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from ._event import Event

Order = Literal["before", "after", "equal", "concurrent"]


def compare_clocks(a: Mapping[str, int], b: Mapping[str, int]) -> Order:
    """How clock ``a`` relates to clock ``b`` (missing entries count 0)."""
    keys = a.keys() | b.keys()
    less = any(a.get(key, 0) < b.get(key, 0) for key in keys)
    more = any(a.get(key, 0) > b.get(key, 0) for key in keys)
    if less and more:
        return "concurrent"
    if less:
        return "before"
    return "after" if more else "equal"


def merged(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """The element-wise maximum of two clocks."""
    out = dict(a)
    for key, count in b.items():
        out[key] = max(out.get(key, 0), count)
    return out


class Clock:
    """The vector clock of one publishing source, e.g. ``Clock("acme/billing")``.

    Publish with it (``bus.publish(item, identity=..., clock=clock)``: the bus signs the
    next stamp and keeps it once the event is stored) and :meth:`observe` every event the
    owner handles (:class:`~eventwire.CausalOrder` does it when given the clock). Publishes
    with one clock are serialized (the order of one source is its publish order); a publish
    that fails leaves the clock as it was. One clock per source: two processes publishing
    as the same agent need their own agent names to keep causality exact. A clock holds at
    most 64 sources (the claim's bound): publishing with more raises :class:`InvalidEvent`.
    """

    def __init__(self, source: str, entries: Mapping[str, int] | None = None) -> None:
        if not isinstance(source, str) or source.count("/") != 1:
            raise InvalidArgument(f"must be 'tenant/agent', got {source!r}", field="source")
        self.source = source
        self._entries: dict[str, int] = {}
        if entries:
            own = entries.get(source, 0)
            if isinstance(own, bool) or not isinstance(own, int) or own < 0:
                raise InvalidEvent(f"count of {source!r} must be an int >= 0", field="vclock")
            self._entries = check_vclock({**entries, source: own + 1}, source)
            self._entries[source] = own
        self._lock = asyncio.Lock()

    @property
    def entries(self) -> dict[str, int]:
        """A copy of the clock now."""
        return dict(self._entries)

    def observe(self, event: Event) -> None:
        """Merge the clock of an event this source handled (no clock: nothing to merge)."""
        if event.vclock is not None:
            self._entries = merged(self._entries, event.vclock)

    @contextlib.asynccontextmanager
    async def stamping(self, source: str) -> AsyncIterator[dict[str, int]]:
        """The stamp of the next event (own entry + 1), kept if the block succeeds."""
        if source != self.source:
            raise InvalidEvent(f"clock of {self.source!r} used by {source!r}", field="clock")
        async with self._lock:
            stamp = {**self._entries, source: self._entries.get(source, 0) + 1}
            stamp = check_vclock(stamp, source)
            yield stamp
            self._entries = merged(self._entries, stamp)


def stamped(
    clock: Clock | Mapping[str, int] | None, source: str
) -> contextlib.AbstractAsyncContextManager[Mapping[str, int] | None]:
    """The ``vclock`` to sign for ``source``: a :class:`Clock`'s next stamp (kept when the
    block succeeds), a mapping as given (checked when signed), or None."""
    if isinstance(clock, Clock):
        return clock.stamping(source)
    return contextlib.nullcontext(clock)
