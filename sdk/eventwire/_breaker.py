"""Circuit breakers and call timeouts for direct calls: value objects and a small state machine.

A breaker is closed while calls succeed. It opens after ``consecutive_failures`` failures in
a row, or when at least ``min_calls`` calls inside the last ``window`` seconds failed at a
rate of ``failure_rate`` or more. While open, calls fail fast with :class:`CircuitOpen`.
After ``open_for`` seconds it is half-open: up to ``half_open_calls`` probe calls go
through; ``close_after`` successful probes close it, one failed probe opens it again.
Time comes from an injectable clock (``time.monotonic`` by default), so tests step it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import ConfigError, InvalidArgument, RequestFailed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

_BUCKETS = 10  # the failure-rate window is kept as this many time buckets


class CircuitState(enum.StrEnum):
    """Where a breaker is: ``closed`` (calls flow), ``open`` (calls fail fast),
    ``half-open`` (a few probe calls decide)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitOpen(RequestFailed):
    """A call was refused without being sent: the target's circuit is open (or half-open with
    its probes taken). ``retry_in`` is the number of seconds until the next probe is allowed."""

    def __init__(self, target: str, *, retry_in: float) -> None:
        super().__init__(f"circuit open, next probe in {retry_in:.1f}s", target=target)
        self.retry_in = retry_in


def _check(policy: object, checks: dict[str, bool]) -> None:
    for name, ok in checks.items():
        if not ok:
            value = getattr(policy, name)
            raise ConfigError(f"{type(policy).__name__}.{name} out of range: {value!r}")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and how it recovers (see the module docstring).

    ``failure_rate=None`` (the default) trips on consecutive failures only."""

    consecutive_failures: int = 5
    failure_rate: float | None = None
    min_calls: int = 10
    window: float = 60.0
    open_for: float = 30.0
    half_open_calls: int = 1
    close_after: int = 1

    def __post_init__(self) -> None:
        rate = self.failure_rate
        _check(
            self,
            {
                "consecutive_failures": _count(self.consecutive_failures),
                "failure_rate": rate is None or (_number(rate) and 0 < rate <= 1),
                "min_calls": _count(self.min_calls),
                "window": _number(self.window) and self.window > 0,
                "open_for": _number(self.open_for) and self.open_for > 0,
                "half_open_calls": _count(self.half_open_calls),
                "close_after": _count(self.close_after),
            },
        )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, slots=True)
class TimeoutPolicy:
    """How long one call may take, in seconds (``seconds > 0``)."""

    seconds: float

    def __post_init__(self) -> None:
        _check(self, {"seconds": _number(self.seconds) and self.seconds > 0})

    def scope(self) -> asyncio.Timeout:
        """``async with policy.scope():`` cancels the block after ``seconds`` and raises
        ``TimeoutError`` (the caller maps it to its typed error)."""
        return asyncio.timeout(self.seconds)


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """A breaker's state at one moment, for the registry, ``bus.agents()`` and the CLI."""

    target: str
    state: CircuitState
    consecutive_failures: int
    calls_in_window: int
    failures_in_window: int
    retry_in: float | None


class _Window:
    """Successes and failures of the last ``span`` seconds, in a few time buckets."""

    def __init__(self, span: float) -> None:
        self._width = span / _BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket index, calls, failures]

    def add(self, now: float, *, failed: bool) -> None:
        index = math.floor(now / self._width)
        self._prune(index)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0])
        self._buckets[-1][1] += 1
        self._buckets[-1][2] += int(failed)

    def totals(self, now: float) -> tuple[int, int]:
        self._prune(math.floor(now / self._width))
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def clear(self) -> None:
        self._buckets.clear()

    def _prune(self, index: int) -> None:
        while self._buckets and self._buckets[0][0] <= index - _BUCKETS:
            self._buckets.popleft()


class CircuitBreaker:
    """One target's breaker. Not thread-safe: use it from one event loop.

    ``with breaker.guard(): ...`` (or ``async with breaker.guarded():``) asks for
    permission, raising :class:`CircuitOpen` when refused, and records the outcome: an
    exception is a failure, a normal exit a success; a cancelled call records nothing."""

    def __init__(
        self,
        target: str,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(target, str) or not target:
            raise InvalidArgument("must be a non-empty string", field="target")
        self.target = target
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._opened_at = 0.0
        self._consecutive = 0
        self._probes = 0  # probe calls under way while half-open
        self._probe_successes = 0
        self._window = _Window(self.policy.window)

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker becomes half-open once ``open_for`` passed)."""
        self._advance()
        return self._state

    def status(self) -> BreakerStatus:
        state = self.state
        calls, failures = self._window.totals(self._clock())
        retry_in = self._retry_in() if state is CircuitState.OPEN else None
        return BreakerStatus(self.target, state, self._consecutive, calls, failures, retry_in)

    def acquire(self) -> None:
        """Permission for one call, or :class:`CircuitOpen`. Every granted call must be
        followed by :meth:`record_success`, :meth:`record_failure` or :meth:`release`."""
        state = self.state
        if state is CircuitState.OPEN:
            raise CircuitOpen(self.target, retry_in=self._retry_in())
        if state is CircuitState.HALF_OPEN:
            if self._probes >= self.policy.half_open_calls:
                raise CircuitOpen(self.target, retry_in=0.0)
            self._probes += 1

    def release(self) -> None:
        """Give back a granted call that ended without an outcome (it was cancelled)."""
        if self._state is CircuitState.HALF_OPEN and self._probes:
            self._probes -= 1

    def record_success(self) -> None:
        self._window.add(self._clock(), failed=False)
        self._consecutive = 0
        if self._state is CircuitState.HALF_OPEN:
            self.release()
            self._probe_successes += 1
            if self._probe_successes >= self.policy.close_after:
                self._close()

    def record_failure(self) -> None:
        now = self._clock()
        self._window.add(now, failed=True)
        self._consecutive += 1
        if self._state is CircuitState.HALF_OPEN or self._tripped(now):
            self._open(now)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        except Exception:
            self.record_failure()
            raise
        except BaseException:  # cancelled: no outcome
            self.release()
            raise
        self.record_success()

    @contextlib.asynccontextmanager
    async def guarded(self) -> AsyncIterator[None]:
        with self.guard():
            yield

    def _tripped(self, now: float) -> bool:
        policy = self.policy
        if self._consecutive >= policy.consecutive_failures:
            return True
        if policy.failure_rate is None:
            return False
        calls, failures = self._window.totals(now)
        return calls >= policy.min_calls and failures / calls >= policy.failure_rate

    def _open(self, now: float) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = now
        self._probes = 0
        self._probe_successes = 0

    def _close(self) -> None:
        self._state = CircuitState.CLOSED
        self._consecutive = 0
        self._probes = 0
        self._probe_successes = 0
        self._window.clear()

    def _advance(self) -> None:
        if self._state is CircuitState.OPEN and self._retry_in() <= 0:
            self._state = CircuitState.HALF_OPEN

    def _retry_in(self) -> float:
        return max(0.0, self._opened_at + self.policy.open_for - self._clock())


class Breakers:
    """One breaker per target, created on first use with ``policy_for(target)`` (or, if
    that gives none, the policy the first caller passes; else the defaults)."""

    def __init__(
        self,
        policy_for: Callable[[str], BreakerPolicy | None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy_for = policy_for or (lambda _target: None)
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, target: str) -> CircuitBreaker:
        return self.breaker(target)

    def breaker(self, target: str, policy: BreakerPolicy | None = None) -> CircuitBreaker:
        """``target``'s breaker; a new one gets ``policy``, else ``policy_for(target)``."""
        breaker = self._breakers.get(target)
        if breaker is None:
            chosen = self._policy_for(target) or policy
            breaker = CircuitBreaker(target, chosen, clock=self._clock)
            self._breakers[target] = breaker
        return breaker

    def status(self, target: str) -> BreakerStatus | None:
        """``target``'s breaker status; ``None`` if it was never called."""
        breaker = self._breakers.get(target)
        return None if breaker is None else breaker.status()

    def state(self, target: str) -> CircuitState:
        """A target's state; ``closed`` for one never called (no breaker is created)."""
        breaker = self._breakers.get(target)
        return CircuitState.CLOSED if breaker is None else breaker.state

    def statuses(self) -> list[BreakerStatus]:
        return [self._breakers[t].status() for t in sorted(self._breakers)]
