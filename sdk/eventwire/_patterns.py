"""Complex event patterns: typed, composable matchers over verified events of one key.

A pattern is a tree of :class:`Step` (one event: a subject pattern and an optional
predicate on its data), :class:`Sequence` (parts one after another within a window),
:class:`Absence` (a part not followed by another within a window) and :class:`Threshold`
(at least N matches of a part within a sliding window). Every node works on event time
(seconds), keeps its state as plain JSON (so a detector can store it in KV and resume
after a restart), and reports :class:`Match` values: the ids of the matched events, in
order, with the event time of the first and the last.

This module is pure: it knows nothing of NATS. :class:`~eventwire.PatternDetector` feeds
it the verified events of each key and advances it with the watermark.

Semantics, precisely:

- ``Step``: every event on a matching subject whose data passes ``where`` is a match of
  its own (a ``where`` that raises counts as no match, and is logged).
- ``Threshold(part, at_least=n, within=w)``: fires when ``n`` matches of ``part`` fall
  within ``w`` seconds (from the first one's start to the last one's end), then counts
  again from zero: ``n`` failures fire once, ``2n`` fire twice.
- ``Sequence(p1, p2, ..., within=w)``: ``p1`` then ``p2`` ... each part starting at or
  after the previous one ended, the whole within ``w`` seconds. A part after the first
  only sees events after the previous part matched; for each part at most one partial
  match waits (a newer one replaces an older one waiting at the same part).
- ``Absence(part, not_followed_by=other, within=w)``: fires for a match of ``part`` when
  no match of ``other`` starts at or after it ended and ends within ``w`` seconds of it,
  once the watermark has passed that deadline (time must pass: the detector's watermark).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from eventwire_security._layout import matches, pattern_problem

from ._errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic import JsonValue

__all__ = ["Absence", "Match", "Pattern", "Seen", "Sequence", "Step", "Threshold", "seconds"]

log = logging.getLogger("eventwire.patterns")
State = dict[str, Any]  # a node's state: JSON (lists, dicts, strings and numbers)
MAX_WITHIN = 366 * 24 * 3600.0
MAX_COUNT = 100_000


def seconds(value: object, *, field: str) -> float:
    """A window length: a number of seconds or a timedelta, > 0 and at most a year."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"must be seconds or a timedelta, got {value!r}", field=field)
    if not 0 < value <= MAX_WITHIN or not math.isfinite(value):
        raise InvalidArgument(f"must be > 0 and at most a year, got {value!r}", field=field)
    return float(value)


def count(value: object, *, field: str) -> int:
    """A count from 1 to :data:`MAX_COUNT`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise InvalidArgument(f"must be an int from 1 to {MAX_COUNT}, got {value!r}", field=field)
    return value


@dataclass(frozen=True, slots=True)
class Seen:
    """One verified event as a pattern sees it: its id, logical subject, data and event time."""

    id: str
    subject: str
    data: JsonValue
    at: float


@dataclass(frozen=True, slots=True)
class Match:
    """A match: the matched events' ids in order, the first one's time and the last one's."""

    ids: tuple[str, ...]
    start: float
    end: float

    def dump(self) -> list[Any]:
        return [list(self.ids), self.start, self.end]

    @classmethod
    def load(cls, value: list[Any]) -> Match:
        ids, start, end = value
        return cls(tuple(ids), float(start), float(end))

    def then(self, later: Match) -> Match:
        return Match(self.ids + later.ids, self.start, later.end)


class Pattern(ABC):
    """A node of a pattern tree (see the module's documentation for each kind)."""

    @abstractmethod
    def subjects(self) -> list[str]:
        """The subject patterns this pattern reads."""

    @abstractmethod
    def fresh(self) -> State:
        """The state of a key that has seen nothing."""

    @abstractmethod
    def feed(self, state: State, event: Seen) -> list[Match]:
        """Take one event of this key (not older than the watermark); the matches it completes."""

    @abstractmethod
    def advance(self, state: State, watermark: float) -> list[Match]:
        """Every event up to ``watermark`` has been seen: the matches that time completes;
        forget what can no longer match."""

    @abstractmethod
    def deadline(self, state: State) -> float | None:
        """The earliest watermark at which :meth:`advance` would change ``state``."""

    @abstractmethod
    def idle(self, state: State) -> bool:
        """Whether ``state`` holds nothing (the key's state can be dropped)."""


def _part(value: object, field: str) -> Pattern:
    if not isinstance(value, Pattern):
        raise InvalidArgument(f"must be a pattern (Step, Sequence...), got {value!r}", field=field)
    return value


def _earliest(*times: float | None) -> float | None:
    known = [time for time in times if time is not None]
    return min(known) if known else None


class Step(Pattern):
    """One event on a subject matching ``subject`` (NATS wildcards) whose data passes
    ``where`` (default: any)."""

    def __init__(self, subject: str, where: Callable[[JsonValue], bool] | None = None) -> None:
        problem = pattern_problem(subject, families=True)
        if problem is not None:
            raise InvalidArgument(problem, field="subject")
        if where is not None and not callable(where):
            raise InvalidArgument(f"must be a function of the data, got {where!r}", field="where")
        self.subject = subject
        self.where = where

    def __repr__(self) -> str:
        return f"Step({self.subject!r})"

    def subjects(self) -> list[str]:
        return [self.subject]

    def fresh(self) -> State:
        return {}

    def feed(self, state: State, event: Seen) -> list[Match]:
        if not matches(self.subject, event.subject):
            return []
        if self.where is not None:
            try:
                accepted = bool(self.where(event.data))
            except Exception:
                log.warning("%r: where raised on event %s", self, event.id, exc_info=True)
                return []
            if not accepted:
                return []
        return [Match((event.id,), event.at, event.at)]

    def advance(self, state: State, watermark: float) -> list[Match]:
        return []

    def deadline(self, state: State) -> float | None:
        return None

    def idle(self, state: State) -> bool:
        return True


class Threshold(Pattern):
    """At least ``at_least`` matches of ``part`` within a sliding window of ``within``
    seconds; after firing it counts again from zero."""

    def __init__(self, part: Pattern, *, at_least: int, within: float | timedelta) -> None:
        self.part = _part(part, "part")
        self.at_least = count(at_least, field="at_least")
        self.within = seconds(within, field="within")

    def __repr__(self) -> str:
        return f"Threshold({self.part!r}, at_least={self.at_least}, within={self.within})"

    def subjects(self) -> list[str]:
        return self.part.subjects()

    def fresh(self) -> State:
        return {"part": self.part.fresh(), "seen": []}

    def _add(self, state: State, found: list[Match]) -> list[Match]:
        fired = []
        for match in found:
            kept = [Match.load(m) for m in state["seen"]]
            kept = [m for m in kept if m.start >= match.end - self.within] + [match]
            if len(kept) >= self.at_least:
                combined = kept[0]
                for later in kept[1:]:
                    combined = combined.then(later)
                fired.append(combined)
                kept = []
            state["seen"] = [m.dump() for m in kept]
        return fired

    def feed(self, state: State, event: Seen) -> list[Match]:
        return self._add(state, self.part.feed(state["part"], event))

    def advance(self, state: State, watermark: float) -> list[Match]:
        fired = self._add(state, self.part.advance(state["part"], watermark))
        horizon = watermark - self.within
        state["seen"] = [m for m in state["seen"] if float(m[1]) >= horizon]
        return fired

    def deadline(self, state: State) -> float | None:
        oldest = min((float(m[1]) for m in state["seen"]), default=None)
        mine = None if oldest is None else oldest + self.within
        return _earliest(mine, self.part.deadline(state["part"]))

    def idle(self, state: State) -> bool:
        return not state["seen"] and self.part.idle(state["part"])


class Sequence(Pattern):
    """``parts`` one after another, the whole within ``within`` seconds."""

    def __init__(self, *parts: Pattern, within: float | timedelta) -> None:
        if len(parts) < 2:
            raise InvalidArgument(f"needs at least 2 parts, got {len(parts)}", field="parts")
        self.parts = [_part(part, f"parts[{index}]") for index, part in enumerate(parts)]
        self.within = seconds(within, field="within")

    def __repr__(self) -> str:
        return f"Sequence({', '.join(map(repr, self.parts))}, within={self.within})"

    def subjects(self) -> list[str]:
        return [subject for part in self.parts for subject in part.subjects()]

    def fresh(self) -> State:
        # "waiting"[i]: the partial match waiting for part i (None for part 0: never waits)
        parts = [part.fresh() for part in self.parts]
        return {"parts": parts, "waiting": [None] * len(self.parts)}

    def _wait(self, state: State, index: int, partial: Match | None) -> None:
        state["waiting"][index] = None if partial is None else partial.dump()
        state["parts"][index] = self.parts[index].fresh()

    def _step(self, state: State, index: int, found: list[Match]) -> list[Match]:
        """Part ``index`` matched: extend the partial match waiting for it."""
        fired: list[Match] = []
        for match in found:
            if index == 0:
                self._wait(state, 1, match)
                continue
            waiting = state["waiting"][index]
            if waiting is None:
                continue
            partial = Match.load(waiting)
            if match.end - partial.start > self.within:
                self._wait(state, index, None)  # too late: this partial match is over
                continue
            if match.start < partial.end:
                continue  # overlaps what came before
            self._wait(state, index, None)
            if index == len(self.parts) - 1:
                fired.append(partial.then(match))
            else:
                self._wait(state, index + 1, partial.then(match))
        return fired

    def feed(self, state: State, event: Seen) -> list[Match]:
        fired: list[Match] = []
        for index in range(len(self.parts) - 1, -1, -1):  # last first: one step per event
            if index and state["waiting"][index] is None:
                continue
            found = self.parts[index].feed(state["parts"][index], event)
            fired += self._step(state, index, found)
        return fired

    def advance(self, state: State, watermark: float) -> list[Match]:
        fired: list[Match] = []
        for index in range(len(self.parts) - 1, -1, -1):
            waiting = state["waiting"][index]
            if index and waiting is None:
                continue
            found = self.parts[index].advance(state["parts"][index], watermark)
            fired += self._step(state, index, found)
            waiting = state["waiting"][index]
            if index and waiting is not None and float(waiting[1]) + self.within < watermark:
                self._wait(state, index, None)
        return fired

    def deadline(self, state: State) -> float | None:
        times: list[float | None] = []
        for index, part in enumerate(self.parts):
            waiting = state["waiting"][index]
            if index and waiting is None:
                continue
            times.append(part.deadline(state["parts"][index]))
            if waiting is not None:
                times.append(float(waiting[1]) + self.within)
        return _earliest(*times)

    def idle(self, state: State) -> bool:
        waiting = any(partial is not None for partial in state["waiting"])
        return not waiting and self.parts[0].idle(state["parts"][0])


class Absence(Pattern):
    """A match of ``part`` not followed by a match of ``not_followed_by`` within
    ``within`` seconds; fires once the watermark passes the deadline."""

    def __init__(
        self, part: Pattern, *, not_followed_by: Pattern, within: float | timedelta
    ) -> None:
        self.part = _part(part, "part")
        self.other = _part(not_followed_by, "not_followed_by")
        self.within = seconds(within, field="within")

    def __repr__(self) -> str:
        return f"Absence({self.part!r}, not_followed_by={self.other!r}, within={self.within})"

    def subjects(self) -> list[str]:
        return self.part.subjects() + self.other.subjects()

    def fresh(self) -> State:
        return {"part": self.part.fresh(), "other": self.other.fresh(), "pending": []}

    def _cancel(self, state: State, found: list[Match]) -> None:
        for other in found:
            state["pending"] = [
                dumped
                for dumped in state["pending"]
                if not (Match.load(dumped).end <= other.start
                        and other.end <= Match.load(dumped).end + self.within)
            ]  # fmt: skip

    def _pend(self, state: State, found: list[Match]) -> None:
        state["pending"] += [match.dump() for match in found]

    def feed(self, state: State, event: Seen) -> list[Match]:
        self._cancel(state, self.other.feed(state["other"], event))
        self._pend(state, self.part.feed(state["part"], event))
        return []

    def advance(self, state: State, watermark: float) -> list[Match]:
        self._cancel(state, self.other.advance(state["other"], watermark))
        self._pend(state, self.part.advance(state["part"], watermark))
        fired, kept = [], []
        for dumped in state["pending"]:
            match = Match.load(dumped)
            if match.end + self.within < watermark:
                fired.append(Match(match.ids, match.start, match.end + self.within))
            else:
                kept.append(dumped)
        state["pending"] = kept
        return fired

    def deadline(self, state: State) -> float | None:
        mine = min((float(m[2]) + self.within for m in state["pending"]), default=None)
        return _earliest(
            mine, self.part.deadline(state["part"]), self.other.deadline(state["other"])
        )

    def idle(self, state: State) -> bool:
        return (
            not state["pending"]
            and self.part.idle(state["part"])
            and self.other.idle(state["other"])
        )
