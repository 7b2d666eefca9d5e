"""Direct calls with resilience: a target chosen by capability, a circuit breaker per target
agent, a timeout and retries from the :class:`Resiliency` policies.

A call to an agent whose circuit is open fails at once with :class:`CircuitOpen`. What
counts as a failure of the target: no reply in time, nobody serving, a reply that fails
verification, a connection error, and a signed error from its handler. A ``refused`` answer
(the target could not verify the caller) is the caller's problem and does not count. With a
retry policy a failed call is tried again after the policy's delay; a call by capability
then chooses again, so an agent whose circuit just opened is skipped.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ._breaker import BreakerPolicy, Breakers, CircuitOpen, CircuitState
from ._choose import Candidate, Chooser, Load, Strategy, strategy_of
from ._errors import ConnectionFailed, RemoteError, RequestFailed
from ._resiliency import Resiliency, TargetPolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from ._choose import Choice, StrategyFunction
    from ._event import Event
    from ._registry import AgentInfo

    Send = Callable[[str, float], Awaitable[Event]]

DEFAULT_TIMEOUT = 5.0
REFUSED = "refused"  # the code of a target's answer when it could not verify the caller


def counts_as_failure(exc: BaseException) -> bool:
    """Whether ``exc`` from a call says something about the target's health."""
    if isinstance(exc, RemoteError):
        return exc.code != REFUSED
    return isinstance(exc, RequestFailed | ConnectionFailed | TimeoutError)


def loads_of(agents: Iterable[AgentInfo]) -> dict[str, list[Load]]:
    """Each agent's instances' loads, leaving out instances suspected to have failed."""
    found: dict[str, list[Load]] = {}
    for info in agents:
        if not info.suspected:
            found.setdefault(info.name, []).append(info.load)
    return found


def aggregate(loads: Iterable[Load]) -> Load:
    """One agent's load from its instances' reports: work and slots summed, latency the
    mean of those that report one."""
    loads = list(loads)
    latencies = [x.latency_ms for x in loads if x.latency_ms]
    return Load(
        in_flight=sum(x.in_flight for x in loads),
        queue_depth=sum(x.queue_depth for x in loads),
        capacity=max(1, sum(x.capacity for x in loads)),
        latency_ms=sum(latencies) / len(latencies) if latencies else 0.0,
    )


class Caller:
    """The breakers, choosers and policies of one bus's direct calls."""

    def __init__(
        self,
        resiliency: Resiliency | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resiliency = resiliency or Resiliency()
        self.breakers = Breakers(self._agent_breaker, clock=clock)
        self._choosers: dict[tuple[str, object], Chooser] = {}

    def _agent_breaker(self, target: str) -> BreakerPolicy | None:
        return self.resiliency.agents.get(target, TargetPolicy()).circuit_breaker

    def candidates(self, loads: Mapping[str, Iterable[Load]]) -> list[Candidate]:
        """Candidates from each agent's instances' loads, with their circuit states."""
        found = []
        for agent, instance_loads in sorted(loads.items()):
            status = self.breakers.status(agent)
            state = status.state if status is not None else CircuitState.CLOSED
            retry_in = status.retry_in if status is not None else None
            found.append(Candidate(agent, aggregate(instance_loads), state, retry_in))
        return found

    def choose(
        self,
        capability: str,
        candidates: list[Candidate],
        strategy: str | Strategy | StrategyFunction,
    ) -> Choice:
        """A target among ``candidates`` (round-robin keeps its turn per capability)."""
        chosen = strategy_of(strategy)
        key = (capability, chosen)
        chooser = self._choosers.get(key)
        if chooser is None:
            chooser = self._choosers[key] = Chooser(chosen)
        return chooser.choose(capability, candidates)

    async def call(self, target: str, send: Send, *, timeout: float | None = None) -> Event:
        """Call agent ``target`` through its breaker, with its timeout and retry policy."""

        async def pick() -> str:
            return target

        return await self._attempts(self.resiliency.for_agent(target), pick, send, timeout)

    async def call_capability(
        self,
        capability: str,
        loads: Callable[[], Awaitable[Mapping[str, Iterable[Load]]]],
        send: Send,
        *,
        strategy: str | Strategy | StrategyFunction = Strategy.LEAST_LOADED,
        timeout: float | None = None,
    ) -> Event:
        """Call one agent with ``capability``, chosen by ``strategy`` among the live ones
        (``loads``: each agent's instances' loads) whose circuit is not open; each retry
        chooses again."""
        strategy_of(strategy)  # a bad strategy is refused before anything is looked up

        async def pick() -> str:
            return self.choose(capability, self.candidates(await loads()), strategy).agent

        policy = self.resiliency.for_capability(capability)
        return await self._attempts(policy, pick, send, timeout)

    async def _attempts(
        self,
        policy: TargetPolicy,
        pick: Callable[[], Awaitable[str]],
        send: Send,
        timeout: float | None,
    ) -> Event:
        attempts = policy.retry.max_deliveries if policy.retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._once(await pick(), send, policy, timeout)
            except CircuitOpen:
                raise
            except Exception as exc:
                if policy.retry is None or attempt == attempts or not counts_as_failure(exc):
                    raise
                await asyncio.sleep(policy.retry.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, target: str, send: Send, policy: TargetPolicy, timeout: float | None
    ) -> Event:
        """One attempt through ``target``'s breaker."""
        seconds = timeout or (policy.timeout.seconds if policy.timeout else DEFAULT_TIMEOUT)
        breaker = self.breakers.breaker(target, policy.circuit_breaker)
        breaker.acquire()
        try:
            reply = await send(target, seconds)
        except BaseException as exc:
            if isinstance(exc, Exception) and counts_as_failure(exc):
                breaker.record_failure()
            else:
                breaker.release()
            raise
        breaker.record_success()
        return reply
