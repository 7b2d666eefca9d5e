"""An agent's presence while it serves, as the other agents see it: its signed registry
entry (put when serving starts, refreshed by the heartbeat and on a capability change,
withdrawn at the stop) and its lifecycle events (``agent.lifecycle.started``/``stopped``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ._breaker import CircuitState
from ._kinds import AgentLifecycle
from ._registry import announce, withdraw

if TYPE_CHECKING:
    from ._agent import Agent
    from ._bus import Bus
    from ._priority import PriorityGate

log = logging.getLogger("eventwire.agent")


class Presence:
    """One serve of ``agent`` on ``bus``, which started at ``started`` (seconds since the
    epoch); ``gate`` is the serve's priority gate (its queue is part of the load)."""

    def __init__(self, agent: Agent, bus: Bus, gate: PriorityGate | None, started: float) -> None:
        self._agent = agent
        self._bus = bus
        self._gate = gate
        self.started = started

    async def announce(self) -> None:
        """Put (or refresh) this instance's signed registry entry."""
        agent = self._agent
        await announce(
            await self._bus.registry(),
            agent.identity,
            instance=agent.instance,
            capabilities=agent.capabilities,
            started_at=self.started,
            sealing_key=agent.sealing_key.public,
            load=agent.load.load(
                capacity=agent.defaults.max_in_flight,
                queue_depth=self._gate.waiting() if self._gate is not None else 0,
            ),
            circuits={
                status.target: status.state
                for status in self._bus.breakers.statuses()
                if status.state is not CircuitState.CLOSED
            },
        )
        agent.last_beat = time.time()

    async def heartbeat(self) -> None:
        """Refresh the registry entry every ``registry_ttl / 3`` seconds; a failed beat is
        logged and the next one tried (a reconnect passes)."""
        interval = self._bus.registry_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.announce()
            except Exception as exc:  # keep beating through a reconnect
                log.warning("heartbeat of %s failed: %r", self._agent.name, exc)

    async def withdraw(self) -> None:
        agent = self._agent
        await withdraw(await self._bus.registry(), agent.name, agent.instance)

    async def phase(self, phase: str) -> None:
        """Publish the agent's lifecycle event: ``started`` or ``stopped``."""
        agent = self._agent
        await agent.publish(
            AgentLifecycle(
                agent=agent.name,
                phase="started" if phase == "started" else "stopped",
                instance=agent.instance,
                capabilities=list(agent.capabilities),
            )
        )
