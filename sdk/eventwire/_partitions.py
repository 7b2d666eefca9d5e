"""Partitioned subscriptions: one durable consumer per partition of the events stream.

On a bus connected with ``partitions=n`` the events stream assigns every keyed event to one
of ``n`` partitions (a NATS subject transform, see ``_subjects``), so all events of one
key are in one partition, in stream order. A partition's consumer lets the server hand
out one event at a time (``max_ack_pending=1``): the next event of the partition is
delivered only once the previous one is acked or terminated, and a failed event is
redelivered before anything after it. So per-key order holds under retries, redeliveries
and crashes, also when several instances share a partition's consumer (same durable
name); the partitions run in parallel. Events without a key that match the pattern go to
one more consumer (``unkeyed``), so the handle misses nothing its pattern matches.
"""

from __future__ import annotations

import asyncio
from dataclasses import fields
from typing import TYPE_CHECKING

from ._consumer import SubscriptionStats
from ._errors import ConfigError
from ._options import UNKEYED, ConsumerPlan, Partition
from ._resource import StatefulResource
from ._subjects import check_pattern, consumer_filters, keyed_filter, unkeyed_filters

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._consumer import Subscription
    from ._options import SubscribeOptions
    from ._resource import Steps

__all__ = ["UNKEYED", "Partition", "PartitionedSubscription", "consumer_plan"]


def consumer_plan(
    root: str, pattern: str, name: str, partitions: int, partition: Partition | None
) -> ConsumerPlan:
    """The consumer of a subscription to ``pattern`` on a bus with ``partitions``, for
    one ``partition``, the unkeyed events, or everything (None)."""
    check_pattern(pattern)
    if partition is None:
        return ConsumerPlan(name, tuple(consumer_filters(root, pattern, partitions)))
    if not partitions:
        raise ConfigError("partition= needs a partitioned bus: connect(..., partitions=n)")
    if partition == UNKEYED:
        return ConsumerPlan(f"{name}-u", tuple(unkeyed_filters(root, pattern)))
    if isinstance(partition, bool) or not isinstance(partition, int):
        raise ConfigError(f"partition must be an int or {UNKEYED!r}, got {partition!r}")
    if not 0 <= partition < partitions:
        raise ConfigError(f"partition must be 0 to {partitions - 1}, got {partition}")
    return ConsumerPlan(f"{name}-p{partition}", (keyed_filter(root, pattern, partition),), 1)


class PartitionedSubscription(StatefulResource):
    """The consumers of one partitioned subscription, started and stopped together:
    ``async with bus.subscribe_partitioned(...)`` or ``await handle.start()``."""

    def __init__(self, subscriptions: dict[Partition, Subscription]) -> None:
        names = ", ".join(sub.durable for sub in subscriptions.values())
        super().__init__(f"partitioned subscription ({names})")
        self.subscriptions = subscriptions
        self._started: list[Subscription] = []

    @property
    def partitions(self) -> list[int]:
        """The partitions this handle consumes."""
        return [p for p in self.subscriptions if isinstance(p, int)]

    @property
    def stats(self) -> SubscriptionStats:
        """The counts of all its consumers, summed."""
        total = SubscriptionStats()
        for subscription in self.subscriptions.values():
            for field in fields(SubscriptionStats):
                value = getattr(total, field.name) + getattr(subscription.stats, field.name)
                setattr(total, field.name, value)
        return total

    async def start(self) -> None:
        """Create (or bind) and start every consumer; if one fails, stop the others."""
        await self._start()

    async def stop(self) -> None:
        """Stop every consumer (in parallel), letting in-flight handlers finish. Safe twice."""
        await self.close()

    async def _open(self) -> None:
        for subscription in self.subscriptions.values():
            self._started.append(subscription)
            await subscription.start()

    async def _shutdown(self, steps: Steps) -> None:
        async with asyncio.TaskGroup() as group:
            for subscription in self._started:
                group.create_task(steps.run(f"stopping {subscription.durable}", subscription.close))


def partitioned(
    chosen: list[Partition],
    options: SubscribeOptions,
    subscribe: Callable[[SubscribeOptions], Subscription],
) -> PartitionedSubscription:
    """See :meth:`Bus.subscribe_partitioned`: one subscription (made by ``subscribe``) per
    partition in ``chosen``, each with ``options`` for its partition."""
    fixed = [
        name
        for name, value in (
            ("max_in_flight", options.max_in_flight != 1),
            ("key_order", options.key_order),
            ("partition", options.partition is not None),
        )
        if value
    ]
    if fixed:
        raise ConfigError(f"a partitioned subscription sets {', '.join(fixed)} itself")
    return PartitionedSubscription({p: subscribe(options.but(partition=p)) for p in chosen})


def chosen_partitions(
    partitions: Iterable[int] | None, count: int, *, unkeyed: bool
) -> list[Partition]:
    """The partitions a handle consumes: ``partitions`` (checked; default all of
    ``count``), then the unkeyed events' consumer if ``unkeyed``."""
    if not count:
        raise ConfigError("subscribe_partitioned needs a partitioned bus: connect(partitions=n)")
    chosen: list[Partition] = list(_chosen(partitions, count))
    return [*chosen, UNKEYED] if unkeyed else chosen


def _chosen(partitions: Iterable[int] | None, count: int) -> list[int]:
    if partitions is None:
        return list(range(count))
    if isinstance(partitions, str | bytes) or not hasattr(partitions, "__iter__"):
        raise ConfigError(f"partitions must be partition numbers, got {partitions!r}")
    chosen = list(dict.fromkeys(partitions))
    for p in chosen:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < count:
            raise ConfigError(f"partitions must be numbers 0 to {count - 1}, got {p!r}")
    if not chosen:
        raise ConfigError("partitions: choose at least one")
    return chosen
