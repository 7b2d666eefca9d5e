"""Agents: a name, capabilities and an identity; decorator handlers; registry and lifecycle.

An agent serves one bus at a time (``agent.serve(bus)``); its ``state`` is NEW, OPENING,
RUNNING while serving, CLOSING, then CLOSED, or FAILED: serving failed to start, or one of
its subscriptions (or its heartbeat) died for good. A failure is logged at once, ``serving``
turns false, :meth:`Agent.run` returns, and leaving ``serve`` raises :class:`ResourceFailed`.
An agent that stopped may serve again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
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

from ._errors import (
    ClosedResource,
    ConfigError,
    InvalidArgument,
    InvalidEvent,
    NotProvisioned,
    WrongTenant,
    checked_name,
)
from ._kinds import AgentLifecycle
from ._options import SubscribeOptions
from ._registry import announce, withdraw
from ._resource import Lifecycle, ResourceState, Steps
from ._subjects import check_pattern, check_token, default_patterns, matches
from ._supervisor import Loop, is_transport_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from typing import Unpack

    from ._bus import Bus, PublishAck
    from ._consumer import Subscription
    from ._direct import RequestHandler
    from ._event import Event, Publishable
    from ._options import DeliveryKeywords

    Handler = Callable[[Event], Awaitable[None]]

log = logging.getLogger("eventwire.agent")


_current_event: contextvars.ContextVar[Event | None] = contextvars.ContextVar(
    "eventwire_current_event", default=None
)


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
    """

    def __init__(
        self,
        name: str,
        *,
        capabilities: Sequence[str] = (),
        identity: Identity | None = None,
        tenant: str = "default",
        roles: Sequence[str] = (),
        **defaults: Unpack[DeliveryKeywords],
    ) -> None:
        self.name = checked_name("agent", name)
        self.capabilities = tuple(check_token(c, field="capability") for c in capabilities)
        if identity is None:
            identity = Identity.generate(tenant, name)
        elif identity.principal.agent != name:
            raise InvalidEvent(
                f"identity belongs to agent {identity.principal.agent!r}, not {name!r}",
                field="identity",
            )
        self.identity = identity
        self.actor = Actor(identity.principal.tenant, name, self.capabilities, tuple(roles))
        self.sealing_key = SealingKey.derive(identity)
        self.instance = secrets.token_hex(4)
        self.unhandled = 0
        self.defaults = SubscribeOptions(**defaults)
        self._handlers: dict[str, list[Handler]] = {}
        self._options: dict[str, SubscribeOptions] = {}
        self._fallback: Handler | None = None
        self._on_request: RequestHandler | None = None
        self._bus: Bus | None = None
        self._stop = asyncio.Event()
        self._life = Lifecycle(f"agent {self.name!r}", reusable=True)

    @property
    def tenant(self) -> str:
        return self.identity.principal.tenant

    def on(
        self,
        pattern: str,
        *,
        options: SubscribeOptions | None = None,
        **keywords: Unpack[DeliveryKeywords],
    ) -> Callable[[Handler], Handler]:
        """Register a handler for events whose logical subject matches ``pattern``.

        Its delivery options are ``options`` (default: the agent's ``defaults``) with
        ``keywords`` applied, e.g. ``retry=RetryPolicy(...)`` (spaces redeliveries after
        failures and bounds them) or ``terminal=(ValueError,)`` (those exceptions
        dead-letter the event at once). Handlers on the same pattern share one consumer,
        so they share their options. Who reads (actor, sealing key) is the agent's.
        """
        check_pattern(pattern)
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
        self._fallback = handler
        return handler

    def on_request(self, handler: RequestHandler) -> RequestHandler:
        """Register the handler of direct requests; its return value is the signed reply."""
        self._on_request = handler
        return handler

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

    async def publish(
        self,
        item: Publishable,
        *,
        partition_key: str | None = None,
        seal_to: Sequence[str | RecipientKey] = (),
    ) -> PublishAck:
        """Publish as this agent; inside a handler, correlation and causation are set.
        ``seal_to`` encrypts the data to those agents (names, ``capability:<name>``)."""
        cause = _current_event.get()
        return await self.bus.publish(
            item,
            identity=self.identity,
            correlation_id=cause.correlationid if cause else None,
            causation_id=cause.id if cause else None,
            partition_key=partition_key,
            actor=self.actor,
            seal_to=seal_to,
        )

    async def request(self, target: str, item: Publishable, *, timeout: float = 5.0) -> Event:
        """Ask agent ``target`` directly; returns its verified reply."""
        return await self.bus.request(target, item, identity=self.identity, timeout=timeout)

    def stop(self) -> None:
        """Ask :meth:`run` to return (gracefully)."""
        self._stop.set()

    async def run(self, bus: Bus) -> None:
        """Serve until :meth:`stop` is called or the task is cancelled."""
        async with self.serve(bus):
            await self._stop.wait()

    @contextlib.asynccontextmanager
    async def serve(self, bus: Bus) -> AsyncIterator[Agent]:
        """Subscribe, register, announce; on exit finish in-flight handlers and withdraw.

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
        heartbeat: Loop | None = None
        raised: BaseException | None = None
        try:
            await self._subscribe(bus, subscriptions)
            if self._on_request is not None:
                await bus.serve_requests(self.identity, self._on_request)
            started = time.time()
            await self._announce(started)
            heartbeat = Loop(
                f"eventwire-heartbeat:{self.name}", functools.partial(self._heartbeat, started),
                transient=is_transport_error, on_failure=self._failed, logger=log,
            )  # fmt: skip
            heartbeat.start()
            await self._announce_phase("started")
            self._life.running()
            yield self
        except BaseException as exc:
            raised = exc
            if self._life.state is ResourceState.OPENING:  # a failed start, raised here
                self._life.fail(exc, reported=True)
            raise
        finally:
            await self._shutdown(subscriptions, heartbeat, raised)

    async def _subscribe(self, bus: Bus, subscriptions: list[Subscription]) -> None:
        """Subscribe to every pattern (see :meth:`patterns`), watching each for failure."""
        for pattern in self.patterns():
            options = self._options.get(pattern, self.defaults)
            subscription = bus.subscribe(
                pattern,
                self._dispatcher(pattern),
                durable=self.name,
                options=options.but(actor=self.actor, sealing_key=self.sealing_key),
            )
            if await self._started(subscription, pattern):
                subscription.on_failure(lambda sub, error: self._failed(error))
                subscriptions.append(subscription)

    def _failed(self, error: BaseException) -> None:
        """A subscription or the heartbeat died for good: stop serving, loudly."""
        if self._life.fail(error):
            log.error("agent %s failed, it stops serving: %r", self.name, error)
        self._stop.set()

    async def _started(self, subscription: Subscription, pattern: str) -> bool:
        """Start ``subscription``; on a bind-only bus, a default subscription nobody
        provisioned (the policy does not let this agent consume there) is left out."""
        bus = self.bus
        ungranted = (
            not bus.provisions
            and bus.policy is not None
            and pattern not in self._handlers
            and pattern not in consumer_filters(bus.policy, self.actor)
        )
        if ungranted:
            log.info("%s: the policy grants no consumer for %r", self.name, pattern)
            return False
        try:
            await subscription.start()
        except NotProvisioned:
            if pattern in self._handlers:
                raise
            log.info("%s: no consumer provisioned for %r; not subscribed", self.name, pattern)
            return False
        return True

    async def _shutdown(
        self,
        subscriptions: list[Subscription],
        heartbeat: Loop | None,
        raised: BaseException | None,
    ) -> None:
        """Stop the subscriptions (in parallel) and the heartbeat, withdraw and announce
        the stop: every step, even when one fails; then raise the first failure (or, if
        the block raised, add it to that exception as a note)."""
        self._life.closing()
        steps = Steps(f"stopping agent {self.name!r}", log)
        try:
            async with asyncio.TaskGroup() as group:
                for sub in subscriptions:
                    group.create_task(steps.run(f"stopping {sub.durable}", sub.close))
            if heartbeat is not None:
                await steps.run(
                    "stopping the heartbeat", functools.partial(heartbeat.stop, cancel=True)
                )
                await steps.run("withdrawing from the registry", self._withdraw)
                await steps.run(
                    "announcing the stop", functools.partial(self._announce_phase, "stopped")
                )
        finally:
            self._bus = None
            error = self._life.closed(steps.first)
        if error is None or error is raised:
            return
        if raised is None:
            raise error
        raised.add_note(f"while stopping agent {self.name!r}: {error!r}")

    async def _withdraw(self) -> None:
        await withdraw(await self.bus.registry(), self.name, self.instance)

    async def _announce_phase(self, phase: str) -> None:
        await self.publish(
            AgentLifecycle(
                agent=self.name,
                phase="started" if phase == "started" else "stopped",
                instance=self.instance,
                capabilities=list(self.capabilities),
            )
        )

    async def _announce(self, started: float) -> None:
        """Put (or refresh) this instance's signed registry entry."""
        await announce(
            await self.bus.registry(),
            self.identity,
            instance=self.instance,
            capabilities=self.capabilities,
            started_at=started,
            sealing_key=self.sealing_key.public,
        )

    async def _heartbeat(self, started: float) -> None:
        """Refresh the registry entry every ``registry_ttl / 3`` seconds; a failed beat is
        logged and the next one tried (a reconnect passes)."""
        bus = self.bus
        interval = bus.registry_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._announce(started)
            except Exception as exc:  # keep beating through a reconnect
                log.warning("heartbeat of %s failed: %r", self.name, exc)

    def _dispatcher(self, pattern: str) -> Handler:
        async def dispatch(event: Event) -> None:
            handlers = self._handlers.get(pattern)
            if handlers is None:
                if any(matches(p, event.subject) for p in self._handlers):
                    return  # another handler's own subscription delivers it
                if self._fallback is None:
                    self.unhandled += 1
                    log.info("%s: no handler for %s (%s)", self.name, event.subject, event.type)
                    return
                handlers = [self._fallback]
            token = _current_event.set(event)
            try:
                for handler in handlers:
                    await handler(event)
            finally:
                _current_event.reset(token)

        return dispatch
