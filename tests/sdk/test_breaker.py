"""Circuit breakers and timeout policies: the state machine, stepped by a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from eventwire import (
    BreakerPolicy,
    Breakers,
    CircuitBreaker,
    CircuitOpen,
    CircuitState,
    ConfigError,
    InvalidArgument,
    RequestFailed,
    TimeoutPolicy,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(ValueError, match="boom"), breaker.guard():
            raise ValueError("boom")


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with breaker.guard():
            pass


def test_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = Clock()
    breaker = CircuitBreaker("summarizer", BreakerPolicy(consecutive_failures=3), clock=clock)
    fail(breaker, 2)
    succeed(breaker)  # a success resets the run
    fail(breaker, 2)
    assert breaker.state is CircuitState.CLOSED
    fail(breaker)
    assert breaker.state is CircuitState.OPEN
    clock.now += 10
    with pytest.raises(CircuitOpen) as refused, breaker.guard():
        pytest.fail("an open circuit must not let the call through")
    assert isinstance(refused.value, RequestFailed)
    assert refused.value.target == "summarizer"
    assert refused.value.retry_in == pytest.approx(20.0)
    assert "circuit open, next probe in 20.0s" in str(refused.value)


def test_half_open_probe_closes_on_success() -> None:
    clock = Clock()
    policy = BreakerPolicy(consecutive_failures=1, open_for=5, half_open_calls=1)
    breaker = CircuitBreaker("a", policy, clock=clock)
    fail(breaker)
    clock.now += 5
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.acquire()  # the one probe
    with pytest.raises(CircuitOpen) as second:
        breaker.acquire()
    assert second.value.retry_in == 0.0
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.status().consecutive_failures == 0
    succeed(breaker, 3)


def test_half_open_probe_failure_opens_again_for_a_full_period() -> None:
    clock = Clock()
    breaker = CircuitBreaker("a", BreakerPolicy(consecutive_failures=2, open_for=5), clock=clock)
    fail(breaker, 2)
    clock.now += 6
    fail(breaker)  # the probe fails
    status = breaker.status()
    assert status.state is CircuitState.OPEN
    assert status.retry_in == pytest.approx(5.0)


def test_close_after_needs_that_many_successful_probes() -> None:
    clock = Clock()
    policy = BreakerPolicy(consecutive_failures=1, open_for=1, half_open_calls=2, close_after=2)
    breaker = CircuitBreaker("a", policy, clock=clock)
    fail(breaker)
    clock.now += 1
    succeed(breaker)
    assert breaker.state is CircuitState.HALF_OPEN
    succeed(breaker)
    assert breaker.state is CircuitState.CLOSED


def test_failure_rate_in_the_window_trips_only_with_enough_calls() -> None:
    clock = Clock()
    policy = BreakerPolicy(
        consecutive_failures=100, failure_rate=0.5, min_calls=10, window=10, open_for=1
    )
    breaker = CircuitBreaker("a", policy, clock=clock)
    for _ in range(4):  # 4 failures in 8 calls: 50 %, but fewer than min_calls
        succeed(breaker)
        fail(breaker)
    assert breaker.state is CircuitState.CLOSED
    succeed(breaker)
    fail(breaker)  # 5 of 10
    assert breaker.state is CircuitState.OPEN


def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    policy = BreakerPolicy(consecutive_failures=100, failure_rate=0.5, min_calls=4, window=10)
    breaker = CircuitBreaker("a", policy, clock=clock)
    fail(breaker, 3)
    clock.now += 11  # those three are out of the window now
    succeed(breaker, 3)
    fail(breaker)  # 1 of 4 in the window
    status = breaker.status()
    assert (status.state, status.calls_in_window, status.failures_in_window) == (
        CircuitState.CLOSED,
        4,
        1,
    )


async def test_a_cancelled_probe_gives_its_permit_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker("a", BreakerPolicy(consecutive_failures=1, open_for=1), clock=clock)
    fail(breaker)
    clock.now += 1

    async def probe() -> None:
        async with breaker.guarded():
            await asyncio.sleep(3600)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is CircuitState.HALF_OPEN
    succeed(breaker)  # the permit is free again
    assert breaker.state is CircuitState.CLOSED


def test_breakers_make_one_breaker_per_target_with_its_policy() -> None:
    clock = Clock()
    strict = BreakerPolicy(consecutive_failures=1)
    breakers = Breakers(lambda target: strict if target == "fragile" else None, clock=clock)
    assert breakers.state("never-called") is CircuitState.CLOSED
    fail(breakers["fragile"])
    fail(breakers["sturdy"])
    assert breakers["fragile"] is breakers["fragile"]
    assert [(s.target, s.state) for s in breakers.statuses()] == [
        ("fragile", CircuitState.OPEN),
        ("sturdy", CircuitState.CLOSED),
    ]
    assert breakers.statuses()[0].retry_in == pytest.approx(30.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"consecutive_failures": True}, "consecutive_failures"),
        ({"failure_rate": 0}, "failure_rate"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"failure_rate": float("nan")}, "failure_rate"),
        ({"min_calls": 0}, "min_calls"),
        ({"window": 0}, "window"),
        ({"open_for": -1}, "open_for"),
        ({"open_for": float("inf")}, "open_for"),
        ({"half_open_calls": 0}, "half_open_calls"),
        ({"close_after": 1.5}, "close_after"),
    ],
)
def test_bad_breaker_settings_are_refused_by_name(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"BreakerPolicy\.{field} out of range"):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), "5"])
def test_bad_timeouts_are_refused(seconds: object) -> None:
    with pytest.raises(ConfigError, match=r"TimeoutPolicy\.seconds out of range"):
        TimeoutPolicy(seconds)  # type: ignore[arg-type]


def test_a_breaker_needs_a_target_name() -> None:
    with pytest.raises(InvalidArgument, match="target"):
        CircuitBreaker("")


async def test_timeout_policy_scope_cancels_a_slow_call() -> None:
    with pytest.raises(TimeoutError):
        async with TimeoutPolicy(0.01).scope():
            await asyncio.sleep(3600)
    async with TimeoutPolicy(5).scope():
        await asyncio.sleep(0)
