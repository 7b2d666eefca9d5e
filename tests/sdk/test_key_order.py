"""Per-key order under concurrency and redelivery."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import eventwire
from eventwire import CustomEvent, Event, RetryPolicy
from tests.conftest import make_identity, wait_until

KEYS = ["k0", "k1", "k2", "k3"]
PER_KEY = 40


async def test_per_key_order_holds_under_concurrency_and_failures(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    done: dict[str, list[int]] = defaultdict(list)
    attempts: dict[str, int] = defaultdict(int)
    running = peak = 0
    rng = random.Random(7)

    async def handler(event: Event) -> None:
        nonlocal running, peak
        assert isinstance(event.data, int)
        attempts[event.id] += 1
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(rng.uniform(0, 0.004))
            if event.data % 7 == 3 and attempts[event.id] == 1:
                raise RuntimeError("first attempt of every 7th event fails")
            assert event.partitionkey is not None
            done[event.partitionkey].append(event.data)
        finally:
            running -= 1

    retry = RetryPolicy(max_deliveries=3, initial_delay=0.01, jitter=0)
    async with bus.subscribe(
        "custom.>", handler, durable="ordered", max_in_flight=8, key_order=True, retry=retry
    ) as sub:
        for i in range(PER_KEY):
            for key in KEYS:  # interleaved keys, each with increasing numbers
                await bus.publish(
                    CustomEvent("custom.o", "o", i), identity=alice, partition_key=key
                )
        await wait_until(lambda: sum(len(v) for v in done.values()) == PER_KEY * len(KEYS))
    assert {key: done[key] for key in KEYS} == {key: list(range(PER_KEY)) for key in KEYS}
    assert peak > 1  # keys did run side by side
    assert sub.stats.failed == len([i for i in range(PER_KEY) if i % 7 == 3]) * len(KEYS)
    assert sub.stats.dead_lettered == 0
