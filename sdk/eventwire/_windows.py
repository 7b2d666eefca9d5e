"""Windows and aggregations for windowed stream processing (pure: no NATS here).

A :class:`Window` assigns each event, by its event time ``t`` (seconds), to windows
``[start, end)``:

- ``Window.tumbling(size)``: the one window ``[k*size, (k+1)*size)`` holding ``t``;
- ``Window.sliding(size, every)``: every window ``[k*every, k*every + size)`` holding ``t``
  (``size / every`` of them, rounded up);
- ``Window.session(gap)``: a key's events closer than ``gap`` to each other share one
  window, from its first event to ``gap`` after its last.

An :class:`Aggregation` folds a window's events into a JSON value: ``count``, ``sum``,
``min``, ``max``, ``avg`` of a numeric data field, or ``reduce`` with a function. A window
closes when the watermark reaches its end; its result is then final.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._errors import InvalidArgument
from ._patterns import seconds

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import timedelta

    from pydantic import JsonValue

    from ._event import Event

__all__ = ["Aggregation", "Window"]

Shape = Literal["tumbling", "sliding", "session"]
MAX_OVERLAP = 1000  # windows one event may belong to (sliding: size / every)


@dataclass(frozen=True, slots=True)
class Window:
    """How events are grouped in time: build one with :meth:`tumbling`, :meth:`sliding`
    or :meth:`session`."""

    shape: Shape
    size: float  # the gap, for sessions
    every: float

    @classmethod
    def tumbling(cls, size: float | timedelta) -> Window:
        """Back-to-back windows of ``size`` seconds."""
        length = seconds(size, field="size")
        return cls("tumbling", length, length)

    @classmethod
    def sliding(cls, size: float | timedelta, every: float | timedelta) -> Window:
        """Windows of ``size`` seconds starting every ``every`` seconds (``every`` <= ``size``)."""
        length, step = seconds(size, field="size"), seconds(every, field="every")
        if step > length:
            raise InvalidArgument(f"must be at most size ({length}), got {step}", field="every")
        if length / step > MAX_OVERLAP:
            detail = f"size / every must be at most {MAX_OVERLAP}, got {length / step:g}"
            raise InvalidArgument(detail, field="every")
        return cls("sliding", length, step)

    @classmethod
    def session(cls, gap: float | timedelta) -> Window:
        """A key's activity: events less than ``gap`` seconds apart share a window."""
        return cls("session", seconds(gap, field="gap"), 0.0)

    def starts(self, at: float) -> list[float]:
        """The starts of the fixed windows holding event time ``at`` (not for sessions)."""
        first = math.floor(at / self.every) * self.every
        found = []
        start = first
        while start > at - self.size:
            found.append(start)
            start -= self.every
        return sorted(found)


Number = int | float


def _number(event: Event, field: str) -> float:
    data = event.data
    value = data.get(field) if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"event {event.id}: data field {field!r} is not a number")
    return float(value)


@dataclass(frozen=True, slots=True)
class Aggregation:
    """What a window computes: build one with :meth:`count`, :meth:`sum`, :meth:`min`,
    :meth:`max`, :meth:`avg` or :meth:`reduce`."""

    name: str
    field: str | None
    initial: JsonValue
    step: Callable[[Any, Event], Any]
    merge: Callable[[Any, Any], Any] | None
    finish: Callable[[Any], JsonValue]

    @staticmethod
    def _field(field: str) -> str:
        if not isinstance(field, str) or not field:
            raise InvalidArgument(f"must be a data field name, got {field!r}", field="field")
        return field

    @classmethod
    def count(cls) -> Aggregation:
        return cls("count", None, 0, lambda n, _: n + 1, lambda a, b: a + b, lambda n: n)

    @classmethod
    def sum(cls, field: str) -> Aggregation:
        name = cls._field(field)
        return cls(
            "sum", name, 0.0, lambda s, e: s + _number(e, name), lambda a, b: a + b, lambda s: s
        )

    @classmethod
    def min(cls, field: str) -> Aggregation:
        name = cls._field(field)
        return cls("min", name, None, lambda m, e: _pick(min, m, _number(e, name)),
                   lambda a, b: _pick(min, a, b), lambda m: m)  # fmt: skip

    @classmethod
    def max(cls, field: str) -> Aggregation:
        name = cls._field(field)
        return cls("max", name, None, lambda m, e: _pick(max, m, _number(e, name)),
                   lambda a, b: _pick(max, a, b), lambda m: m)  # fmt: skip

    @classmethod
    def avg(cls, field: str) -> Aggregation:
        name = cls._field(field)
        return cls(
            "avg", name, [0.0, 0],
            lambda acc, e: [acc[0] + _number(e, name), acc[1] + 1],
            lambda a, b: [a[0] + b[0], a[1] + b[1]],
            lambda acc: acc[0] / acc[1] if acc[1] else None,
        )  # fmt: skip

    @classmethod
    def reduce(
        cls,
        function: Callable[[Any, Event], JsonValue],
        initial: JsonValue,
        *,
        merge: Callable[[Any, Any], JsonValue] | None = None,
    ) -> Aggregation:
        """``function(accumulator, event)`` -> the new accumulator (JSON: it is stored),
        from ``initial``. ``merge(a, b)`` joins two sessions an out-of-order event bridges
        (without it such sessions stay apart)."""
        if not callable(function):
            raise InvalidArgument(f"must be a function, got {function!r}", field="function")
        if merge is not None and not callable(merge):
            raise InvalidArgument(f"must be a function, got {merge!r}", field="merge")
        return cls("reduce", None, initial, function, merge, lambda acc: acc)


def _pick(choose: Callable[[float, float], float], held: float | None, value: float) -> float:
    return value if held is None else choose(held, value)
