"""The bus: one connection to NATS (or an embedded server), the events stream, and the
operations agents use: publish, subscribe, request, and the registry. Subscribing is its
base ``_bus_subscribe.Subscribing``'s, the registry and direct requests its base
``_bus_directory.AgentDirectory``'s; the bus lends them what it holds once open."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

from eventwire_security import (
    DEFAULT_MAX_BYTES,
    Actor,
    Keyring,
    PolicyDenied,
    RecipientKey,
    ReplayWindow,
)

from ._auditing import Auditor
from ._bus_directory import AgentDirectory
from ._bus_subscribe import Subscribing
from ._codec import MSG_ID_HEADER, Codec
from ._connection import check_connection_name, connect_nats
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
from ._options import ConsumerWiring
from ._outbox import DEFAULT_OUTBOX_MAX_BYTES, Outbox
from ._publisher import NO_LEADER_WINDOW, AckedPublisher
from ._recipients import Recipients
from ._resource import ResourceState, StatefulResource
from ._seen import SeenIds
from ._sending import PublishAck, Sender
from ._server import EmbeddedServer
from ._streams import declared, ensure_declared, events_stream_name
from ._subjects import DEFAULT_ROOT, check_partitions, check_token
from ._vclock import stamped
from ._work import check_deliver, work_subject

if TYPE_CHECKING:
    import os
    import ssl
    from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
    from datetime import datetime

    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext

    from eventwire_security import CompiledPolicy, Identity, Policy

    from ._audit_log import AuditLog
    from ._codec import Rejection, SecurityStats, Signed
    from ._event import Publishable
    from ._health import Health, HealthSettings
    from ._options import SubscribeOptions
    from ._resiliency import Resiliency
    from ._resource import Steps
    from ._tls import TLS
    from ._vclock import Clock
    from ._work import Deliver

log = logging.getLogger("eventwire.bus")
DEFAULT_REGISTRY_TTL = 15.0
_SIGN_CHUNK = 128
# An event must be stored within a day of being signed (a replay stored later is refused as
# too-old; its id is remembered that long to refuse replays inside it); 30 s of clock skew.
DEFAULT_REPLAY_WINDOW = ReplayWindow(max_age=24 * 3600.0, skew=30.0)


async def _signed_chunks(
    codec: Codec, items: Sequence[Publishable], identity: Identity, **context: Any
) -> AsyncGenerator[list[Signed], None]:
    """``items`` signed a chunk at a time, as ``publish_many`` sends them."""
    for start in range(0, len(items), _SIGN_CHUNK):
        yield await codec.sign_batch(items[start : start + _SIGN_CHUNK], identity, **context)


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


class Bus(StatefulResource, AgentDirectory, Subscribing):
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
        registry_ttl = _seconds("registry_ttl", registry_ttl)
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
        Subscribing.__init__(self)
        AgentDirectory.__init__(self, registry_ttl, resiliency, create_registry=provision)
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
        self._undo.append(("stopping the verifying thread", codec.close))
        window, replicas = self._replay_window, self._replicas
        horizon = None if window is None else window.horizon
        topology = declared(
            self.root, replicas=replicas, partitions=self.partitions, replay_horizon=horizon,
            registry_ttl=self.registry_ttl, dedupe_window=self._dedupe_window,
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
        self._reset_pulls()
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
        await self._stop_subscriptions(steps)
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
        async with contextlib.aclosing(
            _signed_chunks(codec, items, identity, traceparent=traceparent)
        ) as chunks:
            return await self._sender.send_many(publisher, chunks, window=window, timeout=timeout)

    def _wiring(self, options: SubscribeOptions) -> ConsumerWiring:
        """What a new subscription with ``options`` borrows from the open bus (its reader
        checked by the bus policy, if any)."""
        compiled = self._may(options.actor)
        link = self._running("subscribe")
        return ConsumerWiring(
            nc=link.nc,
            js=link.js,
            codec=link.codec,
            stream=self.stream,
            dead_letters=link.dlq,
            provision=self._provision,
            processed=link.processed,
            seen=link.seen,
            may_consume=compiled.may_consume if compiled is not None else None,
            sealing_key=options.sealing_key,
            lookback=None if self._replay_window is None else self._replay_window.horizon,
        )

    async def health(self, settings: HealthSettings | None = None) -> Health:
        """This bus's health score, status, reasons, liveness and readiness (see
        :mod:`eventwire._health` for the formula); it does not raise for a closed bus."""
        from ._health import bus_health

        return await bus_health(self, settings)


# ``connect(...)`` reads better at the call site; it is the Bus constructor, nothing more.
connect = Bus
