"""Choosing the target of a direct call among the agents that have a capability.

Strategies: ``least-loaded`` (lowest utilisation, then lowest latency; ties rotate),
``round-robin``, ``random``, or a function of the candidates. Candidates whose circuit is
open are skipped; a half-open one is eligible (the breaker admits its probe calls). Every
choice is explained in one debug log line (logger ``eventwire.routing``) and in
:attr:`Choice.reason`.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ._breaker import CircuitOpen, CircuitState
from ._errors import InvalidArgument, NoResponders

log = logging.getLogger("eventwire.routing")


class Strategy(enum.StrEnum):
    """How :meth:`Chooser.choose` picks one target among several."""

    LEAST_LOADED = "least-loaded"
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"


@dataclass(frozen=True, slots=True)
class Load:
    """An agent instance's load as it reports it in its registry heartbeat.

    ``in_flight`` handlers running, ``queue_depth`` events pulled and waiting, ``capacity``
    its ``max_in_flight``, ``latency_ms`` the recent mean handling time."""

    in_flight: int = 0
    queue_depth: int = 0
    capacity: int = 1
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("in_flight", "queue_depth", "capacity", "latency_ms"):
            value = getattr(self, name)
            number = int if name != "latency_ms" else (int, float)
            if isinstance(value, bool) or not isinstance(value, number) or not 0 <= value < 1e9:
                raise InvalidArgument(f"must be a number in [0, 1e9), got {value!r}", field=name)

    @property
    def utilisation(self) -> float:
        """Work held per handler slot: 0 idle, 1 every slot busy, above 1 a queue."""
        return (self.in_flight + self.queue_depth) / max(1, self.capacity)


class LoadMeter:
    """An agent's own load: handlers running now, and a moving average of how long they
    take (each new duration weighs ``alpha``). Reported in its registry heartbeat."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.in_flight = 0
        self.latency_ms = 0.0
        self._alpha = alpha

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count the block as one handler running; its duration updates the average."""
        started = time.perf_counter()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            ms = (time.perf_counter() - started) * 1000
            average = self.latency_ms
            self.latency_ms = ms if average == 0 else average + self._alpha * (ms - average)

    def load(self, capacity: int, queue_depth: int = 0) -> Load:
        return Load(self.in_flight, queue_depth, max(1, capacity), min(self.latency_ms, 1e8))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A possible target: an agent (direct calls address an agent; its instances share the
    work) with its aggregated load and its circuit state."""

    agent: str
    load: Load = field(default_factory=Load)
    circuit: CircuitState = CircuitState.CLOSED
    retry_in: float | None = None  # seconds until an open circuit admits a probe


@dataclass(frozen=True, slots=True)
class Choice:
    """The chosen candidate, why, and which candidates were skipped."""

    candidate: Candidate
    reason: str
    skipped: tuple[Candidate, ...] = ()

    @property
    def agent(self) -> str:
        return self.candidate.agent


StrategyFunction = Callable[[Sequence[Candidate]], Candidate | str]
"""A user strategy: given the eligible candidates, return one (or its agent name)."""


class NobodyServing(NoResponders):
    """No live agent has the capability asked for. ``capability`` names it."""

    def __init__(self, capability: str, detail: str = "no live agent has this capability") -> None:
        super().__init__(detail, target=f"capability {capability}")
        self.capability = capability


def strategy_of(
    value: str | Strategy | StrategyFunction,
) -> Strategy | StrategyFunction:
    """A :class:`Strategy` from its name, or the user's function; else InvalidArgument."""
    if isinstance(value, Strategy) or callable(value):
        return value
    try:
        return Strategy(value)
    except ValueError:
        names = ", ".join(s.value for s in Strategy)
        raise InvalidArgument(
            f"unknown strategy {value!r}: use one of {names} or a function", field="strategy"
        ) from None


class Chooser:
    """Picks targets with one strategy; keeps the round-robin position between calls."""

    def __init__(
        self,
        strategy: str | Strategy | StrategyFunction = Strategy.LEAST_LOADED,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.strategy = strategy_of(strategy)
        self._rng = rng or random.Random()
        self._turn = itertools.count()

    def choose(self, capability: str, candidates: Sequence[Candidate]) -> Choice:
        """One of ``candidates`` whose circuit is not open; :class:`NobodyServing` if there
        is none at all, :class:`CircuitOpen` if every one is open."""
        if not candidates:
            raise NobodyServing(capability)
        ordered = sorted(candidates, key=lambda c: c.agent)
        skipped = tuple(c for c in ordered if c.circuit is CircuitState.OPEN)
        eligible = [c for c in ordered if c.circuit is not CircuitState.OPEN]
        if not eligible:
            retry_in = min((c.retry_in or 0.0) for c in skipped)
            raise CircuitOpen(f"capability {capability}", retry_in=retry_in)
        chosen, why = self._pick(eligible)
        reason = f"{why}; {len(eligible)} eligible"
        if skipped:
            reason += f", skipped (circuit open): {', '.join(c.agent for c in skipped)}"
        log.debug("capability %s: chose %s (%s)", capability, chosen.agent, reason)
        return Choice(chosen, reason, skipped)

    def _pick(self, eligible: list[Candidate]) -> tuple[Candidate, str]:
        strategy = self.strategy
        if strategy is Strategy.ROUND_ROBIN:
            return eligible[next(self._turn) % len(eligible)], "round-robin"
        if strategy is Strategy.RANDOM:
            return self._rng.choice(eligible), "random"
        if strategy is Strategy.LEAST_LOADED:
            return self._least_loaded(eligible)
        return _by_function(strategy, eligible)

    def _least_loaded(self, eligible: list[Candidate]) -> tuple[Candidate, str]:
        def score(c: Candidate) -> tuple[float, float]:
            return (c.load.utilisation, c.load.latency_ms)

        best = min(score(c) for c in eligible)
        tied = [c for c in eligible if score(c) == best]
        chosen = tied[next(self._turn) % len(tied)]
        others = ", ".join(
            f"{c.agent}={c.load.utilisation:.2f}" for c in eligible if c is not chosen
        )
        why = f"least-loaded: utilisation {best[0]:.2f}, latency {best[1]:.0f} ms"
        return chosen, why + (f" (others: {others})" if others else "")


def _by_function(function: StrategyFunction, eligible: list[Candidate]) -> tuple[Candidate, str]:
    result = function(tuple(eligible))
    name = result.agent if isinstance(result, Candidate) else result
    for candidate in eligible:
        if candidate.agent == name:
            return candidate, f"strategy function {getattr(function, '__name__', function)!r}"
    raise InvalidArgument(
        f"the strategy function returned {result!r}, which is not one of the eligible "
        f"candidates ({', '.join(c.agent for c in eligible)})",
        field="strategy",
    )
