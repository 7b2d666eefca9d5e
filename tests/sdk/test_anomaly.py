"""The anomaly detector on a real server, with synthetic traffic and an injected clock: a
bucket is closed when the test moves the clock and calls ``tick()``, so no test waits for
wall-clock buckets. Anomalies arrive as signed ``status.anomaly`` events."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from eventwire import (
    AnomalyDetector,
    AnomalySettings,
    CustomEvent,
    Event,
    InvalidArgument,
    InvalidEvent,
    StatusUpdate,
    Unprocessable,
)
from tests.conftest import make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import eventwire
    from eventwire import Anomaly, Identity

SETTINGS = AnomalySettings(bucket=1.0, warmup=6, min_count=5)
SUBJECT = "custom.load"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Traffic:
    """Publishes one bucket's events, waits until the detector saw them, closes it."""

    def __init__(
        self, bus: eventwire.Bus, detector: AnomalyDetector, clock: Clock, alice: Identity
    ) -> None:
        self.bus, self.detector, self.clock, self.alice = bus, detector, clock, alice

    async def bucket(self, count: int, subject: str = SUBJECT) -> list[Anomaly]:
        target = self.detector.observed + count
        if count:
            items = [CustomEvent(subject, "load")] * count
            await self.bus.publish_many(items, identity=self.alice)
        await wait_until(lambda: self.detector.observed >= target)
        self.clock.now += SETTINGS.bucket
        return await self.detector.tick()


@pytest.fixture
async def reported(bus: eventwire.Bus) -> AsyncIterator[list[Event]]:
    """The ``status.anomaly`` events, as any agent would receive them (verified)."""
    found: list[Event] = []

    async def collect(event: Event) -> None:
        found.append(event)

    async with bus.subscribe("status.anomaly", collect, durable="reported"):
        yield found


async def run(bus: eventwire.Bus, counts: list[int]) -> tuple[AnomalyDetector, list[Anomaly]]:
    alice = make_identity("alice", bus.keyring)
    watcher = make_identity("watcher", bus.keyring)
    clock = Clock()
    detector = AnomalyDetector(
        bus, identity=watcher, patterns=["custom.>"], settings=SETTINGS, clock=clock,
        interval=None,
    )  # fmt: skip
    found: list[Anomaly] = []
    async with detector:
        traffic = Traffic(bus, detector, clock, alice)
        for count in counts:
            found += await traffic.bucket(count)
    return detector, found


async def test_a_spike_after_a_steady_rate_is_reported_once(
    bus: eventwire.Bus, reported: list[Event]
) -> None:
    detector, found = await run(bus, [20] * 8 + [80, 82, 20, 20, 20])
    [anomaly] = found
    assert (anomaly.metric, anomaly.subject, anomaly.direction) == ("rate", SUBJECT, "spike")
    assert anomaly.observed == 80
    assert anomaly.expected == pytest.approx(20)
    assert anomaly.z >= SETTINGS.threshold
    assert detector.anomalies == [anomaly]
    await wait_until(lambda: len(reported) == 1)
    [event] = reported
    assert event.source == "acme/watcher"  # signed by the detector's identity
    status = event.parse(StatusUpdate)
    assert (status.component, status.state) == ("anomaly", "rate-spike")
    assert status.details["subject"] == SUBJECT
    assert status.details["observed"] == 80
    assert status.details["direction"] == "spike"


async def test_a_drop_after_a_steady_rate_is_reported_once(bus: eventwire.Bus) -> None:
    _, found = await run(bus, [20] * 8 + [0, 0, 0, 0])
    [anomaly] = found
    assert (anomaly.metric, anomaly.direction, anomaly.observed) == ("rate", "drop", 0)
    assert anomaly.z <= -SETTINGS.threshold


async def test_steady_noise_is_no_anomaly(bus: eventwire.Bus) -> None:
    noise = random.Random(7)
    _, found = await run(bus, [noise.randint(14, 26) for _ in range(30)])
    assert found == []


async def test_an_error_ratio_spike_of_a_watched_handler_is_reported_once(
    bus: eventwire.Bus,
) -> None:
    alice = make_identity("alice", bus.keyring)
    watcher = make_identity("watcher", bus.keyring)
    clock = Clock()
    detector = AnomalyDetector(bus, identity=watcher, settings=SETTINGS, clock=clock, interval=None)
    runs = 0

    async def handle(event: Event) -> None:
        nonlocal runs
        runs += 1
        if event.data == "bad":
            raise Unprocessable("bad input")  # dead-lettered at once: one run per event

    found: list[Anomaly] = []
    async with detector, bus.subscribe("custom.work", detector.watched(handle), durable="w"):
        for bad in [1] * 8 + [12, 1, 1]:
            items = [CustomEvent("custom.work", "w", "bad")] * bad
            items += [CustomEvent("custom.work", "w", "ok")] * (20 - bad)
            target = runs + 20
            await bus.publish_many(items, identity=alice)
            await wait_until(lambda: runs >= target)  # noqa: B023 - awaited in the loop
            clock.now += SETTINGS.bucket
            found += await detector.tick()
    [anomaly] = found
    assert (anomaly.metric, anomaly.direction) == ("error_ratio", "spike")
    assert anomaly.observed == pytest.approx(12 / 20)
    assert anomaly.expected == pytest.approx(1 / 20)


async def test_warm_up_buckets_only_learn_and_empty_buckets_close_too(
    bus: eventwire.Bus,
) -> None:
    clock = Clock()
    watcher = make_identity("watcher", bus.keyring)
    detector = AnomalyDetector(bus, identity=watcher, settings=SETTINGS, clock=clock, interval=None)
    early = detector.model
    for count in [20, 20, 400]:  # a spike inside the warm-up: learned, not reported
        for _ in range(count):
            early.observe(SUBJECT, clock.now)
        clock.now += SETTINGS.bucket
        assert early.close(clock.now) == []
    steady = AnomalyDetector(bus, identity=watcher, settings=SETTINGS, clock=clock).model
    for _ in range(SETTINGS.warmup):
        for _ in range(20):
            steady.observe(SUBJECT, clock.now)
        clock.now += SETTINGS.bucket
        assert steady.close(clock.now) == []
    clock.now += 10 * SETTINGS.bucket  # ten empty buckets at once: a drop, once
    [anomaly] = steady.close(clock.now)
    assert (anomaly.direction, anomaly.observed) == ("drop", 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("bucket", 0), ("alpha", 1.0), ("threshold", -1), ("warmup", 0), ("quiet", 0),
     ("max_subjects", 0), ("min_std", 0), ("bucket", True)],
)  # fmt: skip
def test_bad_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument, match=field):
        AnomalySettings(**{field: value})  # type: ignore[arg-type]


async def test_bad_patterns_and_intervals_are_refused(bus: eventwire.Bus) -> None:
    watcher = make_identity("watcher", bus.keyring)
    with pytest.raises(InvalidEvent):
        AnomalyDetector(bus, identity=watcher, patterns=["custom..x"])
    with pytest.raises(InvalidArgument, match="interval"):
        AnomalyDetector(bus, identity=watcher, patterns=["custom.>"], interval=0)


async def test_the_ticker_closes_buckets_and_the_runs_consumer_is_deleted(
    bus: eventwire.Bus, reported: list[Event]
) -> None:
    watcher = make_identity("watcher", bus.keyring)
    clock = Clock()
    detector = AnomalyDetector(
        bus, identity=watcher, patterns=["custom.>"], settings=SETTINGS, clock=clock,
        interval=0.01,
    )  # fmt: skip

    async def consumers() -> set[str]:
        return {info.name for info in await bus.jetstream.consumers_info(bus.stream)}

    async with detector:
        [mine] = {name for name in await consumers() if name.startswith("anomaly")}
        for _ in range(SETTINGS.warmup):
            for _ in range(20):
                detector.model.observe(SUBJECT, clock.now)
            clock.now += SETTINGS.bucket
        clock.now += SETTINGS.bucket  # an empty bucket: the ticker reports the drop
        await wait_until(lambda: len(reported) == 1)
    assert [a.direction for a in detector.anomalies] == ["drop"]
    assert mine not in await consumers()
