"""Reading the events stream as an observer: every stored message verified with the codec
the consumers use, nothing acknowledged, claimed or recorded.

:class:`EventReader` reads through an *ordered* consumer (ephemeral, in memory, no acks,
``max_deliver`` 1), so no durable consumer's pending or ack counts move, no replay claim is
made in ``<root>-seen`` and no refusal reaches the audit log. Each message becomes a
:class:`StoredEvent`: the verified :class:`Event`, or the :class:`Rejection` a consumer
would refuse it with, plus what the message only *claims* (shown, never trusted).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from eventwire_security import DEFAULT_MAX_BYTES, Keyring

from ._codec import SIGNATURE_HEADER, Codec, Rejection
from ._errors import ClosedResource, InvalidArgument, NotFound, mapped_nats_errors
from ._subjects import DEFAULT_ROOT, check_pattern, check_token, consumer_filters, from_wire
from ._subjects import KEYED as KEYED_TOKEN

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.api import StreamInfo
    from nats.js.client import JetStreamContext

    from eventwire_security import ReplayWindow

    from ._event import Event

__all__ = ["EventReader", "Flow", "FlowNode", "StoredEvent", "read_events", "trace_flow"]

# How long a follow-less read waits for the next message before it looks at the consumer
# again (a read of what is stored ends when the consumer has nothing pending).
_POLL = 1.0
_MAX_IDS = 200_000  # ids a read remembers to spot a replay (the oldest are forgotten first)
_CLAIMED_CHARS = 256  # what an unverified message claims is cut to this for display
_PARTITIONS = re.compile(r"\{\{\s*partition\(\s*(\d+)")
_CLAIMED = ("id", "type", "source", "subject", "correlationid", "causationid", "time")


def _printable(value: object) -> str | None:
    """A claimed string, safe to show: bounded, no control characters."""
    if not isinstance(value, str):
        return None
    text = value[:_CLAIMED_CHARS]
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _claims_of(body: bytes) -> dict[str, str]:
    """What a refused message claims (unverified, for display): a few string attributes."""
    if len(body) > DEFAULT_MAX_BYTES:
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(parsed, dict):
        return {}
    found = {name: _printable(parsed.get(name)) for name in _CLAIMED}
    return {name: value for name, value in found.items() if value is not None}


def _signature_kid(headers: Mapping[str, str] | None) -> str | None:
    """The ``kid`` a signature header names (unverified: for display only)."""
    value = None if headers is None else headers.get(SIGNATURE_HEADER)
    if not value or "." not in value:
        return None
    protected = value.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    except (ValueError, RecursionError):
        return None
    return _printable(header.get("kid")) if isinstance(header, dict) else None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One message of the events stream: ``event`` if it verified, else ``refusal`` (the
    reason a consumer refuses it with). ``claimed`` holds what a refused message says about
    itself (id, type, source, correlation...), unverified and only for display."""

    seq: int
    wire_subject: str
    stored: datetime
    size: int
    event: Event | None = None
    refusal: Rejection | None = None
    claimed: dict[str, str] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.event is not None

    @property
    def kid(self) -> str | None:
        if self.event is not None:
            return self.event.signer_kid
        return None if self.refusal is None else self.refusal.kid

    def attribute(self, name: str) -> str | None:
        """A CloudEvents attribute: verified, or as claimed by a refused message."""
        if self.event is None:
            return self.claimed.get(name)
        value = getattr(self.event, name)
        if isinstance(value, datetime):
            return value.isoformat()
        return None if value is None else str(value)

    def to_json(self) -> dict[str, Any]:
        """A JSON object for scripts (``eventwire tail --json``)."""
        out: dict[str, Any] = {
            "seq": self.seq,
            "wire_subject": self.wire_subject,
            "stored": self.stored.isoformat(),
            "size": self.size,
            "verified": self.verified,
            "kid": self.kid,
        }
        if self.event is not None:
            event = self.event
            out.update(
                id=event.id, source=event.source, type=event.type, subject=event.subject,
                time=event.time.isoformat(), correlationid=event.correlationid,
                causationid=event.causationid, sealed=event.sealed,
            )  # fmt: skip
        if self.refusal is not None:
            out["refusal"] = {"reason": self.refusal.reason, "detail": self.refusal.detail}
            out["claimed"] = dict(self.claimed)
        return out


def _since_time(since: timedelta | datetime) -> datetime:
    at = datetime.now(UTC) - since if isinstance(since, timedelta) else since
    if at.tzinfo is None:
        raise InvalidArgument("a start time needs a timezone", field="since")
    return at.astimezone(UTC)


def _checked_start(since: timedelta | datetime | None, seq: int | None, last: int | None) -> None:
    pairs = (("since", since), ("seq", seq), ("last", last))
    given = [name for name, value in pairs if value is not None]
    if len(given) > 1:
        raise InvalidArgument(f"choose one of since, seq and last, not {given}", field=given[1])
    for name, value in (("seq", seq), ("last", last)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgument(f"must be an integer >= 1, got {value!r}", field=name)
        if value is not None and value < 1:
            raise InvalidArgument(f"must be >= 1, got {value}", field=name)
    if isinstance(since, timedelta) and since.total_seconds() <= 0:
        raise InvalidArgument(f"must be a positive duration, got {since}", field="since")
    if since is not None and not isinstance(since, timedelta | datetime):
        raise InvalidArgument(f"a timedelta or datetime, got {since!r}", field="since")
    if isinstance(since, datetime) and since.tzinfo is None:
        raise InvalidArgument("a start time needs a timezone", field="since")


def _partitions_of(info: StreamInfo) -> int:
    """The partition count of an events stream, read from its subject transform."""
    transform = getattr(info.config, "subject_transform", None)
    destination = getattr(transform, "dest", None) or ""
    found = _PARTITIONS.search(destination)
    return int(found.group(1)) if found else 0


def uuid7_time(value: str) -> datetime | None:
    """When a UUIDv7 (an eventwire event id) was made, or None if ``value`` is not one."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None
    if parsed.version != 7:
        return None
    return datetime.fromtimestamp((parsed.int >> 80) / 1000, UTC)


class EventReader:
    """The stored events whose logical subject matches ``pattern``, each verified with
    ``keyring`` as a consumer of ``tenant`` under ``root`` would verify it (signature,
    claims, placement, time window; an id met twice at different sequences in one read is
    ``already-seen``). Read-only: an ordered consumer, no acks, no claims, no audit.

    Where to start: everything stored (default), ``since`` (a duration back from now, or a
    time), ``seq`` (a stream sequence) or ``last`` (the last n matching); one at most,
    else :class:`InvalidArgument`. Without ``follow`` the iteration ends after the last
    message stored when it reached it; with it, it waits for new ones until closed.
    ``async with read_events(nc, ...) as events: async for item in events: ...``
    """

    def __init__(  # noqa: PLR0913 - read_events(...): the public constructor, all keywords
        self,
        nc: NatsClient,
        *,
        tenant: str = "default",
        root: str = DEFAULT_ROOT,
        keyring: Keyring | None = None,
        pattern: str = ">",
        since: timedelta | datetime | None = None,
        seq: int | None = None,
        last: int | None = None,
        follow: bool = False,
        replay: ReplayWindow | None = None,
    ) -> None:
        from ._bus import DEFAULT_REPLAY_WINDOW
        from ._errors import checked_name

        self.tenant = checked_name("tenant", tenant)
        self.root = check_token(root, field="root")
        self.pattern = check_pattern(pattern)
        _checked_start(since, seq, last)
        self.keyring = keyring if keyring is not None else Keyring()
        self.follow = follow
        self._nc = nc
        self._start = (since, seq, last)
        self._replay = DEFAULT_REPLAY_WINDOW if replay is None else replay
        self._sub: Any = None  # nats-py's PushSubscription, once open
        self._codec: Codec | None = None
        self._ids: dict[str, int] = {}  # event id -> the stream sequence it was met at
        self._done = False
        # bodies that cannot matter to the caller are skipped unverified (trace_flow)
        self.prefilter: Callable[[bytes], bool] | None = None

    async def __aenter__(self) -> Self:
        from ._streams import events_stream_name

        js: JetStreamContext = self._nc.jetstream()
        stream = events_stream_name(self.root)
        with mapped_nats_errors(f"reading stream {stream!r}"):
            try:
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                raise NotFound(f"no events stream {stream!r} (root {self.root!r})") from None
            partitions = _partitions_of(info)
            self._codec = Codec(
                tenant=self.tenant, root=self.root, keyring=self.keyring,
                max_bytes=min(DEFAULT_MAX_BYTES, self._nc.max_payload),
                replay=self._replay, partitions=partitions,
            )  # fmt: skip
            filters = consumer_filters(self.root, self.pattern, partitions)
            self._sub = await js.subscribe(
                filters[0], stream=stream, ordered_consumer=True,
                config=self._config(filters),
            )  # fmt: skip
            info = await self._sub.consumer_info()
        self._done = not self.follow and info.num_pending == 0 and info.delivered.consumer_seq == 0
        return self

    def _config(self, filters: list[str]) -> ConsumerConfig:
        since, seq, _ = self._start
        config = ConsumerConfig(filter_subjects=filters if len(filters) > 1 else None)
        if since is not None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = _since_time(since)
        elif seq is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = seq
        else:
            config.deliver_policy = DeliverPolicy.ALL
        return config

    async def __aexit__(self, *exc_info: object) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with (
                mapped_nats_errors("closing the reader"),
                contextlib.suppress(nats.errors.ConnectionClosedError),
            ):
                await sub.unsubscribe()

    async def __aiter__(self) -> AsyncIterator[StoredEvent]:
        if self._sub is None:
            raise ClosedResource("the reader is not open: use `async with read_events(...)`")
        last = self._start[2]
        while not self._done:
            msg = await self._next()
            if msg is None:
                continue
            pending = msg.metadata.num_pending or 0
            self._done = not self.follow and pending == 0
            if last is not None and pending >= last:
                continue  # not among the last n stored when it was delivered
            if self.prefilter is not None and not self.prefilter(msg.data):
                continue
            yield self.inspect(msg)

    async def _next(self) -> Msg | None:
        """The next message, or None after a quiet second (a read without ``follow`` ends
        if the consumer has nothing pending then)."""
        with mapped_nats_errors("reading the events stream"):
            try:
                msg: Msg = await self._sub.next_msg(timeout=_POLL)
            except nats.errors.TimeoutError:
                if not self.follow:
                    info = await self._sub.consumer_info()
                    self._done = info.num_pending == 0
                return None
        return msg

    def inspect(self, msg: Msg) -> StoredEvent:
        """Verify one stored message as a consumer would (nothing recorded)."""
        assert self._codec is not None
        meta = msg.metadata
        seq = meta.sequence.stream
        stored = meta.timestamp
        result = self._codec.open(msg.data, msg.headers, msg.subject, stored.timestamp())
        if not isinstance(result, Rejection):
            first = self._ids.setdefault(result.id, seq)
            if len(self._ids) > _MAX_IDS:
                del self._ids[next(iter(self._ids))]
            if first == seq:
                return StoredEvent(seq, msg.subject, stored, len(msg.data), event=result)
            detail = f"event {result.id} from {result.source} seen before at stream seq {first}"
            result = Rejection("already-seen", detail, msg.subject, result.signer_kid)
        if result.kid is None:
            result = Rejection(result.reason, result.detail, result.wire_subject,
                               _signature_kid(msg.headers))  # fmt: skip
        claimed = _claims_of(msg.data)
        logical = from_wire(self.root, msg.subject)
        if logical is not None and not logical.startswith(KEYED_TOKEN + "."):
            claimed.setdefault("subject", logical)
        return StoredEvent(seq, msg.subject, stored, len(msg.data), refusal=result, claimed=claimed)


def read_events(  # noqa: PLR0913 - keywords only, see EventReader
    nc: NatsClient,
    *,
    tenant: str = "default",
    root: str = DEFAULT_ROOT,
    keyring: Keyring | None = None,
    pattern: str = ">",
    since: timedelta | datetime | None = None,
    seq: int | None = None,
    last: int | None = None,
    follow: bool = False,
) -> EventReader:
    """An :class:`EventReader` over the events stream of ``root`` on connection ``nc``
    (``bus.connection``, or any nats-py connection of the tenant's account)."""
    return EventReader(
        nc, tenant=tenant, root=root, keyring=keyring, pattern=pattern,
        since=since, seq=seq, last=last, follow=follow,
    )  # fmt: skip


# -- flows: the causation tree of one correlation id -------------------------------------------

# A flow's events are published after its first, whose id (a UUIDv7) is the correlation id:
# its read starts this long before that id's time (clock skew between publishers).
FLOW_SKEW = timedelta(minutes=5)


@dataclass(slots=True)
class FlowNode:
    """One stored event of a flow: ``offset`` after the flow's first event (stream store
    times, the server's clock), ``gap`` after its cause (None without a verified cause),
    ``note`` why it is not under its cause. Refused events never have children."""

    item: StoredEvent
    offset: timedelta
    gap: timedelta | None = None
    note: str | None = None
    children: list[FlowNode] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = self.item.to_json()
        out.update(
            offset_ms=round(self.offset.total_seconds() * 1000, 3),
            gap_ms=None if self.gap is None else round(self.gap.total_seconds() * 1000, 3),
            note=self.note,
            children=[child.to_json() for child in self.children],
        )
        return out


@dataclass(slots=True)
class Flow:
    """The causation tree of the events with one correlation id, from the stream."""

    correlation: str
    roots: list[FlowNode]

    def walk(self) -> list[tuple[FlowNode, int]]:
        """Every node with its depth, depth first, children in stream order."""
        out: list[tuple[FlowNode, int]] = []
        stack = [(node, 0) for node in reversed(self.roots)]
        while stack:
            node, depth = stack.pop()
            out.append((node, depth))
            stack.extend((child, depth + 1) for child in reversed(node.children))
        return out

    @property
    def refused(self) -> int:
        return sum(1 for node, _ in self.walk() if not node.item.verified)

    def to_json(self) -> dict[str, Any]:
        nodes = self.walk()
        return {
            "correlation": self.correlation,
            "events": len(nodes),
            "refused": self.refused,
            "tree": [node.to_json() for node in self.roots],
        }


def _in_flow(item: StoredEvent, ident: str) -> bool:
    return ident in (item.attribute("correlationid"), item.attribute("id"))


def build_flow(correlation: str, items: list[StoredEvent]) -> Flow:
    """The tree of ``items`` (stream order) whose correlation is ``correlation``: each
    verified event under its verified cause; a refused one under the cause it claims
    (never a parent); the rest at the top, with a note."""
    members = [item for item in items if item.attribute("correlationid") == correlation]
    if not members:
        return Flow(correlation, [])
    verified = {item.event.id: item for item in members if item.event is not None}
    first = next((item for item in members if item.verified), members[0])
    nodes = {id(item): FlowNode(item, item.stored - first.stored) for item in members}
    roots: list[FlowNode] = []
    for item in members:
        node = nodes[id(item)]
        cause_id = item.attribute("causationid")
        cause = verified.get(cause_id) if cause_id is not None else None
        if cause is None or cause is item:
            if cause_id is not None and cause_id != item.attribute("id"):
                node.note = "cause not found or refused"
            roots.append(node)
            continue
        node.gap = item.stored - cause.stored
        nodes[id(cause)].children.append(node)
    return Flow(correlation, roots)


def _may_name(ident: str) -> Callable[[bytes], bool]:
    """Whether a body may carry ``ident`` as a claim: it holds its bytes, or escapes (a
    signer may spell a string with \\u escapes: such bodies are verified and parsed)."""
    needle = ident.encode()
    return lambda body: needle in body or b"\\u" in body


async def _collect(nc: NatsClient, ident: str, **reader: Any) -> list[StoredEvent]:
    since = uuid7_time(ident)
    start = None if since is None else since - FLOW_SKEW
    async with EventReader(nc, since=start, **reader) as events:
        events.prefilter = _may_name(ident)
        return [item async for item in events if _in_flow(item, ident)]


async def trace_flow(
    nc: NatsClient,
    ident: str,
    *,
    tenant: str = "default",
    root: str = DEFAULT_ROOT,
    keyring: Keyring | None = None,
) -> Flow:
    """The flow of ``ident``, a correlation id or the id of one of its events, read from
    the events stream and verified (:class:`EventReader`); refused events are in the tree
    as refused. A UUIDv7 ``ident`` is read from its time on (less :data:`FLOW_SKEW`), any
    other from the stream's start. :class:`NotFound` if no stored event has it."""
    if not isinstance(ident, str) or not 0 < len(ident) <= 256:
        raise InvalidArgument("an event or correlation id (1-256 chars)", field="ident")
    reader: dict[str, Any] = {"tenant": tenant, "root": root, "keyring": keyring}
    items = await _collect(nc, ident, **reader)
    correlation = ident
    named = [i for i in items if i.event is not None and i.event.id == ident]
    if named and named[0].event is not None and named[0].event.correlationid != ident:
        correlation = named[0].event.correlationid
        items = await _collect(nc, correlation, **reader)
    flow = build_flow(correlation, items)
    if not flow.roots:
        raise NotFound(f"no stored event has the id or correlation id {ident!r}")
    return flow
