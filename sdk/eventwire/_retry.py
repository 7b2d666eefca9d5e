"""Retry policies: how long to wait before each redelivery, and when to give up."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._errors import ConfigError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, up to ``max_deliveries`` deliveries in all.

    The delay after the n-th failed delivery is ``initial_delay * multiplier**(n-1)``,
    capped at ``max_delay``, then spread by ``±jitter`` (a fraction) so that a burst of
    failures does not come back as a burst. After ``max_deliveries`` deliveries the event
    goes to the dead-letter queue.
    """

    max_deliveries: int = 5
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        checks = {
            "max_deliveries": self.max_deliveries >= 1,
            "initial_delay": self.initial_delay >= 0,
            "multiplier": self.multiplier >= 1,
            "max_delay": self.max_delay >= self.initial_delay,
            "jitter": 0 <= self.jitter < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"RetryPolicy.{name} out of range: {getattr(self, name)!r}")

    def delay(self, failed_deliveries: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failed_deliveries``-th failure (1-based)."""
        if failed_deliveries < 1:
            raise ConfigError(f"failed_deliveries must be >= 1, got {failed_deliveries}")
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (failed_deliveries - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))

    def exhausted(self, deliveries: int) -> bool:
        """Whether an event delivered ``deliveries`` times may not be delivered again."""
        return deliveries >= self.max_deliveries


DEFAULT_RETRY = RetryPolicy()
