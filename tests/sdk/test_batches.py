"""Batch handlers: many events per call, one ack decision per event."""

from __future__ import annotations

import asyncio

from nats.js.api import ConsumerConfig

import eventwire
from eventwire import Batch, CustomEvent, RetryPolicy
from eventwire._pull import Pull
from tests.conftest import make_identity, wait_until


async def test_batches_with_per_event_outcomes(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    sizes: list[int] = []
    handled: list[int] = []

    async def handler(batch: Batch) -> None:
        sizes.append(len(batch))
        for event in batch.events:
            assert isinstance(event.data, int)
            if event.data % 10 == 9:
                batch.fail(event, ValueError("bad row"))
            else:
                handled.append(event.data)

    retry = RetryPolicy(max_deliveries=2, initial_delay=0.01, jitter=0)
    await bus.publish_many(
        [CustomEvent("custom.rows", "row", i) for i in range(100)], identity=alice
    )
    async with bus.subscribe_batch(
        "custom.rows", handler, durable="rows", max_size=32, retry=retry
    ) as sub:
        await wait_until(lambda: sub.stats.dead_lettered == 10)
    assert sorted(handled) == [i for i in range(100) if i % 10 != 9]
    assert max(sizes) <= 32
    assert sum(sizes) == 100 + 10  # the ten failures came back once before dead-lettering
    assert (sub.stats.handled, sub.stats.failed) == (90, 20)


async def test_a_raising_batch_handler_fails_the_whole_batch(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    failed: list[str] = []  # the ids of the first batch, which fails as a whole
    handled: list[str] = []

    async def handler(batch: Batch) -> None:
        if not failed:
            failed.extend(event.id for event in batch.events)
            raise RuntimeError("database down")
        handled.extend(event.id for event in batch.events)

    await bus.publish_many([CustomEvent("custom.b", "b", i) for i in range(5)], identity=alice)
    retry = RetryPolicy(initial_delay=0.01, jitter=0)
    async with bus.subscribe_batch("custom.b", handler, durable="b", retry=retry) as sub:
        await wait_until(lambda: sub.stats.handled == 5)
    # the first pull may hold fewer than all five; each event of it was retried and handled
    assert sub.stats.failed == len(failed) >= 1
    assert set(failed) <= set(handled)
    assert len(handled) == len(set(handled)) == 5


async def test_a_pull_hands_out_at_most_its_batch(bus: eventwire.Bus) -> None:
    # Two pull requests can both be answered before the consumer takes what arrived; the
    # consumer must still get at most one batch at a time (a batch handler's max_size).
    alice = make_identity("alice", bus.keyring)
    await bus.publish_many([CustomEvent("custom.p", "p", i) for i in range(20)], identity=alice)
    config = ConsumerConfig(durable_name="p", filter_subject=f"{bus.root}.custom.p")
    await bus.jetstream.add_consumer(bus.stream, config)
    pull = Pull(bus.connection, stream=bus.stream, consumer="p", batch=4)
    await pull.open()  # pulls 4
    try:
        first = await pull.next_batch()
        await pull.done(len(first))  # pulls 4 more
        await asyncio.sleep(0.3)
        await pull.done(0)  # nothing settled, room for one more request: pulls 4 more
        await asyncio.sleep(0.3)
        sizes = [len(first)]
        for _ in range(2):
            async with asyncio.timeout(5):
                sizes.append(len(await pull.next_batch()))
    finally:
        await pull.close()
    assert all(0 < size <= 4 for size in sizes), sizes  # never more than one batch
