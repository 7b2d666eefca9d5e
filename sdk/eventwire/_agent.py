"""Agents: a name, capabilities and an identity; decorator handlers; registry and lifecycle.

An agent serves one bus at a time (``agent.serve(bus)``); its ``state`` is NEW, OPENING,
RUNNING while serving, CLOSING, then CLOSED, or FAILED: serving failed to start, or one of
its subscriptions (or its heartbeat) died for good. A failure is logged at once, ``serving``
turns false, :meth:`Agent.run` returns, and leaving ``serve`` raises :class:`ResourceFailed`.
An agent that stopped may serve again. Its handler table and the dispatch of events to
handlers are ``_agent_handlers``'s; its registry entry and lifecycle events while it serves
``_agent_presence``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from typing import TYPE_CHECKING

from eventwire_security import (
    Actor,
    Identity,
    RecipientKey,
    SealingKey,
    consumer_filters,
)

from ._agent_handlers import HandlerTable, current_event
from ._agent_presence import Presence
from ._capabilities import (
    Capabilities,
    PlanStep,
    add_capability,
    remove_capability,
    subscription_plan,
)
from ._choose import LoadMeter
from ._errors import (
    BusyResource,
    ClosedResource,
    ConfigError,
    InvalidArgument,
    InvalidEvent,
    NotProvisioned,
    WrongTenant,
    checked_name,
)
from ._kinds import CustomEvent
from ._observer import FailureObserver
from ._options import SubscribeOptions
from ._priority import Priority, PriorityGate, priority_of
from ._resource import Lifecycle, ResourceState, Steps
from ._rules import Route, RuleFailed, Rules
from ._subjects import check_pattern, check_token, default_patterns
from ._supervisor import Loop, is_transport_error
from ._work import check_deliver

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from datetime import datetime
    from typing import Unpack

    from ._bus import Bus
    from ._choose import Strategy, StrategyFunction
    from ._consumer import Subscription
    from ._direct import RequestHandler
    from ._event import Event, Publishable
    from ._health import Health, HealthSettings
    from ._options import DeliveryKeywords
    from ._phi import PhiSettings
    from ._sending import PublishAck
    from ._vclock import Clock
    from ._work import Deliver

    Handler = Callable[[Event], Awaitable[None]]

log = logging.getLogger("eventwire.agent")
NORMAL = Priority.NORMAL


class Agent:
    """An agent of one tenant, e.g.::

        agent = Agent("summarizer", capabilities=["summarize"], identity=key)

        @agent.on("capability.summarize.*")
        async def handle(event: Event) -> None: ...

        async with connect() as bus, agent.serve(bus):
            ...

    Besides its handlers' patterns, every agent subscribes to ``system.coordination.*``,
    ``capability.<name>.*`` for each capability and ``agent.lifecycle.*``; events there that
    no handler claims go to the ``@agent.fallback`` handler, or are logged as unhandled.
    Events an agent publishes from inside a handler carry that event's correlation id and
    its id as causation id. ``defaults`` (keywords of :class:`SubscribeOptions`, e.g.
    ``max_in_flight=4``) are the delivery options of every subscription the agent makes;
    ``@agent.on(pattern, ...)`` can change them for its pattern.

    For each capability the agent also serves that capability's one-of-N work (events
    published with ``deliver="one"``) through the consumer it shares with every agent that
    has the capability, with the handlers of ``capability.<name>.<verb>``;
    ``await agent.add_capability(name)`` / ``remove_capability(name)`` join or leave that
    work (and ``capability.<name>.*``) while serving, without a restart. Its registry
    heartbeat carries its load (``load``) and the circuits of its calls that are open.
    While serving it watches the other agents' heartbeats and reports a silent instance as
    ``agent.lifecycle.failed`` (set ``watch_failures = False`` to stop that, or
    ``failure_settings`` to tune the detector).
    """

    def __init__(
        self,
        name: str,
        *,
        capabilities: Sequence[str] = (),
        identity: Identity | None = None,
        tenant: str | None = None,
        roles: Sequence[str] = (),
        **defaults: Unpack[DeliveryKeywords],
    ) -> None:
        self.name = checked_name("agent", name)
        self.capabilities = tuple(check_token(c, field="capability") for c in capabilities)
        self._caps = Capabilities(self.capabilities)
        self._tenant = None if tenant is None else checked_name("tenant", tenant)
        self._roles = tuple(roles)
        self._life = Lifecycle(f"agent {self.name!r}", reusable=True)
        self._bus: Bus | None = None
        self.use_identity(identity or Identity.generate(self._tenant or "default", self.name))
        self.instance = secrets.token_hex(4)
        self.defaults = SubscribeOptions(**defaults)
        self.load = LoadMeter()
        self._table = HandlerTable(self.name, self.load)
        self._handlers = self._table.handlers  # by pattern (``_capabilities`` reads them)
        self._options: dict[str, SubscribeOptions] = {}
        self._on_request: RequestHandler | None = None
        self._stop = asyncio.Event()
        self.watch_failures = True
        self.failure_settings: PhiSettings | None = None
        self.observer: FailureObserver | None = None
        self._observing: Loop | None = None
        self._routes: dict[str, Rules] = {}
        self._subscriptions: list[Subscription] = []  # while serving (health)
        self.last_beat: float | None = None  # when the last registry heartbeat landed
        self._presence: Presence | None = None  # while serving: its registry entry
        self._priorities: dict[str, Priority] = {}
        self._gate: PriorityGate | None = None

    @property
    def unhandled(self) -> int:
        """How many events of its default subscriptions no handler claimed (no fallback)."""
        return self._table.unhandled

    @unhandled.setter
    def unhandled(self, count: int) -> None:
        self._table.unhandled = count

    @property
    def tenant(self) -> str:
        return self.identity.principal.tenant

    def use_identity(self, identity: Identity) -> None:
        """Sign as ``identity`` from now on (``eventwire run --key-file`` gives an agent the
        key it keeps across restarts); not while serving. It must be this agent's, and of
        the ``tenant`` the agent was made with, if one was given."""
        if self._bus is not None:  # opening, running or closing
            raise BusyResource(f"agent {self.name!r} is serving", state=self._life.state)
        principal = identity.principal
        if principal.agent != self.name:
            raise InvalidEvent(
                f"identity belongs to agent {principal.agent!r}, not {self.name!r}",
                field="identity",
            )
        if self._tenant is not None and principal.tenant != self._tenant:
            raise InvalidArgument(
                f"the identity is of tenant {principal.tenant!r}, not {self._tenant!r}",
                field="tenant",
            )
        self.identity = identity
        self.actor = Actor(principal.tenant, self.name, self.capabilities, self._roles)
        self.sealing_key = SealingKey.derive(identity)

    def on(
        self,
        pattern: str,
        *,
        options: SubscribeOptions | None = None,
        priority: str | Priority | None = None,
        **keywords: Unpack[DeliveryKeywords],
    ) -> Callable[[Handler], Handler]:
        """Register a handler for events whose logical subject matches ``pattern``.

        Its delivery options are ``options`` (default: the agent's ``defaults``) with
        ``keywords`` applied, e.g. ``retry=RetryPolicy(...)`` (spaces redeliveries after
        failures and bounds them) or ``terminal=(ValueError,)`` (those exceptions
        dead-letter the event at once). Handlers on the same pattern share one consumer,
        so they share their options. Who reads (actor, sealing key) is the agent's.
        ``priority`` (``"high"``, ``"normal"``, ``"low"``): once a handler declares one,
        the agent's own subscriptions share its ``max_in_flight`` handler slots, handed
        out 16:4:1 while events of several priorities wait (:class:`PriorityGate`); each
        of them then handles one event at a time, in order.
        """
        check_pattern(pattern)
        if priority is not None:
            self._priorities[pattern] = priority_of(priority)
        chosen = (self.defaults if options is None else options).but(**keywords)
        for name in ("actor", "sealing_key", "partition"):
            if getattr(chosen, name) is not None:
                raise InvalidArgument("an agent's subscriptions set it themselves", field=name)
        if self._options.setdefault(pattern, chosen) != chosen:
            raise ConfigError(f"handlers on {pattern!r} must share their options")

        def register(handler: Handler) -> Handler:
            self._handlers.setdefault(pattern, []).append(handler)
            return handler

        return register

    def fallback(self, handler: Handler) -> Handler:
        """Register the handler for default-subscription events no other handler claims."""
        self._table.fallback = handler
        return handler

    def on_request(self, handler: RequestHandler) -> RequestHandler:
        """Register the handler of direct requests; its return value is the signed reply."""
        self._on_request = handler
        return handler

    def route(
        self, pattern: str, *, when: str, to: str, deliver: Deliver = "all", name: str | None = None
    ) -> None:
        """Route the events on ``pattern`` for which the CEL expression ``when`` holds (over
        the verified event's attributes and ``data``) to the logical subject ``to``: the
        agent publishes a new signed event there (same type and data, its causation id the
        original's), to every agent (``deliver="all"``) or to one (``"one"``). Routes on a
        pattern are tried in the order declared; the first that holds wins. A bad
        expression raises :class:`InvalidRule` here; one that fails on an event
        dead-letters that event with the reason. Routes get their pattern's subscription to
        themselves (no other handlers there)."""
        check_pattern(pattern)
        check_deliver(deliver)
        known = self._routes[pattern].routes if pattern in self._routes else ()
        rules = Rules([*known, Route(when, to, name, deliver)])
        if pattern not in self._routes:
            terminal = (*self.defaults.terminal, RuleFailed)
            self.on(pattern, terminal=terminal)(functools.partial(self._route, pattern))
        self._routes[pattern] = rules

    async def _route(self, pattern: str, event: Event) -> None:
        route = self._routes[pattern].match(event)
        if route is None:
            return
        if not event.readable:
            log.info("%s: %s is sealed for others; not routed", self.name, event.id)
            return
        routed = CustomEvent(route.to, event.type, event.data)
        await self.publish(routed, deliver="one" if route.deliver == "one" else "all")

    async def add_capability(self, capability: str) -> None:
        """Gain ``capability`` (serving: join its work and broadcasts, refresh the registry
        entry now); :class:`InvalidArgument` if it is not a name or held already."""
        await add_capability(self, capability)

    async def remove_capability(self, capability: str) -> None:
        """Lose ``capability`` (serving: refresh the registry entry, leave its work, in-flight
        handlers finishing; stop its broadcasts); :class:`NotFound` if it is not held."""
        await remove_capability(self, capability)

    def _set_capabilities(self, names: tuple[str, ...]) -> None:
        self.capabilities = self._caps.names = names
        self.actor = Actor(self.tenant, self.name, names, self._roles)

    def patterns(self) -> list[str]:
        """Every pattern this agent consumes: its handlers' and the default subscriptions."""
        found = list(self._handlers)
        found += [p for p in default_patterns(self.capabilities) if p not in self._handlers]
        return found

    @property
    def state(self) -> ResourceState:
        return self._life.state

    @property
    def error(self) -> BaseException | None:
        """What failed the agent's last serve (None if it did not fail)."""
        return self._life.error

    @property
    def serving(self) -> bool:
        """Whether the agent is subscribed, registered and announced (and nothing failed)."""
        return self._life.state is ResourceState.RUNNING

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise ClosedResource(f"agent {self.name!r} is not serving", state=self.state)
        return self._bus

    async def publish(  # noqa: PLR0913 - public: the event, then optional keywords
        self,
        item: Publishable,
        *,
        partition_key: str | None = None,
        seal_to: Sequence[str | RecipientKey] = (),
        deliver: Deliver = "all",
        clock: Clock | None = None,
        event_time: datetime | None = None,
    ) -> PublishAck:
        """Publish as this agent; inside a handler, correlation and causation are set.
        ``seal_to`` encrypts the data to those agents (names, ``capability:<name>``);
        ``deliver="one"`` hands a capability event to one agent with it; ``clock`` and
        ``event_time`` sign a vector clock and an event time (see :meth:`Bus.publish`)."""
        cause = current_event.get()
        return await self.bus.publish(
            item,
            identity=self.identity,
            correlation_id=cause.correlationid if cause else None,
            causation_id=cause.id if cause else None,
            partition_key=partition_key,
            actor=self.actor,
            seal_to=seal_to,
            deliver=deliver,
            clock=clock,
            event_time=event_time,
        )

    async def request(
        self,
        target: str | Publishable,
        item: Publishable | None = None,
        *,
        capability: str | None = None,
        strategy: str | Strategy | StrategyFunction = "least-loaded",
        timeout: float | None = None,
    ) -> Event:
        """Ask agent ``target`` directly (``request("summarizer", item)``) or one live agent
        with a capability (``request(item, capability="summarize", strategy=...)``);
        returns its verified reply (see :meth:`Bus.request`)."""
        bus, me = self.bus, self.identity
        if isinstance(target, str):
            if item is None or capability is not None:
                raise InvalidArgument("ask an agent, or a capability, not both", field="target")
            return await bus.request(target, item, identity=me, timeout=timeout)
        if item is not None or capability is None:
            raise InvalidArgument("say which capability to ask (capability=...)", field="target")
        return await bus.request(
            target, identity=me, capability=capability, strategy=strategy, timeout=timeout
        )

    async def health(self, settings: HealthSettings | None = None) -> Health:
        """This agent's health score, status, reasons, liveness and readiness (see
        :mod:`eventwire._health` for the formula)."""
        from ._health import agent_health

        return await agent_health(self, self._subscriptions, settings)

    def stop(self) -> None:
        """Ask :meth:`run` to return (gracefully)."""
        self._stop.set()

    async def until_stopped(self) -> None:
        """Wait until :meth:`stop` is called, or serving fails."""
        await self._stop.wait()

    async def run(self, bus: Bus, *, drain_timeout: float = 30.0, signals: bool = True) -> None:
        """Serve until :meth:`stop` is called, the task is cancelled, or SIGINT or SIGTERM
        arrives (handled while it runs: see :func:`eventwire.serve_agents`)."""
        from ._runner import serve_agents

        await serve_agents(bus, self, drain_timeout=drain_timeout, signals=signals)

    @contextlib.asynccontextmanager
    async def serve(self, bus: Bus, *, drain_timeout: float | None = None) -> AsyncIterator[Agent]:
        """Subscribe, register, announce; on exit finish in-flight handlers (cancelling those
        still running after ``drain_timeout`` seconds, if given) and withdraw.

        Raises :class:`BusyResource` if the agent is serving already, and on exit
        :class:`ResourceFailed` if a subscription or the heartbeat died meanwhile."""
        if bus.tenant != self.tenant:
            raise WrongTenant(self.tenant, bus.tenant)
        self._life.opening()
        if self.identity.kid not in bus.keyring:
            bus.keyring.add(self.identity.trusted())
        self._bus = bus
        self._stop.clear()
        subscriptions: list[Subscription] = []
        self._subscriptions = subscriptions
        heartbeat: Loop | None = None
        raised: BaseException | None = None
        try:
            await self._subscribe(bus, subscriptions)
            if self._on_request is not None:
                await bus.serve_requests(self.identity, self._on_request)
            presence = self._presence = Presence(self, bus, self._gate, time.time())
            await presence.announce()
            heartbeat = Loop(
                f"eventwire-heartbeat:{self.name}", presence.heartbeat,
                transient=is_transport_error, on_failure=self._failed, logger=log,
            )  # fmt: skip
            heartbeat.start()
            self._observe(bus)
            await presence.phase("started")
            self._life.running()
            yield self
        except BaseException as exc:
            raised = exc
            if self._life.state is ResourceState.OPENING:  # a failed start, raised here
                self._life.fail(exc, reported=True)
            raise
        finally:
            await self._shutdown(subscriptions, heartbeat, raised, drain_timeout)

    async def _subscribe(self, bus: Bus, subscriptions: list[Subscription]) -> None:
        """Subscribe to every pattern (see :meth:`patterns`) and to each capability's
        shared one-of-N work, watching each subscription for failure (high priority first)."""
        self._gate = PriorityGate(self.defaults.max_in_flight) if self._priorities else None
        rank = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
        plan = subscription_plan(self, bus)
        for step in sorted(plan, key=lambda s: rank[self._priorities.get(s.pattern, NORMAL)]):
            if (subscription := await self._open_step(bus, step)) is not None:
                subscriptions.append(subscription)

    async def _open_step(self, bus: Bus, step: PlanStep) -> Subscription | None:
        """Start one subscription of the plan (None: the policy leaves it out)."""
        subscription = bus.subscribe(
            step.pattern,
            step.dispatch,
            durable=step.durable,
            options=step.options.but(actor=self.actor, sealing_key=self.sealing_key),
        )
        if self._gate is not None and step.durable == self.name:
            subscription.prioritize(self._gate, self._priorities.get(step.pattern, NORMAL))
        if not await self._started(subscription, step.pattern, needed=step.needed):
            return None
        subscription.on_failure(lambda sub, error: self._failed(error))
        return subscription

    def _observe(self, bus: Bus) -> None:
        """Start watching the other agents' heartbeats (unless ``watch_failures`` is off);
        a watch that cannot run is logged, never a reason for the agent to fail."""
        if not self.watch_failures:
            return
        self.observer = FailureObserver(bus, self.identity, self.instance, self.failure_settings)

        def stopped(error: BaseException) -> None:
            log.error("%s: failure detection stopped: %r", self.name, error)

        self._observing = Loop(
            f"eventwire-failures:{self.name}", self.observer.run,
            transient=is_transport_error, on_failure=stopped, logger=log,
        )  # fmt: skip
        self._observing.start()

    def _failed(self, error: BaseException) -> None:
        """A subscription or the heartbeat died for good: stop serving, loudly."""
        if self._life.fail(error):
            log.error("agent %s failed, it stops serving: %r", self.name, error)
        self._stop.set()

    async def _started(self, subscription: Subscription, pattern: str, *, needed: bool) -> bool:
        """Start ``subscription``; on a bind-only bus, a default subscription nobody
        provisioned (the policy does not let this agent consume there) is left out, unless
        handlers of narrower patterns depend on it (``needed``)."""
        bus = self.bus
        ungranted = (
            not bus.provisions
            and bus.policy is not None
            and pattern not in self._handlers
            and not needed
            and pattern not in consumer_filters(bus.policy, self.actor)
        )
        if ungranted:
            log.info("%s: the policy grants no consumer for %r", self.name, pattern)
            return False
        try:
            await subscription.start()
        except NotProvisioned:
            if pattern in self._handlers or needed:
                raise
            log.info("%s: no consumer provisioned for %r; not subscribed", self.name, pattern)
            return False
        return True

    async def _shutdown(
        self,
        subscriptions: list[Subscription],
        heartbeat: Loop | None,
        raised: BaseException | None,
        drain_timeout: float | None = None,
    ) -> None:
        """Stop the subscriptions (in parallel) and the heartbeat, withdraw and announce
        the stop: every step, even when one fails; then raise the first failure (or, if
        the block raised, add it to that exception as a note)."""
        self._life.closing()
        steps = Steps(f"stopping agent {self.name!r}", log)
        loop = asyncio.get_running_loop()
        abandon = self._table.abandon  # the handlers still running
        timer = None if drain_timeout is None else loop.call_later(drain_timeout, abandon)
        try:
            if self._observing is not None:
                observing, self._observing = self._observing, None
                if self.observer is not None:
                    self.observer.close()
                stop = functools.partial(observing.stop, cancel=True)
                await steps.run("stopping the failure detector", stop)
            async with self._caps.lock:  # a capability change under way ends first
                pass
            async with asyncio.TaskGroup() as group:
                for sub in subscriptions:
                    group.create_task(steps.run(f"stopping {sub.durable}", sub.close))
            if timer is not None:
                timer.cancel()
            if heartbeat is not None:
                presence = self._presence
                assert presence is not None  # the heartbeat beats for it
                await steps.run(
                    "stopping the heartbeat", functools.partial(heartbeat.stop, cancel=True)
                )
                await steps.run("withdrawing from the registry", presence.withdraw)
                await steps.run("announcing the stop", functools.partial(presence.phase, "stopped"))
        finally:
            self._bus = self._presence = None
            error = self._life.closed(steps.first)
        if error is None or error is raised:
            return
        if raised is None:
            raise error
        raised.add_note(f"while stopping agent {self.name!r}: {error!r}")

    async def _refresh_entry(self) -> None:
        """Put the registry entry now (while serving: a capability changed)."""
        if self._presence is None:
            raise ClosedResource(f"agent {self.name!r} is not serving", state=self.state)
        await self._presence.announce()

    def _dispatcher(self, pattern: str, inner: Sequence[str] = ()) -> Handler:
        """The handler of ``pattern``'s consumer (see ``HandlerTable.dispatcher``)."""
        return self._table.dispatcher(pattern, inner)

    @property
    def _work_dispatch(self) -> Handler:
        """The handler of each capability's one-of-N work consumer."""
        return self._table.work
