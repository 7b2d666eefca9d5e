"""A subscription that stops hands back at once what it pulled and did not hand to a
handler yet, even while a handler is still running (those events are kept alive with
in-progress acks while they wait, so nothing else would release them)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

from eventwire import CustomEvent, Event
from tests.conftest import make_identity, wait_until

if TYPE_CHECKING:
    import eventwire


async def test_a_stopping_subscription_releases_what_waits_behind_its_handler(
    bus: eventwire.Bus,
) -> None:
    alice = make_identity("alice", bus.keyring)
    handled: Counter[str] = Counter()
    by_first: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(event: Event) -> None:
        started.set()
        await release.wait()
        handled[event.id] += 1
        by_first.append(event.id)

    async def quick(event: Event) -> None:
        handled[event.id] += 1

    ids = [
        (await bus.publish(CustomEvent("custom.job", "com.acme.job", {"n": n}), identity=alice))
        .event_id
        for n in range(6)
    ]
    first = bus.subscribe("custom.job", slow, durable="jobs", max_in_flight=1, batch=16)
    async with first:
        try:
            await started.wait()  # it holds one in its handler and the five others behind it
            async with bus.subscribe("custom.job", quick, durable="jobs"):
                stopping = asyncio.create_task(first.close())
                await wait_until(lambda: sum(handled.values()) == 5)  # handed back at once
                assert not stopping.done()  # the stop waits for the handler in flight
                release.set()
                await stopping
        finally:
            release.set()  # never leave the handler (and the stop) waiting
    assert len(by_first) == 1
    assert sorted(handled) == sorted(ids)
    assert set(handled.values()) == {1}
