"""Agents: a name, capabilities and an identity; decorator handlers; registry and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventwire_security import (
    Actor,
    Identity,
    RecipientKey,
    SealingKey,
    consumer_filters,
)

from ._errors import (
    ConfigError,
    InvalidEvent,
    NotProvisioned,
    NotRunning,
    WrongTenant,
    checked_name,
)
from ._kinds import AgentLifecycle
from ._registry import announce, withdraw
from ._retry import DEFAULT_RETRY, RetryPolicy
from ._subjects import check_pattern, check_token, default_patterns, matches

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from ._bus import Bus, PublishAck
    from ._consumer import Subscription
    from ._direct import RequestHandler
    from ._event import Event, Publishable

    Handler = Callable[[Event], Awaitable[None]]

log = logging.getLogger("eventwire.agent")


@dataclass(frozen=True, slots=True)
class _Options:
    retry: RetryPolicy
    terminal: tuple[type[BaseException], ...]
    max_in_flight: int

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "retry": self.retry,
            "terminal": self.terminal,
            "max_in_flight": self.max_in_flight,
        }


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
    its id as causation id.
    """

    def __init__(
        self,
        name: str,
        *,
        capabilities: Sequence[str] = (),
        identity: Identity | None = None,
        tenant: str = "default",
        max_in_flight: int = 1,
        roles: Sequence[str] = (),
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
        self._max_in_flight = max_in_flight
        self._handlers: dict[str, list[Handler]] = {}
        self._options: dict[str, _Options] = {}
        self._fallback: Handler | None = None
        self._on_request: RequestHandler | None = None
        self._bus: Bus | None = None
        self._stop = asyncio.Event()
        self._serving = False

    @property
    def tenant(self) -> str:
        return self.identity.principal.tenant

    def on(
        self,
        pattern: str,
        *,
        retry: RetryPolicy | None = None,
        terminal: tuple[type[BaseException], ...] = (),
        max_in_flight: int | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register a handler for events whose logical subject matches ``pattern``.

        ``retry`` (default :data:`DEFAULT_RETRY`) spaces redeliveries after failures and
        bounds them; exceptions of the ``terminal`` types dead-letter the event at once.
        Handlers on the same pattern share one consumer, so they share these settings.
        """
        check_pattern(pattern)
        options = _Options(retry or DEFAULT_RETRY, terminal, max_in_flight or self._max_in_flight)
        if self._options.setdefault(pattern, options) != options:
            raise ConfigError(f"handlers on {pattern!r} must share retry/terminal/max_in_flight")

        def register(handler: Handler) -> Handler:
            self._handlers.setdefault(pattern, []).append(handler)
            return handler

        return register

    def _default_options(self) -> _Options:
        return _Options(DEFAULT_RETRY, (), self._max_in_flight)

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
    def serving(self) -> bool:
        """Whether the agent is subscribed, registered and announced."""
        return self._serving

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise NotRunning(f"agent {self.name!r} is not serving")
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
        """Subscribe, register, announce; on exit finish in-flight handlers and withdraw."""
        if bus.tenant != self.tenant:
            raise WrongTenant(self.tenant, bus.tenant)
        if self._bus is not None:
            raise NotRunning(f"agent {self.name!r} is already serving")
        if self.identity.kid not in bus.keyring:
            bus.keyring.add(self.identity.trusted())
        self._bus = bus
        self._stop.clear()
        subscriptions: list[Subscription] = []
        heartbeat: asyncio.Task[None] | None = None
        try:
            for pattern in self.patterns():
                subscription = bus.subscribe(
                    pattern,
                    self._dispatcher(pattern),
                    durable=self.name,
                    actor=self.actor,
                    sealing_key=self.sealing_key,
                    **self._options.get(pattern, self._default_options()).as_kwargs(),
                )
                if await self._started(subscription, pattern):
                    subscriptions.append(subscription)
            if self._on_request is not None:
                await bus.serve_requests(self.identity, self._on_request)
            started = time.time()
            await self._announce(started)
            heartbeat = asyncio.create_task(self._heartbeat(started), name=f"heartbeat:{self.name}")
            await self._announce_phase("started")
            self._serving = True
            yield self
        finally:
            self._serving = False
            await self._shutdown(subscriptions, heartbeat)

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
        self, subscriptions: list[Subscription], heartbeat: asyncio.Task[None] | None
    ) -> None:
        bus = self.bus
        try:
            for subscription in subscriptions:
                await subscription.stop()
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                await withdraw(await bus.registry(), self.name, self.instance)
                await self._announce_phase("stopped")
        finally:
            self._bus = None

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
