"""The phi-accrual failure detector (Hayashibara et al. 2004, as Akka implements it).

Instead of a fixed timeout, the detector learns the distribution of the intervals between a
peer's heartbeats (mean and standard deviation over the last ``max_samples``) and turns the
time since the last heartbeat into a suspicion level

    phi = -log10(1 - F(elapsed))

where F is the normal distribution of the intervals (with ``acceptable_pause`` added to the
mean), approximated by a logistic function as in Akka. phi = 1 means a 10 % chance that a
heartbeat this late still comes, phi = 8 (the default threshold) one in 10^8. Regular
heartbeats make the detector sharp; jittery ones make it patient. Pure: time comes from the
caller or from an injectable clock.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

_LN10 = math.log(10.0)
K = TypeVar("K", bound="Hashable")


@dataclass(frozen=True, slots=True)
class PhiSettings:
    """Tuning of :class:`PhiAccrualDetector` (seconds). ``first_interval`` seeds the history
    before any interval is known (the expected heartbeat interval)."""

    threshold: float = 8.0
    max_samples: int = 200
    min_std_deviation: float = 0.1
    acceptable_pause: float = 0.0
    first_interval: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "threshold": self.threshold > 0,
            "max_samples": isinstance(self.max_samples, int) and self.max_samples >= 2,
            "min_std_deviation": self.min_std_deviation > 0,
            "acceptable_pause": self.acceptable_pause >= 0,
            "first_interval": self.first_interval > 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"PhiSettings.{name} out of range: {value!r}")


def phi(elapsed: float, mean: float, std_deviation: float) -> float:
    """Suspicion after ``elapsed`` seconds of silence, for intervals ~ N(mean, std_deviation).

    Akka's logistic approximation of the normal CDF, computed so that it neither overflows
    nor loses precision far out in either tail (it is ``log10(1 + e^a)``)."""
    y = (elapsed - mean) / std_deviation
    a = y * (1.5976 + 0.070566 * y * y)
    if a > 0:
        return (a + math.log1p(math.exp(-a))) / _LN10
    return math.log1p(math.exp(a)) / _LN10


class PhiAccrualDetector:
    """The detector for one monitored peer. Feed it :meth:`heartbeat` arrival times and ask
    :meth:`phi` or :meth:`available`. Before the first heartbeat phi is 0."""

    def __init__(
        self,
        settings: PhiSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or PhiSettings()
        self._clock = clock
        self._intervals: deque[float] = deque(maxlen=self.settings.max_samples)
        self._sum = 0.0
        self._squares = 0.0
        self.last_heartbeat: float | None = None

    def heartbeat(self, at: float | None = None) -> None:
        """Record a heartbeat arriving at ``at`` (default: now). Out-of-order arrivals
        (earlier than the last one) are ignored."""
        now = self._clock() if at is None else at
        last = self.last_heartbeat
        if last is None:
            first = self.settings.first_interval  # Akka: seed mean, std = mean / 4
            for interval in (first - first / 4, first + first / 4):
                self._add(interval)
        elif now < last:
            return
        else:
            self._add(now - last)
        self.last_heartbeat = now

    def phi(self, now: float | None = None) -> float:
        last = self.last_heartbeat
        if last is None:
            return 0.0
        elapsed = max(0.0, (self._clock() if now is None else now) - last)
        count = len(self._intervals)
        mean = self._sum / count
        variance = max(0.0, self._squares / count - mean * mean)
        std = max(math.sqrt(variance), self.settings.min_std_deviation)
        return phi(elapsed, mean + self.settings.acceptable_pause, std)

    def available(self, now: float | None = None) -> bool:
        """Whether phi is below the threshold (the peer is not suspected)."""
        return self.phi(now) < self.settings.threshold

    def _add(self, interval: float) -> None:
        if len(self._intervals) == self._intervals.maxlen:
            dropped = self._intervals[0]
            self._sum -= dropped
            self._squares -= dropped * dropped
        self._intervals.append(interval)
        self._sum += interval
        self._squares += interval * interval


@dataclass(frozen=True, slots=True)
class Suspicion(Generic[K]):
    """A monitored peer with its current phi and the time of its last heartbeat."""

    key: K
    phi: float
    last_heartbeat: float
    suspected: bool


class FailureDetectors(Generic[K]):
    """One :class:`PhiAccrualDetector` per key (e.g. ``(agent, instance)``), same settings."""

    def __init__(
        self,
        settings: PhiSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or PhiSettings()
        self._clock = clock
        self._detectors: dict[K, PhiAccrualDetector] = {}

    def heartbeat(self, key: K, at: float | None = None) -> None:
        detector = self._detectors.get(key)
        if detector is None:
            detector = PhiAccrualDetector(self.settings, clock=self._clock)
            self._detectors[key] = detector
        detector.heartbeat(at)

    def forget(self, key: K) -> None:
        """Stop watching ``key`` (it withdrew, or its failure was handled)."""
        self._detectors.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._detectors

    def suspicion(self, key: K, now: float | None = None) -> Suspicion[K]:
        detector = self._detectors[key]
        value = detector.phi(now)
        assert detector.last_heartbeat is not None  # created by a heartbeat
        return Suspicion(key, value, detector.last_heartbeat, value >= self.settings.threshold)

    def all(self, now: float | None = None) -> list[Suspicion[K]]:
        at = self._clock() if now is None else now
        return [self.suspicion(key, at) for key in self._detectors]

    def suspects(self, now: float | None = None) -> list[Suspicion[K]]:
        """The peers whose phi reached the threshold."""
        return [s for s in self.all(now) if s.suspected]
