"""Anomaly detection over per-subject event rates and handler error ratios.

**The method.** Time is cut into fixed buckets of ``bucket`` seconds. For each logical
subject and each closed bucket, two metrics are judged: ``rate`` (events that arrived in
the bucket) and ``error_ratio`` (failed handler runs per run, from handlers wrapped with
:meth:`AnomalyDetector.watched`; judged only on buckets with at least ``min_count`` runs).
Each metric keeps an exponentially weighted moving mean and variance (weight ``alpha`` for
the newest bucket: ``d = x - mean; mean += alpha * d; var = (1 - alpha) * (var + alpha * d^2)``).
A bucket is judged *before* it updates them: ``z = (x - mean) / max(sqrt(var), floor)``,
the floor being ``max(min_std, min_relative_std * mean)`` for rates and ``min_ratio_std``
for ratios, so a perfectly steady history does not turn one extra event into an anomaly.
``|z| >= threshold`` is anomalous: a ``spike`` above, a ``drop`` below (rates only, and
only when at least ``min_count`` events were expected). The first ``warmup`` buckets of a
subject only learn. An anomaly opens an *episode*: one signed ``status.anomaly`` event
(:class:`~eventwire.StatusUpdate`, component ``anomaly``) is published when it opens, none
while it lasts; it ends after ``quiet`` normal buckets in a row.

Defaults (:class:`AnomalySettings`): 10 s buckets, ``alpha`` 0.2, ``threshold`` 4,
``warmup`` 8 buckets, ``min_count`` 10, ``min_std`` 1 event, ``min_relative_std`` 0.1,
``min_ratio_std`` 0.02, ``quiet`` 3 buckets, at most 1000 subjects tracked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Self

import nats.errors

from ._errors import ClosedResource, InvalidArgument
from ._kinds import StatusUpdate
from ._resource import ResourceState
from ._subjects import check_pattern

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from types import TracebackType

    from eventwire_security import Identity

    from ._bus import Bus
    from ._consumer import Subscription
    from ._event import Event

    Handler = Callable[[Event], Awaitable[None]]

log = logging.getLogger("eventwire.anomaly")
Metric = Literal["rate", "error_ratio"]
Direction = Literal["spike", "drop"]
_MAX_CATCH_UP = 10_000  # buckets closed at most in one go (a clock far ahead)


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    """The detector's parameters (see the module doc for the method)."""

    bucket: float = 10.0
    alpha: float = 0.2
    threshold: float = 4.0
    warmup: int = 8
    min_count: int = 10
    min_std: float = 1.0
    min_relative_std: float = 0.1
    min_ratio_std: float = 0.02
    quiet: int = 3
    max_subjects: int = 1000

    def __post_init__(self) -> None:
        checks = {
            "bucket": self.bucket > 0,
            "alpha": 0 < self.alpha < 1,
            "threshold": self.threshold > 0,
            "warmup": self.warmup >= 1,
            "min_count": self.min_count >= 0,
            "min_std": self.min_std > 0,
            "min_relative_std": self.min_relative_std >= 0,
            "min_ratio_std": self.min_ratio_std > 0,
            "quiet": self.quiet >= 1,
            "max_subjects": self.max_subjects >= 1,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not ok:
                raise InvalidArgument(f"out of range: {value!r}", field=name)


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One episode's opening: ``observed`` against ``expected`` (the moving mean)."""

    metric: Metric
    subject: str
    observed: float
    expected: float
    z: float
    direction: Direction
    bucket_start: float
    bucket_seconds: float

    def event(self) -> StatusUpdate:
        """The ``status.anomaly`` event reporting it."""
        return StatusUpdate(
            component="anomaly",
            state=f"{self.metric}-{self.direction}",
            details={
                "metric": self.metric,
                "subject": self.subject,
                "observed": round(self.observed, 6),
                "expected": round(self.expected, 6),
                "z": round(self.z, 3),
                "direction": self.direction,
                "bucket_seconds": self.bucket_seconds,
            },
        )


@dataclass(slots=True)
class Ewma:
    """An exponentially weighted moving mean and variance."""

    alpha: float
    mean: float = 0.0
    var: float = 0.0
    count: int = 0

    def z(self, value: float, floor: float) -> float:
        return (value - self.mean) / max(math.sqrt(self.var), floor)

    def update(self, value: float) -> None:
        if self.count == 0:
            self.mean = value
        else:
            diff = value - self.mean
            self.mean += self.alpha * diff
            self.var = (1 - self.alpha) * (self.var + self.alpha * diff * diff)
        self.count += 1


@dataclass(slots=True)
class _Track:
    """One subject: the current bucket's counts and each metric's history and episode."""

    rate: Ewma
    ratio: Ewma
    events: int = 0
    runs: int = 0
    failures: int = 0
    calm: dict[Metric, int] = field(default_factory=dict)  # metric -> normal buckets to go


class AnomalyModel:
    """The method, without I/O: feed :meth:`observe` and :meth:`outcome` (each closes the
    buckets that ended before it), and :meth:`close` returns the anomalies found."""

    def __init__(self, settings: AnomalySettings, now: float) -> None:
        self.settings = settings
        self._origin = now
        self._bucket = 0  # index of the open bucket
        self._tracks: dict[str, _Track] = {}
        self._pending: list[Anomaly] = []

    def _track(self, subject: str) -> _Track | None:
        track = self._tracks.get(subject)
        if track is None and len(self._tracks) < self.settings.max_subjects:
            alpha = self.settings.alpha
            track = self._tracks[subject] = _Track(Ewma(alpha), Ewma(alpha))
        return track

    def observe(self, subject: str, now: float) -> None:
        """One event on ``subject`` at ``now`` (buckets that ended before are closed)."""
        self._roll(now)
        track = self._track(subject)
        if track is not None:
            track.events += 1

    def outcome(self, subject: str, now: float, *, failed: bool) -> None:
        """One handler run on ``subject`` at ``now``, failed or not."""
        self._roll(now)
        track = self._track(subject)
        if track is not None:
            track.runs += 1
            track.failures += failed

    def close(self, now: float) -> list[Anomaly]:
        """Close every bucket that ended by ``now``; the anomalies that opened episodes
        since the last call."""
        self._roll(now)
        found, self._pending = self._pending, []
        return found

    def _roll(self, now: float) -> None:
        target = math.floor((now - self._origin) / self.settings.bucket)
        for _ in range(min(target - self._bucket, _MAX_CATCH_UP)):
            start = self._origin + self._bucket * self.settings.bucket
            for subject, track in self._tracks.items():
                self._pending += self._judge(subject, track, start)
            self._bucket += 1
        self._bucket = max(self._bucket, target)

    def _judge(self, subject: str, track: _Track, start: float) -> list[Anomaly]:
        s = self.settings
        found: list[Anomaly] = []
        floor = max(s.min_std, s.min_relative_std * track.rate.mean)
        rate = self._metric(track, "rate", track.rate, track.events, floor)
        if rate is not None:
            found.append(Anomaly("rate", subject, track.events, *rate, start, s.bucket))
        if track.runs >= s.min_count:
            ratio = track.failures / track.runs
            judged = self._metric(track, "error_ratio", track.ratio, ratio, s.min_ratio_std)
            if judged is not None and judged[2] == "spike":
                found.append(Anomaly("error_ratio", subject, ratio, *judged, start, s.bucket))
        track.events = track.runs = track.failures = 0
        return found

    def _metric(
        self, track: _Track, metric: Metric, history: Ewma, value: float, floor: float
    ) -> tuple[float, float, Direction] | None:
        """Judge ``value`` against ``history``, then learn it; (expected, z, direction) if
        it opens an episode."""
        s = self.settings
        expected, z = history.mean, history.z(value, floor)
        warm = history.count >= s.warmup
        history.update(value)
        direction: Direction = "spike" if z > 0 else "drop"
        low_base = direction == "drop" and (metric != "rate" or expected < s.min_count)
        if not warm or abs(z) < s.threshold or low_base:
            if metric in track.calm:
                track.calm[metric] -= 1
                if track.calm[metric] <= 0:
                    del track.calm[metric]
            return None
        opening = metric not in track.calm
        track.calm[metric] = s.quiet
        return (expected, z, direction) if opening else None


class AnomalyDetector:
    """``async with AnomalyDetector(bus, identity=key, patterns=["task.>"]) as detector:``
    counts the events on ``patterns`` per subject (through its own consumer, starting with
    new events), closes a bucket every ``settings.bucket`` seconds of ``clock``, and
    publishes each anomaly, signed by ``identity``, as a ``status.anomaly`` event (kept in
    :attr:`anomalies` too). Wrap handlers with :meth:`watched` to judge their error ratios.

    ``durable=None`` (the default): a consumer of this run only, deleted on exit; a name
    keeps one across runs. ``interval`` (seconds of real time, default a quarter bucket)
    is how often buckets are closed; ``None`` closes them only when :meth:`tick` is called
    (tests drive an injected ``clock`` so).
    """

    def __init__(  # noqa: PLR0913 - the bus, then keywords
        self,
        bus: Bus,
        *,
        identity: Identity,
        patterns: Sequence[str] = (),
        settings: AnomalySettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        durable: str | None = None,
        interval: float | Literal["auto"] | None = "auto",
    ) -> None:
        self.settings = settings or AnomalySettings()
        self.patterns = [check_pattern(p) for p in patterns]
        self._bus = bus
        self._identity = identity
        self._clock = clock
        self._durable = durable or f"anomaly{secrets.token_hex(4)}"
        self._owned = durable is None
        if interval == "auto":
            interval = self.settings.bucket / 4
        if interval is not None and not interval > 0:
            raise InvalidArgument(f"must be positive, got {interval!r}", field="interval")
        self._interval = interval
        self.model = AnomalyModel(self.settings, clock())
        self.anomalies: list[Anomaly] = []
        self.observed = 0
        self._subscriptions: list[Subscription] = []
        self._ticker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _seen(self, event: Event) -> None:
        self.observed += 1
        self.model.observe(event.subject, self._clock())

    def watched(self, handler: Handler) -> Handler:
        """``handler``, its outcomes (a failure: it raised) counted per subject."""

        @functools.wraps(handler)
        async def watch(event: Event) -> None:
            try:
                await handler(event)
            except Exception:
                self.model.outcome(event.subject, self._clock(), failed=True)
                raise
            self.model.outcome(event.subject, self._clock(), failed=False)

        return watch

    async def tick(self) -> list[Anomaly]:
        """Close the buckets that ended by ``clock()`` and publish their anomalies."""
        async with self._lock:
            found = self.model.close(self._clock())
            for anomaly in found:
                self.anomalies.append(anomaly)
                log.warning("anomaly: %s", anomaly)
                await self._bus.publish(anomaly.event(), identity=self._identity)
            return found

    async def _ticking(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except Exception as exc:  # a publish failing (reconnect): the next tick again
                log.warning("anomaly detector: publishing failed: %r", exc)

    async def __aenter__(self) -> Self:
        try:
            for pattern in self.patterns:
                subscription = self._bus.subscribe(
                    pattern, self._seen, durable=self._durable, start="new",
                    replay_check=False, batch=256,
                )  # fmt: skip
                self._subscriptions.append(subscription)
                await subscription.start()
        except BaseException:
            await self._close()
            raise
        if self._interval is not None:
            self._ticker = asyncio.create_task(self._ticking(self._interval))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        """Stop the ticker and the subscriptions; delete this run's consumers."""
        if self._ticker is not None:
            ticker, self._ticker = self._ticker, None
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.close()
            if self._owned and subscription.state is ResourceState.CLOSED:
                with contextlib.suppress(nats.errors.Error, TimeoutError, ClosedResource):
                    await self._bus.jetstream.delete_consumer(
                        self._bus.stream, subscription.durable
                    )
