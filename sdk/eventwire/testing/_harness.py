"""The agent harness of the pytest plugin: run agents on a real bus, publish as anyone,
wait for verified events, refusals and dead letters. No pytest import: usable anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import TYPE_CHECKING, Literal

from eventwire import (
    Agent,
    DeadLetter,
    Event,
    EventwireError,
    Identity,
    InvalidArgument,
    Keyring,
    Rejection,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from types import TracebackType
    from typing import Unpack

    from eventwire import (
        Bus,
        DeliveryKeywords,
        Publishable,
        PublishAck,
        RecipientKey,
        Subscription,
    )

_POLL = 0.02


class NotReceived(EventwireError, AssertionError):
    """What a test waited for did not arrive in time. The message says what did arrive
    (and what was refused), so the failing assertion explains itself."""


class Identities:
    """The ``eventwire_identity`` fixture: ``eventwire_identity("alice")`` is alice's identity
    in the bus's tenant, made on first use and the same one for the rest of the test; it is
    trusted by the test's keyring unless ``trusted=False`` (a stranger whose events are
    refused as ``unknown-key``)."""

    def __init__(self, tenant: str, keyring: Keyring) -> None:
        self.tenant = tenant
        self.keyring = keyring
        self._made: dict[str, Identity] = {}

    def __call__(self, agent: str, *, trusted: bool = True) -> Identity:
        identity = self._made.get(agent)
        if identity is None:
            identity = self._made[agent] = Identity.generate(self.tenant, agent)
        if trusted and identity.kid not in self.keyring:
            self.keyring.add(identity.trusted())
        return identity


class _Collector:
    """Every verified event on one pattern, from the start of the stream, in stream order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.arrived = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.events.append(event)
        self.arrived.set()


def _positive(value: float, field: str, *, integer: bool = False) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not 0 < value < float("inf"):
        kind = "an int >= 1" if integer else "a number of seconds > 0"
        raise InvalidArgument(f"must be {kind}, got {value!r}", field=field)


class Harness:
    """The ``eventwire_harness`` fixture: agents on the test's bus, on a real server.

    ``async with harness.run(agent)`` serves an agent (subscribed, registered and announced
    inside the block; drained and withdrawn after it). ``await harness.publish(item,
    as_="alice")`` signs and stores an event as anyone. ``await harness.received(pattern,
    n=2)`` returns the first ``n`` verified events on ``pattern`` (an independent durable
    consumer reading the test's stream from its start, so events published before the call
    count). ``harness.refused`` lists every refusal the bus's consumers reported (one per
    consumer that refused the message: each verifies on its own). ``await
    harness.dead_letters(n=1)`` waits for the dead-letter queue. Acks, redelivery, retry
    backoff and dead-lettering are JetStream's own: nothing is simulated.
    """

    def __init__(self, bus: Bus, identities: Identities, refused: list[Rejection]) -> None:
        self.bus = bus
        self.identities = identities
        self.refused = refused
        self._collectors: dict[str, _Collector] = {}
        self._subscriptions: list[Subscription] = []

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the harness's own consumers (the bus stops the rest)."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.close()

    def agent(
        self,
        name: str,
        *,
        capabilities: Sequence[str] = (),
        roles: Sequence[str] = (),
        **defaults: Unpack[DeliveryKeywords],
    ) -> Agent:
        """An :class:`Agent` of the bus's tenant with ``eventwire_identity(name)`` (trusted);
        ``defaults`` are its delivery options (``max_in_flight=4``, ``retry=...``)."""
        identity = self.identities(name)
        return Agent(name, capabilities=capabilities, identity=identity, roles=roles, **defaults)

    @contextlib.asynccontextmanager
    async def run(self, agent: Agent, *, drain_timeout: float | None = 5.0) -> AsyncIterator[Agent]:
        """Serve ``agent`` on the test's bus for the block; its key is trusted while it does."""
        if not isinstance(agent, Agent):
            raise InvalidArgument(f"must be an Agent, got {type(agent).__name__}", field="agent")
        async with agent.serve(self.bus, drain_timeout=drain_timeout) as serving:
            yield serving

    def _signer(self, as_: str | Identity | Agent) -> Identity:
        if isinstance(as_, Agent):
            return as_.identity
        if isinstance(as_, Identity):
            return as_
        if isinstance(as_, str):
            return self.identities(as_)
        detail = f"must be an agent name, an Identity or an Agent, got {type(as_).__name__}"
        raise InvalidArgument(detail, field="as_")

    async def publish(  # noqa: PLR0913 - the event, who signs, then the bus's publish options
        self,
        item: Publishable,
        *,
        as_: str | Identity | Agent = "tester",
        partition_key: str | None = None,
        ttl: float | None = None,
        seal_to: Sequence[str | RecipientKey] = (),
        deliver: Literal["all", "one"] = "all",
        correlation_id: str | None = None,
    ) -> PublishAck:
        """Sign ``item`` as ``as_`` (an agent name: its trusted test identity; an
        :class:`Identity`, trusted or not; or an :class:`Agent`) and store it; returns the
        JetStream ack. The other keywords are :meth:`Bus.publish`'s."""
        signer = self._signer(as_)
        actor = as_.actor if isinstance(as_, Agent) else None
        return await self.bus.publish(
            item, identity=signer, actor=actor, partition_key=partition_key, ttl=ttl,
            seal_to=seal_to, deliver=deliver, correlation_id=correlation_id,
        )  # fmt: skip

    async def _collector(self, pattern: str) -> _Collector:
        collector = self._collectors.get(pattern)
        if collector is None:
            collector = _Collector()
            durable = "harness" + secrets.token_hex(4)
            subscription = self.bus.subscribe(pattern, collector, durable=durable, start="all")
            await subscription.start()
            self._subscriptions.append(subscription)
            self._collectors[pattern] = collector
        return collector

    async def received(self, pattern: str, n: int = 1, *, timeout: float = 5.0) -> list[Event]:
        """The first ``n`` verified events on ``pattern`` (logical subjects, NATS wildcards),
        in stream order; :class:`NotReceived` if fewer arrive within ``timeout`` seconds."""
        _positive(n, "n", integer=True)
        _positive(timeout, "timeout")
        collector = await self._collector(pattern)
        deadline = time.monotonic() + timeout
        while len(collector.events) < n:
            collector.arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise NotReceived(self._missing(f"{n} event(s) on {pattern!r}", collector.events))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await collector.arrived.wait()
        return collector.events[:n]

    async def dead_letters(self, n: int = 1, *, timeout: float = 10.0) -> list[DeadLetter]:
        """The first ``n`` entries of the dead-letter queue; :class:`NotReceived` if fewer
        are there within ``timeout`` seconds."""
        _positive(n, "n", integer=True)
        _positive(timeout, "timeout")
        found = await _poll(lambda: self.bus.dead_letters.list(limit=n), n, timeout)
        if len(found) < n:
            raise NotReceived(self._missing(f"{n} dead letter(s)", found))
        return found

    def _missing(self, wanted: str, got: Sequence[Event | DeadLetter]) -> str:
        seen = ", ".join(sorted({item.subject for item in got})) or "nothing"
        refusals = "; ".join(f"{r.reason} on {r.wire_subject}" for r in self.refused[-5:])
        return f"expected {wanted}, got {len(got)} ({seen})" + (
            f"; refused: {refusals}" if refusals else ""
        )


async def _poll(
    ask: Callable[[], Awaitable[list[DeadLetter]]], n: int, timeout: float
) -> list[DeadLetter]:
    """Ask until ``n`` items come back or ``timeout`` passes; the last answer."""
    deadline = time.monotonic() + timeout
    found = await ask()
    while len(found) < n and time.monotonic() < deadline:
        await asyncio.sleep(_POLL)
        found = await ask()
    return found
