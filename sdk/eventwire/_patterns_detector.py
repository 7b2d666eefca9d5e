"""PatternDetector: complex event patterns over the verified events of a bus, per key,
on event time, exactly once per match, resuming after a restart (see ``_patterns_feed``).

A match is published as a signed event (``bus.publish_report``) on
``custom.pattern.<detector>.<pattern>``, type :data:`MATCHED`, whose ``causationid`` is
the last matched event, ``correlationid`` the key (when it fits an id), and whose data is::

    {"detector", "pattern", "key", "events": [ids, in order], "start", "end"}

(``start``/``end``: RFC 3339 event times of the first and last matched event; for an
absence, ``end`` is the deadline that passed). Its ``Nats-Msg-Id`` is derived from the
detector, the pattern and the matched ids, so a match found again after a crash is
stored once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._errors import InvalidArgument
from ._event import MAX_ID_CHARS
from ._kinds import CustomEvent
from ._patterns import Match, Pattern, Seen
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
from ._subjects import check_token

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from pydantic import JsonValue

    from eventwire_security import Identity

    from ._bus import Bus
    from ._event import Event

__all__ = ["MATCHED", "PatternDetector", "PatternMatch"]

MATCHED = "eventwire.pattern.matched"


def iso(at: float) -> str:
    """Event time ``at`` (seconds since the epoch) as RFC 3339 UTC."""
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class PatternMatch:
    """One match of ``pattern`` for ``key``: the matched events' ids in order, the event
    time of the first and of the last (seconds since the epoch)."""

    detector: str
    pattern: str
    key: str
    event_ids: tuple[str, ...]
    start: float
    end: float

    @property
    def subject(self) -> str:
        return f"custom.pattern.{self.detector}.{self.pattern}"

    def event(self) -> CustomEvent:
        data: dict[str, JsonValue] = {
            "detector": self.detector, "pattern": self.pattern, "key": self.key,
            "events": list(self.event_ids), "start": iso(self.start), "end": iso(self.end),
        }  # fmt: skip
        return CustomEvent(self.subject, MATCHED, data)

    @property
    def report_key(self) -> str:
        digest = hashlib.sha256("\n".join(self.event_ids).encode()).hexdigest()[:32]
        return f"pattern-{self.detector}-{self.pattern}-{digest}"


class _PatternEngine:
    """The engine a :class:`KeyedFeed` runs: every named pattern on each key's state."""

    def __init__(
        self,
        name: str,
        patterns: Mapping[str, Pattern],
        on_match: Callable[[PatternMatch], Awaitable[None]] | None,
    ) -> None:
        self.name, self.patterns, self.on_match = name, patterns, on_match

    def subjects(self) -> list[str]:
        return [subject for pattern in self.patterns.values() for subject in pattern.subjects()]

    def fresh(self) -> State:
        return {name: pattern.fresh() for name, pattern in self.patterns.items()}

    def _outputs(self, pattern: str, key: str, found: list[Match]) -> list[Output]:
        outputs = []
        for match in found:
            found_match = PatternMatch(self.name, pattern, key, match.ids, match.start, match.end)
            correlation = key if len(key) <= MAX_ID_CHARS else None
            outputs.append(
                Output(
                    found_match.event(),
                    found_match.report_key,
                    match.ids[-1],
                    correlation,
                    found_match,
                )
            )
        return outputs

    def feed(self, key: str, state: State, event: Event, at: float) -> list[Output]:
        seen = Seen(event.id, event.subject, event.data, at)
        outputs = []
        for name, pattern in self.patterns.items():
            outputs += self._outputs(name, key, pattern.feed(state[name], seen))
        return outputs

    def advance(self, key: str, state: State, watermark: float) -> list[Output]:
        outputs = []
        for name, pattern in self.patterns.items():
            outputs += self._outputs(name, key, pattern.advance(state[name], watermark))
        return outputs

    def deadline(self, state: State) -> float | None:
        times = [pattern.deadline(state[name]) for name, pattern in self.patterns.items()]
        known = [time for time in times if time is not None]
        return min(known) if known else None

    def idle(self, state: State) -> bool:
        return all(pattern.idle(state[name]) for name, pattern in self.patterns.items())

    async def emitted(self, outputs: list[Output]) -> None:
        if self.on_match is None:
            return
        for output in outputs:
            assert isinstance(output.detail, PatternMatch)
            await self.on_match(output.detail)


def _checked_patterns(patterns: Mapping[str, Pattern]) -> dict[str, Pattern]:
    if not hasattr(patterns, "items") or not patterns:
        raise InvalidArgument("must name at least one pattern: {name: pattern}", field="patterns")
    checked = {}
    for name, pattern in patterns.items():
        check_token(name, field="patterns")
        if not isinstance(pattern, Pattern):
            raise InvalidArgument(f"{name!r} is not a pattern: {pattern!r}", field="patterns")
        checked[name] = pattern
    return checked


class PatternDetector(FeedProcessor):
    """Detect ``patterns`` ({name: pattern}) in the events of ``bus``, as ``name``.

    ``async with PatternDetector(bus, {"brute-force": ...}, identity=..., name="fraud")``:
    a durable consumer of every subject the patterns read; state per ``key`` (default: the
    partition key, else the correlation id) on event time (``event_time``, default the
    signed ``time`` claim), stored in KV, signed as ``identity``; matches published signed
    as ``identity`` (see the module's documentation), then given to ``on_match`` (called
    again for a match found again after a crash: make it idempotent). ``lateness``: seconds
    of out-of-order arrival tolerated (older events are counted late and dropped);
    ``idle``: seconds without any event after which the watermark follows the wall clock
    (absences fire although no later event comes; None: only later events move it).
    ``batch``: events pulled and held at most at once. ``start``: a new detector reads
    ``"all"`` stored events or only ``"new"`` ones. ``ack_wait``: seconds after which the
    events a crashed detector held are delivered again.
    """

    def __init__(  # noqa: PLR0913 - keywords, each with a default
        self,
        bus: Bus,
        patterns: Mapping[str, Pattern],
        *,
        identity: Identity,
        name: str,
        key: Callable[[Event], str] = default_key,
        event_time: Callable[[Event], float] = signed_time,
        lateness: float = 0.0,
        idle: float | None = 2.0,
        batch: int = 64,
        start: Start = "all",
        ack_wait: float = 30.0,
        on_match: Callable[[PatternMatch], Awaitable[None]] | None = None,
    ) -> None:
        settings = FeedSettings(
            name=name, kind="pattern", identity=identity, key=key, event_time=event_time,
            lateness=lateness, idle=idle, batch=batch, start=start, ack_wait=ack_wait,
        )  # fmt: skip
        if on_match is not None and not callable(on_match):
            raise InvalidArgument("must be an async function of a PatternMatch", field="on_match")
        engine = _PatternEngine(name, _checked_patterns(patterns), on_match)
        self.name = name
        self._feed = KeyedFeed(bus, engine, settings)

    @property
    def active_keys(self) -> int:
        """How many keys hold a partial match (kept in memory and in KV)."""
        return len(self._feed.states)
