"""What an agent subscribes (its plan), and capabilities that change while it serves.

``await agent.add_capability(c)`` while serving subscribes what holding ``c`` means: the
``capability.<c>.*`` pattern (and handler patterns inside it) and the one-of-N work consumer
``c`` shares with every agent that has it, then refreshes the signed registry entry at
once, so ``bus.agents(capability=c)`` shows it before the next heartbeat.
``await agent.remove_capability(c)`` refreshes the entry first (nobody picks it for ``c``
any more), then stops those subscriptions: their durable consumers are kept, as on a normal
stop; events pulled but not yet handled are released at once to the other agents with ``c``
(or wait in the stream), in-flight handlers finish and are acknowledged, so nothing is
lost. Not serving, both only change the list the next ``serve`` uses. (A handler pattern
inside ``capability.<c>.*`` is subscribed at ``serve`` whatever the capabilities, as before;
removing ``c`` stops it too, adding ``c`` starts it again.) Broadcasts published while the
agent lacked ``c`` wait in its durable consumer and arrive when it gains ``c`` again.

Changes are serialized by one lock per agent (and a stop waits for the change under way);
a removal waits for its handlers after it released the lock, so a handler may change
capabilities meanwhile. The bus policy applies as at ``serve``, to the actor with the
capabilities held now: to publishing and to the subscriptions a change starts (on a
bind-only bus a default subscription the policy grants no consumer for is left out,
logged). With a policy, adding ``c`` also renews the running subscriptions inside
``capability.<c>.*`` (checked for the actor without ``c``); other subscriptions keep the
actor they started with until the next serve. A handler cannot remove the capability whose
subscription delivered its event (stopping it waits for the handler): :class:`BusyResource`;
nor add one that renews its subscription.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from typing import TYPE_CHECKING, NamedTuple

from eventwire_security import consumer_filters
from eventwire_security._policy import pattern_contains

from ._errors import BusyResource, ConfigError, InvalidArgument, NotFound, NotProvisioned
from ._resource import ResourceState, Steps
from ._work import WORK, WORK_ACK_WAIT, WORK_BATCH, checked_capability, work_pattern

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ._agent import Agent
    from ._bus import Bus
    from ._consumer import Subscription
    from ._event import Event
    from ._options import SubscribeOptions

log = logging.getLogger("eventwire.agent")

# the pattern of the agent's subscription whose handler runs in this context
_delivering: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eventwire_delivering", default=None
)


class PlanStep(NamedTuple):
    """One subscription an agent makes: its pattern, durable owner, handler and options;
    ``needed``: narrower handler patterns depend on it (bind-only bus)."""

    pattern: str
    durable: str
    dispatch: Callable[[Event], Awaitable[None]]
    options: SubscribeOptions
    needed: bool = False


def belongs(pattern: str, capability: str) -> bool:
    """Whether an agent consumes ``pattern`` because it holds ``capability``: the work
    pattern of ``capability``, or a pattern inside ``capability.<capability>.*``."""
    if pattern == work_pattern(capability):
        return True
    return pattern_contains(f"capability.{capability}.*", pattern)


def subscription_plan(agent: Agent, bus: Bus) -> list[PlanStep]:
    """What ``agent`` subscribes: every pattern (:meth:`Agent.patterns`) and each
    capability's one-of-N work. On a bind-only bus with a policy a handler pattern inside a
    granted one is delivered by that pattern's provisioned consumer (see :func:`_folds`)."""
    folds = _folds(agent, bus)
    plan: list[PlanStep] = []
    for pattern in dict.fromkeys([*agent.patterns(), *folds.values()]):
        if pattern in folds:
            continue  # a broader consumer delivers its events
        inner = [narrower for narrower, outer in folds.items() if outer == pattern]
        options = _shared_options(agent, pattern, inner)
        dispatch = agent._dispatcher(pattern, inner)
        plan.append(PlanStep(pattern, agent.name, _tagged(pattern, dispatch), options, bool(inner)))
    work = agent.defaults.but(ack_wait=WORK_ACK_WAIT, idempotent=True, batch=WORK_BATCH)
    for capability in agent.capabilities:
        pattern = work_pattern(capability)
        plan.append(PlanStep(pattern, WORK, _tagged(pattern, agent._work_dispatch), work))
    return plan


def _tagged(
    pattern: str, dispatch: Callable[[Event], Awaitable[None]]
) -> Callable[[Event], Awaitable[None]]:
    """``dispatch``, run with the pattern of its subscription known (see :func:`_delivering`)."""

    @functools.wraps(dispatch)
    async def tagged(event: Event) -> None:
        token = _delivering.set(pattern)
        try:
            await dispatch(event)
        finally:
            _delivering.reset(token)

    return tagged


def _folds(agent: Agent, bus: Bus) -> dict[str, str]:
    """On a bind-only bus with a policy, the handler patterns that have no consumer of
    their own, each with the granted pattern whose provisioned consumer delivers its
    events (the SDK passes them on by subject); a pattern no grant covers is an error
    that names the patterns the policy grants."""
    if bus.provisions or bus.policy is None:
        return {}
    granted = consumer_filters(bus.policy, agent.actor)
    folds: dict[str, str] = {}
    for pattern in agent._handlers:
        if pattern in granted:
            continue
        outer = next((g for g in granted if pattern_contains(g, pattern)), None)
        if outer is None:
            allowed = ", ".join(repr(g) for g in granted) or "none"
            raise NotProvisioned(
                f"agent {agent.name!r} handles {pattern!r}, but the policy lets it consume "
                f"no pattern that covers it (granted: {allowed}); handle one of those, or "
                "a pattern inside one"
            )
        folds[pattern] = outer
    return folds


def _shared_options(agent: Agent, pattern: str, inner: Sequence[str]) -> SubscribeOptions:
    options = agent._options.get(pattern, agent.defaults)
    for narrower in inner:
        if agent._options.get(narrower, agent.defaults) != options:
            raise ConfigError(
                f"handlers on {narrower!r} are delivered by the consumer provisioned for "
                f"{pattern!r} (this bind-only bus has none of their own): they must "
                "share its options"
            )
    return options


class Capabilities:
    """An agent's capability list and the lock that serializes its changes."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.lock = asyncio.Lock()


async def add_capability(agent: Agent, capability: str) -> None:
    """See :meth:`Agent.add_capability`."""
    name = checked_capability(capability)
    async with agent._caps.lock:
        if name in agent.capabilities:
            raise InvalidArgument(f"agent {agent.name!r} has {name!r} already", field="capability")
        bus = _live_bus(agent)
        stale = _stale(agent, bus, name)
        _not_waiting_for_itself(agent, name, stale)
        before = agent.capabilities
        agent._set_capabilities((*before, name))
        if bus is None:
            return
        try:
            opened = await _join(agent, bus, name, stale)
        except BaseException:
            agent._set_capabilities(before)
            raise
        for subscription in stale:
            agent._subscriptions.remove(subscription)
        agent._subscriptions.extend(opened)
        await _refresh(agent)
    await _leave(agent, name, stale)  # unlocked, as a removal
    log.info("%s: gained capability %r", agent.name, name)


def _stale(agent: Agent, bus: Bus | None, name: str) -> list[Subscription]:
    """With a bus policy, the running subscriptions inside ``capability.<name>.*`` (handler
    patterns, subscribed at serve without the capability): their policy check is of an
    actor without it, so they are replaced by ones of the actor with it."""
    if bus is None or bus.policy is None:
        return []
    return [s for s in agent._subscriptions if belongs(s.pattern, name)]


async def remove_capability(agent: Agent, capability: str) -> None:
    """See :meth:`Agent.remove_capability`."""
    name = checked_capability(capability)
    async with agent._caps.lock:
        if name not in agent.capabilities:
            held = ", ".join(repr(c) for c in agent.capabilities) or "none"
            raise NotFound(f"agent {agent.name!r} does not have capability {name!r} (has {held})")
        bus = _live_bus(agent)
        leaving = [s for s in agent._subscriptions if belongs(s.pattern, name)]
        _not_waiting_for_itself(agent, name, leaving)
        agent._set_capabilities(tuple(c for c in agent.capabilities if c != name))
        if bus is None:
            return
        await _refresh(agent)  # first: nobody picks it for the capability any more
        for subscription in leaving:
            agent._subscriptions.remove(subscription)
    await _leave(agent, name, leaving)  # unlocked: its handlers may change capabilities
    log.info("%s: lost capability %r", agent.name, name)


def _live_bus(agent: Agent) -> Bus | None:
    """The bus the agent serves on (None: not serving); BusyResource while it opens,
    closes or failed (its subscriptions are changing or gone)."""
    if agent.state is ResourceState.RUNNING:
        return agent.bus
    if agent.state in (ResourceState.NEW, ResourceState.CLOSED) or (
        agent.state is ResourceState.FAILED and agent._bus is None
    ):
        return None
    raise BusyResource(
        f"agent {agent.name!r} is {agent.state.name.lower()}: change its capabilities when it "
        "serves or is stopped",
        state=agent.state,
    )


def _not_waiting_for_itself(agent: Agent, name: str, leaving: Sequence[Subscription]) -> None:
    """BusyResource if the caller is a handler whose event one of ``leaving`` delivered:
    stopping that subscription waits for the handler, which would wait for the stop."""
    pattern = _delivering.get()
    if pattern is not None and any(s.pattern == pattern for s in leaving):
        raise BusyResource(
            f"agent {agent.name!r}: a handler of {pattern!r} cannot change capability "
            f"{name!r}: that stops the subscription that delivered its event, which waits "
            "for the handler; change it from another task"
        )


async def _join(
    agent: Agent, bus: Bus, name: str, stale: Sequence[Subscription]
) -> list[Subscription]:
    """Start the subscriptions ``name`` brings that are not running yet, or only ``stale``
    (all or none); the stale ones are stopped after the new ones started."""
    running = {s.pattern for s in agent._subscriptions if s not in stale}
    opened: list[Subscription] = []
    try:
        for step in subscription_plan(agent, bus):
            if step.pattern in running or not belongs(step.pattern, name):
                continue
            if (subscription := await agent._open_step(bus, step)) is not None:
                opened.append(subscription)
    except BaseException:
        steps = Steps(f"undoing capability {name!r} of agent {agent.name!r}", log)
        for subscription in opened:
            await steps.run(f"stopping {subscription.durable}", subscription.close)
        raise
    return opened


async def _leave(agent: Agent, name: str, leaving: Sequence[Subscription]) -> None:
    """Stop ``leaving`` in parallel (each lets its in-flight handlers finish); raise the
    first failure after all stopped."""
    steps = Steps(f"agent {agent.name!r}: stopping subscriptions of capability {name!r}", log)
    async with asyncio.TaskGroup() as group:
        for subscription in leaving:
            stop = subscription.close
            group.create_task(steps.run(f"stopping {subscription.durable}", stop))
    if steps.first is not None:
        raise steps.first


async def _refresh(agent: Agent) -> None:
    """Put the registry entry now; a failure is logged (the next heartbeat puts it)."""
    try:
        await agent._refresh_entry()
    except Exception as exc:
        log.warning("%s: refreshing the registry entry failed: %r", agent.name, exc)
