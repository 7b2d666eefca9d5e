"""WindowedStream: keyed windows over the verified events of a subject pattern, on event
time, each window's aggregate published as a signed event once it closes (exactly once:
see ``_patterns_feed`` for the durable consumer, the KV state and the watermark).

A closed window is published on ``custom.window.<name>``, type :data:`WINDOW_CLOSED`,
``causationid`` the window's last event, data::

    {"stream", "key", "aggregate", "start", "end", "value", "count", "late"}

(``start``/``end`` RFC 3339; ``count`` the events in the window; ``late`` how many events
the stream has dropped as late so far). Back-pressure: at most ``batch`` events are
pulled and unacknowledged at once, and the ``sink`` (if any) is awaited before the next
pull, so a slow sink slows the consumer instead of filling memory.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventwire_security._layout import pattern_problem

from ._errors import InvalidArgument
from ._kinds import CustomEvent
from ._patterns_detector import iso
from ._patterns_feed import (
    FeedProcessor,
    FeedSettings,
    KeyedFeed,
    Output,
    Start,
    State,
    default_key,
    signed_time,
)
from ._windows import Aggregation, Window

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pydantic import JsonValue

    from eventwire_security import Identity

    from ._bus import Bus
    from ._event import Event

__all__ = ["WINDOW_CLOSED", "WindowResult", "WindowedStream"]

log = logging.getLogger("eventwire.windows")
WINDOW_CLOSED = "eventwire.window.closed"
# an open window, as stored: [start, end, accumulator, events, last event id]
_START, _END, _ACC, _COUNT, _LAST = range(5)


@dataclass(frozen=True, slots=True)
class WindowResult:
    """A closed window of ``key``: ``[start, end)`` (seconds since the epoch), its
    aggregate ``value`` over ``count`` events; ``late``: events dropped as late so far."""

    stream: str
    key: str
    aggregate: str
    start: float
    end: float
    value: JsonValue
    count: int
    late: int

    def event(self) -> CustomEvent:
        data: dict[str, JsonValue] = {
            "stream": self.stream, "key": self.key, "aggregate": self.aggregate,
            "start": iso(self.start), "end": iso(self.end), "value": self.value,
            "count": self.count, "late": self.late,
        }  # fmt: skip
        return CustomEvent(f"custom.window.{self.stream}", WINDOW_CLOSED, data)

    @property
    def report_key(self) -> str:
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:24]
        return f"window-{self.stream}-{digest}-{self.start:.6f}"


class _WindowEngine:
    def __init__(
        self,
        name: str,
        pattern: str,
        window: Window,
        aggregate: Aggregation,
        sink: Callable[[WindowResult], Awaitable[None]] | None,
    ) -> None:
        self.name, self.pattern, self.window, self.aggregate = name, pattern, window, aggregate
        self.sink = sink
        self.late: Callable[[], int] = lambda: 0
        self.unusable = 0  # events the aggregate could not take (a missing field...)

    def subjects(self) -> list[str]:
        return [self.pattern]

    def fresh(self) -> State:
        return {"open": []}

    def _opened(self, start: float, end: float) -> list[Any]:
        return [start, end, copy.deepcopy(self.aggregate.initial), 0, None]

    def feed(self, key: str, state: State, event: Event, at: float) -> list[Output]:
        windows: list[list[Any]] = state["open"]
        if self.window.shape == "session":
            targets = self._session(windows, at)
        else:
            held = {float(w[_START]): w for w in windows}
            targets = [
                held.get(start) or self._opened(start, start + self.window.size)
                for start in self.window.starts(at)
            ]
        try:
            folded = [self.aggregate.step(w[_ACC], event) for w in targets]
        except Exception as exc:
            self.unusable += 1
            log.warning("window %s: event %s not aggregated: %s", self.name, event.id, exc)
            return []
        for target, acc in zip(targets, folded, strict=True):
            target[_ACC], target[_COUNT], target[_LAST] = acc, target[_COUNT] + 1, event.id
            if all(target is not w for w in windows):
                windows.append(target)
        return []

    def _session(self, windows: list[list[Any]], at: float) -> list[list[Any]]:
        """The session ``at`` extends (merging the ones it bridges, when possible)."""
        gap = self.window.size
        near = [w for w in windows if w[_START] - gap <= at < w[_END]]
        if not near:
            return [self._opened(at, at + gap)]
        first = near[0]
        if self.aggregate.merge is not None:
            for other in near[1:]:
                first[_ACC] = self.aggregate.merge(first[_ACC], other[_ACC])
                first[_COUNT] += other[_COUNT]
                first[_START] = min(first[_START], other[_START])
                first[_END] = max(first[_END], other[_END])
                windows.remove(other)
        first[_START], first[_END] = min(first[_START], at), max(first[_END], at + gap)
        return [first]

    def advance(self, key: str, state: State, watermark: float) -> list[Output]:
        windows: list[list[Any]] = state["open"]
        closed = sorted((w for w in windows if w[_END] <= watermark), key=lambda w: w[_START])
        state["open"] = [w for w in windows if w[_END] > watermark]
        outputs = []
        for w in closed:
            result = WindowResult(
                self.name, key, self.aggregate.name, float(w[_START]), float(w[_END]),
                self.aggregate.finish(w[_ACC]), int(w[_COUNT]), self.late(),
            )  # fmt: skip
            outputs.append(Output(result.event(), result.report_key, w[_LAST], None, result))
        return outputs

    def deadline(self, state: State) -> float | None:
        return min((float(w[_END]) for w in state["open"]), default=None)

    def idle(self, state: State) -> bool:
        return not state["open"]

    async def emitted(self, outputs: list[Output]) -> None:
        if self.sink is None:
            return
        for output in outputs:
            assert isinstance(output.detail, WindowResult)
            await self.sink(output.detail)


class WindowedStream(FeedProcessor):
    """Aggregate the events on ``pattern`` per key in ``window`` s with ``aggregate``.

    ``async with WindowedStream(bus, "custom.sensor.>", window=Window.tumbling(60),
    aggregate=Aggregation.avg("celsius"), identity=..., name="temps")``: a durable consumer
    (named after ``name``); each closed window is published as a signed event (see the
    module's documentation), then given to ``sink`` (awaited: a slow sink slows the
    pull; called again for the same window after a crash, so make it idempotent).
    ``key``, ``event_time``, ``lateness``, ``idle``, ``batch``, ``start``, ``ack_wait`` as for
    :class:`~eventwire.PatternDetector`; events older than the watermark are counted in
    ``counters.late`` and dropped, those the aggregate cannot take in ``unusable``.
    """

    def __init__(  # noqa: PLR0913 - keywords, each with a default
        self,
        bus: Bus,
        pattern: str,
        *,
        window: Window,
        aggregate: Aggregation,
        identity: Identity,
        name: str,
        key: Callable[[Event], str] = default_key,
        event_time: Callable[[Event], float] = signed_time,
        lateness: float = 0.0,
        idle: float | None = 2.0,
        batch: int = 64,
        start: Start = "all",
        ack_wait: float = 30.0,
        sink: Callable[[WindowResult], Awaitable[None]] | None = None,
    ) -> None:
        problem = pattern_problem(pattern, families=True)
        if problem is not None:
            raise InvalidArgument(problem, field="pattern")
        if not isinstance(window, Window):
            raise InvalidArgument(f"must be a Window, got {window!r}", field="window")
        if not isinstance(aggregate, Aggregation):
            raise InvalidArgument(f"must be an Aggregation, got {aggregate!r}", field="aggregate")
        if sink is not None and not callable(sink):
            raise InvalidArgument("must be an async function of a WindowResult", field="sink")
        settings = FeedSettings(
            name=name, kind="window", identity=identity, key=key, event_time=event_time,
            lateness=lateness, idle=idle, batch=batch, start=start, ack_wait=ack_wait,
        )  # fmt: skip
        self.name = name
        self._engine = _WindowEngine(name, pattern, window, aggregate, sink)
        self._feed = KeyedFeed(bus, self._engine, settings)
        self._engine.late = lambda: self._feed.counters.late

    @property
    def unusable(self) -> int:
        """Events the aggregate could not take (e.g. the field is missing or not a number)."""
        return self._engine.unusable

    @property
    def open_windows(self) -> int:
        """How many windows are open, over all keys (the state kept in memory and KV)."""
        return sum(len(entry.state["open"]) for entry in self._feed.states.values())
