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
from typing import TYPE_CHECKING, Any, Literal

from ._consumer import SubscriptionStats
from ._errors import ConfigError
from ._resource import AsyncResource
from ._subjects import check_pattern, consumer_filters, keyed_filter, unkeyed_filters

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from ._bus import Bus
    from ._consumer import Subscription
    from ._event import Event

UNKEYED: Literal["unkeyed"] = "unkeyed"
Partition = int | Literal["unkeyed"]
_FIXED_OPTIONS = ("max_in_flight", "key_order", "partition")


def consumer_plan(
    root: str, pattern: str, name: str, partitions: int, partition: Partition | None
) -> tuple[str, list[str], int | None]:
    """The consumer name, wire filters and ``max_ack_pending`` (None: the default) of a
    subscription to ``pattern`` on a bus with ``partitions``, for one ``partition``, the
    unkeyed events, or everything (None)."""
    check_pattern(pattern)
    if partition is None:
        return name, consumer_filters(root, pattern, partitions), None
    if not partitions:
        raise ConfigError("partition= needs a partitioned bus: connect(..., partitions=n)")
    if partition == UNKEYED:
        return f"{name}-u", unkeyed_filters(root, pattern), None
    if isinstance(partition, bool) or not isinstance(partition, int):
        raise ConfigError(f"partition must be an int or {UNKEYED!r}, got {partition!r}")
    if not 0 <= partition < partitions:
        raise ConfigError(f"partition must be 0 to {partitions - 1}, got {partition}")
    return f"{name}-p{partition}", [keyed_filter(root, pattern, partition)], 1


class PartitionedSubscription(AsyncResource):
    """The consumers of one partitioned subscription, started and stopped together:
    ``async with bus.subscribe_partitioned(...)`` or ``await handle.start()``."""

    def __init__(self, subscriptions: dict[Partition, Subscription]) -> None:
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
        try:
            for subscription in self.subscriptions.values():
                await subscription.start()
                self._started.append(subscription)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every consumer (in parallel), letting in-flight handlers finish. Safe twice."""
        started, self._started = self._started, []
        async with asyncio.TaskGroup() as group:
            for subscription in started:
                group.create_task(subscription.stop())

    async def _open(self) -> None:  # ``async with`` starts and stops it
        await self.start()

    async def close(self) -> None:
        await self.stop()


def subscribe_partitioned(
    bus: Bus,
    pattern: str,
    handler: Callable[[Event], Awaitable[None]],
    *,
    durable: str,
    partitions: Iterable[int] | None,
    unkeyed: bool,
    options: dict[str, Any],
) -> PartitionedSubscription:
    """See :meth:`Bus.subscribe_partitioned`."""
    if not bus.partitions:
        raise ConfigError("subscribe_partitioned needs a partitioned bus: connect(partitions=n)")
    fixed = sorted(set(options) & set(_FIXED_OPTIONS))
    if fixed:
        raise ConfigError(f"a partitioned subscription sets {', '.join(fixed)} itself")
    chosen = _chosen(partitions, bus.partitions)
    subscriptions: dict[Partition, Subscription] = {
        p: bus.subscribe(pattern, handler, durable=durable, partition=p, **options) for p in chosen
    }
    if unkeyed:
        subscriptions[UNKEYED] = bus.subscribe(
            pattern, handler, durable=durable, partition=UNKEYED, **options
        )
    return PartitionedSubscription(subscriptions)


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
