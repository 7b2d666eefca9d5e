"""The subscribe side of a bus: :meth:`~Subscribing.subscribe` and its partitioned and
batch forms. It keeps the subscriptions it made: the bus resets their pulls after a
reconnect (``_reset_pulls``) and stops them when it closes (``_stop_subscriptions``).

:class:`Subscribing` is a base of :class:`~eventwire.Bus`, which lends each new
subscription what it holds (``_wiring``: the connection, codec and stores, the policy's
check) and says its subject ``root`` and ``partitions``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._consumer import Subscription
from ._errors import ConfigError, InvalidArgument
from ._options import durable_name, options_of
from ._partitions import chosen_partitions, consumer_plan, partitioned
from ._subjects import check_token

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from typing import Unpack

    from ._batches import Batch
    from ._event import Event
    from ._options import ConsumerWiring, SubscribeKeywords, SubscribeOptions
    from ._partitions import PartitionedSubscription
    from ._resource import Steps


class Subscribing:
    """Durable subscriptions of the bus (see the module doc)."""

    root: str  # the bus's subject root
    partitions: int  # the bus's partitions (0: not partitioned)

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []

    def _wiring(self, options: SubscribeOptions) -> ConsumerWiring:
        """What the open bus lends a new subscription with ``options`` (the bus says)."""
        raise NotImplementedError

    def _reset_pulls(self) -> None:
        """After a reconnect: each subscription pulls again (see ``reset_pull``)."""
        for subscription in self._subscriptions:
            subscription.reset_pull()

    async def _stop_subscriptions(self, steps: Steps) -> None:
        """Stop every subscription made so far, in parallel, each a step of ``steps``."""
        subscriptions, self._subscriptions = self._subscriptions, []
        async with asyncio.TaskGroup() as group:
            for subscription in subscriptions:
                group.create_task(steps.run(f"stopping {subscription.durable}", subscription.close))

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
        wiring = self._wiring(chosen)
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
