"""The bus: one connection to NATS (or an embedded server), the events stream, and the
operations agents use: publish, subscribe, request, and the registry."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
from typing import TYPE_CHECKING, overload

from eventwire_security import (
    DEFAULT_MAX_BYTES,
    Actor,
    Keyring,
    PolicyDenied,
    RecipientKey,
    ReplayWindow,
)

from ._auditing import Auditor
from ._calls import Caller, loads_of
from ._codec import MSG_ID_HEADER, Codec
from ._connection import check_connection_name, connect_nats
from ._consumer import Subscription
from ._direct import request, serve_requests
from ._dlq import DeadLetterQueue
from ._errors import (
    ClosedResource,
    ConfigError,
    ConnectionFailed,
    Forbidden,
    InvalidArgument,
    checked_name,
    mapped_nats_errors,
)
from ._idempotency import DEFAULT_WINDOW, ProcessedIds
from ._link import Link, close_connection
from ._observe import count_refused, current_traceparent, observed_publish
from ._options import ConsumerWiring, durable_name, options_of
from ._outbox import DEFAULT_OUTBOX_MAX_BYTES, Outbox
from ._partitions import chosen_partitions, consumer_plan, partitioned
from ._publisher import NO_LEADER_WINDOW, AckedPublisher
from ._recipients import Recipients
from ._registry import list_agents, open_registry
from ._resource import ResourceState, StatefulResource
from ._seen import SeenIds
from ._sending import PublishAck, Sender
from ._server import EmbeddedServer
from ._streams import declared, ensure_declared, events_stream_name
from ._subjects import DEFAULT_ROOT, check_partitions, check_token
from ._vclock import stamped
from ._work import (
    check_deliver,
    checked_capability,
    serving,
    until_served,
    work_status,
    work_subject,
)

if TYPE_CHECKING:
    import os
    import ssl
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
    from datetime import datetime
    from typing import Unpack

    from nats.aio.client import Client as NatsClient
    from nats.aio.subscription import Subscription as NatsSubscription
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from eventwire_security import CompiledPolicy, Identity, Policy

    from ._audit_log import AuditLog
    from ._batches import Batch
    from ._breaker import Breakers
    from ._choose import Load, Strategy, StrategyFunction
    from ._codec import Rejection, SecurityStats, Signed
    from ._direct import RequestHandler
    from ._event import Event, Publishable
    from ._health import Health, HealthSettings
    from ._options import SubscribeKeywords, SubscribeOptions
    from ._partitions import PartitionedSubscription
    from ._registry import AgentInfo
    from ._resiliency import Resiliency
    from ._resource import Steps
    from ._tls import TLS
    from ._vclock import Clock
    from ._work import Deliver, WorkStatus

log = logging.getLogger("eventwire.bus")
DEFAULT_REGISTRY_TTL = 15.0
_SIGN_CHUNK = 128
# An event must be stored within a day of being signed (a replay stored later is refused as
# too-old; its id is remembered that long to refuse replays inside it); 30 s of clock skew.
DEFAULT_REPLAY_WINDOW = ReplayWindow(max_age=24 * 3600.0, skew=30.0)


def _seconds(field: str, value: object) -> float:
    """``value`` if it is a finite number of seconds > 0, else :class:`InvalidArgument`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidArgument(f"must be a finite number of seconds > 0, got {value!r}", field=field)
    return float(value)


class Bus(StatefulResource):
    """A connection for one tenant, used as ``async with connect(...) as bus``.

    With no ``url`` an embedded ``nats-server -js`` is started on a free 127.0.0.1 port
    (data in ``store_dir`` or a temporary directory) and stopped on exit; ``url`` may list
    several servers, comma-separated. Publishes wait up to ``leader_wait`` seconds for a
    stream leader (an election) before failing. ``on_reject`` is called on the event loop
    for every received message refused before a handler saw it. With ``provision=False``
    (an agent whose NATS user has ``eventwire_security.compile_permissions``) the bus
    creates no stream, bucket or consumer: it binds to what an admin provisioned and raises
    :class:`NotProvisioned` for what is missing; pass the agent's own ``inbox_prefix``
    (``eventwire_security.private_inbox_prefix``).
    With ``partitions`` = n the events stream assigns keyed events to n partitions
    (:meth:`subscribe_partitioned`). ``resiliency`` sets the timeouts, retries and circuit
    breakers of direct calls per target (:class:`~eventwire.Resiliency`).
    With ``outbox`` (a file path) a publish that cannot reach the server is queued there
    on disk (``PublishAck.queued``) and flushed when the server is back, instead of raising
    :class:`PublishUnreachable`; at most ``outbox_max_bytes`` (see ``_outbox``).

    ``state`` is NEW, OPENING, RUNNING, CLOSING, then CLOSED (or FAILED: see
    :class:`~eventwire.ResourceState`); a bus that is not running raises
    :class:`ClosedResource` when used. ``close()`` stops the subscriptions, the audit
    writer and the publisher, drains and closes the connection and stops the embedded
    server, every step even when one fails, and raises the first failure.
    """

    def __init__(  # noqa: PLR0913 - connect(...): the public constructor, all keywords
        self,
        url: str | None = None,
        *,
        tenant: str = "default",
        keyring: Keyring | None = None,
        root: str = DEFAULT_ROOT,
        store_dir: str | None = None,
        registry_ttl: float = DEFAULT_REGISTRY_TTL,
        replicas: int = 1,
        name: str = "eventwire",
        on_reject: Callable[[Rejection], None] | None = None,
        connect_timeout: float = 10.0,
        dedupe_window: float = DEFAULT_WINDOW,
        replay_window: ReplayWindow | None = DEFAULT_REPLAY_WINDOW,
        policy: Policy | None = None,
        audit_identity: Identity | None = None,
        admins: Keyring | None = None,
        leader_wait: float = NO_LEADER_WINDOW,
        provision: bool = True,
        inbox_prefix: str | None = None,
        partitions: int = 0,
        tls: TLS | ssl.SSLContext | None = None,
        resiliency: Resiliency | None = None,
        outbox: str | os.PathLike[str] | None = None,
        outbox_max_bytes: int = DEFAULT_OUTBOX_MAX_BYTES,
    ) -> None:
        self.tenant = checked_name("tenant", tenant)
        self.partitions = check_partitions(partitions)
        self.root = check_token(root, field="root")
        super().__init__(f"bus {self.tenant}/{self.root}", log)
        self.keyring = keyring if keyring is not None else Keyring()
        self.stream = events_stream_name(root)
        self._url = url
        self._store_dir = store_dir
        self._registry_ttl = _seconds("registry_ttl", registry_ttl)
        self._replicas = replicas
        self._name = check_connection_name(name)
        self._on_reject = on_reject
        self._connect_timeout = connect_timeout
        self._dedupe_window = _seconds("dedupe_window", dedupe_window)
        self._replay_window = replay_window
        self.policy = policy
        self._audit_identity = audit_identity
        self._admins = admins
        self._leader_wait = leader_wait
        self._provision = provision
        self._inbox_prefix = inbox_prefix
        self._tls = tls
        self._recipients = Recipients(self.agents)
        self._compiled: dict[Actor, CompiledPolicy] = {}
        self._server: EmbeddedServer | None = None
        self._link: Link | None = None  # set once open; kept after close (stats)
        # how to release what the open acquired so far, in order (undone last first)
        self._undo: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        self._registry: KeyValue | None = None
        self._subscriptions: list[Subscription] = []
        self._responders: list[NatsSubscription] = []
        self._calls = Caller(resiliency)
        max_age = None if replay_window is None else replay_window.max_age + replay_window.skew
        self._outbox = None if outbox is None else Outbox(outbox, outbox_max_bytes, max_age=max_age)
        self._sender = Sender(self.stream, self._outbox, leader_wait)

    @property
    def url(self) -> str:
        if self._server is not None:
            return self._server.url
        if self._url is None:
            raise ClosedResource(f"{self._life.name} has no server yet", state=self.state)
        return self._url

    @property
    def server(self) -> EmbeddedServer | None:
        """The embedded server, when the bus started one."""
        return self._server

    @property
    def security(self) -> SecurityStats:
        """How many events were verified and how many refused, by reason (also after
        the bus closed)."""
        if self._link is None:
            raise ClosedResource(f"{self._life.name} was never opened", state=self.state)
        return self._link.codec.stats

    def _running(self, doing: str) -> Link:
        """What the open bus holds; :class:`ClosedResource` unless it is running (a
        connection closed under it fails it: :class:`ResourceFailed`)."""
        link = self._link
        if link is not None and link.nc.is_closed and self.state is ResourceState.RUNNING:
            self._background_failed(ConnectionFailed("the connection was closed under the bus"))
        self._life.check(doing)
        assert link is not None
        return link

    @property
    def jetstream(self) -> JetStreamContext:
        """The bus's nats-py JetStream context (for admin tasks the SDK does not cover)."""
        return self._running("use JetStream").js

    @property
    def connection(self) -> NatsClient:
        """The bus's nats-py client (for core NATS tasks the SDK does not cover)."""
        return self._running("use the connection").nc

    @property
    def replicas(self) -> int:
        return self._replicas

    @property
    def provisions(self) -> bool:
        """Whether this bus creates what is missing (``provision=True``) or only binds."""
        return self._provision

    @property
    def dead_letters(self) -> DeadLetterQueue:
        """The dead-letter queue: ``list``, ``get``, ``redrive``, ``purge``."""
        return self._running("use the dead-letter queue").dlq

    async def _open(self) -> None:
        with mapped_nats_errors("opening the bus (streams, buckets)"):
            nc = await self._connect()
            self._link = await self._open_streams(nc)
        if self._outbox is not None:
            await self._outbox.open(self._link.publisher, lambda: nc.is_connected)
            self._undo.append(("closing the outbox", self._outbox.close))

    async def _connect(self) -> NatsClient:
        if self._url is None:
            server = EmbeddedServer(store_dir=self._store_dir)
            await server.start()
            self._server = server
            self._undo.append(("stopping the embedded server", server.close))
        nc = await connect_nats(
            self.url, self._name, self._connect_timeout, self._on_reconnected, self._inbox_prefix,
            tls=self._tls,
        )  # fmt: skip
        self._undo.append(("draining and closing the connection", lambda: close_connection(nc)))
        return nc

    async def _open_streams(self, nc: NatsClient) -> Link:
        js = nc.jetstream()
        codec = Codec(
            tenant=self.tenant,
            root=self.root,
            keyring=self.keyring,
            max_bytes=min(DEFAULT_MAX_BYTES, nc.max_payload),
            on_reject=self._rejected,
            replay=self._replay_window,
            partitions=self.partitions,
        )
        window, replicas = self._replay_window, self._replicas
        horizon = None if window is None else window.horizon
        topology = declared(
            self.root, replicas=replicas, partitions=self.partitions, replay_horizon=horizon,
            registry_ttl=self._registry_ttl, dedupe_window=self._dedupe_window,
        )  # fmt: skip
        await ensure_declared(js, topology, create=self._provision)
        create = False  # every declared stream and bucket exists now: bind to them
        publisher = AckedPublisher(nc)
        self._undo.append(("closing the publisher", publisher.close))
        await publisher.open()
        auditor = await Auditor.open(
            js, publisher, self.root,
            actor=f"{self.tenant}/{self._name}", writer=self._audit_identity,
            replicas=replicas, admins=self._admins, keyring=self.keyring, create=create,
        )  # fmt: skip
        self._undo.append(("closing the audit writer", auditor.close))
        processed = await ProcessedIds.open(
            js, self.root, self._dedupe_window, replicas, create=create, publisher=publisher
        )
        seen = None
        if horizon is not None:
            seen = await SeenIds.open(js, publisher, self.root, horizon, replicas, create=create)
        dlq = DeadLetterQueue(js, publisher, self.root, codec=codec, seen=seen)
        return Link(nc, js, codec, publisher, auditor, processed, seen, dlq)

    async def _on_reconnected(self) -> None:
        for subscription in self._subscriptions:
            subscription.reset_pull()
        if self._outbox is not None:
            self._outbox.wake()

    def _rejected(self, rejection: Rejection) -> None:
        count_refused(rejection.reason)
        if self._link is not None:
            self._link.auditor.refused(rejection)
        if self._on_reject is None:
            return
        try:
            self._on_reject(rejection)
        except Exception:  # the application's bug: logged, never a reason to stop consuming
            log.exception(
                "on_reject callback failed for %s (%s)", rejection.wire_subject, rejection.reason
            )

    @property
    def audit(self) -> AuditLog:
        """The tamper-evident audit log of this deployment (``<root>-audit``)."""
        return self._running("read the audit log").auditor.log

    async def _shutdown(self, steps: Steps) -> None:
        """Stop the subscriptions (in parallel), then release what the open acquired,
        last first: audit writer, publisher, connection (drained), embedded server."""
        subscriptions, self._subscriptions = self._subscriptions, []
        async with asyncio.TaskGroup() as group:
            for subscription in subscriptions:
                group.create_task(steps.run(f"stopping {subscription.durable}", subscription.close))
        while self._undo:
            step, undo = self._undo.pop()
            await steps.run(step, undo)

    def _may(self, actor: Actor | None) -> CompiledPolicy | None:
        """The bus policy compiled for ``actor`` (cached), or None without a policy."""
        if self.policy is None:
            return None
        if actor is None:
            raise ConfigError("this bus has a policy: say who acts (actor=...)")
        compiled = self._compiled.get(actor)
        if compiled is None:
            compiled = self._compiled[actor] = self.policy.for_actor(actor)
        return compiled

    def _check_publish(self, identity: Identity, actor: Actor | None, subject: str) -> None:
        if self.policy is None:
            return
        principal = identity.principal
        who = actor or Actor(principal.tenant, principal.agent)
        if who.source != principal.source:
            raise ConfigError(f"actor {who.source} is not the signer {principal.source}")
        compiled = self._may(who)
        assert compiled is not None
        try:
            compiled.check("publish", subject)
        except PolicyDenied as exc:
            if self._link is not None:
                self._link.auditor.note("refused", subject, "policy-denied", {"actor": who.source})
            raise Forbidden(who.source, "publish", subject, exc.reason) from None

    @observed_publish
    async def publish(  # noqa: PLR0913 - public: the event, then optional keywords
        self,
        item: Publishable,
        *,
        identity: Identity,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        partition_key: str | None = None,
        timeout: float = 5.0,
        attempts: int = 5,
        actor: Actor | None = None,
        seal_to: Sequence[str | RecipientKey] = (),
        ttl: float | None = None,
        deliver: Deliver = "all",
        clock: Clock | Mapping[str, int] | None = None,
        event_time: datetime | None = None,
    ) -> PublishAck:
        """Sign ``item`` as ``identity`` and store it; returns once JetStream acknowledged it.

        Transient failures (no responders during a leader election, timeouts, a reconnect)
        are retried with the same signed bytes, ``attempts`` times in all, each waiting
        ``timeout`` seconds for the ack; de-duplication makes the retries safe. With a bus
        policy, :class:`Forbidden` is raised before anything is signed or sent if ``actor``
        (default: the identity's agent, without capabilities or roles) may not publish.
        ``seal_to`` encrypts the data to recipients: agent names, ``capability:<name>``
        (every live agent with it, from the registry) or :class:`RecipientKey` objects.
        ``ttl`` (seconds) signs an expiry (``exp``): receivers refuse the event as
        ``expired`` once it is older than that. Without it an event never expires: it waits
        in the stream until its consumers come back, however long that takes.
        ``deliver="one"`` (for a capability subject, e.g. a ``HelpRequested``) hands the
        event to exactly one live agent with the capability instead of to every one (the
        default, ``"all"``): it is published on ``capability.<name>.work.<verb>``, which the
        capability's shared consumer serves; it waits there while nobody serves (see
        :meth:`work_status`, :meth:`until_served`).
        ``clock`` signs a vector clock (``vclock``, for :class:`CausalOrder`): a
        :class:`Clock` of the identity's source (ticked, kept once stored) or a mapping
        signed as given. ``event_time`` signs that CloudEvents ``time`` (a timezone-aware
        datetime: when it happened, for :class:`EventTimeOrder`) instead of now.
        When the server cannot be reached (every attempt failed) the bus's ``outbox``, if
        it has one, takes the signed event (``PublishAck.queued``); else
        :class:`PublishUnreachable` names the subject and the event id.
        """
        codec = self._running("publish").codec
        subject = item.subject()
        if check_deliver(deliver) == "one":
            subject = work_subject(subject)
        self._check_publish(identity, actor, subject)
        recipients = await self._recipients.keys(seal_to) if seal_to else None
        async with stamped(clock, identity.principal.source) as vclock:
            signed = codec.sign(
                item,
                identity,
                subject=subject,
                correlation_id=correlation_id,
                causation_id=causation_id,
                partition_key=partition_key,
                seal_to=recipients,
                ttl=ttl,
                traceparent=current_traceparent(),
                vclock=vclock,
                event_time=event_time,
            )
            return await self._send(signed, timeout=timeout, attempts=attempts)

    async def _send(self, signed: Signed, *, timeout: float, attempts: int) -> PublishAck:
        publisher = self._running("publish").publisher
        return await self._sender.send(publisher, signed, timeout=timeout, attempts=attempts)

    @property
    def outbox(self) -> Outbox | None:
        """The bus's outbox (``pending`` records, ``flushed`` so far), if it has one."""
        return self._outbox

    async def publish_report(
        self,
        item: Publishable,
        *,
        identity: Identity,
        key: str,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> PublishAck:
        """Publish an event that several observers may report alike (a failure): its
        ``Nats-Msg-Id`` is ``key`` instead of the signature's hash, so the stream keeps
        the first report and drops the others as duplicates."""
        self._check_publish(identity, None, item.subject())
        signed = self._running("publish").codec.sign(
            item, identity, correlation_id=correlation_id, causation_id=causation_id
        )
        headers = {**signed.headers, MSG_ID_HEADER: key}
        signed = dataclasses.replace(signed, msg_id=key, headers=headers)
        return await self._send(signed, timeout=5.0, attempts=5)

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

    async def publish_many(
        self,
        items: Sequence[Publishable],
        *,
        identity: Identity,
        window: int = 512,
        timeout: float = 10.0,
        actor: Actor | None = None,
    ) -> list[PublishAck]:
        """Sign and publish ``items`` pipelined, at most ``window`` awaiting their ack.

        Items are signed a chunk at a time, so a bad item raises before its chunk is sent
        but after earlier chunks were. Returns the acks in order; raises
        :class:`PublishFailed` if any event was not stored, or not acknowledged within
        ``timeout`` seconds after the last was sent (the others may have been stored).
        """
        link = self._running("publish")
        for publishable in items:
            self._check_publish(identity, actor, publishable.subject())
        codec, publisher = link.codec, link.publisher
        traceparent = current_traceparent()
        if self._sender.queueing:  # behind those: order kept
            signed = codec.sign_many(items, identity, traceparent=traceparent)
            return [await self._send(each, timeout=timeout, attempts=1) for each in signed]
        chunks = (
            codec.sign_many(items[start : start + _SIGN_CHUNK], identity, traceparent=traceparent)
            for start in range(0, len(items), _SIGN_CHUNK)
        )
        return await self._sender.send_many(publisher, chunks, window=window, timeout=timeout)

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Event], Awaitable[None]],
        *,
        durable: str,
        options: SubscribeOptions | None = None,
        **keywords: Unpack[SubscribeKeywords],
    ) -> Subscription:
        """A durable subscription: ``async with bus.subscribe(...)`` or ``await sub.start()``.

        How it delivers is a :class:`SubscribeOptions`: pass one as ``options``, or its
        fields as keywords (``max_in_flight=4, retry=...``; given both, the keywords
        win). Instances using the same ``durable`` name share the work. A handler that
        raises is retried per ``retry``; exceptions of the ``terminal`` types (and
        :class:`Unprocessable`) dead-letter the event at once. With ``idempotent`` the
        ids of handled events are kept (KV bucket ``<root>-processed``, for the bus's
        ``dedupe_window``) and redeliveries of them are acked without calling the handler.
        With ``replay_check`` (and a bus ``replay_window``) an event id arriving a second
        time as a new message is refused as a replay. A new consumer re-reads history with
        replay checks on: ``start="all"``, or from a point, ``start=FromSequence(n)``,
        ``FromTime(dt)`` or ``LastN(n)`` (it claims one replay horizon before the point
        without delivering it, so a copy of an earlier event is still refused).
        With a bus policy, ``actor`` is required and events it may not consume are refused
        before the handler (counted as ``policy-denied``). Sealed events addressed to
        ``sealing_key`` arrive opened; others arrive unreadable (``event.readable``).
        With ``key_order`` and ``max_in_flight`` > 1, events with the same partition key
        are handled one after another in stream order (retried in place on failure, so a
        later event never overtakes a failed one), different keys concurrently.
        On a partitioned bus ``partition`` = p consumes only keyed events of partition p,
        one at a time; ``"unkeyed"`` only events without a key (see ``_partitions``).
        The bus stops every subscription it made when it closes.
        """
        chosen = options_of(options, keywords)
        plan = consumer_plan(
            self.root, pattern, durable_name(check_token(durable, field="durable"), pattern),
            self.partitions, chosen.partition,
        )  # fmt: skip
        compiled = self._may(chosen.actor)
        link = self._running("subscribe")
        wiring = ConsumerWiring(
            nc=link.nc,
            js=link.js,
            codec=link.codec,
            stream=self.stream,
            dead_letters=link.dlq,
            provision=self._provision,
            processed=link.processed,
            seen=link.seen,
            may_consume=compiled.may_consume if compiled is not None else None,
            sealing_key=chosen.sealing_key,
            lookback=None if self._replay_window is None else self._replay_window.horizon,
        )
        subscription = Subscription(wiring, pattern, handler, plan=plan, options=chosen)
        self._subscriptions = [sub for sub in self._subscriptions if not sub.closed]
        self._subscriptions.append(subscription)
        return subscription

    def subscribe_partitioned(
        self,
        pattern: str,
        handler: Callable[[Event], Awaitable[None]],
        *,
        durable: str,
        partitions: Iterable[int] | None = None,
        unkeyed: bool = True,
        **keywords: Unpack[SubscribeKeywords],
    ) -> PartitionedSubscription:
        """One durable consumer per partition (of ``partitions``, default all n), each
        handling its events one at a time, so per-key order holds; partitions run in
        parallel. Instances with the same ``durable`` share partitions. With ``unkeyed``,
        events without a key go to one more consumer. ``keywords`` as for :meth:`subscribe`,
        except ``max_in_flight``, ``key_order`` and ``partition``, which it sets itself.
        """
        if not self.partitions:
            raise ConfigError(
                "subscribe_partitioned needs a partitioned bus: connect(partitions=n)"
            )
        chosen = chosen_partitions(partitions, self.partitions, unkeyed=unkeyed)
        return partitioned(
            chosen,
            options_of(None, keywords),
            lambda each: self.subscribe(pattern, handler, durable=durable, options=each),
        )

    def subscribe_batch(
        self,
        pattern: str,
        handler: Callable[[Batch], Awaitable[None]],
        *,
        durable: str,
        max_size: int = 100,
        options: SubscribeOptions | None = None,
        **keywords: Unpack[SubscribeKeywords],
    ) -> Subscription:
        """Like :meth:`subscribe`, but ``handler`` gets up to ``max_size`` events at once
        (what has arrived, without waiting for a full batch) and decides per event with
        :meth:`Batch.fail`; the others are acknowledged when it returns. ``max_size`` is
        the options' ``batch``."""
        if "batch" in keywords:
            raise InvalidArgument("a batch subscription's batch is max_size", field="batch")

        async def unused(event: Event) -> None:  # pragma: no cover - batches only
            raise AssertionError("batch subscriptions deliver batches")

        chosen = options_of(options, keywords).but(batch=max_size)
        subscription = self.subscribe(pattern, unused, durable=durable, options=chosen)
        subscription.use_batches(handler)
        return subscription

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
                create=self._provision,
            )
        return self._registry

    async def health(self, settings: HealthSettings | None = None) -> Health:
        """This bus's health score, status, reasons, liveness and readiness (see
        :mod:`eventwire._health` for the formula); it does not raise for a closed bus."""
        from ._health import bus_health

        return await bus_health(self, settings)

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


# ``connect(...)`` reads better at the call site; it is the Bus constructor, nothing more.
connect = Bus
