"""Event-time order on a real server: events published shuffled within the allowed lateness
are handled in event-time order; events later than that follow the declared policy; the
buffer is bounded and nothing held is acknowledged."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from prometheus_client import REGISTRY

from eventwire import (
    CustomEvent,
    Event,
    EventTimeOrder,
    InvalidArgument,
    InvalidEvent,
    LatePolicy,
    RetryPolicy,
)
from tests.conftest import make_identity, wait_until
from tests.sdk._causal_worker import (
    HOLD_ACK_WAIT,
    HOLD_IN_FLIGHT,
    start_holder,
    until_ack_pending,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    import eventwire
    from eventwire import EmbeddedServer
    from eventwire_security import Identity, Keyring

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def at(n: float) -> datetime:
    return BASE + timedelta(seconds=n)


async def publish_at(bus: eventwire.Bus, who: Identity, times: list[float]) -> None:
    for n in times:
        item = CustomEvent("custom.reading", "reading", {"n": n})
        await bus.publish(item, identity=who, event_time=at(n))


def counted(name: str, **labels: str) -> float:
    """A counter of prometheus-client's default registry now (0 before its first count)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def recorder(seen: list[float]) -> Callable[[Event], Awaitable[None]]:
    async def handle(event: Event) -> None:
        assert isinstance(event.data, dict)
        seen.append(float(event.data["n"]))  # type: ignore[arg-type] # a JSON number

    return handle


async def test_shuffled_within_lateness_are_handled_in_event_time_order(
    bus: eventwire.Bus, keyring: Keyring
) -> None:
    who = make_identity("sensor", keyring)
    times = [i / 10 for i in range(60)]
    shuffled: list[float] = []
    rng = random.Random(16)
    for start in range(0, len(times), 5):  # at most 0.4 s out of place; lateness 1 s
        chunk = times[start : start + 5]
        rng.shuffle(chunk)
        shuffled.extend(chunk)
    assert shuffled != times
    await publish_at(bus, who, shuffled)
    order = EventTimeOrder(max_lateness=1.0, capacity=64, idle=1.0)
    seen: list[float] = []
    handler = order.wrap(recorder(seen))
    async with bus.subscribe("custom.>", handler, durable="readings", max_in_flight=64):
        await wait_until(lambda: len(seen) == len(times))
    assert seen == times
    assert order.stats.late_ids == []
    assert order.stats.released == len(times)
    assert order.stats.idle_flushes >= 1  # the last second's events: only idleness frees them


@pytest.mark.parametrize("late", ["deliver", "drop", "dead-letter"])
async def test_events_later_than_allowed_follow_the_policy(
    bus: eventwire.Bus, keyring: Keyring, late: LatePolicy
) -> None:
    who = make_identity("sensor", keyring)
    # 0..9 in order; 8.5 arrives after 9 (within the 1 s allowed: in order); 2.5 arrives
    # when 8 was released (6.5 s late): late; then 10.
    await publish_at(bus, who, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8.5, 2.5, 10])
    order = EventTimeOrder(max_lateness=1.0, late=late, capacity=32, idle=1.0)
    late_before = counted("eventwire_order_late_total", policy=late)
    seen: list[float] = []
    handler = order.wrap(recorder(seen))
    on_time = [0, 1, 2, 3, 4, 5, 6, 7, 8, 8.5, 9, 10]
    async with bus.subscribe(
        "custom.>", handler, durable="readings", max_in_flight=32
    ) as subscription:
        await wait_until(lambda: len(seen) >= len(on_time) and order.held == 0)
        if late == "dead-letter":
            await wait_until(lambda: subscription.stats.dead_lettered == 1)
    if late == "deliver":
        assert seen == [*on_time[:9], 2.5, *on_time[9:]]  # handled when it came, flagged
        assert order.stats.late_delivered == 1
    else:
        assert seen == on_time
    if late == "drop":
        assert order.stats.late_dropped == 1
    if late == "dead-letter":
        [letter] = await bus.dead_letters.list()
        assert "late event" in letter.error
        assert json.loads(letter.data)["data"] == {"n": 2.5}
        assert order.stats.late_dead_lettered == 1
    assert len(order.stats.late_ids) == 1
    assert counted("eventwire_order_late_total", policy=late) == late_before + 1


async def test_a_failed_handler_is_retried_as_it_comes_back(
    bus: eventwire.Bus, keyring: Keyring
) -> None:
    who = make_identity("sensor", keyring)
    await publish_at(bus, who, [1, 0, 2])
    order = EventTimeOrder(max_lateness=0.5, capacity=8, idle=0.3)
    seen: list[float] = []
    failed: list[float] = []

    async def handle(event: Event) -> None:
        assert isinstance(event.data, dict)
        n = float(event.data["n"])  # type: ignore[arg-type] # a JSON number
        if n == 0 and not failed:
            failed.append(n)
            raise RuntimeError("first attempt fails")
        seen.append(n)

    retry = RetryPolicy(max_deliveries=3, initial_delay=0.1, jitter=0)
    handler = order.wrap(handle)
    async with bus.subscribe("custom.>", handler, durable="readings", max_in_flight=8, retry=retry):
        await wait_until(lambda: len(seen) == 3)
    assert sorted(seen) == [0, 1, 2]
    assert [n for n in seen if n] == [1, 2]  # in order; 0's retry handled as it came back
    assert order.stats.redelivered == 1
    assert order.stats.late_ids == []


async def test_a_full_buffer_releases_the_earliest_in_order(
    bus: eventwire.Bus, keyring: Keyring
) -> None:
    who = make_identity("sensor", keyring)
    pairs = [[i + 1, i] for i in range(0, 20, 2)]  # 1, 0, 3, 2, ...: each 1 s out of place
    await publish_at(bus, who, [n for pair in pairs for n in pair])
    order = EventTimeOrder(max_lateness=1000.0, capacity=3, idle=1.0)  # only the bound
    early = counted("eventwire_order_early_releases_total", cause="capacity")
    seen: list[float] = []
    handler = order.wrap(recorder(seen))
    async with bus.subscribe("custom.>", handler, durable="readings", max_in_flight=3):
        await wait_until(lambda: len(seen) == 20)
    assert seen == list(range(20))
    assert order.stats.at_capacity > 0
    assert order.stats.held_max <= 3
    assert counted("eventwire_order_early_releases_total", cause="capacity") > early


async def test_nothing_held_is_acknowledged(bus: eventwire.Bus, keyring: Keyring) -> None:
    who = make_identity("sensor", keyring)
    await publish_at(bus, who, [2, 0, 1])
    order = EventTimeOrder(max_lateness=60.0, capacity=16, idle=3600.0)
    seen: list[float] = []
    handler = order.wrap(recorder(seen))
    subscription = bus.subscribe("custom.>", handler, durable="readings", max_in_flight=16)
    await subscription.start()
    await wait_until(lambda: order.held == 3)
    info = await bus.jetstream.consumer_info(bus.stream, subscription.durable)
    assert (info.num_ack_pending, seen) == (3, [])
    order.flush()  # what a stopping application does: everything held, in order
    await wait_until(lambda: len(seen) == 3)
    await subscription.stop()
    assert seen == [0, 1, 2]
    info = await bus.jetstream.consumer_info(bus.stream, subscription.durable)
    assert info.num_ack_pending == 0


async def test_events_held_by_a_killed_consumer_come_back_in_order(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, keyring: Keyring, tmp_path: Path
) -> None:
    who = make_identity("sensor", keyring)
    out = tmp_path / "held.txt"
    holder = await start_holder("event-time", nats_server.url, root, who, out)
    try:
        await publish_at(bus, who, [2, 0, 1])
        await until_ack_pending(bus, "held", 3)
    finally:
        holder.kill()  # SIGKILL, with the three events held
        await holder.wait()
    assert out.read_text().split() == ["ready"]  # none handled, none acknowledged
    seen: list[float] = []
    order = EventTimeOrder(max_lateness=60.0, idle=0.3)
    handler = order.wrap(recorder(seen))
    async with bus.subscribe(
        "custom.>", handler, durable="held", max_in_flight=HOLD_IN_FLIGHT, ack_wait=HOLD_ACK_WAIT
    ):
        await wait_until(lambda: len(seen) == 3)
    assert seen == [0, 1, 2]


@pytest.mark.parametrize(
    ("keywords", "field"),
    [
        ({"max_lateness": -1.0}, "max_lateness"),
        ({"max_lateness": float("nan")}, "max_lateness"),
        ({"max_lateness": "5"}, "max_lateness"),
        ({"max_lateness": 1.0, "late": "ignore"}, "late"),
        ({"max_lateness": 1.0, "capacity": 0}, "capacity"),
        ({"max_lateness": 1.0, "capacity": True}, "capacity"),
        ({"max_lateness": 1.0, "idle": 0}, "idle"),
    ],
)
def test_bad_settings_are_refused(keywords: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        EventTimeOrder(**keywords)  # type: ignore[arg-type] # bad on purpose
    assert caught.value.field == field


@pytest.mark.parametrize(
    "when",
    [datetime(2026, 1, 1), datetime(1969, 12, 31, tzinfo=UTC), "2026-01-01T00:00:00Z", 1.0],
)
async def test_a_bad_event_time_is_refused(
    bus: eventwire.Bus, keyring: Keyring, when: object
) -> None:
    who = make_identity("sensor", keyring)
    with pytest.raises(InvalidEvent) as caught:
        await bus.publish(CustomEvent("custom.reading", "reading"), identity=who, event_time=when)  # type: ignore[arg-type] # bad on purpose
    assert caught.value.field == "event_time"
