"""Subscription settings as values, and the durable consumer they configure.

:class:`SubscribeOptions` is built once, where the user states the settings (keyword
arguments of ``bus.subscribe``, ``agent.on``, ``provision_agent``, or the object itself),
checked there, and travels unchanged: Agent -> Bus -> Subscription -> :func:`consumer_config`.
:class:`ConsumerPlan` is the topology part (consumer name, filters), decided by the bus;
:class:`ConsumerWiring` what the bus lends a subscription (connection, codec, stores).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventwire_security import Actor, SealingKey
from eventwire_security._layout import consumer_name

from ._errors import InvalidArgument
from ._retry import DEFAULT_RETRY, RetryPolicy
from ._start import StartPoint, check_start
from ._subjects import to_wire

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Unpack

    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from ._codec import Codec
    from ._dlq import DeadLetterQueue
    from ._idempotency import ProcessedIds
    from ._seen import SeenIds

Start = Literal["all", "new"] | StartPoint
UNKEYED: Literal["unkeyed"] = "unkeyed"
Partition = int | Literal["unkeyed"]


class DeliveryKeywords(TypedDict, total=False):
    """The delivery fields of :class:`SubscribeOptions`, as keyword arguments."""

    max_in_flight: int
    batch: int
    start: Start
    retry: RetryPolicy
    terminal: tuple[type[BaseException], ...]
    ack_wait: float
    idempotent: bool
    replay_check: bool
    key_order: bool


class SubscribeKeywords(DeliveryKeywords, total=False):
    """Every field of :class:`SubscribeOptions`, as keyword arguments (each optional)."""

    actor: Actor | None
    sealing_key: SealingKey | None
    partition: Partition | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeOptions:
    """How a subscription delivers its events.

    ``max_in_flight``: handlers running at once (1: one at a time, in stream order).
    ``batch``: messages pulled per request. ``start``: a new consumer begins with ``"all"``
    stored events, only ``"new"`` ones, or a start point (``FromSequence``, ``FromTime``,
    ``LastN``; see ``_start``). ``retry``: redelivery spacing and the delivery bound;
    exceptions of the ``terminal`` types (and ``Unprocessable``) dead-letter at once.
    ``ack_wait``: seconds before an unacknowledged delivery is redelivered (long handlers
    are kept alive). ``idempotent``: handled ids are recorded and redeliveries of them
    skipped. ``replay_check``: an event id seen before as another message is refused.
    ``key_order``: with ``max_in_flight`` > 1, events of one partition key in order.
    Who reads: ``actor`` (required on a bus with a policy: events it may not consume are
    refused before the handler) and ``sealing_key`` (sealed events to it arrive opened).
    ``partition``: on a partitioned bus, only keyed events of partition p, one at a time,
    or only events without a key (``"unkeyed"``).
    """

    max_in_flight: int = 1
    batch: int = 64
    start: Start = "all"
    retry: RetryPolicy = DEFAULT_RETRY
    terminal: tuple[type[BaseException], ...] = ()
    ack_wait: float = 30.0
    idempotent: bool = False
    replay_check: bool = True
    key_order: bool = False
    actor: Actor | None = None
    sealing_key: SealingKey | None = None
    partition: Partition | None = None

    def __post_init__(self) -> None:
        self._check_delivery()
        self._check_reader()

    def _check_delivery(self) -> None:
        for name in ("max_in_flight", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"must be an int >= 1, got {value!r}", field=name)
        check_start(self.start)
        if not isinstance(self.retry, RetryPolicy):
            raise InvalidArgument(f"must be a RetryPolicy, got {self.retry!r}", field="retry")
        if not isinstance(self.terminal, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in self.terminal
        ):
            detail = f"must be a tuple of exception types, got {self.terminal!r}"
            raise InvalidArgument(detail, field="terminal")
        wait = self.ack_wait
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 < wait < math.inf:
            raise InvalidArgument(f"must be seconds > 0, got {wait!r}", field="ack_wait")
        for name in ("idempotent", "replay_check", "key_order"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgument(
                    f"must be True or False, got {getattr(self, name)!r}", field=name
                )

    def _check_reader(self) -> None:
        if self.actor is not None and not isinstance(self.actor, Actor):
            raise InvalidArgument(f"must be an Actor, got {self.actor!r}", field="actor")
        if self.sealing_key is not None and not isinstance(self.sealing_key, SealingKey):
            detail = f"must be a SealingKey, got {type(self.sealing_key).__name__}"
            raise InvalidArgument(detail, field="sealing_key")
        partition = self.partition
        keyed = isinstance(partition, int) and not isinstance(partition, bool) and partition >= 0
        if partition is not None and partition != UNKEYED and not keyed:
            detail = f"must be a partition number or {UNKEYED!r}, got {partition!r}"
            raise InvalidArgument(detail, field="partition")

    def but(self, **changes: Unpack[SubscribeKeywords]) -> SubscribeOptions:
        """A copy with ``changes`` (checked like the original)."""
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def pull_batch(self) -> int:
        """Messages per pull: at least one per handler slot."""
        return max(self.batch, self.max_in_flight)


DEFAULT_OPTIONS = SubscribeOptions()


def options_of(options: SubscribeOptions | None, keywords: DeliveryKeywords) -> SubscribeOptions:
    """``options`` (default: the defaults) with ``keywords`` (any of
    :class:`SubscribeKeywords`) applied on top."""
    if options is not None and not isinstance(options, SubscribeOptions):
        raise InvalidArgument(f"must be SubscribeOptions, got {options!r}", field="options")
    base = DEFAULT_OPTIONS if options is None else options
    return base.but(**keywords)


@dataclass(frozen=True, slots=True)
class ConsumerPlan:
    """Which durable consumer a subscription uses: its ``name``, wire ``filters`` and
    ``max_ack_pending`` (None: room for the batches in flight, see :func:`consumer_config`)."""

    name: str
    filters: tuple[str, ...]
    max_ack_pending: int | None = None


# A stable consumer name for ``owner`` consuming ``pattern`` (the shared layout's scheme,
# which the server-permission compiler grants).
durable_name = consumer_name


def consumer_config(
    root: str, pattern: str, plan: ConsumerPlan, options: SubscribeOptions, *, reserve: bool
) -> ConsumerConfig:
    """The durable consumer of a subscription to ``pattern`` (filters default to the
    pattern under the root). With ``reserve`` (consumers an admin provisions for agents
    that only bind) the server allows one delivery more than ``options.retry``: the SDK
    dead-letters an event that comes back that last time (its previous consumer died
    without an outcome), since such an agent may not read the stream to act on the
    server's max-deliveries advisory."""
    filters = list(plan.filters) or [to_wire(root, pattern)]
    batch, in_flight = options.pull_batch, options.max_in_flight
    return ConsumerConfig(
        durable_name=plan.name,
        name=plan.name,
        description=f"eventwire: {pattern}",
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=options.ack_wait,
        max_ack_pending=plan.max_ack_pending or max(1000, batch * 8 + in_flight),
        max_deliver=options.retry.max_deliveries + (1 if reserve else 0),
        deliver_policy=DeliverPolicy.NEW if options.start == "new" else DeliverPolicy.ALL,
    )


@dataclass(frozen=True, slots=True)
class ConsumerWiring:
    """What the bus lends a subscription: its connection, codec and the stores behind
    the options (``processed`` if idempotent, ``seen`` if replay-checked), and who reads
    (``may_consume`` the policy's check, ``sealing_key`` to open sealed data)."""

    nc: Client
    js: JetStreamContext
    codec: Codec
    stream: str
    dead_letters: DeadLetterQueue
    provision: bool = True
    processed: ProcessedIds | None = None
    seen: SeenIds | None = None
    may_consume: Callable[[str], bool] | None = None
    sealing_key: SealingKey | None = None
    lookback: float | None = None  # the replay horizon: how far before a start point to claim


# Settings a bind-only subscription checks on the provisioned consumer (others may differ).
_BOUND = ("filter_subject", "filter_subjects", "ack_policy", "ack_wait", "max_deliver")


def differences(server: ConsumerConfig, wanted: ConsumerConfig) -> list[str]:
    """How a provisioned consumer's checked settings differ from the code's."""
    return [
        f"{name}: server has {getattr(server, name)!r}, code wants {getattr(wanted, name)!r}"
        for name in _BOUND
        if getattr(server, name) != getattr(wanted, name)
    ]
