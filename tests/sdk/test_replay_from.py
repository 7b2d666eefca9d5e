"""Replay from a point: a new subscription starts at a stream sequence, a time or the last N
events, with replay protection on (only for itself: other subscriptions are untouched)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

import eventwire
from eventwire import CustomEvent, Event, FromSequence, FromTime, InvalidArgument, LastN
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer, PublishAck


async def _publish(bus: eventwire.Bus, numbers: range) -> list[PublishAck]:
    alice = make_identity("alice", bus.keyring)
    events = [CustomEvent("custom.n", "n", {"n": n}) for n in numbers]
    return await bus.publish_many(events, identity=alice)


def _n(event: Event) -> int:
    assert isinstance(event.data, dict)
    n = event.data["n"]
    assert isinstance(n, int)
    return n


async def _read(bus: eventwire.Bus, durable: str, start: object, until: int) -> list[int]:
    """What a new subscription from ``start`` handles, once it handled ``until`` events."""
    got: list[int] = []

    async def handler(event: Event) -> None:
        got.append(_n(event))

    async with bus.subscribe("custom.>", handler, durable=durable, start=start):  # type: ignore[arg-type]  # start points and literals
        await wait_until(lambda: len(got) >= until)
        await asyncio.sleep(0.2)  # nothing more arrives
    return got


async def test_from_a_sequence_then_live(bus: eventwire.Bus) -> None:
    acks = await _publish(bus, range(10))
    got: list[int] = []

    async def handler(event: Event) -> None:
        got.append(_n(event))

    start = FromSequence(acks[6].seq)
    async with bus.subscribe("custom.>", handler, durable="seq", start=start):
        await wait_until(lambda: got == [6, 7, 8, 9])
        await _publish(bus, range(10, 12))
        await wait_until(lambda: got == [6, 7, 8, 9, 10, 11])


async def test_from_a_time(bus: eventwire.Bus) -> None:
    await _publish(bus, range(5))
    await asyncio.sleep(0.05)
    at = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await _publish(bus, range(5, 8))
    assert await _read(bus, "time", FromTime(at), 3) == [5, 6, 7]


async def test_the_last_n(bus: eventwire.Bus) -> None:
    await _publish(bus, range(10))
    assert await _read(bus, "last", LastN(3), 3) == [7, 8, 9]


async def test_a_replay_of_an_event_before_the_start_point_is_still_refused(
    bus: eventwire.Bus,
) -> None:
    """The original is stored before the start point, its captured copy after it: the
    look-back claims the original, so the copy is refused as a replay."""
    acks = await _publish(bus, range(6))
    for index in (1, 4):  # one before the start point, one after: both copies refused
        stored = await bus.jetstream.get_msg(bus.stream, acks[index].seq)
        headers = {**(stored.headers or {}), "Nats-Msg-Id": f"forged-{index}"}
        again = await bus.jetstream.publish(
            stored.subject or "", stored.data or b"", headers=headers
        )
        assert again.duplicate is not True
    stored = await bus.jetstream.get_msg(bus.stream, acks[2].seq)  # and a forged one
    forged = (stored.data or b"").replace(b'"n":2', b'"n":7')
    headers = {**(stored.headers or {}), "Nats-Msg-Id": "forged-bytes"}
    await bus.jetstream.publish(stored.subject or "", forged, headers=headers)
    got: list[int] = []

    async def handler(event: Event) -> None:
        got.append(_n(event))

    start = FromSequence(acks[3].seq)
    async with bus.subscribe("custom.>", handler, durable="guarded", start=start) as sub:
        await wait_until(lambda: got == [3, 4, 5] and sub.stats.rejected == 3)
        await asyncio.sleep(0.2)
    assert got == [3, 4, 5]
    assert bus.security.rejected == {"already-seen": 2, "bad-signature": 1}


async def test_other_subscriptions_are_unaffected(bus: eventwire.Bus) -> None:
    acks = await _publish(bus, range(4))
    everything: list[int] = []

    async def all_of_it(event: Event) -> None:
        everything.append(_n(event))

    async with bus.subscribe("custom.>", all_of_it, durable="whole"):
        assert await _read(bus, "tail", FromSequence(acks[2].seq), 2) == [2, 3]
        await wait_until(lambda: everything == [0, 1, 2, 3])
        stored = await bus.jetstream.get_msg(bus.stream, acks[0].seq)
        headers = {**(stored.headers or {}), "Nats-Msg-Id": "forged"}
        await bus.jetstream.publish(stored.subject or "", stored.data or b"", headers=headers)
        await wait_until(lambda: bus.security.rejected == {"already-seen": 1})
    assert everything == [0, 1, 2, 3]


async def test_a_restarted_durable_resumes_where_it_was(bus: eventwire.Bus) -> None:
    acks = await _publish(bus, range(5))
    start = FromSequence(acks[3].seq)
    assert await _read(bus, "again", start, 2) == [3, 4]
    await _publish(bus, range(5, 7))
    assert await _read(bus, "again", start, 2) == [5, 6]


async def test_without_a_replay_window_there_is_no_look_back(
    nats_server: EmbeddedServer, root: str
) -> None:
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, root=root, replay_window=None
    ) as bus:
        acks = await _publish(bus, range(5))
        assert await _read(bus, "plain", FromSequence(acks[2].seq), 3) == [2, 3, 4]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: FromSequence(0), "seq"),
        (lambda: FromSequence(True), "seq"),
        (lambda: LastN(-1), "count"),
        (lambda: FromTime(datetime(2026, 1, 1)), "at"),
        (lambda: eventwire.SubscribeOptions(start="bogus"), "start"),  # type: ignore[arg-type]  # bad on purpose
    ],
)
def test_bad_start_points_are_refused(make: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        make()  # type: ignore[operator]  # a factory
    assert caught.value.field == field


async def test_a_batch_subscription_from_a_point(bus: eventwire.Bus) -> None:
    acks = await _publish(bus, range(6))
    got: list[int] = []

    async def handler(batch: eventwire.Batch) -> None:
        got.extend(_n(event) for event in batch.events)

    start = FromSequence(acks[4].seq)
    async with bus.subscribe_batch("custom.>", handler, durable="batches", start=start) as sub:
        await wait_until(lambda: got == [4, 5])
        await asyncio.sleep(0.2)
    assert got == [4, 5]
    assert sub.stats.delivered == 2  # the look-back was claimed, never delivered


async def test_last_n_larger_than_the_stream_reads_it_all(bus: eventwire.Bus) -> None:
    await _publish(bus, range(3))
    assert await _read(bus, "all-of-it", LastN(1000), 3) == [0, 1, 2]
