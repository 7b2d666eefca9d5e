"""The server is killed with SIGKILL (or docker kill) mid-stream and restarted on the same
store."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import eventwire
from eventwire import CustomEvent, Event, Keyring
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer

TOTAL = 10_000
CHUNK = 500


async def test_no_acknowledged_event_is_lost_across_a_server_crash(
    own_server: EmbeddedServer,
) -> None:
    keyring = Keyring()
    alice = make_identity("alice", keyring)
    calls: Counter[str] = Counter()
    acked: list[str] = []

    async def handler(event: Event) -> None:
        calls[event.id] += 1

    server = own_server
    async with (
        eventwire.connect(server.url, tenant=TENANT, keyring=keyring, root="dur") as bus,
        bus.subscribe(
            "custom.>", handler, durable="d", idempotent=True, batch=256, ack_wait=2
        ) as sub,
    ):

        async def produce() -> None:
            for start in range(0, TOTAL, CHUNK):
                items = [CustomEvent("custom.d", "d", i) for i in range(start, start + CHUNK)]
                acks = await bus.publish_many(items, identity=alice, window=256, timeout=3)
                acked.extend(ack.event_id for ack in acks)

        async def crash() -> None:
            await wait_until(lambda: len(acked) >= 3_000, timeout=60)
            await server.kill()
            await asyncio.sleep(0.5)
            await server.start()

        async with asyncio.timeout(120), asyncio.TaskGroup() as group:
            group.create_task(produce())
            group.create_task(crash())
        await wait_until(lambda: set(acked) <= set(calls), timeout=60)
        await asyncio.sleep(0.5)  # let stragglers (redeliveries) arrive too

    lost = [event_id for event_id in acked if event_id not in calls]
    twice = [event_id for event_id, n in calls.items() if n > 1]
    print(
        f"\nacked {len(acked)}, handled {len(calls)} distinct, handler calls "
        f"{sum(calls.values())}, duplicates skipped by the helper {sub.stats.duplicates}, "
        f"handled twice {len(twice)}, redelivered {sub.stats.delivered - len(calls)}"
    )
    assert len(acked) == TOTAL
    assert lost == []
    assert twice == []
