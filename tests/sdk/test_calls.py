"""The call policy of direct calls (breakers, timeouts, retries, choice by capability),
driven by a plain coroutine in place of the wire; the same policy on a real server is in
test_routing_bus.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from eventwire import (
    BreakerPolicy,
    Caller,
    CircuitOpen,
    CircuitState,
    Load,
    NobodyServing,
    RemoteError,
    RequestTimeout,
    Resiliency,
    RetryPolicy,
    TargetPolicy,
    TimeoutPolicy,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from eventwire import Event


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Wire:
    """Records each send; agents in ``broken`` time out, in ``refusing`` refuse."""

    def __init__(self, broken: Iterable[str] = (), refusing: Iterable[str] = ()) -> None:
        self.sent: list[tuple[str, float]] = []
        self.broken = set(broken)
        self.refusing = set(refusing)

    async def send(self, target: str, timeout: float) -> Event:
        self.sent.append((target, timeout))
        if target in self.broken:
            raise RequestTimeout(f"no reply within {timeout}s", target=target)
        if target in self.refusing:
            raise RemoteError("request refused", target=target, code="refused")
        return None  # type: ignore[return-value]  # the policy never looks at the reply


FRAGILE = BreakerPolicy(consecutive_failures=2, open_for=10)


async def test_an_open_circuit_fails_fast_then_a_probe_closes_it() -> None:
    clock = Clock()
    caller = Caller(Resiliency(agents={"b": TargetPolicy(circuit_breaker=FRAGILE)}), clock=clock)
    wire = Wire(broken={"b"})
    for _ in range(2):
        with pytest.raises(RequestTimeout):
            await caller.call("b", wire.send)
    with pytest.raises(CircuitOpen) as refused:
        await caller.call("b", wire.send)
    assert refused.value.retry_in == 10.0
    assert len(wire.sent) == 2  # the third call never left
    clock.now += 10
    wire.broken.clear()
    await caller.call("b", wire.send)  # the probe
    assert caller.breakers.state("b") is CircuitState.CLOSED


async def test_a_refusal_is_the_callers_problem_not_the_targets() -> None:
    caller = Caller(Resiliency(default=TargetPolicy(circuit_breaker=FRAGILE)))
    wire = Wire(refusing={"b"})
    for _ in range(3):
        with pytest.raises(RemoteError):
            await caller.call("b", wire.send)
    assert caller.breakers.state("b") is CircuitState.CLOSED


async def test_timeouts_come_from_the_policy_unless_given() -> None:
    caller = Caller(Resiliency(default=TargetPolicy(timeout=TimeoutPolicy(0.75))))
    wire = Wire()
    await caller.call("b", wire.send)
    await caller.call("b", wire.send, timeout=2)
    await Caller().call("b", wire.send)
    assert [t for _, t in wire.sent] == [0.75, 2, 5.0]


async def test_retries_follow_the_retry_policy() -> None:
    retry = RetryPolicy(max_deliveries=3, initial_delay=0.0, jitter=0)
    caller = Caller(Resiliency(agents={"b": TargetPolicy(retry=retry)}))
    wire = Wire(broken={"b"})
    with pytest.raises(RequestTimeout):
        await caller.call("b", wire.send)
    assert [t for t, _ in wire.sent] == ["b", "b", "b"]


async def test_a_call_by_capability_skips_an_agent_whose_circuit_opened() -> None:
    retry = RetryPolicy(max_deliveries=4, initial_delay=0.0, jitter=0)
    spec = Resiliency(
        capabilities={"summarize": TargetPolicy(retry=retry, circuit_breaker=FRAGILE)}
    )
    caller = Caller(spec)
    wire = Wire(broken={"idle-but-broken"})

    async def loads() -> Mapping[str, list[Load]]:
        return {
            "idle-but-broken": [Load(capacity=4)],
            "busy": [Load(in_flight=3, capacity=4), Load(in_flight=4, capacity=4)],
        }

    await caller.call_capability("summarize", loads, wire.send)
    # least-loaded tries the idle agent twice, its circuit opens, the third try goes elsewhere
    assert [t for t, _ in wire.sent] == ["idle-but-broken", "idle-but-broken", "busy"]
    assert caller.breakers.state("idle-but-broken") is CircuitState.OPEN
    candidates = caller.candidates(await loads())
    assert [(c.agent, c.circuit, c.load.utilisation) for c in candidates] == [
        ("busy", CircuitState.CLOSED, 7 / 8),
        ("idle-but-broken", CircuitState.OPEN, 0.0),
    ]


async def test_round_robin_keeps_its_turn_across_calls() -> None:
    caller = Caller()
    wire = Wire()

    async def loads() -> Mapping[str, list[Load]]:
        return {"a": [Load()], "b": [Load()], "c": [Load()]}

    for _ in range(4):
        await caller.call_capability("x", loads, wire.send, strategy="round-robin")
    assert [t for t, _ in wire.sent] == ["a", "b", "c", "a"]


async def test_nobody_with_the_capability() -> None:
    async def loads() -> Mapping[str, list[Load]]:
        return {}

    with pytest.raises(NobodyServing):
        await Caller().call_capability("summarize", loads, Wire().send)
