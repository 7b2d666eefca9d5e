"""The in-process level of the event cache: a bounded LRU map, and the cache's counters."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from ._errors import InvalidArgument

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``capacity`` entries; the least recently used goes first."""

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InvalidArgument(f"must be an int >= 1, got {capacity!r}", field="capacity")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self.evicted = 0  # pushed out by newer entries (not invalidations)

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
            self.evicted += 1

    def pop(self, key: K) -> bool:
        """Forget ``key``; whether it was there."""
        return self._items.pop(key, None) is not None

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class CacheStats:
    """Where lookups were answered: ``l1`` (in process), ``l2`` (the KV bucket), ``source``
    (the stream or the projections bucket), ``misses`` (nowhere); ``refused``: L2 entries
    that failed verification (tampered: ignored); ``invalidated``: L1 entries evicted
    because a newer event or checkpoint arrived; ``written``: L2 writes."""

    l1: int = 0
    l2: int = 0
    source: int = 0
    misses: int = 0
    refused: int = 0
    invalidated: int = 0
    written: int = 0

    @property
    def lookups(self) -> int:
        return self.l1 + self.l2 + self.source + self.misses

    @property
    def l1_ratio(self) -> float:
        """The share of lookups answered in process."""
        return self.l1 / self.lookups if self.lookups else 0.0

    @property
    def hit_ratio(self) -> float:
        """The share of lookups answered by either level of the cache."""
        return (self.l1 + self.l2) / self.lookups if self.lookups else 0.0
