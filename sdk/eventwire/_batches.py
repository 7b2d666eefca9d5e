"""Batch handlers: a handler gets many events at once and decides per event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._event import Event


@dataclass
class Batch:
    """Events delivered together, in stream order. Every event the handler does not mark
    with :meth:`fail` is acknowledged when the handler returns; if the handler raises,
    every event of the batch counts as failed with that error."""

    events: list[Event]
    failures: dict[str, Exception] = field(default_factory=dict)

    def fail(self, event: Event, error: Exception) -> None:
        """Mark one event failed: it is retried, or dead-lettered, per the retry policy."""
        if all(candidate.id != event.id for candidate in self.events):
            raise ValueError(f"event {event.id} is not in this batch")
        self.failures[event.id] = error

    def __len__(self) -> int:
        return len(self.events)
