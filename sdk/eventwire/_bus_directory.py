"""The part of a bus that deals with other agents: the registry of live agents
(``registry``, ``agents``), direct requests to them (``request``, ``serve_requests``, the
circuit ``breakers``) and the state of one-of-N work (``work_status``, ``until_served``).

:class:`AgentDirectory` is a base of :class:`~eventwire.Bus`: it keeps its own state (the
registry bucket once opened, the caller with its breakers, the responders) and asks the bus
only for what the open bus holds (``_running``) and its subject ``root``."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, overload

from ._calls import Caller, loads_of
from ._direct import request, serve_requests
from ._errors import InvalidArgument, checked_name
from ._registry import list_agents, open_registry
from ._work import checked_capability, serving, until_served, work_status

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription as NatsSubscription
    from nats.js.kv import KeyValue

    from eventwire_security import Identity

    from ._breaker import Breakers
    from ._choose import Load, Strategy, StrategyFunction
    from ._direct import RequestHandler
    from ._event import Event, Publishable
    from ._link import Link
    from ._registry import AgentInfo
    from ._resiliency import Resiliency
    from ._work import WorkStatus


class AgentDirectory:
    """Live agents of the bus's tenant and direct calls to them (see the module doc)."""

    root: str  # the bus's subject root

    def __init__(
        self, registry_ttl: float, resiliency: Resiliency | None, *, create_registry: bool
    ) -> None:
        self._registry_ttl = registry_ttl
        self._create_registry = create_registry
        self._registry: KeyValue | None = None
        self._responders: list[NatsSubscription] = []
        self._calls = Caller(resiliency)

    def _running(self, doing: str) -> Link:
        """What the open bus holds (the bus says; see ``Bus._running``)."""
        raise NotImplementedError

    async def work_status(self, capability: str) -> WorkStatus:
        """Where ``capability``'s one-of-N work stands: pending, in progress, and how many
        live agents serve it (``status.nobody_serving``)."""
        live = await self.agents(capability=checked_capability(capability))
        link = self._running("read the work status")
        return await work_status(link.js, self.root, capability, serving(live))

    async def until_served(self, capability: str, *, timeout: float = 5.0) -> WorkStatus:
        """Wait up to ``timeout`` seconds for a live agent with ``capability``; its
        :class:`WorkStatus`, or :class:`NobodyServing` (the work keeps waiting durably)."""
        return await until_served(self.work_status, capability, timeout)

    @overload
    async def request(
        self,
        target: str,
        item: Publishable,
        *,
        identity: Identity,
        timeout: float | None = None,
    ) -> Event: ...

    @overload
    async def request(
        self,
        target: Publishable,
        *,
        identity: Identity,
        capability: str,
        strategy: str | Strategy | StrategyFunction = "least-loaded",
        timeout: float | None = None,
    ) -> Event: ...

    async def request(  # noqa: PLR0913 - public: two forms, see the overloads
        self,
        target: str | Publishable,
        item: Publishable | None = None,
        *,
        identity: Identity,
        capability: str | None = None,
        strategy: str | Strategy | StrategyFunction = "least-loaded",
        timeout: float | None = None,
    ) -> Event:
        """Ask an agent directly and return its verified reply: ``request("summarizer",
        item, ...)`` asks that agent, ``request(item, capability="summarize", ...)`` one
        live agent with the capability, chosen by ``strategy`` (``least-loaded``,
        ``round-robin``, ``random`` or a function of the candidates), skipping agents whose
        circuit is open. Each target agent has a circuit breaker; the timeout (default: the
        resiliency policy's, else 5 s), retries and breaker settings come from the bus's
        ``resiliency``. :class:`CircuitOpen` when the circuit is open,
        :class:`NobodyServing` when no live agent has the capability."""
        link = self._running("send a request")

        async def send(agent: str, seconds: float) -> Event:
            assert message is not None
            return await request(link.nc, link.codec, identity, agent, message, timeout=seconds)

        if isinstance(target, str):
            message = item
            if item is None or capability is not None:
                raise InvalidArgument("ask an agent, or a capability, not both", field="target")
            return await self._calls.call(checked_name("target", target), send, timeout=timeout)
        message = target
        if item is not None or capability is None:
            raise InvalidArgument("say which capability to ask (capability=...)", field="target")
        checked_capability(capability)
        loads = functools.partial(self._loads, capability)
        return await self._calls.call_capability(
            capability, loads, send, strategy=strategy, timeout=timeout
        )

    async def _loads(self, capability: str) -> dict[str, list[Load]]:
        return loads_of(await self.agents(capability=capability))

    @property
    def breakers(self) -> Breakers:
        """The circuit breakers of this bus's direct calls, one per target agent."""
        return self._calls.breakers

    async def serve_requests(self, identity: Identity, handler: RequestHandler) -> NatsSubscription:
        """Answer direct requests to ``identity``'s agent with ``handler``'s return value."""
        link = self._running("serve requests")
        sub = await serve_requests(link.nc, link.codec, identity, handler)
        self._responders.append(sub)
        return sub

    async def registry(self) -> KeyValue:
        if self._registry is None:
            self._registry = await open_registry(
                self._running("open the registry").js,
                self.root,
                self._registry_ttl,
                create=self._create_registry,
            )
        return self._registry

    @property
    def registry_ttl(self) -> float:
        return self._registry_ttl

    async def agents(self, *, capability: str | None = None) -> list[AgentInfo]:
        """Live agents of this tenant (verified entries), optionally those with a capability."""
        registry = await self.registry()
        link = self._running("list agents")
        interval = self._registry_ttl / 3  # the agents' heartbeat interval
        found = await list_agents(link.js, self.root, registry, link.codec, interval=interval)
        if capability is None:
            return found
        return [info for info in found if capability in info.capabilities]
